package engine_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/changefeed"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

func TestMain(m *testing.M) {
	// pg_stat_statements counts the queries a stampede makes.
	world.Main(m, testenv.WithPostgresSettings("shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=all"))
}

// newEnv is a world of its own for a test, with pg_stat_statements.
func newEnv(t *testing.T, schema string) *world.World {
	t.Helper()
	return newEnvOn(t, testenv.StartRedis(t), schema)
}

// newEnvOn is newEnv on a given Redis: a node of a Redis Cluster makes
// every client of the test a cluster client.
func newEnvOn(t *testing.T, rds *testenv.Redis, schema string) *world.World {
	t.Helper()
	return world.NewOn(t, rds, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;\n"+schema)
}

// queries counts the statements run so far that read table by key.
func queries(e *world.World, table string) int64 {
	e.T.Helper()
	var n int64
	err := e.DB.QueryRow(context.Background(), `SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
		WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND query LIKE 'SELECT % FROM ' || $1 || ' t WHERE %'`, table).Scan(&n)
	if err != nil {
		e.T.Fatal(err)
	}
	return n
}

// stallCommits makes every commit wait for a synchronous standby that
// never answers: the commit is in the WAL (the change feed applies it), but
// other sessions cannot see it until its wait ends (or is cancelled), or
// the test ends. It returns once a probe's commit has stalled so, with a
// connection to the postgres database.
func stallCommits(t *testing.T) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	connect := func() *pgx.Conn {
		conn, err := pgx.Connect(ctx, world.Postgres(t).URL("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	// On a connection of its own each time: a broken one must not leave
	// every later commit of the package stalled.
	set := func(qs ...string) error {
		conn := connect()
		defer conn.Close(ctx)
		for _, q := range qs {
			if _, err := conn.Exec(ctx, q); err != nil {
				return err
			}
		}
		return nil
	}
	if err := set(`CREATE TABLE IF NOT EXISTS stall_probe (n int)`,
		`ALTER SYSTEM SET synchronous_standby_names = 'nosuch'`, `SELECT pg_reload_conf()`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := set(`ALTER SYSTEM RESET synchronous_standby_names`, `SELECT pg_reload_conf()`, `DROP TABLE IF EXISTS stall_probe`); err != nil {
			t.Error(err)
		}
	})
	admin := connect()
	t.Cleanup(func() { admin.Close(ctx) })
	// Commits stall once the server's processes have taken the setting, not
	// at once: a probe commits until its commit stalls, then is cancelled
	// (committed locally, it goes on with a warning).
	probe := connect()
	defer probe.Close(ctx)
	stalls := func() bool {
		done := make(chan error, 1)
		go func() {
			_, err := probe.Exec(ctx, `INSERT INTO stall_probe VALUES (1)`) // a commit that writes, so waits
			done <- err
		}()
		for {
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
				return false
			case <-time.After(2 * time.Millisecond):
			}
			var waiting bool
			if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep')`, probe.PgConn().PID()).Scan(&waiting); err != nil {
				t.Fatal(err)
			}
			if waiting {
				if _, err := admin.Exec(ctx, `SELECT pg_cancel_backend($1)`, probe.PgConn().PID()); err != nil {
					t.Fatal(err)
				}
				if err := <-done; err != nil {
					t.Fatal(err)
				}
				return true
			}
		}
	}
	world.WaitFor(t, "commits wait for the standby", stalls)
	return admin
}

// commitStalled runs sql on e.DB with every commit stalled (stallCommits)
// and returns once its commit waits for the standby: the commit is in the
// WAL, but other sessions cannot see it. release ends the wait (the
// commit, local by then, completes with a warning) and returns sql's
// error; admin is stallCommits' connection.
func commitStalled(t *testing.T, e *world.World, sql string) (admin *pgx.Conn, release func() error) {
	t.Helper()
	ctx := context.Background()
	admin = stallCommits(t)
	pid := e.DB.PgConn().PID()
	done := make(chan error, 1)
	go func() {
		_, err := e.DB.Exec(ctx, sql)
		done <- err
	}()
	world.WaitSession(t, admin, "the commit waits for the standby", `pid = $1 AND wait_event = 'SyncRep'`, pid)
	return admin, func() error {
		if _, err := admin.Exec(ctx, `SELECT pg_cancel_backend($1)`, pid); err != nil {
			t.Fatal(err)
		}
		return <-done
	}
}

// TestGet: a miss loads the row and fills Redis in the cache's format; a hit
// does not query; a hash comes back as a JSON object.
func TestGet(t *testing.T) {
	e := newEnv(t, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2), stock int);
		INSERT INTO inventory VALUES ('apple', 1.99, 5), ('pear', 2.50, NULL)`)
	c := e.Open(e.Config(`  prices: {table: inventory, key: "price:{item}", value: {columns: {item: item, price: price}}, ttl: 1m, sync: none}
  stock: {table: inventory, key: "stock:{item}", value: {format: hash, columns: [price, stock]}, sync: none}
  plain: {table: inventory, key: "p:{item}", value: {format: string, column: price}, sync: none}
`))
	ctx := context.Background()
	tests := []struct{ cache, key, want string }{
		{"prices", "price:apple", `{"item":"apple","price":1.99}`},
		{"stock", "stock:apple", `{"price":"1.99","stock":"5"}`},
		{"stock", "stock:pear", `{"price":"2.50"}`},
		{"plain", "p:pear", `2.50`},
	}
	for _, tt := range tests {
		for range 2 { // miss, then hit
			v, err := c.Get(ctx, tt.cache, tt.key)
			if err != nil || string(v) != tt.want {
				t.Fatalf("Get(%s, %s) = %s, %v; want %s", tt.cache, tt.key, v, err, tt.want)
			}
		}
	}
	if n := queries(e, "public.inventory"); n != 4 {
		t.Fatalf("%d queries for 4 misses and 4 hits, want 4", n)
	}
	if v, _ := e.Get("price:apple"); v != `{"item":"apple","price":1.99}` {
		t.Fatalf("redis price:apple = %q", v)
	}
	if ttl, _ := e.RC.Do(ctx, e.RC.B().Pttl().Key("price:apple").Build()).AsInt64(); ttl <= 0 || ttl > 60_000 {
		t.Fatalf("price:apple TTL %d ms, want (0, 60000]", ttl)
	}
	for _, tt := range []struct {
		cache, key string
		want       error
	}{
		{"nosuch", "price:apple", engine.ErrUnknownCache},
		{"prices", "cost:apple", engine.ErrBadKey},
		{"prices", "price:kiwi", engine.ErrNotFound},
	} {
		if _, err := c.Get(ctx, tt.cache, tt.key); !errors.Is(err, tt.want) {
			t.Errorf("Get(%s, %s) error %v, want %v", tt.cache, tt.key, err, tt.want)
		}
	}
}

// TestStampede: 1,000 concurrent Gets of one missing key make one query;
// so do two clients (each with its own connections and in-process
// deduplication) and two processes of 1,000 Gets each.
func TestStampede(t *testing.T) {
	e := newEnv(t, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2));
		INSERT INTO inventory SELECT 'item' || g, g FROM generate_series(1, 10) g`)
	cfg := e.Config(`  prices: {table: inventory, key: "price:{item}", sync: none}` + "\n")
	clients := []*engine.Engine{e.Open(cfg), e.Open(cfg)}
	stampede := func(key string, clients []*engine.Engine) {
		var wg sync.WaitGroup
		errs := make(chan error, 2000)
		start := make(chan struct{})
		for _, c := range clients {
			for range 1000 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					v, err := c.Get(context.Background(), "prices", key)
					if err == nil && !strings.Contains(string(v), `"price":`) {
						err = fmt.Errorf("value %s", v)
					}
					if err != nil {
						errs <- err
					}
				}()
			}
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	before := queries(e, "public.inventory")
	stampede("price:item1", clients[:1])
	if n := queries(e, "public.inventory") - before; n != 1 {
		t.Fatalf("1,000 concurrent misses made %d queries, want 1", n)
	}
	before = queries(e, "public.inventory")
	stampede("price:item2", clients)
	// The lease makes it one: whoever misses while another fills waits for
	// that fill, and whoever takes the lease after it reads the key again first.
	if n := queries(e, "public.inventory") - before; n != 1 {
		t.Fatalf("2 clients x 1,000 concurrent misses made %d queries, want 1 (at most 2 is the promise)", n)
	}

	// Two real processes (this test binary run again), 1,000 Gets each, let
	// go at the same moment.
	before = queries(e, "public.inventory")
	startAt := time.Now().Add(2 * time.Second).UnixNano()
	var procs []*exec.Cmd
	for range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStampedeChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s|%s|%s|price:item3|%d", stampedeChild, e.Name, e.Redis.URL(), e.DBURL, startAt))
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, cmd)
		t.Cleanup(func() {
			if t.Failed() {
				t.Log(out.String())
			}
		})
	}
	for _, cmd := range procs {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("stampede process: %v", err)
		}
	}
	if n := queries(e, "public.inventory") - before; n != 1 {
		t.Fatalf("2 processes x 1,000 concurrent misses made %d queries, want 1 (at most 2 is the promise)", n)
	}
}

