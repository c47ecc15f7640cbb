package dashboard

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachesync/cachesync/internal/status"
)

// Every is how often the daemon samples its figures, and Window how long
// it keeps them: 180 points of each.
const (
	Every  = 5 * time.Second
	Window = 15 * time.Minute
)

// maxEvents bounds the events kept in the window.
const maxEvents = 500

// History keeps the last Window of the daemon's figures in memory, one
// sample every Every, read from its Prometheus registry and its status,
// and the events seen between samples (rebuilds, takeovers, a target left
// behind or down, errors). It serves them as JSON (ServeHTTP).
type History struct {
	gather prometheus.Gatherer
	status func(context.Context) (*status.Report, error)

	mu      sync.Mutex
	samples *ring[sample]
	events  *ring[Event]
	seen    map[key]int // when each series was first seen: their order
	charts  map[string]chart
	prev    *sample // the last sample, with what it read; nil before the first
}

// sample is what one tick read, and the figures drawn from it.
type sample struct {
	t      time.Time
	read   reading
	report *status.Report  // nil when the status could not be read
	values map[key]float64 // NaN: known, but no data (a ratio of no Gets)
}

// key names a series: a chart and a line in it.
type key struct{ chart, series string }

// chart describes a chart; its series are in the samples.
type chart struct {
	title, unit, cache string
	order              int
}

// NewHistory returns a history read from gather (the daemon's metrics)
// and st (its status; nil: none); Run or Sample fill it.
func NewHistory(gather prometheus.Gatherer, st func(context.Context) (*status.Report, error)) *History {
	return &History{gather: gather, status: st, samples: newRing[sample](int(Window / Every)), events: newRing[Event](maxEvents),
		seen: map[key]int{}, charts: map[string]chart{}}
}

// Run samples at once, then every Every until ctx is done.
func (h *History) Run(ctx context.Context) {
	t := time.NewTicker(Every)
	defer t.Stop()
	for now := time.Now(); ; {
		h.Sample(ctx, now)
		select {
		case <-ctx.Done():
			return
		case now = <-t.C:
		}
	}
}

// Sample reads the figures now and keeps them as the sample of time now.
// What cannot be read (a server down) is missing from it.
func (h *History) Sample(ctx context.Context, now time.Time) {
	var rep *status.Report
	if h.status != nil {
		if r, err := h.status(ctx); err == nil {
			rep = r
		}
	}
	h.record(now, read(h.gather), rep)
}

// record keeps the sample of time now: its figures, and the events since
// the previous sample.
func (h *History) record(now time.Time, rd reading, rep *status.Report) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := sample{t: now, read: rd, report: rep, values: map[key]float64{}}
	h.figures(&s)
	for _, e := range h.changes(&s) {
		h.events.push(e)
	}
	h.samples.push(sample{t: s.t, values: s.values}) // what was read is only needed for the next sample's deltas
	h.prev = &s
}

// Chart ids and titles.
const (
	chartHit      = "hit"
	chartLagMS    = "lag_ms"
	chartLagBytes = "lag_bytes"
	chartOps      = "ops"
	chartMem      = "mem"
)

// define describes chart id once.
func (h *History) define(id, title, unit, cache string) {
	if _, ok := h.charts[id]; !ok {
		h.charts[id] = chart{title: title, unit: unit, cache: cache, order: len(h.charts)}
	}
}

// set sets the series of chart in s to v.
func (h *History) set(s *sample, chart, series string, v float64) {
	k := key{chart, series}
	if _, ok := h.seen[k]; !ok {
		h.seen[k] = len(h.seen)
	}
	s.values[k] = v
}

