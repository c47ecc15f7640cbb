package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachesync/cachesync/internal/status"
)

func TestRing(t *testing.T) {
	for _, tc := range []struct {
		size, pushes int
		want         []int
	}{
		{size: 3, pushes: 0, want: []int{}},
		{size: 3, pushes: 2, want: []int{1, 2}},
		{size: 3, pushes: 3, want: []int{1, 2, 3}},
		{size: 3, pushes: 7, want: []int{5, 6, 7}},
		{size: 1, pushes: 4, want: []int{4}},
		{size: 0, pushes: 2, want: []int{2}}, // at least one
	} {
		r := newRing[int](tc.size)
		for i := 1; i <= tc.pushes; i++ {
			r.push(i)
		}
		if got := r.all(); !slices.Equal(got, tc.want) {
			t.Errorf("size %d, %d pushes: %v, want %v", tc.size, tc.pushes, got, tc.want)
		}
	}
}

// figures are the daemon's metrics, in a registry of their own with the
// names and labels internal/metrics gives them, and its status.
type figures struct {
	reg                       *prometheus.Registry
	gets, fills, refresh      *prometheus.CounterVec
	rows, rebuilds, feedErrs  *prometheus.CounterVec
	deadLettered              *prometheus.CounterVec
	pending, dead, away, used *prometheus.GaugeVec
	report                    status.Report
}

func newFigures() *figures {
	f := &figures{reg: prometheus.NewRegistry()}
	counter := func(name string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachesync_" + name, Help: name}, labels)
		f.reg.MustRegister(c)
		return c
	}
	gauge := func(name string, labels ...string) *prometheus.GaugeVec {
		g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cachesync_" + name, Help: name}, labels)
		f.reg.MustRegister(g)
		return g
	}
	f.gets = counter("gets_total", "cache", "target", "result")
	f.fills = counter("fills_total", "cache", "target")
	f.refresh = counter("refresh_keys_total", "cache", "target", "result")
	f.rows = counter("changefeed_rows_applied_total", "source", "target")
	f.rebuilds = counter("changefeed_rebuilds_total", "source", "target")
	f.feedErrs = counter("changefeed_errors_total", "source", "target", "kind")
	f.deadLettered = counter("writebehind_dead_lettered_total", "cache", "target")
	f.pending = gauge("writebehind_pending", "cache")
	f.dead = gauge("writebehind_dead_letters", "cache")
	f.away = gauge("changefeed_target_away", "source", "target")
	f.used = gauge("redis_used_memory_bytes")
	lag, bytes := 0.012, int64(4096)
	f.report = status.Report{Redis: status.Redis{Up: true},
		Sources: map[string]status.Source{"db": {Up: true, Active: "cachesync a:1"}},
		Caches:  []status.Cache{{Name: "p", LagSeconds: &lag, LagBytes: &bytes}, {Name: "w"}}}
	// What a daemon counts from its start: two caches, two targets.
	for _, target := range []string{"a", "b"} {
		for _, r := range []string{"hit", "miss"} {
			f.gets.WithLabelValues("p", target, r)
			f.gets.WithLabelValues("w", target, r)
		}
		f.fills.WithLabelValues("p", target)
		f.refresh.WithLabelValues("p", target, "refreshed")
		f.rows.WithLabelValues("db", target)
		f.rebuilds.WithLabelValues("db", target)
		f.away.WithLabelValues("db", target)
	}
	f.pending.WithLabelValues("w")
	f.dead.WithLabelValues("w")
	f.used.WithLabelValues().Set(1 << 20)
	return f
}

// history is a History of f whose samples the test takes.
func (f *figures) history() *History {
	return NewHistory(f.reg, func(context.Context) (*status.Report, error) {
		r := f.report // a copy, as each status is a report of its own
		r.Sources = maps.Clone(f.report.Sources)
		r.Caches = slices.Clone(f.report.Caches)
		return &r, nil
	})
}

var t0 = time.Date(2026, 12, 6, 23, 0, 0, 0, time.UTC)

// series returns the values of a chart's series, "-" for null.
func series(s Snapshot, chart, name string) string {
	for _, c := range s.Charts {
		for _, sr := range c.Series {
			if c.ID == chart && sr.Name == name {
				var out []string
				for _, v := range sr.Values {
					if v == nil {
						out = append(out, "-")
					} else {
						out = append(out, fmt.Sprint(*v))
					}
				}
				return strings.Join(out, " ")
			}
		}
	}
	return "absent"
}