// stampedeChild names the environment variable that makes this test binary
// a TestStampede child: "NAME|REDIS_URL|DATABASE_URL|KEY|START_UNIX_NANO".
const stampedeChild = "CACHESYNC_STAMPEDE_CHILD"

// TestStampedeChild is one process of TestStampede's cross-process storm;
// it does nothing in a normal run.
func TestStampedeChild(t *testing.T) {
	spec := os.Getenv(stampedeChild)
	if spec == "" {
		t.Skip("run by TestStampede")
	}
	f := strings.Split(spec, "|")
	cfg, err := config.Load(strings.NewReader(fmt.Sprintf("name: %s\nredis: {url: %q}\nsources:\n  db: {url: %q}\ncaches:\n  prices: {table: inventory, key: \"price:{item}\", sync: none}\n", f[0], f[1], f[2])))
	if err != nil {
		t.Fatal(err)
	}
	c, err := engine.Open(context.Background(), cfg, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var at int64
	fmt.Sscan(f[4], &at)
	time.Sleep(time.Until(time.Unix(0, at))) // the moment every process starts its misses, on purpose
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for range 1000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Get(context.Background(), "prices", f[3]); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestNegative: a missing row is remembered for negative_ttl, and a change
// feed insert of it ends that at once.
func TestNegative(t *testing.T) {
	e := newEnv(t, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2))`)
	cfg := e.Config(`  prices: {table: inventory, key: "price:{item}", negative_ttl: 1h}` + "\n")
	e.Feed(cfg)
	c := e.Open(cfg)
	ctx := context.Background()
	for range 3 {
		if _, err := c.Get(ctx, "prices", "price:kiwi"); !errors.Is(err, engine.ErrNotFound) {
			t.Fatalf("error %v, want ErrNotFound", err)
		}
	}
	if n := queries(e, "public.inventory"); n != 1 {
		t.Fatalf("%d queries for 3 Gets of a missing row, want 1", n)
	}
	if _, ok := e.Get("price:kiwi"); ok {
		t.Fatal("the key holds a value for a missing row; a marker belongs in a companion key")
	}
	e.Exec(`INSERT INTO inventory VALUES ('kiwi', 0.69)`)
	world.WaitFor(t, "Get of price:kiwi after the insert", func() bool {
		v, err := c.Get(ctx, "prices", "price:kiwi")
		return err == nil && string(v) == `{"item":"kiwi","price":0.69}`
	})
}

// TestFillLoses: a fill that read a row before a change writes nothing
// after it: not over the feed's update (the key exists again), not after the
// feed's insert of a row it found missing (the lease ended), not after an
// invalidation (the lease ended).
func TestFillLoses(t *testing.T) {
	e := newEnv(t, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2)); INSERT INTO inventory VALUES ('apple', 1.00)`)
	cfg := e.Config(`  prices: {table: inventory, key: "price:{item}", value: {format: string, column: price}}` + "\n")
	e.Feed(cfg)
	ctx := context.Background()
	b, err := binding.New(cfg.Caches["prices"].Spec(), []binding.Column{{Name: "item", TypeOID: 25}, {Name: "price", TypeOID: 1700}})
	if err != nil {
		t.Fatal(err)
	}
	rb := e.RC.B()
	waitKey := func(key, want string) {
		world.WaitFor(t, fmt.Sprintf("%s becomes %q", key, want), func() bool {
			v, ok := e.Get(key)
			return ok == (want != "") && v == want
		})
	}
	old := &binding.Value{Bytes: []byte("1.00")}
	for _, race := range []struct {
		name, key string
		read      *binding.Value // what the fill read: the old row, or nil (no row yet)
		do        func()
		after     string // the key afterwards
	}{
		{"feed update", "price:apple", old, func() {
			e.Exec(`UPDATE inventory SET price = 2.00 WHERE item = 'apple'`)
			waitKey("price:apple", "2.00")
		}, "2.00"},
		{"feed insert", "price:kiwi", nil, func() {
			e.Exec(`INSERT INTO inventory VALUES ('kiwi', 0.69)`)
			waitKey("price:kiwi", "0.69")
		}, "0.69"},
		{"invalidate", "price:apple", old, func() {
			if err := e.RC.Do(ctx, binding.InvalidateCmd(rb, "price:apple")).Error(); err != nil {
				t.Fatal(err)
			}
		}, ""},
		{"Invalidate's drop", "price:apple", old, func() {
			for _, r := range e.RC.DoMulti(ctx, b.AppendDrop(nil, rb, "price:apple")...) {
				if err := r.Error(); err != nil {
					t.Fatal(err)
				}
			}
		}, ""},
	} {
		// A miss: the key is not in Redis; a fill takes the lease and reads ...
		if err := e.RC.Do(ctx, binding.InvalidateCmd(rb, race.key)).Error(); err != nil {
			t.Fatal(err)
		}
		if err := e.RC.Do(ctx, binding.CompanionsOf(race.key).LeaseCmd(rb, "tok", time.Minute)).Error(); err != nil {
			t.Fatal(err)
		}
		// ... the change happens and lands ...
		race.do()
		// ... and the fill's write of what it read is refused.
		n, err := b.ExecFills(ctx, e.RC, "tok", []binding.Fill{b.Fill(race.key, race.read, false, true, time.Hour)}, time.Now())
		if err != nil || len(n) != 1 || n[0] != 0 {
			t.Fatalf("%s: the fill's write returned %v, %v; want [0]", race.name, n, err)
		}
		if v, _ := e.Get(race.key); v != race.after {
			t.Fatalf("%s: %s = %q after the fill, want %q", race.name, race.key, v, race.after)
		}
		if neg, _ := e.RC.Do(ctx, rb.Exists().Key(binding.CompanionsOf(race.key).Neg).Build()).AsInt64(); neg != 0 {
			t.Fatalf("%s: a not-found marker was left", race.name)
		}
	}
}

