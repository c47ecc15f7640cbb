// Package world is the one test world above the servers of testenv: a
// package's PostgreSQL started once (Main), and for each test a database of
// its own with a schema, a Redis of its own (one node or a Cluster), a
// config from YAML, an engine, a change feed, the built binary, and waits
// on conditions. Every package's tests use it; under go test -short it
// starts nothing and the tests that need servers skip.
package world

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/changefeed"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/testenv"
)

// pg is the test binary's PostgreSQL, started by Main.
var pg *testenv.Postgres

// Main runs a package's tests with one private PostgreSQL started with
// opts, shared by every test (each has a database of its own), removes the
// binary the tests built (Binary), and exits with the tests' code:
// TestMain's body. Under -short it starts nothing.
func Main(m *testing.M, opts ...testenv.PostgresOption) {
	code := testenv.RunWithPostgres(m, &pg, opts...)
	RemoveBinary()
	os.Exit(code)
}

// Postgres returns the package's PostgreSQL, skipping the test under -short.
func Postgres(tb testing.TB) *testenv.Postgres {
	tb.Helper()
	testenv.NeedServers(tb)
	if pg == nil {
		tb.Fatal("world: no PostgreSQL: TestMain must call world.Main")
	}
	return pg
}

// Topologies are the Redis set-ups a test may run against: one node, and
// a Redis Cluster of three primaries (a key, its companions and its
// cache's records then live in different slots, and events come from each
// node).
var Topologies = []string{"single", "cluster"}

// EachTopology runs test once per topology, as subtests.
func EachTopology(t *testing.T, test func(t *testing.T, topology string)) {
	for _, topology := range Topologies {
		t.Run(topology, func(t *testing.T) { test(t, topology) })
	}
}

// World is one test's database and Redis.
type World struct {
	T     testing.TB       // the test the world belongs to
	Name  string           // the database's name, and the config's
	DB    *pgx.Conn        // a session on the database, closed when the test ends
	DBURL string           // the database's URL, the config's source db
	Redis *testenv.Redis   // the Redis node (of a Cluster, the first)
	Nodes []*testenv.Redis // every node: one, or a Cluster's primaries
	RC    rueidis.Client   // a client of Redis (a Cluster client on a Cluster)

	mu      sync.Mutex
	daemons []*Proc // started by Daemon
}

var seq atomic.Int64

// New is a world with a Redis node of its own, its database made by schema.
func New(tb testing.TB, schema string) *World {
	tb.Helper()
	return NewOn(tb, testenv.StartRedis(tb), schema)
}

// NewOn is a world on the Redis rds: a node of a testenv.Cluster makes
// every client of the world a Cluster client.
func NewOn(tb testing.TB, rds *testenv.Redis, schema string) *World {
	tb.Helper()
	return newWorld(tb, Postgres(tb), rds, schema)
}

// newWorld is a world on pg and rds. When the test ends, after what it
// started (cleanups run last first), the replication slots of the world's
// database are dropped: a PostgreSQL has room for a few dozen.
func newWorld(tb testing.TB, pg *testenv.Postgres, rds *testenv.Redis, schema string) *World {
	tb.Helper()
	w := &World{T: tb, Name: fmt.Sprintf("w%d", seq.Add(1)), Redis: rds, Nodes: []*testenv.Redis{rds}}
	w.DB, w.DBURL = pg.Database(tb, w.Name, schema)
	tb.Cleanup(w.dropSlots)
	w.RC = rds.Client(tb)
	return w
}

// NewTopology is a world on a Redis of topology ("single", or "cluster":
// three primaries).
func NewTopology(tb testing.TB, topology, schema string) *World {
	tb.Helper()
	nodes := startRedis(tb, topology)
	w := NewOn(tb, nodes[0], schema)
	w.Nodes = nodes
	return w
}