// TestSample drives the sampler's ticks by hand: each step changes the
// figures, then samples 5 s after the previous one.
func TestSample(t *testing.T) {
	for _, tc := range []struct {
		name   string
		steps  []func(f *figures)
		chart  string
		series string
		want   string
		events []string // kind: text of every event, in order
	}{{
		name: "gets per second, both targets added",
		steps: []func(*figures){
			func(f *figures) {},
			func(f *figures) {
				f.gets.WithLabelValues("p", "a", "hit").Add(30)
				f.gets.WithLabelValues("p", "b", "hit").Add(10)
				f.gets.WithLabelValues("p", "a", "miss").Add(10)
			},
			func(f *figures) {},
		},
		chart: "cache:p:gets", series: "hits", want: "- 8 0",
	}, {
		name: "hit ratio: none without Gets",
		steps: []func(*figures){
			func(f *figures) {},
			func(f *figures) {
				f.gets.WithLabelValues("p", "a", "hit").Add(3)
				f.gets.WithLabelValues("p", "a", "miss").Add(1)
			},
			func(f *figures) {},
			func(f *figures) { f.gets.WithLabelValues("p", "b", "miss").Add(4) },
		},
		chart: "cache:p:ratio", series: "p", want: "- 75 - 0",
	}, {
		name:  "a cache never read has a hit ratio of no data",
		steps: []func(*figures){func(f *figures) {}, func(f *figures) { f.gets.WithLabelValues("p", "a", "hit").Inc() }},
		chart: "cache:w:ratio", series: "w", want: "- -",
	}, {
		name: "all caches",
		steps: []func(*figures){func(f *figures) {}, func(f *figures) {
			f.gets.WithLabelValues("p", "a", "hit").Inc()
			f.gets.WithLabelValues("w", "a", "miss").Inc()
		}},
		chart: chartHit, series: "all caches", want: "- 50",
	}, {
		name: "lag in ms and bytes, from the status",
		steps: []func(*figures){func(f *figures) {}, func(f *figures) {
			lag := 1.5
			f.report.Caches[0].LagSeconds = &lag
		}},
		chart: chartLagMS, series: "p", want: "12 1500",
	}, {
		name:  "write-behind queue, as read",
		steps: []func(*figures){func(f *figures) { f.pending.WithLabelValues("w").Set(7) }, func(f *figures) { f.pending.WithLabelValues("w").Set(2) }},
		chart: "cache:w:wb", series: "queue", want: "7 2",
	}, {
		name:  "no write-behind chart for a cache that writes through",
		steps: []func(*figures){func(f *figures) {}},
		chart: "cache:p:wb", series: "queue", want: "absent",
	}, {
		name: "fills and refreshes",
		steps: []func(*figures){func(f *figures) {}, func(f *figures) {
			f.fills.WithLabelValues("p", "a").Add(5)
			f.refresh.WithLabelValues("p", "b", "refreshed").Add(10)
		}},
		chart: "cache:p:fills", series: "refreshes", want: "- 2",
	}, {
		name: "events: a rebuild at the start and later, a target left behind, errors",
		steps: []func(*figures){
			func(f *figures) { f.rebuilds.WithLabelValues("db", "a").Inc() },
			func(f *figures) {},
			func(f *figures) {
				f.away.WithLabelValues("db", "b").Set(1)
				f.feedErrs.WithLabelValues("db", "a", "session").Add(2)
			},
			func(f *figures) {
				f.rebuilds.WithLabelValues("db", "b").Inc()
				f.away.WithLabelValues("db", "b").Set(0)
				f.deadLettered.WithLabelValues("w", "a").Inc()
			},
		},
		chart: chartMem, series: "used", want: "1.048576e+06 1.048576e+06 1.048576e+06 1.048576e+06",
		events: []string{
			"rebuild: source db: 1 cache rebuilt from a snapshot (target a)",
			"error: source db: 2 sessions ended in an error (target a)",
			"away: source db left target b behind: it is rebuilt once it answers",
			"rebuild: source db: 1 cache rebuilt from a snapshot (target b)",
			"error: cache w: 1 write-behind entry dead-lettered",
		},
	}, {
		name: "events from the status: a takeover, Redis down and up, a cache's error",
		steps: []func(*figures){
			func(f *figures) {},
			func(f *figures) { f.report.Sources["db"] = status.Source{Up: true, Active: "cachesync b:2"} },
			func(f *figures) { f.report.Redis = status.Redis{Error: "unreachable: refused"} },
			func(f *figures) {
				f.report.Redis = status.Redis{Up: true}
				f.report.Caches[1].LastError = "drain: no such table"
			},
			func(f *figures) {}, // the same error: no new event
		},
		chart: chartLagBytes, series: "p", want: "4096 4096 4096 4096 4096",
		events: []string{
			"takeover: source db: cachesync b:2 took over the replication slot",
			"down: Redis is down: unreachable: refused",
			"up: Redis is up again",
			"error: cache w: drain: no such table",
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFigures()
			h := f.history()
			for i, step := range tc.steps {
				step(f)
				h.Sample(t.Context(), t0.Add(time.Duration(i)*Every))
			}
			s := h.Snapshot(time.Time{})
			if got := series(s, tc.chart, tc.series); got != tc.want {
				t.Errorf("%s %s: %s, want %s", tc.chart, tc.series, got, tc.want)
			}
			var events []string
			for _, e := range s.Events {
				events = append(events, e.Kind+": "+e.Text)
			}
			if !slices.Equal(events, tc.events) {
				t.Errorf("events:\n%s\nwant:\n%s", strings.Join(events, "\n"), strings.Join(tc.events, "\n"))
			}
		})
	}
}