// TestPut: write-through reads its own write at once, through the change
// feed or, without one, by invalidating the key.
func TestPut(t *testing.T) {
	e := newEnv(t, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2), note text);
		CREATE TABLE plain (item text PRIMARY KEY, price numeric(6,2))`)
	cfg := e.Config(`  prices: {table: inventory, key: "price:{item}", value: {columns: [item, price]}}
  plain: {table: plain, key: "plain:{item}", value: {columns: [item, price]}, sync: none}
`)
	e.Feed(cfg)
	c := e.Open(cfg)
	ctx := context.Background()
	for _, cache := range []string{"prices", "plain"} {
		for i, price := range []string{"1.10", "2.20", "3.30"} {
			start := time.Now()
			key, err := c.Put(ctx, cache, map[string]any{"item": "apple", "price": price})
			if err != nil {
				t.Fatalf("%s: Put #%d: %v", cache, i, err)
			}
			took := time.Since(start)
			want := fmt.Sprintf(`{"item":"apple","price":%s}`, price)
			v, err := c.Get(ctx, cache, key)
			if err != nil || string(v) != want {
				t.Fatalf("%s: Get after Put #%d (took %s) = %s, %v; want %s", cache, i, took, v, err, want)
			}
		}
	}
	if _, err := c.Put(ctx, "prices", map[string]any{"price": 1}); err == nil || !strings.Contains(err.Error(), `key column "item"`) {
		t.Fatalf("Put without the key column: %v", err)
	}
	if _, err := c.Put(ctx, "prices", map[string]any{"item": nil, "price": 1}); !errors.Is(err, engine.ErrBadRow) {
		t.Fatalf("Put with a NULL key column: %v, want ErrBadRow", err)
	}
	if _, err := c.Put(ctx, "prices", map[string]any{"item": "x", "colour": "red"}); err == nil || !strings.Contains(err.Error(), `no column "colour"`) {
		t.Fatalf("Put with an unknown column: %v", err)
	}
}

// TestPutCancelledWhileCommitting: a Put whose caller gives up, or whose
// session PostgreSQL terminates, while PostgreSQL commits it (the commit
// waits for a synchronous standby that never answers; it is in the WAL
// already) fails, yet the row is written. On a cache without a feed the Put
// must still invalidate the key, or Redis keeps the older value for good
// (DESIGN invariant 2).
func TestPutCancelledWhileCommitting(t *testing.T) {
	for _, via := range []string{"cancelled", "terminated"} {
		t.Run(via, func(t *testing.T) {
			e := newEnv(t, `CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL); INSERT INTO t VALUES (1, 'old')`)
			cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {format: string, column: v}, sync: none}` + "\n")
			ctx := context.Background()
			admin := stallCommits(t)
			c := e.Open(cfg)
			if err := e.RC.Do(ctx, e.RC.B().Set().Key("t:1").Value("old").Build()).Error(); err != nil {
				t.Fatal(err)
			}
			putCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			put := make(chan error, 1)
			go func() {
				_, err := c.Put(putCtx, "t", map[string]any{"id": 1, "v": "new"})
				put <- err
			}()
			pid := world.WaitSession(t, admin, "the Put's commit waits for the standby", `datname = $1 AND wait_event = 'SyncRep'`, e.Name)
			// Either ends the commit's wait for the standby: it completes
			// and shows.
			if via == "cancelled" {
				cancel() // pgx sends a cancel request
			} else if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
				t.Fatal(err)
			}
			if err := <-put; err == nil {
				t.Fatalf("Put %s while committing returned no error", via)
			}
			world.WaitFor(t, "the row reads new", func() bool {
				var v string
				if err := e.DB.QueryRow(ctx, `SELECT v FROM t WHERE id = 1`).Scan(&v); err != nil {
					t.Fatal(err)
				}
				return v == "new"
			})
			if v, ok := e.Get("t:1"); ok {
				t.Fatalf("t:1 = %q after a Put that committed: the older value was left", v)
			}
		})
	}
}

// TestReloadLoses: a refresh that read a row before a change writes
// nothing after it: not after the feed deleted the row (the lease ended,
// or the watched removal count moved, so no deleted row comes back), not
// over the feed's update, not after the feed inserted a row it found
// missing, not after an invalidation of a key it took to overwrite. Under
// leases and, on one Redis node, watched (binding/watch.go).
func TestReloadLoses(t *testing.T) {
	for _, c := range []struct {
		name, topology string
		watched        bool
	}{{"single", "single", false}, {"single watched", "single", true}, {"cluster", "cluster", false}} {
		t.Run(c.name, func(t *testing.T) { testReloadLoses(t, c.topology, c.watched) })
	}
}

