package main

import (
	_ "embed"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"
)

// report.md is the frame of docs/BENCHMARKS.md; the steps fill it in.
//
//go:embed report.md
var reportText string

// reportSections are the sections of the report the steps' templates write
// into: text after the Results table, "Reading the results", "Where the
// time goes" and "Method".
var reportSections = []string{"notes", "reading", "costs", "method"}

// report renders the results as docs/BENCHMARKS.md: the frame of report.md
// around the Results table's rows, each step's in the order of the items they
// measure, and each section as the steps write it, in the order they ran.
func (r *runner) report(e *env) (string, error) {
	var rows []row
	for _, o := range r.done {
		rows = append(rows, o.step.Results()...)
	}
	slices.SortStableFunc(rows, func(a, b row) int { return a.item() - b.item() })
	sections := map[string]string{}
	for _, name := range reportSections {
		var w strings.Builder
		prevHead := ""
		for _, o := range r.done {
			// A step's head of a section is text it shares with the steps
			// around it (a table's header, a bullet on them all): it is
			// written once for consecutive steps with the same head.
			head, err := r.part(e, o.step, name+"-head")
			if err != nil {
				return "", err
			}
			body, err := r.part(e, o.step, name)
			if err != nil {
				return "", err
			}
			if head != prevHead {
				w.WriteString(head)
			}
			w.WriteString(body)
			prevHead = head
		}
		sections[name] = w.String()
	}
	var noise []string
	for _, o := range r.done {
		if !o.step.info().Timed {
			continue
		}
		part := fmt.Sprintf("%s %.0f%%", o.step.info().ID, 100*o.other)
		if o.attempts > 1 {
			part += fmt.Sprintf(" (quieter of %d attempts)", o.attempts)
		}
		noise = append(noise, part)
	}
	frame, err := template.New("report").Funcs(r.funcs(e)).Parse(unwrap(reportText))
	if err != nil {
		return "", err
	}
	bin := "" // -bin, when it is not make build's
	if e.bin != defaultBin {
		bin = e.bin
	}
	var w strings.Builder
	err = frame.Execute(&w, map[string]any{
		"Quick": e.quick, "Bin": bin, "M": e.machine, "Rows": rows, "Sections": sections,
		"Noise": strings.Join(noise, ", "), "LoadAvg": r.loadAvg, "Waited": r.waited.Round(time.Second),
		"PGSettings": strings.Join(pgSettings, "`, `"),
	})
	return w.String(), err
}

// show prints what step s brings to the report, as it finishes: its rows
// and its sections but the method, which is the same in every run.
func (r *runner) show(e *env, s step) {
	for _, row := range s.Results() {
		fmt.Println("  ", row)
	}
	for _, name := range []string{"notes", "reading", "costs-head", "costs"} {
		text, err := r.part(e, s, name)
		if err != nil {
			text = err.Error()
		}
		if text = strings.TrimSpace(text); text != "" {
			fmt.Println("   " + strings.ReplaceAll(text, "\n", "\n   "))
		}
	}
}

// part renders section name of step s's template; a section the template
// does not define is empty.
func (r *runner) part(e *env, s step, name string) (string, error) {
	t, err := template.New(s.info().ID).Funcs(r.funcs(e)).Parse(unwrap(s.Text()))
	if err != nil || t.Lookup(name) == nil {
		return "", err
	}
	var w strings.Builder
	err = t.ExecuteTemplate(&w, name, s)
	return w.String(), err
}

// unwrap joins each line of a template that starts with two spaces to the
// line before: the templates wrap their paragraphs and bullets for reading,
// the report has each on one line.
func unwrap(text string) string { return strings.ReplaceAll(text, "\n  ", " ") }

// funcs are what the templates may call besides the steps' methods. A
// template finds the other steps with step (nil for one that has not run)
// and the share of the machine other processes took during a step with
// other.
func (r *runner) funcs(e *env) template.FuncMap {
	return template.FuncMap{
		"num": num, "secs": secs, "ms": ms, "us": us, "perRow": perRow, "join": strings.Join,
		"count": func(n any) string { return count(int(reflect.ValueOf(n).Int())) }, // an int or int64 field
		"div":   func(a, b float64) float64 { return a / b },
		"sub":   func(a, b float64) float64 { return a - b },
		"pct":   func(f float64) string { return fmt.Sprintf("%.0f%%", 100*f) },
		"step":  func(id string) step { return r.outcome(id).step },
		"other": func(id string) float64 { return r.outcome(id).other },
		"cores": func() int { return e.machine.Cores },
	}
}

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

// ratio is a ÷ b as the report shows ratios.
func ratio(a, b float64) string { return fmt.Sprintf("%.2f", a/b) }

// ratioDur is floor ÷ got, for lags and latencies.
func ratioDur(floor, got time.Duration) string {
	if got <= 0 {
		return ratio(0, 1)
	}
	return ratio(float64(floor), float64(got))
}

// num formats a rate with thousands separators: 123,456.
func num(f float64) string {
	s := strconv.FormatInt(int64(f+0.5), 10)
	out := []byte{}
	for i, c := range []byte(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, c)
	}
	return string(out)
}

func count(n int) string { return num(float64(n)) }

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func us(d time.Duration) string {
	if d >= 10*time.Millisecond {
		return ms(d)
	}
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// perRow is cpu in µs per row (or per key, request, entry).
func perRow(cpu time.Duration, rows int) float64 {
	if rows == 0 {
		return 0
	}
	return float64(cpu) / float64(time.Microsecond) / float64(rows)
}
