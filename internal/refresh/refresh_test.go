package refresh_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/refresh"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

func TestMain(m *testing.M) { world.Main(m) }

// env is one test's world, with its config and API.
type env struct {
	*world.World
	cfg *config.Config
	api *engine.Engine
}

// newEnv is a world on a Redis of topology (on a Cluster's three
// primaries a key, its lease and its cache's expiry record live in
// different slots, and expired events come from each node), configured
// with caches (YAML) and an engine of them.
func newEnv(t *testing.T, topology, schema, caches string) *env {
	t.Helper()
	w := world.NewTopology(t, topology, schema)
	cfg := w.Config(caches)
	return &env{World: w, cfg: cfg, api: w.Open(cfg)}
}

// start runs a refresher, changed by set, until the returned stop is
// called (or the test ends).
func (e *env) start(set ...func(*refresh.Refresher)) (*refresh.Refresher, func()) {
	e.T.Helper()
	r, err := refresh.New(e.cfg, e.api, e.RC, world.Logger())
	if err != nil || r == nil {
		e.T.Fatalf("refresher %v, %v", r, err)
	}
	for _, f := range set {
		f(r)
	}
	return r, testenv.Go(e.T, r.Run)
}

// mget returns the values of keys ("" for a missing key) and how many were missing.
func (e *env) mget(keys []string) ([]string, int) {
	e.T.Helper()
	vals, err := rueidis.MGet(e.RC, context.Background(), keys) // by slot on a cluster
	if err != nil {
		e.T.Fatal(err)
	}
	out := make([]string, len(keys))
	missing := 0
	for i, k := range keys {
		m := vals[k]
		v, err := m.ToString()
		if err != nil {
			missing++
		}
		out[i] = v
	}
	return out, missing
}

// TestSeedScenario is the seed document's scenario, as redis-cli would
// drive it: the row (apple, 1.99) in the table, SET price:apple 1, EXPIRE
// price:apple 3; within a second after the expiry GET price:apple returns
// the database's value in the cache's format, with the cache's TTL.
func TestSeedScenario(t *testing.T) { world.EachTopology(t, testSeedScenario) }

func testSeedScenario(t *testing.T, topology string) {
	e := newEnv(t, topology, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2));
		INSERT INTO inventory VALUES ('apple', 1.99)`, `
  prices: {table: inventory, key: "price:{item}", value: {format: string, column: price}, ttl: 1h, sync: none, refresh: on-expiry}
  marked: {table: inventory, key: "marked:{item}", value: {format: string, column: price}, ttl: 1h, sync: none, refresh: on-expiry, not_found: negative, negative_ttl: 30s}
`)
	r, _ := e.start()
	// Wait until the refresher listens: it enables expired events first.
	world.WaitFor(t, "an expired event reaching the refresher", func() bool {
		if r.Stats.Events.Load() > 0 {
			return true
		}
		e.Do(e.RC.B().Set().Key("probe:x").Value("1").Px(time.Millisecond).Build())
		return false
	})

	e.Do(e.RC.B().Set().Key("price:apple").Value("1").Build())
	e.Do(e.RC.B().Expire().Key("price:apple").Seconds(3).Build())
	// Times on Redis' clock: when the key expires, and (from its new
	// expiry time and the cache's TTL of an hour) when the refresh wrote it.
	expireAt := func() int64 {
		at, err := e.RC.Do(t.Context(), e.RC.B().Pexpiretime().Key("price:apple").Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return at
	}
	expiry := expireAt()
	world.WaitFor(t, "price:apple reloaded after its expiry", func() bool {
		v, ok := e.Get("price:apple")
		if ok && v != "1" && v != "1.99" {
			t.Fatalf("price:apple = %q", v)
		}
		return ok && v == "1.99"
	})
	if late := expireAt() - time.Hour.Milliseconds() - expiry; late < 0 || late > 1000 {
		t.Fatalf("refreshed %d ms after the expiry, want within 1 s", late)
	}
	ttl, err := e.RC.Do(t.Context(), e.RC.B().Ttl().Key("price:apple").Build()).AsInt64()
	if err != nil || ttl < 3500 || ttl > 3600 {
		t.Fatalf("TTL %d (%v), want the cache's hour", ttl, err)
	}
	world.WaitCount(t, "refreshed keys", &r.Stats.Refreshed, 1)
	if n := r.Stats.Refreshed.Load(); n != 1 {
		t.Fatalf("refreshed %d keys, want 1", n)
	}

	// A key whose row is gone: deleted by default, marked with not_found: negative.
	ignored := r.Stats.Ignored.Load()
	e.Do(e.RC.B().Set().Key("price:pear").Value("1").Px(50 * time.Millisecond).Build())
	e.Do(e.RC.B().Set().Key("marked:pear").Value("1").Px(50 * time.Millisecond).Build())
	world.WaitCount(t, "keys found gone", &r.Stats.NotFound, 2)
	for _, k := range []string{"price:pear", "marked:pear"} {
		if v, ok := e.Get(k); ok {
			t.Errorf("%s = %q, want no key", k, v)
		}
	}
	if _, err := e.api.Get(t.Context(), "marked", "marked:pear"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("Get(marked:pear) error %v, want not found from the marker", err)
	}
	if n, _ := e.RC.Do(t.Context(), e.RC.B().Exists().Key(binding.CompanionsOf("marked:pear").Neg).Build()).AsInt64(); n != 1 {
		t.Error("no not-found marker for marked:pear")
	}
	if n, _ := e.RC.Do(t.Context(), e.RC.B().Exists().Key(binding.CompanionsOf("price:pear").Neg).Build()).AsInt64(); n != 0 {
		t.Error("a not-found marker for price:pear, whose cache deletes")
	}
	// Keys of no cache are ignored and counted.
	e.Do(e.RC.B().Set().Key("session:1").Value("x").Px(10 * time.Millisecond).Build())
	world.WaitCount(t, "expired keys of no cache counted as ignored", &r.Stats.Ignored, ignored+1)
}

// TestNothingMissed: 10,000 keys with 1 s TTLs are each refreshed (a
// change made in the table while they cycle reaches every one); the
// refresher stops, at least 5,000 keys expire meanwhile, and a new one
// repairs every key (the time it takes is logged: on an idle machine
// within a second or two; both cores busy, several).
func TestNothingMissed(t *testing.T) { world.EachTopology(t, testNothingMissed) }

func testNothingMissed(t *testing.T, topology string) {
	const n = 10_000
	e := newEnv(t, topology, fmt.Sprintf(`CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
		INSERT INTO t SELECT g, 0 FROM generate_series(1, %d) g`, n), `
  t: {table: t, key: "t:{id}", value: {format: string, column: v}, ttl: 1s, ttl_jitter: 20%, sync: none, refresh: on-expiry}
