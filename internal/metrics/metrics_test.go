package metrics_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/changefeed"
	"github.com/cachesync/cachesync/internal/keyevents"
	"github.com/cachesync/cachesync/internal/keymiss"
	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/internal/refresh"
	"github.com/cachesync/cachesync/internal/status"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

func TestMain(m *testing.M) { world.Main(m) }

// TestKeyspaceEvents: the keymiss listener and the refresher run as a
// Redis user without CONFIG: each feature's keyspace_events_ok is 0;
// granted CONFIG, 1; their flags CONFIG SET away, each counts a re-enable.
func TestKeyspaceEvents(t *testing.T) {
	w := world.New(t, `CREATE TABLE t (id int PRIMARY KEY, v text)`)
	w.Redis.SetUser(t, "cs", "on", ">pw", "~*", "&*", "+@all", "-config")
	rc := w.Redis.ClientAs(t, "cs", "pw")
	cfg := w.Config(`  p: {table: t, key: "p:{id}", sync: none, fill: on-miss, ttl: 1h, refresh: on-expiry}
`)
	api := w.Open(cfg)
	l, err := keymiss.New(cfg, api, rc, world.Logger())
	if err != nil || l == nil {
		t.Fatalf("listener %v, %v", l, err)
	}
	r, err := refresh.New(cfg, api, rc, world.Logger())
	if err != nil || r == nil {
		t.Fatalf("refresher %v, %v", r, err)
	}
	l.CheckEvery, r.CheckEvery = 10*time.Millisecond, 10*time.Millisecond
	defer testenv.Go(t, func(ctx context.Context) error { return l.Run(ctx, 1) })()
	defer testenv.Go(t, r.Run)()
	handler := metrics.Handler(metrics.Sources{Config: cfg, Redis: rc, API: api, Keymiss: l, Refresher: r})
	features := map[string]*keyevents.Health{"keymiss": &l.Stats.Notify, "refresh": &r.Stats.Notify}

	// wait waits until cond holds for both features, then checks the metrics.
	wait := func(what string, cond func(h *keyevents.Health) bool, ok, reenabled string) {
		t.Helper()
		for feature, h := range features {
			world.WaitFor(t, feature+": "+what, func() bool { return cond(h) })
		}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		for feature := range features {
			for _, want := range []string{
				`cachesync_keyspace_events_ok{feature="` + feature + `",target=""} ` + ok + "\n",
				`cachesync_keyspace_events_reenabled_total{feature="` + feature + `",target=""} ` + reenabled + "\n",
			} {
				if !strings.Contains(rec.Body.String(), want) {
					t.Errorf("%s: metrics lack %s", what, strings.TrimSpace(want))
				}
			}
		}
	}
	wait("CONFIG refused", func(h *keyevents.Health) bool { return !h.OK() }, "0", "0")
	w.Redis.SetUser(t, "cs", "+config")
	wait("CONFIG allowed", func(h *keyevents.Health) bool { return h.OK() }, "1", "0")
	w.Do(w.RC.B().ConfigSet().ParameterValue().ParameterValue("notify-keyspace-events", "").Build())
	// Each feature finds its own flags gone: the one that enables its
	// flags first does not add the other's.
	wait("flags lost", func(h *keyevents.Health) bool { return h.Reenabled.Load() == 1 }, "1", "1")
}

// TestRedisHung: with Redis hung (accepting connections, never
// answering) a scrape reports redis_up 0 once its own deadline passes,
// with the figures that need no server still there. (The daemon's tests
// stop Redis and PostgreSQL: TestOutage* in cmd/cachesync.)
func TestRedisHung(t *testing.T) {
	w := world.NewRedisOnly(t, "single")
	cfg := w.Config(`  p: {table: t, key: "p:{id}", sync: none, writes: behind}
`)
	handler := metrics.Handler(metrics.Sources{Config: cfg, Redis: w.RC, Deadline: 200 * time.Millisecond})
	// scrape scrapes until the metrics have each of want, 10 times at most
	// (on a busy machine a server that runs may miss the deadline now and then).
	scrape := func(what string, want ...string) {
		t.Helper()
		var missing []string
		for range 10 {
			rec := httptest.NewRecorder()
			handler.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			missing = missing[:0]
			for _, m := range append(want, "go_goroutines") { // a name alone: any value
				if body := rec.Body.String(); !strings.Contains(body, "\n"+m+"\n") && !strings.Contains(body, "\n"+m+" ") {
					missing = append(missing, m)
				}
			}
			if len(missing) == 0 {
				return
			}
		}
		t.Errorf("%s: metrics lack %q", what, missing)
	}
	scrape("up", "cachesync_redis_up 1", `cachesync_writebehind_pending{cache="p"} 0`)
	pid := w.Redis.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	scrape("redis hung", "cachesync_redis_up 0")
}