// startRedis starts the Redis nodes of topology: one, or a Cluster's three
// primaries.
func startRedis(tb testing.TB, topology string) []*testenv.Redis {
	tb.Helper()
	if topology == "cluster" {
		return testenv.StartCluster(tb, 3).Nodes
	}
	return []*testenv.Redis{testenv.StartRedis(tb)}
}

// dropSlots drops the replication slots of the world's database, waiting
// for the server to see their daemons gone; a server that is down (a test
// stopped it) keeps them.
func (w *World) dropSlots() {
	ctx, cancel := context.WithTimeout(context.Background(), Patience)
	defer cancel()
	conn, err := pgx.Connect(ctx, w.DBURL)
	if err != nil {
		w.T.Logf("replication slots of %s kept: %v", w.Name, err)
		return
	}
	defer conn.Close(context.Background())
	var left []string
	if !Within(Patience, func() bool {
		rows, err := conn.Query(ctx, `SELECT slot_name FROM pg_replication_slots WHERE database = current_database()`)
		if err == nil {
			left, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		for _, s := range left {
			_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, s) // fails while in use
		}
		return err == nil
	}) {
		w.T.Logf("replication slots of %s kept: %q still in use", w.Name, left)
	}
}

// Exec runs sql on the world's database.
func (w *World) Exec(sql string, args ...any) {
	w.T.Helper()
	if _, err := w.DB.Exec(context.Background(), sql, args...); err != nil {
		w.T.Fatalf("%s: %v", sql, err)
	}
}

// YAML is a whole config of the world named as it, with source db, whose
// caches section is caches (YAML, indented by 2).
func (w *World) YAML(caches string) string {
	return fmt.Sprintf("name: %s\nredis: {url: %q}\nsources:\n  db: {url: %q}\ncaches:\n%s", w.Name, w.Redis.URL(), w.DBURL, caches)
}

// Config loads the config YAML(caches) gives.
func (w *World) Config(caches string) *config.Config {
	w.T.Helper()
	cfg, err := config.Load(strings.NewReader(w.YAML(caches)))
	if err != nil {
		w.T.Fatal(err)
	}
	return cfg
}

// Open opens an engine of cfg, with opts[0] when given, closed when the
// test ends.
func (w *World) Open(cfg *config.Config, opts ...engine.Options) *engine.Engine {
	w.T.Helper()
	e, err := engine.Open(context.Background(), cfg, append(opts, engine.Options{})[0])
	if err != nil {
		w.T.Fatal(err)
	}
	w.T.Cleanup(e.Close)
	return e
}

// Feed is a change feed run by a test.
type Feed struct {
	*changefeed.Feed
	stop    func() error
	done    chan struct{} // closed once Run returned
	stopped atomic.Bool   // Stop returned Run's error to the test
	err     error         // what Run returned, once done is closed
}