// testReloadLoses is TestReloadLoses on one Redis node, or on a Redis
// Cluster, where the expiry record is written beside the scripts and may
// keep a key the refresh lost (reloaded for nothing later, as checked).
func testReloadLoses(t *testing.T, topology string, watched bool) {
	var rds *testenv.Redis
	if topology == "cluster" {
		rds = testenv.StartCluster(t, 3).Nodes[0]
	} else {
		rds = testenv.StartRedis(t)
	}
	e, c, b := pricesEnv(t, rds, "", true)
	ctx := context.Background()
	rb := e.RC.B()
	recorded := func(key string) bool {
		_, err := e.RC.Do(ctx, rb.Zscore().Key(binding.RecordKey("prices")).Member(key).Build()).AsFloat64()
		return err == nil
	}
	old := &binding.Value{Bytes: []byte("1.00")}
	for _, race := range []struct {
		name, key, action string
		read              *binding.Value // what the refresh read: the old row, or nil (no row)
		do                func()
		after             string // the key afterwards
		reloaded          string // the key after a later refresh, when after is ""
	}{
		{"feed delete", "price:pear", binding.ClaimRecord, old, func() {
			e.Exec(`DELETE FROM inventory WHERE item = 'pear'`)
			world.WaitFor(t, "the feed's delete", func() bool { return !recorded("price:pear") })
		}, "", ""},
		{"feed update", "price:apple", binding.ClaimRecord, old, func() {
			e.Exec(`UPDATE inventory SET price = 2.00 WHERE item = 'apple'`)
			world.WaitFor(t, "the feed's update", func() bool { v, _ := e.Get("price:apple"); return v == "2.00" })
		}, "2.00", ""},
		{"feed insert", "price:kiwi", binding.ClaimRecord, nil, func() {
			e.Exec(`INSERT INTO inventory VALUES ('kiwi', 0.69)`)
			world.WaitFor(t, "the feed's insert", func() bool { v, _ := e.Get("price:kiwi"); return v == "0.69" })
		}, "0.69", ""},
		{"invalidate", "price:apple", binding.ClaimLease, old, func() {
			for _, r := range e.RC.DoMulti(ctx, b.AppendInvalidate(nil, rb, "price:apple")...) {
				if err := r.Error(); err != nil {
					t.Fatal(err)
				}
			}
		}, "", "2.00"},
		{"Invalidate's drop", "price:apple", binding.ClaimLease, old, func() {
			for _, r := range e.RC.DoMulti(ctx, b.AppendDrop(nil, rb, "price:apple")...) {
				if err := r.Error(); err != nil {
					t.Fatal(err)
				}
			}
		}, "", "2.00"},
	} {
		// The key expired (or, to overwrite, is there); the refresh claims it ...
		if race.action == binding.ClaimRecord {
			e.RC.Do(ctx, rb.Del().Key(race.key).Build())
		} else {
			e.RC.Do(ctx, rb.Set().Key(race.key).Value("1.00").Build())
		}
		want := binding.Claimed{Load: true, Present: race.action == binding.ClaimLease}
		fill := b.Fill(race.key, race.read, race.action == binding.ClaimLease, true, time.Hour)
		if watched {
			claimed, w, err := b.Watch(ctx, e.RC, []string{race.key}, race.action, time.Now())
			if err != nil || len(claimed) != 1 || claimed[0] != want {
				t.Fatalf("%s: watch %+v, %v; want %+v", race.name, claimed, err, want)
			}
			race.do()
			refused, err := w.Exec(ctx, []binding.Fill{fill}, []int{0})
			w.Close(ctx)
			if err != nil || len(refused) != 1 {
				t.Fatalf("%s: the refresh's write: refused %v, %v; want [0]", race.name, refused, err)
			}
		} else {
			claimed, err := b.ExecClaims(ctx, e.RC, []string{race.key}, race.action, "tok", time.Minute, time.Now(), time.Now())
			if err != nil || len(claimed) != 1 || claimed[0] != want {
				t.Fatalf("%s: claim %+v, %v; want %+v", race.name, claimed, err, want)
			}
			// ... the change happens and lands ...
			race.do()
			// ... and the refresh's write of what it read is refused.
			n, err := b.ExecFills(ctx, e.RC, "tok", []binding.Fill{fill}, time.Now())
			if err != nil || len(n) != 1 || n[0] != 0 {
				t.Fatalf("%s: the refresh's write returned %v, %v; want [0]", race.name, n, err)
			}
		}
		if v, _ := e.Get(race.key); v != race.after {
			t.Fatalf("%s: %s = %q after the refresh, want %q", race.name, race.key, v, race.after)
		}
		if neg, _ := e.RC.Do(ctx, rb.Exists().Key(binding.CompanionsOf(race.key).Neg).Build()).AsInt64(); neg != 0 {
			t.Fatalf("%s: a not-found marker was left", race.name)
		}
		if race.after == "" && topology == "single" && recorded(race.key) {
			t.Fatalf("%s: %s is still in the expiry record", race.name, race.key)
		}
		// A refresh later brings back the row as it is then, never the one
		// read before.
		if race.after == "" {
			if _, err := c.Reload(ctx, "prices", []string{race.key}, false); err != nil {
				t.Fatal(err)
			}
			if v, _ := e.Get(race.key); v != race.reloaded {
				t.Fatalf("%s: %s = %q after a later refresh, want %q", race.name, race.key, v, race.reloaded)
			}
		}
	}
}

