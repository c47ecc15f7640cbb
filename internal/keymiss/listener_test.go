package keymiss_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/keymiss"
	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

func TestMain(m *testing.M) { world.Main(m) }

const inventory = `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2));
	INSERT INTO inventory VALUES ('apple', 1.99), ('pear', 2.49)`

const prices = `  prices: {table: inventory, key: "price:{item}", value: {format: string, column: price}, sync: none, fill: on-miss}
`

// handled reports whether l has handled every event it had, and had at least events.
func handled(l *keymiss.Listener, events int64) bool {
	st := &l.Stats
	got := st.Events.Load()
	return got >= events && st.Filled.Load()+st.Ignored.Load()+st.Dropped.Load() == got
}

// TestFillOnMiss: a plain Redis client's GET misses, the listener fills
// the key, the next GET hits; a missing row and a foreign key cause no loop.
func TestFillOnMiss(t *testing.T) {
	w := world.New(t, inventory)
	cfg := w.Config(prices + `  other: {table: inventory, key: "other:{item}", sync: none}
`)
	l, err := keymiss.New(cfg, w.Open(cfg), w.RC, world.Logger())
	if err != nil || l == nil {
		t.Fatalf("listener %v, %v", l, err)
	}
	// A window no run outlasts: more than one fill of a key below is the
	// listener's fault, not a slow machine's.
	l.Window = time.Hour
	defer testenv.Go(t, func(ctx context.Context) error { return l.Run(ctx, 4) })()

	// The listener subscribes asynchronously: miss until the fill lands.
	var v string
	if !world.Within(world.Patience, func() bool { var ok bool; v, ok = w.Get("price:apple"); return ok }) {
		t.Fatalf("price:apple never filled; stats: %d events, %d fills", l.Stats.Events.Load(), l.Stats.Filled.Load())
	}
	if v != "1.99" {
		t.Fatalf("price:apple = %q, want 1.99", v)
	}
	if n, _ := w.RC.Do(t.Context(), w.RC.B().ConfigGet().Parameter("notify-keyspace-events").Build()).AsStrMap(); !strings.Contains(n["notify-keyspace-events"], "m") {
		t.Fatalf("notify-keyspace-events = %q", n["notify-keyspace-events"])
	}

	// A missing row: the plain client keeps missing, the listener fills once
	// per window at most (its own reads miss too: no loop).
	filled, events := l.Stats.Filled.Load(), l.Stats.Events.Load()
	for i := range int64(20) {
		if _, ok := w.Get("price:kiwi"); ok {
			t.Fatal("price:kiwi has a value for a missing row")
		}
		w.Get("other:apple") // a cache without fill: on-miss
		// Each miss is handled before the next: a fill is done or under way.
		world.WaitFor(t, "the listener handles the misses", func() bool { return handled(l, events+2*(i+1)) })
	}
	// Until the listener has handled every event it had (its fills' too).
	if !world.Within(world.Patience, func() bool { return handled(l, events+40) }) {
		st := &l.Stats
		t.Fatalf("the listener did not handle the misses: %d events, %d fills, %d ignored, %d dropped", st.Events.Load(), st.Filled.Load(), st.Ignored.Load(), st.Dropped.Load())
	}
	if n := l.Stats.Filled.Load() - filled; n != 1 {
		t.Fatalf("%d fills for 20 misses of a missing row within the window, want 1", n)
	}
	if _, ok := w.Get("other:apple"); ok {
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
	for _, tc := range []struct {
		name  string
		every time.Duration // the listener's CheckEvery
		lose  func(w *world.World)
	}{
		{"redis restarted", time.Hour, func(w *world.World) {
			if err := w.Redis.Restart(); err != nil {
				w.T.Fatal(err)
			}
		}},
		{"config set", 20 * time.Millisecond, func(w *world.World) {
			w.Do(w.RC.B().ConfigSet().ParameterValue().ParameterValue("notify-keyspace-events", "").Build())
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := world.New(t, inventory)
			rc := w.RC
			cfg := w.Config(prices)
			api := w.Open(cfg)
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
				ctx := t.Context()
				var v string
				ok := world.Within(world.Patience, func() bool {
					// Errors are retried: a restarted Redis may not answer yet.
					if err := rc.Do(ctx, rc.B().Del().Key(key).Build()).Error(); err != nil {
						return false
					}
					if _, err := rc.Do(ctx, rc.B().Get().Key(key).Build()).ToString(); !rueidis.IsRedisNil(err) {
						t.Fatalf("GET %s right after DEL: %v", key, err)
					}
					// A miss lost (the events are not back yet) is missed
					// again after a while.
					return world.Within(500*time.Millisecond, func() bool {
						var err error
						v, err = rc.Do(ctx, rc.B().Get().Key(key).Build()).ToString()
						return err == nil
					})
				})
				if !ok {
					n, _ := rc.Do(ctx, rc.B().ConfigGet().Parameter("notify-keyspace-events").Build()).AsStrMap()
					t.Fatalf("%s never filled after a miss; %d events, %d fills; notify-keyspace-events %q",
						key, l.Stats.Events.Load(), l.Stats.Filled.Load(), n["notify-keyspace-events"])
				}
				if v != want {
					t.Fatalf("%s = %q, want %q", key, v, want)
				}
			}
			filled("price:apple", "1.99")
			if n := l.Stats.Notify.Reenabled.Load(); n != 0 {
				t.Fatalf("%d re-enables before the events were lost", n)
			}
			tc.lose(w)
			filled("price:pear", "2.49")

			if n := l.Stats.Notify.Reenabled.Load(); n != 1 {
				t.Errorf("%d re-enables counted, want 1", n)
			}
			warn := `level=WARN msg="notify-keyspace-events lost its flags; enabled again" component=keymiss redis=` + w.Redis.Addr
			if got := logs.Lines(warn); len(got) != 1 {
				t.Errorf("%d warnings %q, want 1; log:\n%s", len(got), warn, logs.String())
			}
			rec := httptest.NewRecorder()
			metrics.Handler(metrics.Sources{Config: cfg, Redis: rc, API: api, Keymiss: l}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			for _, want := range []string{`cachesync_keyspace_events_reenabled_total{feature="keymiss",target=""} 1`, `cachesync_keyspace_events_ok{feature="keymiss",target=""} 1`} {
				if !strings.Contains(rec.Body.String(), want+"\n") {
					t.Errorf("metrics lack %s", want)
				}
			}
		})
	}
}