// StartFeed runs the change feed of cfg's source db, changed by opts,
// until Stop or the test's end. The world's Redis is cfg's first target;
// the feed opens a client of each other target itself.
func (w *World) StartFeed(cfg *config.Config, opts ...func(*changefeed.Feed)) *Feed {
	w.T.Helper()
	f := &Feed{Feed: changefeed.New(cfg, "db", Logger(), w.Redis.Client(w.T)), done: make(chan struct{})}
	for _, o := range opts {
		o(f.Feed)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { f.err = f.Run(ctx); close(f.done) }()
	var once sync.Once
	f.stop = func() error {
		once.Do(cancel)
		select {
		case <-f.done:
			return f.err
		case <-time.After(Patience):
			return fmt.Errorf("the change feed did not stop within %v of its cancellation", Patience)
		}
	}
	w.T.Cleanup(func() {
		if err := f.stop(); err != nil && !errors.Is(err, context.Canceled) && !f.stopped.Load() {
			w.T.Errorf("change feed: %v", err)
		}
	})
	return f
}

// Ended tells whether the feed's Run returned.
func (f *Feed) Ended() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// Stop cancels the feed and returns what its Run returned, for the test to
// check (the test's end stops it too, and reports what Run returned unless
// Stop did); a feed that does not stop within Patience is an error.
func (f *Feed) Stop() error {
	f.stopped.Store(true)
	return f.stop()
}

// Feed runs the change feed of cfg like StartFeed and returns once it has
// built every cache: the feed owns them from then on. A feed that ends
// before fails the test at once.
func (w *World) Feed(cfg *config.Config, opts ...func(*changefeed.Feed)) *Feed {
	w.T.Helper()
	f := w.StartFeed(cfg, opts...)
	var ended bool
	WaitFor(w.T, "the change feed's first rebuild", func() bool {
		select {
		case <-f.done:
			ended = true
			return true
		default:
		}
		return f.Stats.Rebuilds.Load() >= int64(len(f.Caches))
	})
	if ended {
		w.T.Fatalf("the change feed ended before it built its caches: %v", f.err)
	}
	return f
}

// Get returns the string at key in Redis, and whether there is one.
func (w *World) Get(key string) (string, bool) {
	w.T.Helper()
	v, err := w.RC.Do(context.Background(), w.RC.B().Get().Key(key).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return "", false
	}
	if err != nil {
		w.T.Fatal(err)
	}
	return v, true
}

// Do runs cmd on Redis and fails the test on an error.
func (w *World) Do(cmd rueidis.Completed) rueidis.RedisResult {
	w.T.Helper()
	r := w.RC.Do(context.Background(), cmd)
	if err := r.Error(); err != nil && !rueidis.IsRedisNil(err) {
		w.T.Fatal(err)
	}
	return r
}

// Snapshot returns every key matching pattern but cachesync's own, on
// every primary, with its value: a string as it is, a hash as its sorted
// field=value pairs joined by spaces. A key that expires between the scan
// and the read is left out; any other error fails the test.
func (w *World) Snapshot(pattern string) map[string]string {
	w.T.Helper()
	ctx := context.Background()
	rc := w.RC
	out := map[string]string{}
	nodes := rc.Nodes()
	if rc.Mode() == rueidis.ClientModeCluster {
		// The primaries only: a Cluster client keeps a node a test killed
		// among its nodes, and retries a read of it without end; and every
		// one, also one the client has not learned of yet.
		var (
			done func()
			err  error
		)
		if nodes, done, err = testenv.SlotPrimaries(ctx, nodes); err != nil {
			w.T.Fatal(err)
		}
		defer done()
	}
	for _, node := range nodes {
		for cursor := uint64(0); ; {
			// (Bounded: a client retries a read of a node that is down
			// without end.)
			sctx, cancel := context.WithTimeout(ctx, Patience)
			entry, err := node.Do(sctx, rc.B().Scan().Cursor(cursor).Match(pattern).Count(1000).Build()).AsScanEntry()
			cancel()
			if err != nil {
				w.T.Fatal(err)
			}
			var keys []string
			var reads rueidis.Commands
			for _, k := range entry.Elements {
				if !strings.HasPrefix(k, binding.Reserved) {
					keys = append(keys, k)
					reads = append(reads, rc.B().Type().Key(k).Build(), rc.B().Get().Key(k).Build(), rc.B().Hgetall().Key(k).Build())
				}
			}
			res := rc.DoMulti(ctx, reads...) // by slot on a Cluster
			for i, k := range keys {
				typ, err := res[3*i].ToString()
				if err != nil {
					w.T.Fatalf("TYPE %s: %v", k, err)
				}
				switch typ {
				case "string":
					if v, err := res[3*i+1].ToString(); err == nil {
						out[k] = v
					} else if !rueidis.IsRedisNil(err) {
						w.T.Fatalf("GET %s: %v", k, err)
					}
				case "hash":
					m, err := res[3*i+2].AsStrMap()
					if err != nil {
						w.T.Fatalf("HGETALL %s: %v", k, err)
					}
					if len(m) == 0 {
						continue // expired since
					}
					var kv []string
					for f, v := range m {
						kv = append(kv, f+"="+v)
					}
					sort.Strings(kv)
					out[k] = strings.Join(kv, " ")
				}
			}
			if cursor = entry.Cursor; cursor == 0 {
				break
			}
		}
	}
	return out
}

// Rows runs a query of (key, value) text pairs: what a cache should hold.
func (w *World) Rows(sql string, args ...any) map[string]string {
	w.T.Helper()
	rows, err := w.DB.Query(context.Background(), sql, args...)
	if err != nil {
		w.T.Fatal(err)
	}
	out := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			w.T.Fatal(err)
		}
		out[k] = v
	}
	if err := rows.Err(); err != nil {
		w.T.Fatal(err)
	}
	return out
}