// TestTargets: the change-feed metrics name their target (an empty name
// for a config's only target), and each target says whether it was left
// behind.
func TestTargets(t *testing.T) {
	w := world.New(t, `CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY, v text)`)
	us := testenv.StartRedis(t)
	caches := `  p: {table: t, key: "p:{id}"}
  q: {table: u, key: "q:{id}", targets: [us]}
`
	cfg, err := config.Load(strings.NewReader(fmt.Sprintf("name: %s\nredis:\n  - {name: eu, url: %q}\n  - {name: us, url: %q}\nsources:\n  db: {url: %q}\ncaches:\n%s",
		w.Name, w.Redis.URL(), us.URL(), w.DBURL, caches)))
	if err != nil {
		t.Fatal(err)
	}
	usRC := us.Client(t)
	feed := changefeed.New(cfg, "db", world.Logger(), w.RC, usRC)
	body := scrape(t, metrics.Sources{Config: cfg, Redis: w.RC, Targets: []status.TargetClient{func() (rueidis.Client, error) { return w.RC, nil }, func() (rueidis.Client, error) { return usRC, nil }}, Feeds: []*changefeed.Feed{feed}})
	for _, want := range []string{
		`cachesync_changefeed_target_away{source="db",target="eu"} 0`,
		`cachesync_changefeed_target_away{source="db",target="us"} 0`,
		`cachesync_changefeed_rows_applied_total{source="db",target="eu"} 0`,
		`cachesync_changefeed_rows_applied_total{source="db",target="us"} 0`,
		`cachesync_changefeed_confirmed_lsn{source="db",target="us"} 0`,
		`cachesync_redis_up 1`,
	} {
		if !strings.Contains(body, "\n"+want+"\n") {
			t.Errorf("metrics lack %s", want)
		}
	}

	one := w.Config(caches[:strings.Index(caches, "  q:")])
	body = scrape(t, metrics.Sources{Config: one, Redis: w.RC, Feeds: []*changefeed.Feed{changefeed.New(one, "db", world.Logger(), w.RC)}})
	for _, want := range []string{
		`cachesync_changefeed_target_away{source="db",target=""} 0`,
		`cachesync_changefeed_rows_applied_total{source="db",target=""} 0`,
	} {
		if !strings.Contains(body, "\n"+want+"\n") {
			t.Errorf("one target: metrics lack %s", want)
		}
	}
}

// TestTargetParts: each target's parts are read at every scrape, their
// figures labelled with its name. A cache in both targets has a series
// in each, one in us only none in eu; before us has parts (it did not
// answer yet) no figure names it.
func TestTargetParts(t *testing.T) {
	w := world.New(t, `CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY, v text)`)
	us := testenv.StartRedis(t)
	caches := `  p: {table: t, key: "p:{id}", sync: none, ttl: 1h, refresh: on-expiry}
  q: {table: u, key: "q:{id}", sync: none, ttl: 1h, refresh: on-expiry, fill: on-miss, targets: [us]}
`
	cfg, err := config.Load(strings.NewReader(fmt.Sprintf("name: %s\nredis:\n  - {name: eu, url: %q}\n  - {name: us, url: %q}\nsources:\n  db: {url: %q}\ncaches:\n%s",
		w.Name, w.Redis.URL(), us.URL(), w.DBURL, caches)))
	if err != nil {
		t.Fatal(err)
	}
	usRC := us.Client(t)
	parts := func(name string, rc rueidis.Client) status.Parts {
		view := cfg.ForTarget(name)
		e := w.Open(view)
		r, err := refresh.New(view, e, rc, world.Logger())
		if err != nil || r == nil {
			t.Fatalf("refresher of %s: %v, %v", name, r, err)
		}
		p := status.Parts{Engine: e, Refresher: r}
		if name == "us" {
			if p.Keymiss, err = keymiss.New(view, e, rc, world.Logger()); err != nil || p.Keymiss == nil {
				t.Fatalf("keymiss listener of us: %v, %v", p.Keymiss, err)
			}
		}
		return p
	}
	eu := parts("eu", w.RC)
	var mu sync.Mutex
	var usParts status.Parts // none until "us answers"
	s := metrics.Sources{Config: cfg, Redis: w.RC, Targets: []status.TargetClient{func() (rueidis.Client, error) { return w.RC, nil }, func() (rueidis.Client, error) { return usRC, nil }},
		Parts: []status.TargetParts{func() status.Parts { return eu }, func() status.Parts { mu.Lock(); defer mu.Unlock(); return usParts }}}
	handler := metrics.Handler(s)
	get := func() string {
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		if rec.Code != 200 {
			t.Fatalf("/metrics: %d %s", rec.Code, rec.Body)
		}
		return rec.Body.String()
	}
	body := get()
	for _, want := range []string{
		`cachesync_refresh_keys_total{cache="p",result="refreshed",target="eu"} 0`,
		`cachesync_gets_total{cache="p",result="hit",target="eu"} 0`,
		`cachesync_refresh_events_total{fate="received",target="eu"} 0`,
	} {
		if !strings.Contains(body, "\n"+want+"\n") {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(body, `target="us"`) {
		t.Errorf("metrics name us before it has parts:\n%s", body)
	}

	mu.Lock()
	usParts = parts("us", usRC)
	mu.Unlock()
	body = get()
	for _, want := range []string{
		`cachesync_refresh_keys_total{cache="p",result="refreshed",target="eu"} 0`,
		`cachesync_refresh_keys_total{cache="p",result="refreshed",target="us"} 0`,
		`cachesync_refresh_keys_total{cache="q",result="refreshed",target="us"} 0`,
		`cachesync_gets_total{cache="q",result="miss",target="us"} 0`,
		`cachesync_fills_total{cache="q",target="us"} 0`,
		`cachesync_keymiss_events_total{fate="filled",target="us"} 0`,
		`cachesync_refresh_events_total{fate="received",target="us"} 0`,
		`cachesync_refresh_errors_total{target="us"} 0`,
	} {
		if !strings.Contains(body, "\n"+want+"\n") {
			t.Errorf("metrics lack %s once us has parts", want)
		}
	}
	if strings.Contains(body, `cache="q",result="refreshed",target="eu"`) {
		t.Errorf("metrics count refreshes of q in eu, which does not hold it")
	}
}

// scrape returns the metrics of s.
func scrape(t *testing.T, s metrics.Sources) string {
	t.Helper()
	rec := httptest.NewRecorder()
	metrics.Handler(s).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}