// figures computes what s shows: rates and ratios against the previous
// sample, gauges as read, lag as the status gives it.
func (h *History) figures(s *sample) {
	dt := math.NaN()
	var prev reading
	if h.prev != nil {
		dt, prev = s.t.Sub(h.prev.t).Seconds(), h.prev.read
	}
	delta := func(name, by string, where ...string) map[string]float64 {
		out := map[string]float64{}
		old := prev.sum(name, by, where...)
		for k, v := range s.read.sum(name, by, where...) {
			out[k] = math.NaN()
			if o, ok := old[k]; ok && v >= o && dt > 0 {
				out[k] = v - o
			}
		}
		return out
	}
	rate := func(d float64) float64 { return d / dt } // NaN stays NaN
	ratio := func(hits, gets float64) float64 {
		if gets > 0 {
			return 100 * hits / gets
		}
		return math.NaN()
	}
	total := func(m map[string]float64) float64 {
		t := 0.0
		for _, v := range m {
			t += v
		}
		return t
	}

	h.define(chartHit, "Hit ratio, all caches", "%", "")
	h.define(chartLagMS, "Change-feed lag", "ms", "")
	h.define(chartLagBytes, "Change-feed lag, WAL", "B", "")
	h.define(chartOps, "Throughput", "/s", "")
	h.define(chartMem, "Redis used memory", "B", "")

	hits, misses := delta("gets_total", "cache", "result", "hit"), delta("gets_total", "cache", "result", "miss")
	fills, drained := delta("fills_total", "cache"), delta("writebehind_drained_total", "cache")
	refreshed := delta("refresh_keys_total", "cache", "result", "refreshed")
	repaired := delta("refresh_keys_total", "cache", "result", "repaired")
	pending, dead := s.read.sum("writebehind_pending", "cache"), s.read.sum("writebehind_dead_letters", "cache")

	caches := map[string]bool{}
	for c := range hits {
		caches[c] = true
	}
	if s.report != nil {
		for _, c := range s.report.Caches {
			caches[c.Name] = true
			if c.LagSeconds != nil {
				h.set(s, chartLagMS, c.Name, *c.LagSeconds*1000)
			}
			if c.LagBytes != nil {
				h.set(s, chartLagBytes, c.Name, float64(*c.LagBytes))
			}
		}
	}
	h.set(s, chartHit, "all caches", ratio(total(hits), total(hits)+total(misses)))
	h.set(s, chartOps, "gets", rate(total(hits)+total(misses)))
	h.set(s, chartOps, "rows applied", rate(total(delta("changefeed_rows_applied_total", "source"))))
	if len(drained) > 0 {
		h.set(s, chartOps, "drained", rate(total(drained)))
	}
	if m := s.read.sum("redis_used_memory_bytes", ""); len(m) > 0 {
		h.set(s, chartMem, "used", m[""])
	}
	for _, c := range slices.Sorted(maps.Keys(caches)) {
		id := "cache:" + c + ":"
		h.define(id+"gets", "Gets", "/s", c)
		h.define(id+"ratio", "Hit ratio", "%", c)
		h.define(id+"fills", "Fills and refreshes", "/s", c)
		h.define(id+"wb", "Write-behind", "entries", c)
		hit, miss := nanIfMissing(hits, c), nanIfMissing(misses, c)
		h.set(s, id+"gets", "hits", rate(hit))
		h.set(s, id+"gets", "misses", rate(miss))
		h.set(s, id+"ratio", c, ratio(hit, hit+miss))
		h.set(s, id+"fills", "fills", rate(nanIfMissing(fills, c)))
		if _, ok := refreshed[c]; ok {
			h.set(s, id+"fills", "refreshes", rate(refreshed[c]+repaired[c]))
		}
		if q, ok := pending[c]; ok {
			h.set(s, id+"wb", "queue", q)
			h.set(s, id+"wb", "dead letters", dead[c])
		}
	}
}

// nanIfMissing is m[k], or NaN when m has no k.
func nanIfMissing(m map[string]float64, k string) float64 {
	if v, ok := m[k]; ok {
		return v
	}
	return math.NaN()
}

// Event is something that happened between two samples, drawn as a marker
// on the charts.
type Event struct {
	Time int64 `json:"time"` // unix milliseconds: the sample that saw it
	// Kind is rebuild, takeover, away (a target left behind by a feed),
	// down, up or error.
	Kind  string `json:"kind"`
	Cache string `json:"cache,omitempty"` // the cache it concerns, if one
	Text  string `json:"text"`
}

