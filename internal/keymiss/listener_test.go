package keymiss_test

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/keymiss"
	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/internal/testenv"
)

// TestFillOnMiss: a plain Redis client's GET misses, the listener fills
// the key, the next GET hits; a missing row and a foreign key cause no loop.
func TestFillOnMiss(t *testing.T) {
	ctx := context.Background()
	pg := testenv.StartPostgres(t)
	rds := testenv.StartRedis(t)
	db, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	if _, err := db.Exec(ctx, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2));
		INSERT INTO inventory VALUES ('apple', 1.99)`); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(strings.NewReader(`name: km
redis: {url: "` + rds.URL() + `"}
sources: {db: {url: "` + pg.URL("postgres") + `"}}
caches:
  prices: {table: inventory, key: "price:{item}", value: {format: string, column: price}, sync: none, fill: on-miss}
  other: {table: inventory, key: "other:{item}", sync: none}
`))
	if err != nil {
		t.Fatal(err)
	}
	api, err := engine.Open(ctx, cfg, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	rc := rds.Client(t)
	l, err := keymiss.New(cfg, api, rc, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil || l == nil {
		t.Fatalf("listener %v, %v", l, err)
	}
	// A window no run outlasts: more than one fill of a key below is the
	// listener's fault, not a slow machine's.
	l.Window = time.Hour
	defer testenv.Go(t, func(ctx context.Context) error { return l.Run(ctx, 4) })()

	get := func(key string) (string, bool) {
		v, err := rc.Do(ctx, rc.B().Get().Key(key).Build()).ToString()
		if rueidis.IsRedisNil(err) {
			return "", false
		}
		if err != nil {
			t.Fatal(err)
		}
		return v, true
	}
	// The listener subscribes asynchronously: miss until the fill lands.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if v, ok := get("price:apple"); ok {
			if v != "1.99" {
				t.Fatalf("price:apple = %q, want 1.99", v)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("price:apple never filled; stats: %d events, %d fills", l.Stats.Events.Load(), l.Stats.Filled.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n, _ := rc.Do(ctx, rc.B().ConfigGet().Parameter("notify-keyspace-events").Build()).AsStrMap(); !strings.Contains(n["notify-keyspace-events"], "m") {
		t.Fatalf("notify-keyspace-events = %q", n["notify-keyspace-events"])
	}

	// A missing row: the plain client keeps missing, the listener fills once
	// per window at most (its own reads miss too: no loop).
	filled, events := l.Stats.Filled.Load(), l.Stats.Events.Load()
	for range 20 {
		if _, ok := get("price:kiwi"); ok {
			t.Fatal("price:kiwi has a value for a missing row")
		}
		get("other:apple") // a cache without fill: on-miss
		time.Sleep(10 * time.Millisecond)
	}
	// Until the listener has had this loop's 40 misses and handled every
	// event it had.
	deadline = time.Now().Add(10 * time.Second)
	for {
		st := &l.Stats
		got := st.Events.Load()
		if got-events >= 40 && st.Filled.Load()+st.Ignored.Load()+st.Dropped.Load() == got {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the listener did not handle the misses: %d events, %d fills, %d ignored, %d dropped", got, st.Filled.Load(), st.Ignored.Load(), st.Dropped.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := l.Stats.Filled.Load() - filled; n != 1 {
		t.Fatalf("%d fills for 20 misses of a missing row within the window, want 1", n)
	}
	if _, ok := get("other:apple"); ok {
		t.Fatal("a cache without fill: on-miss was filled")
	}
}

// TestFillAfterEventsLost: Redis stops publishing keymiss events, once by
// restarting without persistence (notify-keyspace-events comes back
// empty; checks are an hour apart, so the resubscription's check enables
// them) and once by someone's CONFIG SET (the periodic check enables them);
// a plain client's DEL and GET of a key gets it filled again, one warning
// names the node, and the metrics count one re-enable.
func TestFillAfterEventsLost(t *testing.T) {
	ctx := context.Background()
	pg := testenv.StartPostgres(t)
	db, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	if _, err := db.Exec(ctx, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2));
		INSERT INTO inventory VALUES ('apple', 1.99), ('pear', 2.49)`); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		every time.Duration // the listener's CheckEvery
		lose  func(t *testing.T, rds *testenv.Redis, rc rueidis.Client)
	}{
		{"redis restarted", time.Hour, func(t *testing.T, rds *testenv.Redis, rc rueidis.Client) {
			if err := rds.Restart(); err != nil {
				t.Fatal(err)
			}
		}},
		{"config set", 20 * time.Millisecond, func(t *testing.T, rds *testenv.Redis, rc rueidis.Client) {
			if err := rc.Do(ctx, rc.B().ConfigSet().ParameterValue().ParameterValue("notify-keyspace-events", "").Build()).Error(); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rds := testenv.StartRedis(t)
			rc := rds.Client(t)
			cfg, err := config.Load(strings.NewReader(`name: km
redis: {url: "` + rds.URL() + `"}
sources: {db: {url: "` + pg.URL("postgres") + `"}}
caches:
  prices: {table: inventory, key: "price:{item}", value: {format: string, column: price}, sync: none, fill: on-miss}
`))
			if err != nil {
				t.Fatal(err)
			}
			api, err := engine.Open(ctx, cfg, engine.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer api.Close()
			var logs testenv.LogBuffer
			l, err := keymiss.New(cfg, api, rc, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil || l == nil {
				t.Fatalf("listener %v, %v", l, err)
			}
			l.CheckEvery = tc.every
			defer testenv.Go(t, func(ctx context.Context) error { return l.Run(ctx, 4) })()

			// filled waits until a plain client's DEL and GET of key is
			// followed by a GET that hits.
			filled := func(key, want string) {
				t.Helper()
				deadline := time.Now().Add(20 * time.Second)
				for {
					if err := rc.Do(ctx, rc.B().Del().Key(key).Build()).Error(); err == nil {
						if _, err := rc.Do(ctx, rc.B().Get().Key(key).Build()).ToString(); !rueidis.IsRedisNil(err) {
							t.Fatalf("GET %s right after DEL: %v", key, err)
						}
						for range 50 {
							v, err := rc.Do(ctx, rc.B().Get().Key(key).Build()).ToString()
							if err == nil {
								if v != want {
									t.Fatalf("%s = %q, want %q", key, v, want)
								}
								return
							}
							time.Sleep(10 * time.Millisecond)
						}
					}
					if time.Now().After(deadline) {
						n, _ := rc.Do(ctx, rc.B().ConfigGet().Parameter("notify-keyspace-events").Build()).AsStrMap()
						t.Fatalf("%s never filled after a miss; %d events, %d fills; notify-keyspace-events %q",
							key, l.Stats.Events.Load(), l.Stats.Filled.Load(), n["notify-keyspace-events"])
					}
				}
			}
			filled("price:apple", "1.99")
			if n := l.Stats.Notify.Reenabled.Load(); n != 0 {
				t.Fatalf("%d re-enables before the events were lost", n)
			}
			tc.lose(t, rds, rc)
			filled("price:pear", "2.49")

			if n := l.Stats.Notify.Reenabled.Load(); n != 1 {
				t.Errorf("%d re-enables counted, want 1", n)
			}
			warn := `level=WARN msg="notify-keyspace-events lost its flags; enabled again" component=keymiss redis=` + rds.Addr
			if got := logs.Lines(warn); len(got) != 1 {
				t.Errorf("%d warnings %q, want 1; log:\n%s", len(got), warn, logs.String())
			}
			rec := httptest.NewRecorder()
			metrics.Handler(metrics.Sources{Config: cfg, Redis: rc, API: api, Keymiss: l}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			for _, want := range []string{`cachesync_keyspace_events_reenabled_total{feature="keymiss"} 1`, `cachesync_keyspace_events_ok{feature="keymiss"} 1`} {
				if !strings.Contains(rec.Body.String(), want+"\n") {
					t.Errorf("metrics lack %s", want)
				}
			}
		})
	}
}