// pricesEnv is a world on rds with the table inventory (apple and pear at
// 1.00) and the cache prices of it (string prices, TTL 1h, refresh on
// expiry, and the fields of extra), the change feed running if feed; it
// returns the world, an engine and the cache's binding.
func pricesEnv(t *testing.T, rds *testenv.Redis, extra string, feed bool) (*world.World, *engine.Engine, *binding.Binding) {
	t.Helper()
	e := newEnvOn(t, rds, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2));
		INSERT INTO inventory VALUES ('apple', 1.00), ('pear', 1.00)`)
	cfg := e.Config(`  prices: {table: inventory, key: "price:{item}", value: {format: string, column: price}, ttl: 1h, refresh: on-expiry` + extra + "}\n")
	if feed {
		e.Feed(cfg)
	}
	c := e.Open(cfg)
	b, err := binding.New(cfg.Caches["prices"].Spec(), []binding.Column{{Name: "item", TypeOID: 25}, {Name: "price", TypeOID: 1700}})
	if err != nil {
		t.Fatal(err)
	}
	return e, c, b
}

// TestReloadLightLoses: in a cache without a change feed, a watched reload
// of missing keys watches only the cache's removal count and looks at no
// key first (no OBJECT ENCODING, nor a WATCH of each key), and still writes
// nothing older than what it raced with: an invalidation (a Put's, after
// its commit) refuses it whole; a value another fill wrote meanwhile is
// kept (the key is told refused, and a later reload keeps it, its expiry
// recorded as it is); a row found gone removes nothing that is there.
func TestReloadLightLoses(t *testing.T) {
	e, c, b := pricesEnv(t, testenv.StartRedis(t), ", sync: none, not_found: negative", false)
	ctx := context.Background()
	rb := e.RC.B()
	record := binding.RecordKey("prices")
	score := func(key string) (float64, bool) {
		at, err := e.RC.Do(ctx, rb.Zscore().Key(record).Member(key).Build()).AsFloat64()
		return at, err == nil
	}
	neg := func(key string) bool {
		n, _ := e.RC.Do(ctx, rb.Exists().Key(binding.CompanionsOf(key).Neg).Build()).AsInt64()
		return n == 1
	}
	objectEncodings := func() string {
		info, err := e.RC.Do(ctx, rb.Info().Section("commandstats").Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(info, "\r\n") {
			if strings.HasPrefix(line, "cmdstat_object|encoding:") {
				return line
			}
		}
		return ""
	}
	old := &binding.Value{Bytes: []byte("1.00")}
	for _, race := range []struct {
		name, key string
		read      *binding.Value // what the reload read: the old row, or nil (no row)
		do        func()
		refused   bool
		after     string // the key afterwards ("": missing)
		reloaded  string // the key after a later reload
	}{
		{"none", "price:apple", old, func() {}, false, "1.00", "1.00"},
		{"no row, none", "price:kiwi", nil, func() {}, false, "", ""},
		{"Put", "price:apple", old, func() {
			if _, err := c.Put(ctx, "prices", map[string]any{"item": "apple", "price": "2.00"}); err != nil {
				t.Fatal(err)
			}
		}, true, "", "2.00"},
		{"another key's invalidation", "price:pear", old, func() {
			if err := c.Invalidate(ctx, "prices", "price:apple"); err != nil {
				t.Fatal(err)
			}
		}, true, "", "1.00"},
		{"another fill", "price:pear", old, func() {
			e.RC.Do(ctx, rb.Set().Key("price:pear").Value("1.50").Px(time.Hour).Build())
		}, true, "1.50", "1.50"},
		{"no row, another fill", "price:kiwi", nil, func() {
			e.RC.Do(ctx, rb.Set().Key("price:kiwi").Value("0.69").Px(time.Hour).Build())
		}, true, "0.69", "0.69"},
	} {
		// The key expired, its expiry recorded; the reload watches ...
		e.RC.Do(ctx, rb.Del().Key(race.key, binding.CompanionsOf(race.key).Neg).Build())
		e.RC.Do(ctx, rb.Zadd().Key(record).ScoreMember().ScoreMember(1, race.key).Build())
		if err := e.RC.Do(ctx, rb.ConfigResetstat().Build()).Error(); err != nil {
			t.Fatal(err)
		}
		claimed, w, err := b.Watch(ctx, e.RC, []string{race.key}, binding.ClaimRecord, time.Now())
		if err != nil || len(claimed) != 1 || claimed[0] != (binding.Claimed{Load: true}) {
			t.Fatalf("%s: watch %+v, %v; want the key to load", race.name, claimed, err)
		}
		if line := objectEncodings(); line != "" {
			t.Fatalf("%s: the watch looked at the key: %s", race.name, line)
		}
		// ... the change happens and lands ...
		race.do()
		// ... and the reload's write of what it read is refused.
		refused, err := w.Exec(ctx, []binding.Fill{b.Fill(race.key, race.read, false, true, time.Hour)}, []int{0})
		w.Close(ctx)
		if err != nil || (len(refused) == 1) != race.refused {
			t.Fatalf("%s: the reload's write: refused %v, %v; want refused %v", race.name, refused, err, race.refused)
		}
		if v, _ := e.Get(race.key); v != race.after {
			t.Fatalf("%s: %s = %q after the reload, want %q", race.name, race.key, v, race.after)
		}
		if got, want := neg(race.key), race.read == nil && race.after == ""; got != want {
			t.Fatalf("%s: not-found marker %v, want %v", race.name, got, want)
		}
		// A later reload brings back the row as it is then, or keeps a
		// key that is there, its expiry recorded as it is.
		if _, err := c.Reload(ctx, "prices", []string{race.key}, false); err != nil {
			t.Fatal(err)
		}
		if v, _ := e.Get(race.key); v != race.reloaded {
			t.Fatalf("%s: %s = %q after a later reload, want %q", race.name, race.key, v, race.reloaded)
		}
		at, recorded := score(race.key)
		if race.reloaded == "" {
			if recorded {
				t.Fatalf("%s: %s, gone, is still in the expiry record", race.name, race.key)
			}
			continue
		}
		pttl, err := e.RC.Do(ctx, rb.Pttl().Key(race.key).Build()).AsInt64()
		if err != nil || !recorded || math.Abs(at-float64(time.Now().UnixMilli()+pttl)) > 1500 {
			t.Fatalf("%s: %s recorded %v (at %.0f), expires in %d ms (%v)", race.name, race.key, recorded, at, pttl, err)
		}
	}
}

// TestReloadFallsBackToLeases: a key of a watched reload written while the
// reload reads its rows gets the reload's transaction refused; its keys are
// then reloaded under leases: the written key is kept, the others filled.
func TestReloadFallsBackToLeases(t *testing.T) {
	e := newEnv(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO t VALUES (1, 1), (2, 2)`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {format: string, column: v}, ttl: 1h, sync: none}` + "\n")
	c := e.Open(cfg)
	ctx := context.Background()
	// Row 2 locked: the reload's read (FOR SHARE) waits for it.
	tx := e.LockRows(`SELECT 1 FROM t WHERE id = 2 FOR UPDATE`)
	type result struct {
		r   engine.Reloaded
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := c.Reload(ctx, "t", []string{"t:1", "t:2"}, false)
		done <- result{r, err}
	}()
	world.WaitSession(t, e.DB, "the reload waits for the locked row", `datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%FOR SHARE%'`)
	// Meanwhile another writer fills t:1.
	if err := e.RC.Do(ctx, e.RC.B().Set().Key("t:1").Value("10").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if r := res.r; r.Written != 1 || r.Kept != 1 || r.Skipped != 0 || !slices.Equal(r.Wrote, []bool{false, true}) {
		t.Fatalf("reload: %+v, want t:2 written, t:1 kept", r)
	}
	for key, want := range map[string]string{"t:1": "10", "t:2": "2"} {
		if v, _ := e.Get(key); v != want {
			t.Fatalf("%s = %q, want %q", key, v, want)
		}
	}
}