// changes returns the events between the previous sample and s: counters
// that grew (counters start at 0 with the daemon, as the history does),
// states that changed.
func (h *History) changes(s *sample) []Event {
	var out []Event
	add := func(kind, cache, text string) {
		out = append(out, Event{Time: s.t.UnixMilli(), Kind: kind, Cache: cache, Text: text})
	}
	var prev reading
	var old *status.Report
	if h.prev != nil {
		prev, old = h.prev.read, h.prev.report
	}
	for _, m := range s.read.grew(prev, "changefeed_rebuilds_total") {
		add("rebuild", "", fmt.Sprintf("source %s: %s rebuilt from a snapshot%s", m.labels["source"], plural(m.v, "cache"), in(m.labels)))
	}
	for _, m := range s.read.grew(prev, "changefeed_errors_total") {
		what := "rows that map to no key"
		if m.labels["kind"] == "session" {
			what = "sessions ended in an error"
		}
		add("error", "", fmt.Sprintf("source %s: %g %s%s", m.labels["source"], m.v, what, in(m.labels)))
	}
	for _, m := range s.read.grew(prev, "refresh_errors_total") {
		add("error", "", fmt.Sprintf("%s failed%s", plural(m.v, "refresh batch"), in(m.labels)))
	}
	for _, m := range s.read.grew(prev, "writebehind_dead_lettered_total") {
		add("error", m.labels["cache"], fmt.Sprintf("cache %s: %s dead-lettered", m.labels["cache"], plural(m.v, "write-behind entry")))
	}
	for _, m := range s.read.grew(prev, "consistency_inconsistent_total") {
		add("error", m.labels["cache"], fmt.Sprintf("cache %s: %s found inconsistent", m.labels["cache"], plural(m.v, "key")))
	}
	for _, m := range s.read.grew(prev, "changefeed_target_away") {
		add("away", "", fmt.Sprintf("source %s left target %s behind: it is rebuilt once it answers", m.labels["source"], m.labels["target"]))
	}
	if s.report == nil {
		return out
	}
	r := s.report
	up := func(what string, was, is bool, why string) {
		switch {
		case was && !is && why != "":
			add("down", "", what+" is down: "+why)
		case was && !is:
			add("down", "", what+" is down")
		case !was && is:
			add("up", "", what+" is up again")
		}
	}
	if len(r.Targets) == 0 {
		was := old == nil || old.Redis.Up
		up("Redis", was, r.Redis.Up, r.Redis.Error)
	}
	for _, t := range r.Targets {
		was := true
		if old != nil {
			if i := slices.IndexFunc(old.Targets, func(o status.Target) bool { return o.Name == t.Name }); i >= 0 {
				was = old.Targets[i].Up
			}
		}
		up("target "+t.Name, was, t.Up, t.Error)
	}
	for _, name := range slices.Sorted(maps.Keys(r.Sources)) {
		src, was := r.Sources[name], status.Source{Up: true}
		if old != nil {
			if o, ok := old.Sources[name]; ok {
				was = o
			}
		}
		up("source "+name, was.Up, src.Up, src.Error)
		if old != nil && src.Active != "" && was.Active != src.Active {
			add("takeover", "", fmt.Sprintf("source %s: %s took over the replication slot", name, src.Active))
		}
	}
	for _, c := range r.Caches {
		last := ""
		if old != nil {
			if i := slices.IndexFunc(old.Caches, func(o status.Cache) bool { return o.Name == c.Name }); i >= 0 {
				last = old.Caches[i].LastError
			}
		}
		if c.LastError != "" && c.LastError != last {
			add("error", c.Name, "cache "+c.Name+": "+c.LastError)
		}
	}
	return out
}

// plural says n things.
func plural(n float64, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	if strings.HasSuffix(thing, "y") {
		thing = strings.TrimSuffix(thing, "y") + "ie"
	} else if strings.HasSuffix(thing, "h") {
		thing += "e"
	}
	return fmt.Sprintf("%g %ss", n, thing)
}

// in names the target of labels, when it has a name.
func in(labels map[string]string) string {
	if t := labels["target"]; t != "" {
		return " (target " + t + ")"
	}
	return ""
}

// reading is what one gather returned, by metric name without the
// cachesync_ prefix.
type reading map[string][]metric

// metric is one counter or gauge of a reading.
type metric struct {
	labels map[string]string
	v      float64
}

// read gathers g and keeps its counters and gauges named cachesync_*:
// what was gathered, also when a part failed.
func read(g prometheus.Gatherer) reading {
	out := reading{}
	fams, _ := g.Gather()
	for _, f := range fams {
		name, ok := strings.CutPrefix(f.GetName(), "cachesync_")
		if !ok {
			continue
		}
		for _, m := range f.GetMetric() {
			var v float64
			switch {
			case m.Counter != nil:
				v = m.Counter.GetValue()
			case m.Gauge != nil:
				v = m.Gauge.GetValue()
			default:
				continue
			}
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			out[name] = append(out[name], metric{labels, v})
		}
	}
	return out
}

