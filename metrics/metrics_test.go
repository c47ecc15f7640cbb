package metrics_test

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyevents"
	"github.com/cachesync/cachesync/keymiss"
	"github.com/cachesync/cachesync/metrics"
	"github.com/cachesync/cachesync/refresh"
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
	api, err := cachesync.Open(ctx, cfg, cachesync.Options{})
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
