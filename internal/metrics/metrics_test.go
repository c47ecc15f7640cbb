package metrics_test

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/keyevents"
	"github.com/cachesync/cachesync/internal/keymiss"
	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/internal/refresh"
	"github.com/cachesync/cachesync/internal/testenv"
)

// TestKeyspaceEvents: the keymiss listener and the refresher run as a
// Redis user without CONFIG: each feature's keyspace_events_ok is 0;
// granted CONFIG, 1; their flags CONFIG SET away, each counts a re-enable.
func TestKeyspaceEvents(t *testing.T) {
	ctx := t.Context()
	pg := testenv.StartPostgres(t)
	db, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	if _, err := db.Exec(ctx, `CREATE TABLE t (id int PRIMARY KEY, v text)`); err != nil {
		t.Fatal(err)
	}
	rds := testenv.StartRedis(t)
	admin := rds.Client(t)
	rds.SetUser(t, "cs", "on", ">pw", "~*", "&*", "+@all", "-config")
	rc := rds.ClientAs(t, "cs", "pw")
	cfg, err := config.Load(strings.NewReader(`name: m
redis: {url: "` + rds.URL() + `"}
sources: {db: {url: "` + pg.URL("postgres") + `"}}
caches:
  p: {table: t, key: "p:{id}", sync: none, fill: on-miss, ttl: 1h, refresh: on-expiry}
`))
	if err != nil {
		t.Fatal(err)
	}
	api, err := engine.Open(ctx, cfg, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	l, err := keymiss.New(cfg, api, rc, log)
	if err != nil || l == nil {
		t.Fatalf("listener %v, %v", l, err)
	}
	r, err := refresh.New(cfg, api, rc, log)
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
			deadline := time.Now().Add(10 * time.Second)
			for !cond(h) {
				if time.Now().After(deadline) {
					t.Fatalf("%s: waited in vain for %s", feature, what)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		for feature := range features {
			for _, want := range []string{
				`cachesync_keyspace_events_ok{feature="` + feature + `"} ` + ok + "\n",
				`cachesync_keyspace_events_reenabled_total{feature="` + feature + `"} ` + reenabled + "\n",
			} {
				if !strings.Contains(rec.Body.String(), want) {
					t.Errorf("%s: metrics lack %s", what, strings.TrimSpace(want))
				}
			}
		}
	}
	wait("CONFIG refused", func(h *keyevents.Health) bool { return !h.OK() }, "0", "0")
	rds.SetUser(t, "cs", "+config")
	wait("CONFIG allowed", func(h *keyevents.Health) bool { return h.OK() }, "1", "0")
	if err := admin.Do(ctx, admin.B().ConfigSet().ParameterValue().ParameterValue("notify-keyspace-events", "").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// Each feature finds its own flags gone: the one that enables its
	// flags first does not add the other's.
	wait("flags lost", func(h *keyevents.Health) bool { return h.Reenabled.Load() == 1 }, "1", "1")
}

// TestRedisHung: with Redis hung (accepting connections, never
// answering) a scrape reports redis_up 0 once its own deadline passes,
// with the figures that need no server still there. (The daemon's tests
// stop Redis and PostgreSQL: TestOutage* in cmd/cachesync.)
func TestRedisHung(t *testing.T) {
	rds := testenv.StartRedis(t)
	cfg, err := config.Load(strings.NewReader(`name: m
redis: {url: "` + rds.URL() + `"}
sources: {db: {url: "postgres://127.0.0.1:1/unused"}}
caches:
  p: {table: t, key: "p:{id}", sync: none, writes: behind}
`))
	if err != nil {
		t.Fatal(err)
	}
	handler := metrics.Handler(metrics.Sources{Config: cfg, Redis: rds.Client(t), Deadline: 200 * time.Millisecond})
	// scrape scrapes until the metrics have each of want, 10 times at most
	// (on a busy machine a server that runs may miss the deadline now and then).
	scrape := func(what string, want ...string) {
		t.Helper()
		var missing []string
		for range 10 {
			rec := httptest.NewRecorder()
			handler.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			missing = missing[:0]
			for _, w := range append(want, "go_goroutines") { // a name alone: any value
				if body := rec.Body.String(); !strings.Contains(body, "\n"+w+"\n") && !strings.Contains(body, "\n"+w+" ") {
					missing = append(missing, w)
				}
			}
			if len(missing) == 0 {
				return
			}
		}
		t.Errorf("%s: metrics lack %q", what, missing)
	}
	scrape("up", "cachesync_redis_up 1", `cachesync_writebehind_pending{cache="p"} 0`)
	pid := rds.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	scrape("redis hung", "cachesync_redis_up 0")
}