`)
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("t:%d", i+1)
	}
	for start := 0; start < n; start += 500 {
		// A 1 s TTL gives a fill 0.4 s of lease, which a busy machine may
		// outlast: keys that lost theirs are filled again.
		for filled := 0; filled < 500; {
			res, err := e.api.Reload(t.Context(), "t", keys[start:start+500], false)
			if err != nil {
				t.Fatalf("initial fill: %+v, %v", res, err)
			}
			filled = res.Written + res.Kept
		}
	}
	// waitAll waits until every key has been seen holding want (reading
	// those not seen so far), and returns how long that took.
	waitAll := func(want string) time.Duration {
		t.Helper()
		start, left := time.Now(), keys
		var vals []string // of left
		if !world.Within(world.Patience, func() bool {
			vals, _ = e.mget(left)
			var unseen, their []string
			for i, v := range vals {
				if v != want {
					unseen, their = append(unseen, left[i]), append(their, v)
				}
			}
			left, vals = unseen, their
			return len(left) == 0
		}) {
			for i, k := range left[:min(5, len(left))] { // say where the first few stand
				pttl, _ := e.RC.Do(context.Background(), e.RC.B().Pttl().Key(k).Build()).AsInt64()
				due, err := e.RC.Do(context.Background(), e.RC.B().Zscore().Key(binding.RecordKey("t")).Member(k).Build()).AsFloat64()
				t.Logf("%s = %q, PTTL %d ms, due in the record %v ms ago (%v)", k, vals[i], pttl, time.Now().UnixMilli()-int64(due), err)
			}
			t.Fatalf("%d of %d keys never held %q", len(left), n, want)
		}
		return time.Since(start)
	}

	r, stop := e.start()
	e.Exec(`UPDATE t SET v = 1`)
	cycled := waitAll("1") // each expired and was reloaded
	world.WaitCount(t, "refreshed keys", &r.Stats.Refreshed, n)
	stop()

	// Down: keys expire with nobody listening.
	var missing int
	if !world.Within(world.Patience, func() bool { _, missing = e.mget(keys); return missing >= n/2 }) {
		t.Fatalf("only %d keys expired", missing)
	}
	e.Exec(`UPDATE t SET v = 2`)
	r2, _ := e.start()
	repaired := waitAll("2")
	world.WaitCount(t, "repaired keys", &r2.Stats.Repaired, n/2)
	t.Logf("every key reloaded in %v, repaired in %v; first run refreshed %d, second run refreshed %d, repaired %d; mean delay %v",
		cycled.Round(time.Millisecond), repaired.Round(time.Millisecond), r.Stats.Refreshed.Load(), r2.Stats.Refreshed.Load(),
		r2.Stats.Repaired.Load(), r2.Stats.Delays.Mean())
}

// TestAheadNoMisses: with refresh: ahead, 8 readers hammering 1,000 keys
// with 4 s TTLs for 10 s never miss (reloaded after half the TTL: the
// other half, 2 s, leaves room for a machine busy with other work; with a
// 1 s TTL, both cores busy left a Cluster's keys unrenewed for over half a
// second); with a change feed the keys' TTLs are renewed (their values are
// the feed's), without one they are reloaded.
func TestAheadNoMisses(t *testing.T) { world.EachTopology(t, testAheadNoMisses) }

func testAheadNoMisses(t *testing.T, topology string) {
	for _, mode := range []string{"none", "changefeed"} {
		t.Run(mode, func(t *testing.T) {
			const n, ttl = 1000, 4 * time.Second
			e := newEnv(t, topology, fmt.Sprintf(`CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
				INSERT INTO t SELECT g, 0 FROM generate_series(1, %d) g`, n), fmt.Sprintf(`
  t: {table: t, key: "t:{id}", value: {format: string, column: v}, ttl: %s, sync: %s, refresh: ahead, refresh_ahead: 0.5}