// TestReloadPublishesNoKeymiss: a watched reload finds missing keys without
// the keymiss event a read of a missing key publishes, which would start a
// fill: on-miss of each beside the reload.
func TestReloadPublishesNoKeymiss(t *testing.T) {
	e := newEnv(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO t VALUES (1, 1)`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {format: string, column: v}, ttl: 1h, sync: none}` + "\n")
	c := e.Open(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rb := e.RC.B()
	if err := e.RC.Do(ctx, rb.ConfigSet().ParameterValue().ParameterValue("notify-keyspace-events", "Em").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	missed := make(chan string, 100)
	go e.RC.Receive(ctx, rb.Subscribe().Channel("__keyevent@0__:keymiss").Build(), func(m rueidis.PubSubMessage) {
		select {
		case missed <- m.Message:
		case <-ctx.Done(): // the test is over: nobody reads
		}
	})
	// until misses key and returns the keys missed before it (events come in
	// the order of the commands that cause them).
	until := func(key string) []string {
		e.RC.Do(ctx, rb.Get().Key(key).Build())
		var before []string
		for timeout := time.After(world.Patience); ; {
			select {
			case k := <-missed:
				if k == key {
					return before
				}
				before = append(before, k)
			case <-timeout:
				t.Fatalf("no keymiss event for %q", key)
			}
		}
	}
	// Miss keys until an event comes: the subscription is on; then drain.
	for n := 0; ; n++ {
		e.RC.Do(ctx, rb.Get().Key(fmt.Sprintf("probe%d", n)).Build())
		if n == 1000 {
			t.Fatal("no keymiss event for 1000 probes")
		}
		select {
		case <-missed:
		case <-time.After(10 * time.Millisecond):
			continue
		}
		break
	}
	until("ready")
	if r, err := c.Reload(ctx, "t", []string{"t:1", "t:2"}, false); err != nil || r.Written != 1 || r.NotFound != 1 {
		t.Fatalf("reload: %+v, %v", r, err)
	}
	if keys := until("after"); len(keys) > 0 {
		t.Fatalf("the reload published keymiss events for %q", keys)
	}
}

// TestKeyColumnTypes: keys over columns of types whose bare names mean
// something narrower (character is char(1), bit is bit(1)) or whose values
// print with their modifiers (numeric(6,2)) are found by the batched reads
// that reloads and consistency checks make (Reload, Want), and Put returns
// them as the change feed spells them.
func TestKeyColumnTypes(t *testing.T) {
	tests := []struct {
		typ, value, key string
		put             any // the key column's value, written by Put
	}{
		{"int", "7", "k0:7", 7},
		{"char(5)", "'ab'", "k1:ab   ", "ab"}, // as PostgreSQL prints it, and the change feed sends it
		{"varchar(3)", "'xy'", "k2:xy", "xy"},
		{"numeric(6,2)", "1.5", "k3:1.50", "1.5"},
		{"bit(3)", "B'101'", "k4:101", "101"},
	}
	var schema, caches strings.Builder
	for i, tt := range tests {
		fmt.Fprintf(&schema, "CREATE TABLE k%d (k %s PRIMARY KEY, v text); INSERT INTO k%d VALUES (%s, 'v%d');\n", i, tt.typ, i, tt.value, i)
		fmt.Fprintf(&caches, "  k%d: {table: k%d, key: \"k%d:{k}\", value: {format: string, column: v}, sync: none}\n", i, i, i)
	}
	e := newEnv(t, schema.String())
	c := e.Open(e.Config(caches.String()))
	ctx := context.Background()
	for i, tt := range tests {
		t.Run(tt.typ, func(t *testing.T) {
			name, want := fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i)
			got, err := c.Want(ctx, name, []string{tt.key}, false)
			if err != nil || string(got[0]) != want {
				t.Fatalf("Want %s = %q, %v; want %q", tt.key, got[0], err, want)
			}
			before := queries(e, fmt.Sprintf("public.k%d", i))
			r, err := c.Reload(ctx, name, []string{tt.key}, false)
			if err != nil || r.Written != 1 {
				t.Fatalf("Reload %s: %+v, %v", tt.key, r, err)
			}
			if n := queries(e, fmt.Sprintf("public.k%d", i)) - before; n != 1 {
				t.Fatalf("Reload %s: %d queries, want the one batched read", tt.key, n)
			}
			if v, ok := e.Get(tt.key); !ok || v != want {
				t.Fatalf("%s = %q (present %v), want %q", tt.key, v, ok, want)
			}
			if key, err := c.Put(ctx, name, map[string]any{"k": tt.put, "v": "new"}); err != nil || key != tt.key {
				t.Fatalf("Put: key %q, %v; want %q", key, err, tt.key)
			}
			if _, ok := e.Get(tt.key); ok {
				t.Fatalf("%s still cached after Put", tt.key)
			}
		})
	}
}

// TestReloadHashOfNulls: a row whose value columns are all NULL makes an
// empty hash, which Redis cannot hold: a reload removes its key and its
// expiry record entry (as the feed does) rather than leaving the key due.
func TestReloadHashOfNulls(t *testing.T) {
	e := newEnv(t, `CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, NULL)`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {format: hash, columns: [v]}, ttl: 1h, sync: none, refresh: on-expiry, not_found: negative}` + "\n")
	c := e.Open(cfg)
	ctx := context.Background()
	record := binding.RecordKey("t")
	if err := e.RC.Do(ctx, e.RC.B().Zadd().Key(record).ScoreMember().ScoreMember(1, "t:1").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	r, err := c.Reload(ctx, "t", []string{"t:1"}, false)
	if err != nil || r.NotFound != 1 || r.Written != 0 {
		t.Fatalf("reload: %+v, %v; want t:1 removed", r, err)
	}
	for _, k := range []string{"t:1", binding.CompanionsOf("t:1").Neg} {
		if n, _ := e.RC.Do(ctx, e.RC.B().Exists().Key(k).Build()).AsInt64(); n != 0 {
			t.Fatalf("%s exists after the reload", k)
		}
	}
	if _, err := e.RC.Do(ctx, e.RC.B().Zscore().Key(record).Member("t:1").Build()).AsFloat64(); !rueidis.IsRedisNil(err) {
		t.Fatalf("t:1 is still in the expiry record (%v)", err)
	}
}

// TestFillAfterInvisibleDelete: a DELETE's commit is in the WAL, so the
// change feed has applied it (the key and its lease are gone), but other
// sessions cannot see it yet: it waits for a synchronous standby that never
// answers. A fill then (Get's, and a refresh's Reload) must not write the
// row back: it reads FOR SHARE, which waits for the deleting transaction,
// then finds no row (DESIGN's visibility trap, for fills).
func TestFillAfterInvisibleDelete(t *testing.T) {
	for _, via := range []string{"get", "reload"} {
		t.Run(via, func(t *testing.T) {
			e := newEnv(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO t SELECT g, g FROM generate_series(1, 10) g`)
			cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {format: string, column: v}}` + "\n")
			e.Feed(cfg)
			c := e.Open(cfg)
			ctx := context.Background()
			// Every commit now waits for the standby, the fill's too (a FOR
			// SHARE read takes locks): loads commit without waiting.
			admin, release := commitStalled(t, e, `DELETE FROM t WHERE id = 5`)
			world.WaitFor(t, "the feed applies the delete", func() bool { _, ok := e.Get("t:5"); return !ok })
			filled := make(chan error, 1)
			go func() {
				if via == "get" {
					_, err := c.Get(context.Background(), "t", "t:5")
					filled <- err
					return
				}
				_, err := c.Reload(context.Background(), "t", []string{"t:5"}, false)
				filled <- err
			}()
			// The fill waits FOR SHARE for the deleting transaction (a
			// plain read would not wait, and would write the row back).
			world.WaitSession(t, admin, "the fill waits for the deleting transaction", `datname = $1 AND wait_event_type = 'Lock' AND query LIKE '%FOR SHARE%'`, e.Name)
			release()
			err := <-filled
			if via == "get" && !errors.Is(err, engine.ErrNotFound) {
				t.Fatalf("Get after the delete: %v, want not found", err)
			}
			if via == "reload" && err != nil {
				t.Fatal(err)
			}
			var rows int
			if err := e.DB.QueryRow(ctx, `SELECT count(*) FROM t WHERE id = 5`).Scan(&rows); err != nil || rows != 0 {
				t.Fatalf("row 5: %d rows, %v; the delete should have committed", rows, err)
			}
			if v, ok := e.Get("t:5"); ok {
				t.Fatalf("t:5 = %q: the fill wrote back a deleted row", v)
			}
		})
	}
}

// TestFillAfterInvisibleInsert: an INSERT's commit is in the WAL, so the
// change feed has written the key, but other sessions cannot see the row
// yet (its commit waits for a synchronous standby that never answers). An
// invalidation then removes the key, and a fill reads no row: FOR SHARE
// waits only for a row it sees. That fill (Invalidate's own reload of a
// complete cache, a Get's, a refresh's Reload, watched or under leases) must
// not mark the key "not found": the feed will not write the row again, and
// the marker would stand for negative_ttl over a row that exists.
func TestFillAfterInvisibleInsert(t *testing.T) {
	for _, c := range []struct {
		name, cache string
		fill        func(c *engine.Engine) error
	}{
		{"invalidate", `{table: t, key: "t:{id}", value: {format: string, column: v}, negative_ttl: 1h}`, nil}, // complete: Invalidate fills at once
		{"get", `{table: t, key: "t:{id}", value: {format: string, column: v}, negative_ttl: 1h, ttl: 1h}`, func(c *engine.Engine) error {
			if v, err := c.Get(context.Background(), "t", "t:5"); !errors.Is(err, engine.ErrNotFound) {
				return fmt.Errorf("Get t:5 while the insert cannot be seen = %q, %v; want not found, as its read saw it", v, err)
			}
			return nil
		}},
		{"reload", `{table: t, key: "t:{id}", value: {format: string, column: v}, negative_ttl: 1h, ttl: 1h, not_found: negative}`, func(c *engine.Engine) error {
			_, err := c.Reload(context.Background(), "t", []string{"t:5"}, false) // watched
			return err
		}},
		{"reload under leases", `{table: t, key: "t:{id}", value: {format: string, column: v}, negative_ttl: 1h, ttl: 1h, not_found: negative, writes: behind}`, func(c *engine.Engine) error {
			_, err := c.Reload(context.Background(), "t", []string{"t:5"}, false)
			return err
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO t SELECT g, g FROM generate_series(1, 10) g`)
			cfg := e.Config("  t: " + c.cache + "\n")
			e.Feed(cfg)
			eng := e.Open(cfg)
			ctx := context.Background()
			e.Exec(`DELETE FROM t WHERE id = 5`)
			world.WaitFor(t, "the feed applies the delete", func() bool { _, ok := e.Get("t:5"); return !ok })
			_, release := commitStalled(t, e, `INSERT INTO t VALUES (5, 55)`)
			world.WaitFor(t, "the feed applies the insert", func() bool { v, ok := e.Get("t:5"); return ok && v == "55" })
			if err := eng.Invalidate(ctx, "t", "t:5"); err != nil {
				t.Fatal(err)
			}
			if c.fill != nil {
				if err := c.fill(eng); err != nil {
					t.Fatal(err)
				}
			}
			if v, ok := e.Get("t:5"); ok {
				t.Fatalf("t:5 = %q while the insert cannot be seen: the fill found the row, and the race was not played", v)
			}
			if err := release(); err != nil {
				t.Fatal(err)
			}
			if v, err := eng.Get(ctx, "t", "t:5"); err != nil || string(v) != "55" {
				t.Fatalf("Get t:5 = %q, %v once the insert shows; the row is 55", v, err)
			}
			if v, ok := e.Get("t:5"); !ok || v != "55" {
				t.Fatalf("t:5 = %q, %v in Redis; the row is 55", v, ok)
			}
		})
	}
}