// TestWindow: the history keeps the last Window of samples and events, and
// since gives only what came after it.
func TestWindow(t *testing.T) {
	f := newFigures()
	h := f.history()
	n := int(Window/Every) + 20
	for i := range n {
		if i == 5 || i == n-3 {
			f.rebuilds.WithLabelValues("db", "a").Inc()
		}
		h.Sample(t.Context(), t0.Add(time.Duration(i)*Every))
	}
	s := h.Snapshot(time.Time{})
	first := t0.Add(time.Duration(n-int(Window/Every)) * Every)
	if len(s.Times) != int(Window/Every) || s.Times[0] != first.UnixMilli() {
		t.Fatalf("%d times from %v, want %d from %v", len(s.Times), time.UnixMilli(s.Times[0]).UTC(), int(Window/Every), first)
	}
	if len(s.Events) != 1 || s.Events[0].Time != t0.Add(time.Duration(n-3)*Every).UnixMilli() {
		t.Errorf("events: %+v, want the one of the window", s.Events)
	}
	for _, c := range s.Charts {
		for _, sr := range c.Series {
			if len(sr.Values) != len(s.Times) {
				t.Errorf("%s %s: %d values for %d times", c.ID, sr.Name, len(sr.Values), len(s.Times))
			}
		}
	}
	for _, tc := range []struct{ back, times, events int }{{4, 3, 1}, {3, 2, 0}} { // the event is the third last sample's
		later := h.Snapshot(time.UnixMilli(s.Times[len(s.Times)-tc.back]))
		if len(later.Times) != tc.times || len(later.Events) != tc.events {
			t.Errorf("since the sample %d from the end: %d times, %d events; want %d and %d", tc.back, len(later.Times), len(later.Events), tc.times, tc.events)
		}
	}
}

func TestServeHTTP(t *testing.T) {
	f := newFigures()
	h := f.history()
	for i := range 3 {
		h.Sample(t.Context(), t0.Add(time.Duration(i)*Every))
	}
	for _, tc := range []struct {
		query string
		code  int
		times int
	}{
		{"", 200, 3},
		{fmt.Sprintf("?since=%d", t0.UnixMilli()), 200, 2},
		{fmt.Sprintf("?since=%d", t0.Add(time.Hour).UnixMilli()), 200, 0},
		{"?since=yesterday", 400, 0},
		{"?since=-5", 400, 0},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/history"+tc.query, nil))
		if rec.Code != tc.code {
			t.Errorf("%q: %d %s, want %d", tc.query, rec.Code, rec.Body, tc.code)
			continue
		}
		if tc.code != http.StatusOK {
			if !strings.Contains(rec.Body.String(), `"code":"bad_since"`) {
				t.Errorf("%q: %s", tc.query, rec.Body)
			}
			continue
		}
		var s Snapshot
		if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil || len(s.Times) != tc.times {
			t.Errorf("%q: %d times (%v), want %d", tc.query, len(s.Times), err, tc.times)
		}
	}
}