`, ttl, mode))
			keys := make([]string, n)
			for i := range keys {
				keys[i] = fmt.Sprintf("t:%d", i+1)
			}
			// The initial fill: a short TTL gives fills a short lease (half
			// the TTL), which a busy machine may outlast; keys that lost
			// theirs are filled again (present ones are kept).
			for filled := 0; filled < n; {
				res, err := e.api.Reload(t.Context(), "t", keys, false)
				if err != nil {
					t.Fatalf("initial fill: %+v, %v", res, err)
				}
				filled = res.Written + res.Kept
			}
			r, _ := e.start()
			var reads, misses atomic.Int64
			var wg sync.WaitGroup
			end := time.Now().Add(10 * time.Second)
			for g := range 8 {
				wg.Go(func() {
					for i := g; time.Now().Before(end); i += 7 {
						_, err := e.RC.Do(context.Background(), e.RC.B().Get().Key(keys[i%n]).Build()).ToString()
						reads.Add(1)
						if rueidis.IsRedisNil(err) {
							misses.Add(1)
						} else if err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			if misses.Load() != 0 || reads.Load() < 10_000 {
				t.Fatalf("%d misses in %d reads", misses.Load(), reads.Load())
			}
			// No miss in 10 s of 4 s TTLs: each key was refreshed twice at least.
			if mode == "none" && r.Stats.Refreshed.Load() < 2*n {
				t.Errorf("reloaded %d keys in 10 s, want each about every 2 s", r.Stats.Refreshed.Load())
			}
			if mode == "changefeed" && r.Stats.Kept.Load() < 2*n {
				t.Errorf("renewed %d keys in 10 s, want each about every 2 s", r.Stats.Kept.Load())
			}
			// A refresh moves the key's record entry to its new expiry: none is
			// overdue by more than half the TTL (an entry written early on a
			// Cluster is moved at the next poll).
			overdue, err := e.RC.Do(t.Context(), e.RC.B().Zrange().Key(binding.RecordKey("t")).Min("-inf").
				Max(strconv.FormatInt(time.Now().Add(-ttl/2).UnixMilli(), 10)).Byscore().Build()).AsStrSlice()
			if err != nil || len(overdue) > 0 {
				t.Errorf("record entries overdue after refreshes: %d (%v)", len(overdue), err)
			}
			// Each key is due once per half TTL: about 5 reloads or renewals
			// in 10 s. Far more means a refresh did not move the key's record.
			if done := r.Stats.Refreshed.Load() + r.Stats.Kept.Load(); done > 40*n {
				t.Errorf("%d reloads and renewals of %d keys in 10 s: keys stay due after their refresh", done, n)
			}
			t.Logf("%d reads, %d misses; reloaded %d, renewed %d", reads.Load(), misses.Load(), r.Stats.Refreshed.Load(), r.Stats.Kept.Load())
		})
	}
}

// TestSchedule: cron entries reload a declared key and every row a SQL
// condition matches, overwriting what the keys held (no change feed), and
// leave other keys alone.
func TestSchedule(t *testing.T) { world.EachTopology(t, testSchedule) }

func testSchedule(t *testing.T, topology string) {
	e := newEnv(t, topology, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
		INSERT INTO t SELECT g, 0 FROM generate_series(1, 5) g`, `
  t:
    table: t
    key: "t:{id}"
    value: {format: string, column: v}
    ttl: 1h
    sync: none
    schedule:
      - {cron: "* * * * * *", keys: ["t:1"]}
      - {cron: "* * * * * *", where: "id BETWEEN 3 AND 4"}
`)
	keys := []string{"t:1", "t:2", "t:3", "t:4", "t:5"}
	if res, err := e.api.Reload(t.Context(), "t", keys, false); err != nil || res.Written != 5 {
		t.Fatalf("fill: %+v, %v", res, err)
	}
	r, _ := e.start()
	// Three changes, each reloaded by the schedule: a schedule that fired
	// once a minute (its seconds field ignored) could not reload all three
	// within the world's patience of a minute.
	for _, v := range []int{9, 10, 11} {
		e.Exec(`UPDATE t SET v = $1`, v)
		want := fmt.Sprintf("%d,0,%d,%d,0", v, v, v) // t:1 and t:3-4 reloaded
		var got string
		if !world.Within(world.Patience, func() bool { vals, _ := e.mget(keys); got = strings.Join(vals, ","); return got == want }) {
			t.Fatalf("values %s, want %s (t:1 and t:3-4 reloaded)", got, want)
		}
	}
	world.WaitCount(t, "scheduled reloads wrote", &r.Stats.Scheduled, 9) // counted once each reload returns
}

