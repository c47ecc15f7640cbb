package main

import (
	"strings"
	"testing"
)

// TestReport renders the report of a run in which every step ran and
// measured nothing: every template parses and names only what exists.
func TestReport(t *testing.T) {
	r := &runner{}
	for _, s := range steps() {
		r.done = append(r.done, outcome{step: s, attempts: 1})
		r.show(&env{}, s)
	}
	text, err := r.report(&env{quick: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Results", "| 1a-backlog |", "| 11 |", "- **Ceiling**", "| Case |", "| Mode |", "## Noise"} {
		if !strings.Contains(text, want) {
			t.Errorf("the report has no %q", want)
		}
	}
	if strings.Count(text, "| Case |") != 1 {
		t.Error("the table of the throughput steps has more than one header")
	}
	// Each paragraph and bullet is one line: a template's continuation
	// lines start with two spaces.
	prev := ""
	for _, line := range strings.Split(text, "\n") {
		if prev != "" && line != "" && !strings.HasPrefix(line, "- ") && !strings.HasPrefix(line, "|") {
			t.Errorf("a line continues the one before; indent it in its template: %q", line)
		}
		prev = line
	}
}