// TestFillBehindSlowWriter: a Get of a row an open transaction has locked
// answers, after the load's lock timeout, with the row as committed, and
// caches nothing (the writer's commit may reach the feed before a plain
// read sees it: a cached plain read could outlive the change); the row
// being written is not a database outage. Fills of other rows go on
// meanwhile.
func TestFillBehindSlowWriter(t *testing.T) {
	e := newEnv(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO t SELECT g, g FROM generate_series(1, 40) g`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {format: string, column: v}, sync: none}` + "\n")
	c := e.Open(cfg)
	ctx := context.Background()
	tx, err := e.DB.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `UPDATE t SET v = -v WHERE id <= 20`); err != nil { // held, uncommitted
		t.Fatal(err)
	}
	errs := make(chan error, 20)
	for id := 1; id <= 20; id++ { // more than the load pool's connections
		go func() {
			v, err := c.Get(ctx, "t", fmt.Sprintf("t:%d", id))
			if err == nil && string(v) != fmt.Sprint(id) {
				err = fmt.Errorf("t:%d = %s, want the committed %d", id, v, id)
			}
			errs <- err
		}()
	}
	start := time.Now()
	if v, err := c.Get(ctx, "t", "t:30"); err != nil || string(v) != "30" {
		t.Fatalf("Get of an unlocked row beside locked ones: %q, %v", v, err)
	}
	t.Logf("an unlocked row filled in %v beside 20 waiting fills", time.Since(start).Round(time.Millisecond))
	for range 20 {
		if err := <-errs; err != nil {
			t.Fatalf("Get of a locked row: %v, want the committed row", err)
		}
	}
	for id := 1; id <= 20; id++ {
		if v, ok := e.Get(fmt.Sprintf("t:%d", id)); ok {
			t.Errorf("t:%d was cached (%s) from a read around a writer's lock", id, v)
		}
	}
}

// TestCluster: on a Redis Cluster of three primaries the change feed
// writes, updates and deletes keys of string and hash caches (a key with a
// '}' but no hash tag among them), and Get, Put, Invalidate and Peek work.
func TestCluster(t *testing.T) {
	ctx := context.Background()
	e := newEnvOn(t, testenv.StartCluster(t, 3).Nodes[0], `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2));
		INSERT INTO inventory SELECT 'i' || g, g FROM generate_series(1, 200) g`)
	if e.RC.Mode() != rueidis.ClientModeCluster {
		t.Fatal("not a cluster client")
	}
	cfg := e.Config(`  prices: {table: inventory, key: "price:{item}", value: {format: string, column: price}, ttl: 1h, refresh: on-expiry}
  stock: {table: inventory, key: "stock:{item}", value: {format: hash, columns: [item, price]}, stale_while_revalidate: 10s}
`)
	e.Feed(cfg)
	c := e.Open(cfg)
	world.WaitFor(t, "the rebuild's keys", func() bool { v, _ := e.Get("price:i150"); return v == "150.00" })
	e.Exec(`UPDATE inventory SET price = price + 1 WHERE item IN ('i150', 'i151');
		DELETE FROM inventory WHERE item = 'i7';
		INSERT INTO inventory VALUES ('a}b', 1)`)
	world.WaitFor(t, "the update, delete and insert", func() bool {
		v, _ := e.Get("price:i150")
		_, gone := e.Get("price:i7")
		w, _ := e.Get("price:a}b")
		h, _ := e.RC.Do(ctx, e.RC.B().Hget().Key("stock:i151").Field("price").Build()).ToString()
		return v == "151.00" && !gone && w == "1.00" && h == "152.00"
	})
	// What check reads: keys of many slots in one call.
	peeked, err := c.Peek(ctx, "prices", []string{"price:i150", "price:i7", "price:a}b", "price:i2"})
	if err != nil || string(peeked[0]) != "151.00" || peeked[1] != nil || string(peeked[2]) != "1.00" || string(peeked[3]) != "2.00" {
		t.Fatalf("Peek = %q, %v", peeked, err)
	}
	if err := e.RC.Do(ctx, e.RC.B().Del().Key("stock:i9").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "stock", "stock:i9"); err != nil || string(v) != `{"item":"i9","price":"9.00"}` {
		t.Fatalf("Get stock:i9 (a fill) = %s, %v", v, err)
	}
	if _, err := c.Put(ctx, "prices", map[string]any{"item": "a}b", "price": 2}); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "prices", "price:a}b"); err != nil || string(v) != "2.00" {
		t.Fatalf("Get price:a}b after Put = %s, %v", v, err)
	}
	// stock is complete (a feed, no TTL): Invalidate loads the key again.
	if err := e.RC.Do(ctx, e.RC.B().Hset().Key("stock:i9").FieldValue().FieldValue("price", "0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := c.Invalidate(ctx, "stock", "stock:i9"); err != nil {
		t.Fatal(err)
	}
	if h, err := e.RC.Do(ctx, e.RC.B().Hgetall().Key("stock:i9").Build()).AsStrMap(); err != nil || h["price"] != "9.00" || h["item"] != "i9" {
		t.Fatalf("stock:i9 after Invalidate = %v, %v; want it loaded again", h, err)
	}
	if err := c.Invalidate(ctx, "prices", "price:i9"); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.Get("price:i9"); ok {
		t.Fatal("price:i9 (a cache with a TTL) still there after Invalidate")
	}
}