// TestEventsAfterRestart: a Redis (on a Cluster, the primary of the key)
// restarted without persistence comes back with notify-keyspace-events
// empty; the refresher's new subscription there enables expired events
// again, so a key a plain client sets to expire is reloaded on its expired
// event. (Such a key has
// no entry in the expiry record: only the event can bring it back.)
func TestEventsAfterRestart(t *testing.T) { world.EachTopology(t, testEventsAfterRestart) }

func testEventsAfterRestart(t *testing.T, topology string) {
	e := newEnv(t, topology, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2));
		INSERT INTO inventory SELECT 'i' || g, g FROM generate_series(1, 100) g`, `
  prices: {table: inventory, key: "price:{item}", value: {format: string, column: price}, ttl: 1h, sync: none, refresh: on-expiry}
`)
	// The key and the node it lives on: on a Cluster, a node other than
	// the one the client was given.
	node, key, want := e.Nodes[0], "price:i1", "1.00"
	if len(e.Nodes) > 1 {
		node = e.Nodes[1]
		nc := node.NodeClient(t)
		for i := 1; ; i++ {
			key, want = fmt.Sprintf("price:i%d", i), fmt.Sprintf("%d.00", i)
			// A node answers GET of its own keys only (MOVED for others).
			if err := nc.Do(t.Context(), nc.B().Get().Key(key).Build()).Error(); rueidis.IsRedisNil(err) {
				break
			}
			if i == 100 {
				t.Fatal("no key of the second node")
			}
		}
	}
	// Checks an hour apart: the resubscription after the restart checks.
	r, _ := e.start(func(r *refresh.Refresher) { r.CheckEvery = time.Hour })
	// expireOnce waits until expired events of the key's node reach the
	// refresher (a key of no cache in the key's slot, expired until one
	// does), then sets key to expire once and waits until it holds the
	// table's value again.
	// expire sets k to expire in px, false when it met a connection the
	// restart broke (the client retries reads on another, not writes).
	expire := func(k string, px time.Duration) bool {
		err := e.RC.Do(t.Context(), e.RC.B().Set().Key(k).Value("0").Px(px).Build()).Error()
		if _, ok := rueidis.IsRedisErr(err); ok {
			t.Fatal(err)
		}
		return err == nil
	}
	expireOnce := func() {
		t.Helper()
		events := r.Stats.Events.Load()
		world.WaitFor(t, "an expired event from the node of "+key, func() bool {
			if r.Stats.Events.Load() > events {
				return true
			}
			expire("{"+key+"}:probe", time.Millisecond)
			return false
		})
		world.WaitFor(t, key+" set to expire", func() bool { return expire(key, 20*time.Millisecond) })
		var v string
		var ok bool
		if !world.Within(world.Patience, func() bool { v, ok = e.Get(key); return ok && v == want }) {
			t.Fatalf("%s = %q (present %v), never reloaded: %d events, %d refreshed", key, v, ok, r.Stats.Events.Load(), r.Stats.Refreshed.Load())
		}
	}
	expireOnce()
	if err := node.Restart(); err != nil {
		t.Fatal(err)
	}
	if v, ok := e.Get(key); ok {
		t.Fatalf("%s = %q after a restart without persistence", key, v)
	}
	events, refreshed := r.Stats.Events.Load(), r.Stats.Refreshed.Load()
	expireOnce()
	// The key holds its value again; the counters move when the reload
	// returns, a moment later.
	world.WaitCount(t, "expired events received since the restart:", &r.Stats.Events, events+1)
	world.WaitCount(t, "keys refreshed since the restart:", &r.Stats.Refreshed, refreshed+1)
	if n := r.Stats.Notify.Reenabled.Load(); n != 1 {
		t.Errorf("%d re-enables of expired events counted, want 1", n)
	}
}