// WaitEqual waits until the keys matching pattern (Snapshot) are exactly
// want(), and fails with the difference if that does not happen within
// Patience, or at once if a daemon of the world exits on its own.
func (w *World) WaitEqual(pattern string, want func() map[string]string) {
	w.T.Helper()
	var d string
	ok := Within(Patience, func() bool {
		w.checkDaemons()
		d = Diff(want(), w.Snapshot(pattern))
		return d == ""
	})
	if !ok {
		w.T.Fatalf("redis %s differs from the database after %v:\n%s", pattern, Patience, d)
	}
}

// Diff describes how got differs from want (missing, extra and stale
// keys, the first ten), or is "" when they are equal.
func Diff(want, got map[string]string) string {
	keys := map[string]bool{}
	for k := range want {
		keys[k] = true
	}
	for k := range got {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	var b strings.Builder
	n := 0
	for _, k := range sorted {
		w, wok := want[k]
		g, gok := got[k]
		if wok == gok && w == g {
			continue
		}
		if n++; n > 10 {
			continue
		}
		switch {
		case !gok:
			fmt.Fprintf(&b, "  missing %s (want %s)\n", k, w)
		case !wok:
			fmt.Fprintf(&b, "  extra   %s = %s\n", k, g)
		default:
			fmt.Fprintf(&b, "  stale   %s = %s, want %s\n", k, g, w)
		}
	}
	if n > 10 {
		fmt.Fprintf(&b, "  ... %d differences in all\n", n)
	}
	return b.String()
}

// LockRows runs sql (a SELECT ... FOR UPDATE) in a transaction of a
// session of its own and returns the transaction, which holds the locks
// until committed or rolled back (or the test ends).
func (w *World) LockRows(sql string) pgx.Tx {
	w.T.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, w.DBURL)
	if err != nil {
		w.T.Fatal(err)
	}
	w.T.Cleanup(func() { conn.Close(ctx) })
	tx, err := conn.Begin(ctx)
	if err != nil {
		w.T.Fatal(err)
	}
	if _, err := tx.Exec(ctx, sql); err != nil {
		w.T.Fatal(err)
	}
	return tx
}

// WaitSession waits until a server session matches where (a condition on
// pg_stat_activity), read through conn, and returns its pid.
func WaitSession(tb testing.TB, conn *pgx.Conn, what, where string, args ...any) int {
	tb.Helper()
	var pid int
	WaitFor(tb, what, func() bool {
		err := conn.QueryRow(context.Background(), `SELECT pid FROM pg_stat_activity WHERE `+where+` LIMIT 1`, args...).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) {
			return false
		}
		if err != nil {
			tb.Fatal(err)
		}
		return true
	})
	return pid
}

// Patience bounds every wait of the world (testenv.Patience).
const Patience = testenv.Patience

// WaitFor waits until ok holds, failing the test after Patience.
func WaitFor(tb testing.TB, what string, ok func() bool) {
	tb.Helper()
	testenv.WaitFor(tb, what, ok)
}

// Within polls ok until it holds (true) or d has passed (false), as
// testenv.Within.
func Within(d time.Duration, ok func() bool) bool { return testenv.Within(d, ok) }

// Logger is a logger for what a test runs: silent, or to stderr at debug
// level under go test -v.
func Logger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