// sum adds the values of the metric name whose labels are as where says
// (name, value, ...), by the value of their label by ("": all in one).
func (r reading) sum(name, by string, where ...string) map[string]float64 {
	out := map[string]float64{}
	for _, m := range r[name] {
		if m.match(where) {
			out[m.labels[by]] += m.v
		}
	}
	return out
}

// match tells whether m has the labels of where (name, value, ...).
func (m metric) match(where []string) bool {
	for i := 0; i+1 < len(where); i += 2 {
		if m.labels[where[i]] != where[i+1] {
			return false
		}
	}
	return true
}

// grew returns, for each metric name of r that is higher than in prev
// (absent there: 0), by how much.
func (r reading) grew(prev reading, name string) []metric {
	var out []metric
	for _, m := range r[name] {
		old := 0.0
		for _, o := range prev[name] {
			if sameLabels(o.labels, m.labels) {
				old = o.v
			}
		}
		if m.v > old {
			out = append(out, metric{m.labels, m.v - old})
		}
	}
	return out
}

func sameLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// Snapshot is the history as /v1/history serves it.
type Snapshot struct {
	Every  float64 `json:"interval_seconds"`
	Window float64 `json:"window_seconds"`
	// Times are the samples' times, unix milliseconds, oldest first; each
	// series has a value for each (null: no data).
	Times  []int64 `json:"times"`
	Charts []Chart `json:"charts"`
	Events []Event `json:"events"`
}

// Chart is one chart of a Snapshot.
type Chart struct {
	ID     string   `json:"id"`
	Title  string   `json:"title"`
	Unit   string   `json:"unit"`
	Cache  string   `json:"cache,omitempty"` // a cache's chart; else the overview's
	Series []Series `json:"series"`
}

// Series is one line of a Chart.
type Series struct {
	Name   string     `json:"name"`
	Values []*float64 `json:"values"`
}

// Snapshot returns the samples and events after since (the zero time: all
// the window holds).
func (h *History) Snapshot(since time.Time) Snapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := Snapshot{Every: Every.Seconds(), Window: Window.Seconds(), Times: []int64{}, Charts: []Chart{}, Events: []Event{}}
	var samples []sample
	for _, s := range h.samples.all() {
		if s.t.After(since) {
			samples = append(samples, s)
		}
	}
	keys := map[key]bool{}
	for _, s := range samples {
		out.Times = append(out.Times, s.t.UnixMilli())
		for k := range s.values {
			keys[k] = true
		}
	}
	sorted := slices.SortedFunc(maps.Keys(keys), func(a, b key) int {
		return cmp.Or(cmp.Compare(h.charts[a.chart].order, h.charts[b.chart].order), cmp.Compare(h.seen[a], h.seen[b]))
	})
	for _, k := range sorted {
		if n := len(out.Charts); n == 0 || out.Charts[n-1].ID != k.chart {
			c := h.charts[k.chart]
			out.Charts = append(out.Charts, Chart{ID: k.chart, Title: c.title, Unit: c.unit, Cache: c.cache})
		}
		vals := make([]*float64, len(samples))
		for i, s := range samples {
			if v, ok := s.values[k]; ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
				r := math.Round(v*1000) / 1000
				vals[i] = &r
			}
		}
		c := &out.Charts[len(out.Charts)-1]
		c.Series = append(c.Series, Series{Name: k.series, Values: vals})
	}
	oldest := since
	if all := h.samples.all(); len(all) > 0 && all[0].t.After(oldest) {
		oldest = all[0].t.Add(-time.Millisecond)
	}
	for _, e := range h.events.all() {
		if e.Time > oldest.UnixMilli() {
			out.Events = append(out.Events, e)
		}
	}
	return out
}

// ServeHTTP serves the Snapshot as JSON: all of it, or with ?since=MS
// (unix milliseconds, a time of the last reply) only what came after.
func (h *History) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": "bad_since",
				"message": fmt.Sprintf("since %q is not a time in unix milliseconds", v)}})
			return
		}
		since = time.UnixMilli(ms)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(h.Snapshot(since))
}
