package refresh_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/refresh"
	"github.com/cachesync/cachesync/internal/testenv"
)

var pg *testenv.Postgres

func TestMain(m *testing.M) { os.Exit(testenv.RunWithPostgres(m, &pg)) }

// env is one test's database, Redis, config, API client and refresher.
type env struct {
	t   *testing.T
	db  *pgx.Conn
	rc  rueidis.Client
	cfg *config.Config
	api *engine.Engine
	// nodes are the Redis servers: one, or the cluster's primaries.
	nodes []*testenv.Redis
}

var dbs atomic.Int64

// topologies are the Redis set-ups each test runs against: one node, and a
// Redis Cluster of three primaries (a key, its lease and its cache's expiry
// record then live in different slots, and expired events come from each
// node).
var topologies = []string{"single", "cluster"}

func newEnv(t *testing.T, topology, schema, caches string) *env {
	t.Helper()
	ctx := t.Context()
	name := fmt.Sprintf("refresh%d", dbs.Add(1))
	db, dbURL := pg.Database(t, name, schema)
	var url string
	var rc rueidis.Client
	var nodes []*testenv.Redis
	if topology == "cluster" {
		c := testenv.StartCluster(t, 3)
		url, rc, nodes = c.URL(), c.Client(t), c.Nodes
	} else {
		rds := testenv.StartRedis(t)
		url, rc, nodes = rds.URL(), rds.Client(t), []*testenv.Redis{rds}
	}
	cfg, err := config.Load(strings.NewReader(fmt.Sprintf("name: %s\nredis: {url: %q}\nsources: {db: {url: %q}}\ncaches:\n%s", name, url, dbURL, caches)))
	if err != nil {
		t.Fatal(err)
	}
	api, err := engine.Open(ctx, cfg, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(api.Close)
	return &env{t: t, db: db, rc: rc, cfg: cfg, api: api, nodes: nodes}
}

// start runs a refresher, changed by set, until the returned stop is
// called (or the test ends).
func (e *env) start(set ...func(*refresh.Refresher)) (*refresh.Refresher, func()) {
	e.t.Helper()
	r, err := refresh.New(e.cfg, e.api, e.rc, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil || r == nil {
		e.t.Fatalf("refresher %v, %v", r, err)
	}
	for _, f := range set {
		f(r)
	}
	return r, testenv.Go(e.t, r.Run)
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) get(key string) (string, bool) {
	e.t.Helper()
	v, err := e.rc.Do(context.Background(), e.rc.B().Get().Key(key).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return "", false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return v, true
}

func (e *env) do(cmd rueidis.Completed) {
	e.t.Helper()
	if err := e.rc.Do(context.Background(), cmd).Error(); err != nil {
		e.t.Fatal(err)
	}
}

// mget returns the values of keys ("" for a missing key) and how many were missing.
func (e *env) mget(keys []string) ([]string, int) {
	e.t.Helper()
	vals, err := rueidis.MGet(e.rc, context.Background(), keys) // by slot on a cluster
	if err != nil {
		e.t.Fatal(err)
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
func TestSeedScenario(t *testing.T) { eachTopology(t, testSeedScenario) }

func testSeedScenario(t *testing.T, topology string) {
	e := newEnv(t, topology, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2));
		INSERT INTO inventory VALUES ('apple', 1.99)`, `
  prices: {table: inventory, key: "price:{item}", value: {format: string, column: price}, ttl: 1h, sync: none, refresh: on-expiry}
  marked: {table: inventory, key: "marked:{item}", value: {format: string, column: price}, ttl: 1h, sync: none, refresh: on-expiry, not_found: negative, negative_ttl: 30s}
`)
	r, _ := e.start()
	// Wait until the refresher listens: it enables expired events first.
	deadline := time.Now().Add(10 * time.Second)
	for r.Stats.Events.Load() == 0 {
		e.do(e.rc.B().Set().Key("probe:x").Value("1").Px(time.Millisecond).Build())
		if time.Now().After(deadline) {
			t.Fatal("no expired event reached the refresher")
		}
		time.Sleep(20 * time.Millisecond)
	}

	e.do(e.rc.B().Set().Key("price:apple").Value("1").Build())
	e.do(e.rc.B().Expire().Key("price:apple").Seconds(3).Build())
	// Times on Redis' clock: when the key expires, and (from its new
	// expiry time and the cache's TTL of an hour) when the refresh wrote it.
	expireAt := func() int64 {
		at, err := e.rc.Do(t.Context(), e.rc.B().Pexpiretime().Key("price:apple").Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return at
	}
	expiry := expireAt()
	deadline = time.Now().Add(10 * time.Second)
	for {
		v, ok := e.get("price:apple")
		if ok && v == "1.99" {
			break
		}
		if ok && v != "1" {
			t.Fatalf("price:apple = %q", v)
		}
		if time.Now().After(deadline) {
			t.Fatalf("price:apple still %q (present %v) 7 s after its expiry", v, ok)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if late := expireAt() - time.Hour.Milliseconds() - expiry; late < 0 || late > 1000 {
		t.Fatalf("refreshed %d ms after the expiry, want within 1 s", late)
	}
	ttl, err := e.rc.Do(t.Context(), e.rc.B().Ttl().Key("price:apple").Build()).AsInt64()
	if err != nil || ttl < 3500 || ttl > 3600 {
		t.Fatalf("TTL %d (%v), want the cache's hour", ttl, err)
	}
	waitStat(t, "refreshed", &r.Stats.Refreshed, 1)
	if n := r.Stats.Refreshed.Load(); n != 1 {
		t.Fatalf("refreshed %d keys, want 1", n)
	}

	// A key whose row is gone: deleted by default, marked with not_found: negative.
	ignored := r.Stats.Ignored.Load()
	e.do(e.rc.B().Set().Key("price:pear").Value("1").Px(50 * time.Millisecond).Build())
	e.do(e.rc.B().Set().Key("marked:pear").Value("1").Px(50 * time.Millisecond).Build())
	for r.Stats.NotFound.Load() < 2 {
		if time.Since(deadline) > 20*time.Second {
			t.Fatalf("not-found count %d", r.Stats.NotFound.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, k := range []string{"price:pear", "marked:pear"} {
		if v, ok := e.get(k); ok {
			t.Errorf("%s = %q, want no key", k, v)
		}
	}
	if _, err := e.api.Get(t.Context(), "marked", "marked:pear"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("Get(marked:pear) error %v, want not found from the marker", err)
	}
	if n, _ := e.rc.Do(t.Context(), e.rc.B().Exists().Key("cachesync:neg:{marked:pear}").Build()).AsInt64(); n != 1 {
		t.Error("no not-found marker for marked:pear")
	}
	if n, _ := e.rc.Do(t.Context(), e.rc.B().Exists().Key("cachesync:neg:{price:pear}").Build()).AsInt64(); n != 0 {
		t.Error("a not-found marker for price:pear, whose cache deletes")
	}
	// Keys of no cache are ignored and counted.
	e.do(e.rc.B().Set().Key("session:1").Value("x").Px(10 * time.Millisecond).Build())
	for r.Stats.Ignored.Load() == ignored {
		if time.Since(deadline) > 20*time.Second {
			t.Fatal("an expired key of no cache was not counted as ignored")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNothingMissed: 10,000 keys with 1 s TTLs are each refreshed (a
// change made in the table while they cycle reaches every one); the
// refresher stops, at least 5,000 keys expire meanwhile, and a new one
// repairs every key (the time it takes is logged: on an idle machine
// within a second or two; both cores busy, several).
func TestNothingMissed(t *testing.T) { eachTopology(t, testNothingMissed) }

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
	// waitAll waits until every key has been seen holding want, and
	// returns how long that took (failing the test after a minute).
	waitAll := func(want string) time.Duration {
		t.Helper()
		seen := make([]bool, n)
		left := n
		start := time.Now()
		for left > 0 {
			vals, _ := e.mget(keys)
			for i, v := range vals {
				if !seen[i] && v == want {
					seen[i], left = true, left-1
				}
			}
			if left > 0 && time.Since(start) > time.Minute {
				shown := 0
				for i, v := range vals { // say where the first few stand
					if !seen[i] && shown < 5 {
						shown++
						pttl, _ := e.rc.Do(context.Background(), e.rc.B().Pttl().Key(keys[i]).Build()).AsInt64()
						due, err := e.rc.Do(context.Background(), e.rc.B().Zscore().Key(binding.RecordKey("t")).Member(keys[i]).Build()).AsFloat64()
						t.Logf("%s = %q, PTTL %d ms, due in the record %v ms ago (%v)", keys[i], v, pttl, time.Now().UnixMilli()-int64(due), err)
					}
				}
				t.Fatalf("%d of %d keys never held %q", left, n, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
		return time.Since(start)
	}

	r, stop := e.start()
	e.exec(`UPDATE t SET v = 1`)
	cycled := waitAll("1") // each expired and was reloaded
	waitStat(t, "refreshed", &r.Stats.Refreshed, n)
	stop()

	// Down: keys expire with nobody listening.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, missing := e.mget(keys)
		if missing >= n/2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d keys expired", missing)
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.exec(`UPDATE t SET v = 2`)
	r2, _ := e.start()
	repaired := waitAll("2")
	waitStat(t, "repaired", &r2.Stats.Repaired, n/2)
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
func TestAheadNoMisses(t *testing.T) { eachTopology(t, testAheadNoMisses) }

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
						_, err := e.rc.Do(context.Background(), e.rc.B().Get().Key(keys[i%n]).Build()).ToString()
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
			overdue, err := e.rc.Do(t.Context(), e.rc.B().Zrange().Key(binding.RecordKey("t")).Min("-inf").
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
func TestSchedule(t *testing.T) { eachTopology(t, testSchedule) }

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
	e.exec(`UPDATE t SET v = 9`)
	r, _ := e.start()
	deadline := time.Now().Add(5 * time.Second)
	for {
		vals, _ := e.mget(keys)
		if got := strings.Join(vals, ","); got == "9,0,9,9,0" {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("values %s, want 9,0,9,9,0 (t:1 and t:3-4 reloaded)", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for r.Stats.Scheduled.Load() < 3 { // counted once each reload returns
		if time.Now().After(deadline) {
			t.Fatalf("scheduled reloads wrote %d keys, want at least 3", r.Stats.Scheduled.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestEventsAfterRestart: a Redis (on a Cluster, the primary of the key)
// restarted without persistence comes back with notify-keyspace-events
// empty; the refresher's new subscription there enables expired events
// again, so a key a plain client sets to expire is reloaded on its expired
// event. (Such a key has
// no entry in the expiry record: only the event can bring it back.)
func TestEventsAfterRestart(t *testing.T) { eachTopology(t, testEventsAfterRestart) }

func testEventsAfterRestart(t *testing.T, topology string) {
	e := newEnv(t, topology, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2));
		INSERT INTO inventory SELECT 'i' || g, g FROM generate_series(1, 100) g`, `
  prices: {table: inventory, key: "price:{item}", value: {format: string, column: price}, ttl: 1h, sync: none, refresh: on-expiry}
`)
	// The key and the node it lives on: on a Cluster, a node other than
	// the one the client was given.
	node, key, want := e.nodes[0], "price:i1", "1.00"
	if len(e.nodes) > 1 {
		node = e.nodes[1]
		nc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{node.Addr}, ForceSingleClient: true, DisableCache: true})
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
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
	// expireOnce sets key to expire and waits until it holds the table's
	// value again, setting it anew whenever it expired unseen.
	expireOnce := func() {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			v, ok := e.get(key)
			if ok && v == want {
				return
			}
			if !ok {
				e.do(e.rc.B().Set().Key(key).Value("0").Px(20 * time.Millisecond).Build())
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s = %q (present %v), never reloaded: %d events, %d refreshed", key, v, ok, r.Stats.Events.Load(), r.Stats.Refreshed.Load())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	expireOnce()
	if err := node.Restart(); err != nil {
		t.Fatal(err)
	}
	if v, ok := e.get(key); ok {
		t.Fatalf("%s = %q after a restart without persistence", key, v)
	}
	events, refreshed := r.Stats.Events.Load(), r.Stats.Refreshed.Load()
	expireOnce()
	// The key holds its value again; the counters move when the reload
	// returns, a moment later.
	waitStat(t, "expired events since the restart: received", &r.Stats.Events, events+1)
	waitStat(t, "since the restart: refreshed", &r.Stats.Refreshed, refreshed+1)
	if n := r.Stats.Notify.Reenabled.Load(); n != 1 {
		t.Errorf("%d re-enables of expired events counted, want 1", n)
	}
}

// eachTopology runs test once per topology, as subtests.
func eachTopology(t *testing.T, test func(*testing.T, string)) {
	for _, topology := range topologies {
		t.Run(topology, func(t *testing.T) { test(t, topology) })
	}
}

// waitStat waits until a counter reaches want: counters move when a reload
// returns, a moment after its values are visible. (It fails the test after
// a minute.)
func waitStat(t *testing.T, what string, c *atomic.Int64, want int64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for c.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s %d keys, want at least %d", what, c.Load(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