// TestFillWithoutUpdatePrivilege: a source role that may only SELECT cannot
// read FOR SHARE; fills (Get's and Reload's) still work, reading plainly,
// and the client says once, through its own logger, what that gives up.
func TestFillWithoutUpdatePrivilege(t *testing.T) {
	e := newEnv(t, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2));
		INSERT INTO inventory VALUES ('apple', 1.00), ('pear', 2.00), ('kiwi', 3.00)`)
	role := e.Name + "_reader"
	e.Exec(fmt.Sprintf(`CREATE ROLE %s LOGIN; GRANT SELECT ON inventory TO %s`, role, role))
	cfg := e.Config(`  prices: {table: inventory, key: "price:{item}", value: {format: string, column: price}, ttl: 1h, sync: none}` + "\n")
	src := cfg.Sources["db"]
	src.URL = strings.Replace(e.DBURL, "postgres@", role+"@", 1)
	cfg.Sources["db"] = src
	var logs bytes.Buffer
	c := e.Open(cfg, engine.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx := context.Background()
	for item, want := range map[string]string{"apple": "1.00", "pear": "2.00"} {
		if v, err := c.Get(ctx, "prices", "price:"+item); err != nil || string(v) != want {
			t.Fatalf("Get price:%s = %s, %v; want %s", item, v, err, want)
		}
	}
	if res, err := c.Reload(ctx, "prices", []string{"price:kiwi"}, false); err != nil || res.Written != 1 {
		t.Fatalf("Reload: %+v, %v", res, err)
	}
	if v, _ := e.Get("price:kiwi"); v != "3.00" {
		t.Fatalf("price:kiwi = %q after Reload", v)
	}
	if n := strings.Count(logs.String(), "may not read FOR SHARE"); n != 1 {
		t.Fatalf("%d warnings about FOR SHARE, want 1:\n%s", n, logs.String())
	}
}

// TestWaitAppliedAtPageBoundary: a commit that ends exactly where a WAL
// page begins. PostgreSQL reports the insert position there past the new
// page's header, while the change feed records the commit's end at the
// boundary: read-your-writes must not wait for more WAL to come.
func TestWaitAppliedAtPageBoundary(t *testing.T) {
	e := newEnv(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO t VALUES (1, 0)`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {format: string, column: v}}` + "\n")
	e.Feed(cfg)
	c := e.Open(cfg)
	ctx := context.Background()
	const page = 8192
	insert := func() uint64 {
		var s string
		if err := e.DB.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		lsn, err := pglogrepl.ParseLSN(s)
		if err != nil {
			t.Fatal(err)
		}
		return uint64(lsn)
	}
	// txn writes a transactional logical message of n bytes and an update
	// of row 1 in one transaction, and returns the WAL it took.
	txn := func(n int) uint64 {
		before := insert()
		tx, err := e.DB.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `SELECT pg_logical_emit_message(true, 'pad', repeat('x', $1))`, n); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `UPDATE t SET v = v + 1 WHERE id = 1`); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		return insert() - before
	}
	// The transaction's size grows by 8 bytes every 8 bytes of message:
	// find a size n0 right before a step (so size(n0 + 8k) = size(n0) + 8k),
	// among sizes that stay on one page.
	var n0 int
	var size0 uint64
	for attempt := 0; n0 == 0; attempt++ {
		if attempt > 20 {
			t.Fatal("no steady transaction size found")
		}
		sizes := make([]uint64, 9)
		for k := range sizes {
			sizes[k] = txn(400 + k)
		}
		for k := 0; k < 8; k++ {
			if sizes[k+1] == sizes[k]+8 && (k == 0 || sizes[k] == sizes[k-1]) {
				n0, size0 = 400+k, sizes[k]
			}
		}
	}
	hit := false
	for attempt := 0; attempt < 20 && !hit; attempt++ {
		p := insert()
		end := (p/page + 1) * page // the next page boundary
		// Too close to the boundary: cross into the next page first.
		if end-p < size0+64 {
			if _, err := e.DB.Exec(ctx, `SELECT pg_logical_emit_message(false, 'fill', repeat('x', 200))`); err != nil {
				t.Fatal(err)
			}
			continue
		}
		txn(n0 + int(end-p-size0))
		at := insert()
		hit = at == end+24 || at == end+40 // past the page header: short, or a segment's long one
	}
	if !hit {
		t.Fatal("could not end a commit at a page boundary")
	}
	target, err := c.WALPosition(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitApplied(ctx, "t", target, 5*time.Second); err != nil {
		t.Fatalf("a commit ending at a WAL page boundary (insert position %s): %v", pglogrepl.LSN(target), err)
	}
}

// TestPutAppliedAfterRebuild: a Put committed before the change feed's
// first rebuild of its cache (the daemon just started) must not report its
// write applied while the cache is being rebuilt: the state record already
// holds the slot's position then, but Redis does not hold the row yet.
func TestPutAppliedAfterRebuild(t *testing.T) {
	e := newEnv(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO t VALUES (1, 0)`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {format: string, column: v}}` + "\n")
	c := e.Open(cfg, engine.Options{WriteWait: 2 * time.Second})
	ctx := context.Background()
	if v, err := c.Get(ctx, "t", "t:1"); err != nil || string(v) != "0" {
		t.Fatalf("Get t:1 = %s, %v", v, err)
	}
	put := make(chan error, 1)
	go func() { _, err := c.Put(ctx, "t", map[string]any{"id": 1, "v": 9}); put <- err }()
	world.WaitFor(t, "the Put commits", func() bool {
		var v int
		return e.DB.QueryRow(ctx, `SELECT v FROM t WHERE id = 1`).Scan(&v) == nil && v == 9
	})
	// The feed starts, and holds its first rebuild once the cache's keys are cleared.
	rebuilding, release := make(chan struct{}, 1), make(chan struct{})
	f := changefeed.New(cfg, "db", slog.New(slog.NewTextHandler(io.Discard, nil)), e.RC)
	f.Progress = func(cache string, done, total int64) {
		if done == 0 {
			select {
			case rebuilding <- struct{}{}:
			default:
			}
			<-release
		}
	}
	testenv.Go(t, f.Run)
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	t.Cleanup(open) // before the feed is stopped
	<-rebuilding
	if err := <-put; err == nil {
		v, _ := e.Get("t:1")
		t.Fatalf("Put reported its write applied during the rebuild of its cache, and Redis holds t:1 = %q", v)
	} else if !errors.Is(err, engine.ErrNotApplied) {
		t.Fatal(err)
	}
	open()
	if _, err := c.Put(ctx, "t", map[string]any{"id": 1, "v": 10}); err != nil {
		t.Fatal(err)
	}
	if v, _ := e.Get("t:1"); v != "10" {
		t.Fatalf("after the rebuild, Put applied, Redis t:1 = %q", v)
	}
}
