package drain_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// queueLen is the length of cache's write-behind stream: 0 once every
// entry was committed (or dead-lettered) and acknowledged.
func queueLen(e *world.World, cache string) int64 {
	e.T.Helper()
	n, err := e.RC.Do(context.Background(), e.RC.B().Xlen().Key(binding.StreamKey(cache)).Build()).AsInt64()
	if err != nil {
		e.T.Fatal(err)
	}
	return n
}

// waitDrained waits until cache's queue is empty.
func waitDrained(e *world.World, cache string) {
	e.T.Helper()
	world.WaitFor(e.T, "the write-behind queue of "+cache+" drains", func() bool { return queueLen(e, cache) == 0 })
}

// waitAcked waits until every entry of cache's queue was read and
// acknowledged (the group's lag and pending count are 0).
func waitAcked(e *world.World, cache string) {
	e.T.Helper()
	world.WaitFor(e.T, "every queued write is acknowledged", func() bool {
		groups, err := e.RC.Do(context.Background(), e.RC.B().XinfoGroups().Key(binding.StreamKey(cache)).Build()).ToArray()
		if err != nil {
			e.T.Fatal(err)
		}
		if len(groups) != 1 {
			return false
		}
		g, _ := groups[0].AsMap()
		p, l := g["pending"], g["lag"]
		pending, _ := p.AsInt64()
		lag, _ := l.AsInt64()
		return pending == 0 && lag == 0
	})
}

// deadLetters returns cache's dead-letter entries.
func deadLetters(e *world.World, cache string) []map[string]string {
	e.T.Helper()
	entries, err := e.RC.Do(context.Background(), e.RC.B().Xrange().Key(binding.DeadLetterKey(cache)).Start("-").End("+").Build()).AsXRange()
	if err != nil {
		e.T.Fatal(err)
	}
	out := make([]map[string]string, len(entries))
	for i, d := range entries {
		out[i] = d.FieldValues
	}
	return out
}

// putBehind queues row in cache through c.
func putBehind(t *testing.T, c *engine.Engine, cache string, row map[string]any) {
	t.Helper()
	if _, err := c.PutBehind(context.Background(), cache, row); err != nil {
		t.Fatal(err)
	}
}

// advisoryLockHolders returns the server processes holding an advisory
// lock in e's database.
func advisoryLockHolders(e *world.World) []int {
	e.T.Helper()
	rows, err := e.DB.Query(context.Background(), `SELECT pid FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
	if err != nil {
		e.T.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		e.T.Fatal(err)
	}
	return pids
}

// TestDrainFenced: two processes drain one queue; the first one's lock
// session ends (pg_terminate_backend). The second takes the lock, and the
// first must commit nothing more: in 300 rounds of three writes of one key,
// each round waiting for the queue to drain, the table must always end
// with the round's last write (DESIGN invariant 8).
func TestDrainFenced(t *testing.T) {
	e := world.New(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {columns: [id, v]}, sync: none, writes: behind}` + "\n")
	c1, c2 := e.Open(cfg), e.Open(cfg)
	runDrain(t, c1)
	var first []int
	world.WaitFor(t, "the first drainer takes its lock", func() bool { first = advisoryLockHolders(e); return len(first) == 1 })
	runDrain(t, c2)
	if _, err := e.DB.Exec(context.Background(), `SELECT pg_terminate_backend($1)`, first[0]); err != nil {
		t.Fatal(err)
	}
	world.WaitFor(t, "a drainer holds the lock again", func() bool {
		h := advisoryLockHolders(e)
		return len(h) == 1 && h[0] != first[0]
	})
	bad, example := 0, ""
	for round := range 300 {
		for i := 1; i <= 3; i++ {
			putBehind(t, []*engine.Engine{c1, c2}[i%2], "t", map[string]any{"id": 1, "v": 3*round + i})
		}
		waitAcked(e, "t")
		var v int
		if err := e.DB.QueryRow(context.Background(), `SELECT v FROM t WHERE id = 1`).Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v != 3*round+3 {
			bad++
			example = fmt.Sprintf("round %d: the table holds %d, the last write was %d", round, v, 3*round+3)
		}
	}
	if bad > 0 {
		t.Fatalf("%d of 300 rounds left an older write in the table, e.g. %s", bad, example)
	}
}

// TestDrainInOrder: the table ends as if every queued write had been
// applied alone, in order, and every write PostgreSQL refuses is
// dead-lettered; Redis ends with what a fill writes for the row.
func TestDrainInOrder(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []map[string]any
		want   string // the row (v, note) after the drain
		dead   []string
		cached string // Redis t:1 after the drain; "" for none
	}{
		{
			name:   "a later write of fewer columns",
			writes: []map[string]any{{"id": 1, "v": 1, "note": "new"}, {"id": 1, "v": 2}},
			want:   "2 new", cached: `{"id":1,"v":2}`,
		},
		{
			name:   "a valid write, then a refused one",
			writes: []map[string]any{{"id": 1, "v": 5}, {"id": 1, "v": -1}},
			want:   "5 old", dead: []string{`-1`}, cached: "",
		},
		{
			name:   "a refused write with a column, then a valid one without it",
			writes: []map[string]any{{"id": 1, "v": -1, "note": "lost"}, {"id": 1, "v": 7}},
			want:   "7 old", dead: []string{`-1`}, cached: `{"id":1,"v":7}`,
		},
		{
			name:   "writes of several keys, one refused",
			writes: []map[string]any{{"id": 1, "v": 3}, {"id": 2, "v": -2, "note": "x"}, {"id": 1, "v": 4, "note": "n"}, {"id": 2, "v": 9}},
			want:   "4 n", dead: []string{`-2`}, cached: `{"id":1,"v":4}`,
		},
		{
			// One by one, v=-1 would be refused and v=6 applied: the same
			// row. Superseded, v=-1 is never tried, so never dead-lettered.
			name:   "a refused write superseded by a later one of its key",
			writes: []map[string]any{{"id": 1, "v": -1}, {"id": 1, "v": 6}},
			want:   "6 old", cached: `{"id":1,"v":6}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := world.New(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL CHECK (v >= 0), note text);
				INSERT INTO t VALUES (1, 0, 'old')`)
			cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {columns: [id, v]}, sync: none, writes: behind}` + "\n")
			c := e.Open(cfg)
			for _, w := range tc.writes { // all queued before the drainer reads: one batch
				putBehind(t, c, "t", w)
			}
			runDrain(t, c)
			waitDrained(e, "t")
			var got string
			if err := e.DB.QueryRow(context.Background(), `SELECT v || ' ' || coalesce(note, '') FROM t WHERE id = 1`).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("row 1 is %q, want %q", got, tc.want)
			}
			var dead []string
			for _, d := range deadLetters(e, "t") {
				var row map[string]any
				if err := json.Unmarshal([]byte(d["row"]), &row); err != nil {
					t.Fatal(err)
				}
				dead = append(dead, fmt.Sprint(row["v"]))
			}
			if fmt.Sprint(dead) != fmt.Sprint(tc.dead) {
				t.Errorf("dead letters hold v %v, want %v", dead, tc.dead)
			}
			if cached, _ := e.Get("t:1"); cached != tc.cached {
				t.Errorf("Redis t:1 = %q, want %q", cached, tc.cached)
			}
		})
	}
}

// TestDeadLetterKeepsNewerWrite: with no change feed, a refused write is
// dead-lettered while a newer write of its key is queued. The key keeps
// the newer value; while that write is queued, a Get of the key (evicted
// meanwhile) answers it and caches nothing older; once it drains, Redis
// holds the row (DESIGN invariant 7).
func TestDeadLetterKeepsNewerWrite(t *testing.T) {
	e := world.New(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
		INSERT INTO t VALUES (1, 0);
		-- Each write waits for the advisory lock 1000 + v (the test holds
		-- some), then a negative v is refused.
		CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM pg_advisory_xact_lock(1000 + NEW.v);
			IF NEW.v < 0 THEN RAISE EXCEPTION 'v must not be negative' USING ERRCODE = 'check_violation'; END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER gate BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION gate()`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {columns: [id, v]}, sync: none, writes: behind}` + "\n")
	c := e.Open(cfg)
	ctx := context.Background()
	gate, err := pgx.Connect(ctx, e.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer gate.Close(ctx)
	if _, err := gate.Exec(ctx, `SELECT pg_advisory_lock(999), pg_advisory_lock(1005)`); err != nil {
		t.Fatal(err)
	}

	putBehind(t, c, "t", map[string]any{"id": 1, "v": -1})
	runDrain(t, c)
	world.WaitSession(t, e.DB, "the drainer waits at the gate", `wait_event = 'advisory' AND datname = current_database()`)
	putBehind(t, c, "t", map[string]any{"id": 1, "v": 5})
	if _, err := gate.Exec(ctx, `SELECT pg_advisory_unlock(999)`); err != nil {
		t.Fatal(err)
	}
	world.WaitFor(t, "v=-1 is dead-lettered", func() bool { return len(deadLetters(e, "t")) == 1 })
	if v, _ := e.Get("t:1"); v != `{"id":1,"v":5}` {
		t.Errorf("after the dead letter, Redis t:1 = %q, want the queued write v=5", v)
	}
	// Evicted while v=5 waits at the gate.
	if err := e.RC.Do(ctx, e.RC.B().Del().Key("t:1").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, "t", "t:1")
	if err != nil || string(got) != `{"id":1,"v":5}` {
		t.Errorf("Get while v=5 is queued = %s, %v; want the queued write", got, err)
	}
	if v, ok := e.Get("t:1"); ok && v != `{"id":1,"v":5}` {
		t.Errorf("while v=5 is queued, Redis t:1 = %q", v)
	}
	if _, err := gate.Exec(ctx, `SELECT pg_advisory_unlock(1005)`); err != nil {
		t.Fatal(err)
	}
	waitDrained(e, "t")
	var v int
	if err := e.DB.QueryRow(ctx, `SELECT v FROM t WHERE id = 1`).Scan(&v); err != nil || v != 5 {
		t.Fatalf("table v = %d (%v), want 5", v, err)
	}
	if got, ok := e.Get("t:1"); ok && got != `{"id":1,"v":5}` {
		t.Fatalf("quiesced: table v=5, Redis t:1 = %s", got)
	}
	if got, err := c.Get(ctx, "t", "t:1"); err != nil || string(got) != `{"id":1,"v":5}` {
		t.Fatalf("quiesced: Get = %s, %v; want v=5", got, err)
	}
}

// TestDrainTakeover50k: a drainer that crashed left 50,000 entries read
// and not acknowledged; the next one takes them all over and drains them.
func TestDrainTakeover50k(t *testing.T) {
	e := world.New(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {columns: [id, v]}, sync: none, writes: behind}` + "\n")
	c := e.Open(cfg)
	const total, keys = 50_000, 400
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for n := w; n < total; n += 8 {
				if _, err := c.PutBehind(context.Background(), "t", map[string]any{"id": n % keys, "v": n}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ctx := context.Background()
	stream := binding.StreamKey("t")
	if err := e.RC.Do(ctx, e.RC.B().XgroupCreate().Key(stream).Group("cachesync").Id("0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	read, err := e.RC.Do(ctx, e.RC.B().Xreadgroup().Group("cachesync", "crashed").Count(total).Streams().Key(stream).Id(">").Build()).AsXRead()
	if err != nil || len(read[stream]) != total {
		t.Fatalf("read %d, %v", len(read[stream]), err)
	}
	runDrain(t, c)
	want := map[int]string{}
	for id := range keys { // each key's last write: one writer writes each key (n % 8 is fixed for n % 400)
		want[id] = fmt.Sprint(total - keys + id)
	}
	waitRows(e, `SELECT id, v::text FROM t`, want)
	waitDrained(e, "t")
}

// TestPutBehindAsTheDatabaseStores: once drained, a write-behind key holds
// what a fill writes for its row, however PostgreSQL normalised the values,
// and write-behind takes the values write-through takes.
func TestPutBehindAsTheDatabaseStores(t *testing.T) {
	e := world.New(t, `CREATE TABLE t (id int PRIMARY KEY, price numeric(6,2), at timestamptz, ok boolean)`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {columns: [id, price, at, ok]}, sync: none, writes: behind}` + "\n")
	c := e.Open(cfg)
	putBehind(t, c, "t", map[string]any{"id": 1, "price": json.Number("2.5"), "at": "2026-01-02T03:04:05+05:30", "ok": "yes"})
	runDrain(t, c)
	waitDrained(e, "t")
	const want = `{"id":1,"price":2.50,"at":"2026-01-01T21:34:05Z","ok":true}`
	if got, _ := e.Get("t:1"); got != want {
		t.Errorf("drained: Redis t:1 = %s, want %s (as a fill writes it)", got, want)
	}
	if err := c.Invalidate(context.Background(), "t", "t:1"); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Get(context.Background(), "t", "t:1"); err != nil || string(got) != want {
		t.Errorf("a fill writes %s, %v; want %s", got, err, want)
	}
}

// TestWriteBehindTortureWithoutFeed: write-behind writes, Gets that fill,
// evictions (DEL from outside) and refused writes on 20 keys, with no
// change feed, for 10 s; once the queue is drained, every key in Redis
// holds its row as a fill writes it.
func TestWriteBehindTortureWithoutFeed(t *testing.T) {
	if testing.Short() {
		t.Skip("10 s torture test")
	}
	e := world.New(t, `CREATE TABLE t (id int PRIMARY KEY, v bigint NOT NULL CHECK (v >= 0));
		INSERT INTO t SELECT g, 0 FROM generate_series(1, 20) g`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {columns: [id, v]}, sync: none, writes: behind, ttl: 1h}` + "\n")
	clients := []*engine.Engine{e.Open(cfg), e.Open(cfg)}
	runDrain(t, clients[1])
	ctx := context.Background()
	key := func(r *rand.Rand) string { return fmt.Sprintf("t:%d", 1+r.IntN(20)) }
	var work []func(r *rand.Rand) error
	for _, c := range clients {
		work = append(work,
			func(r *rand.Rand) error { // writers behind, one in ten refused
				v := r.Int64N(1 << 40)
				if r.IntN(10) == 0 {
					v = -1
				}
				_, err := c.PutBehind(ctx, "t", map[string]any{"id": 1 + r.IntN(20), "v": v})
				return err
			},
			func(r *rand.Rand) error { // readers that fill
				_, err := c.Get(ctx, "t", key(r))
				return err
			},
			func(r *rand.Rand) error { // evictions
				time.Sleep(time.Millisecond) // the pace of evictions, on purpose
				return e.RC.Do(ctx, e.RC.B().Del().Key(key(r)).Build()).Error()
			})
	}
	if _, errs := world.Hammer(time.Now().Add(10*time.Second), work...); len(errs) > 0 {
		t.Fatal(errs[0])
	}
	waitDrained(e, "t")
	rows, err := e.DB.Query(ctx, `SELECT id, v FROM t`)
	if err != nil {
		t.Fatal(err)
	}
	cached, bad := 0, 0
	for rows.Next() {
		var id int
		var v int64
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		k := fmt.Sprintf("t:%d", id)
		got, ok := e.Get(k)
		if want := fmt.Sprintf(`{"id":%d,"v":%d}`, id, v); ok && got != want {
			bad++
			t.Errorf("%s: Redis holds %s, the table %s", k, got, want)
		}
		if ok {
			cached++
		}
		if g, err := clients[0].Get(ctx, "t", k); err != nil || string(g) != fmt.Sprintf(`{"id":%d,"v":%d}`, id, v) {
			t.Errorf("%s: Get = %s, %v; the table holds v=%d", k, g, err, v)
		}
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if n := len(deadLetters(e, "t")); n == 0 {
		t.Error("no write was refused: the torture tried none")
	}
	t.Logf("%d keys cached at the end, %d stale", cached, bad)
}

// TestInvalidateKeepsCompleteCache: in a cache that holds every row (a
// change feed, no TTL), Invalidate and a dead letter load the key again,
// so the cache stays complete; with a TTL, an invalidated key stays
// missing until read.
func TestInvalidateKeepsCompleteCache(t *testing.T) {
	e := world.New(t, `CREATE TABLE d (id int PRIMARY KEY, v int NOT NULL CHECK (v >= 0));
		INSERT INTO d SELECT g, g FROM generate_series(1, 5) g`)
	cfg := e.Config(`  d: {table: d, key: "d:{id}", value: {format: string, column: v}, writes: behind}
  dt: {table: d, key: "dt:{id}", value: {format: string, column: v}, ttl: 1h}
`)
	e.Feed(cfg)
	c := e.Open(cfg)
	ctx := context.Background()
	if err := e.RC.Do(ctx, e.RC.B().Set().Key("d:4").Value("stale").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := c.Invalidate(ctx, "d", "d:4"); err != nil {
		t.Fatal(err)
	}
	if v, ok := e.Get("d:4"); v != "4" {
		t.Fatalf("d:4 after Invalidate = %q (present %v), want the row loaded again", v, ok)
	}
	putBehind(t, c, "d", map[string]any{"id": 3, "v": -3}) // refused: dead-lettered
	runDrain(t, c)
	waitDrained(e, "d")
	world.WaitFor(t, "d:3 is loaded again after its write was dead-lettered", func() bool { v, _ := e.Get("d:3"); return v == "3" })
	if _, err := c.Get(ctx, "dt", "dt:2"); err != nil {
		t.Fatal(err)
	}
	if err := c.Invalidate(ctx, "dt", "dt:2"); err != nil {
		t.Fatal(err)
	}
	if v, ok := e.Get("dt:2"); ok {
		t.Fatalf("dt:2 (a TTL) after Invalidate = %q, want it missing", v)
	}
}

// TestWriteBehindOnCluster: on a Redis Cluster a write-behind cache whose
// keys share its queue's slot queues, drains, guards its queued keys and
// dead-letters as on one node; one whose keys would not is refused at Open.
func TestWriteBehindOnCluster(t *testing.T) {
	e := world.NewOn(t, testenv.StartCluster(t, 3).Nodes[0], `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL CHECK (v >= 0))`)
	bad := e.Config(`  t: {table: t, key: "t:{id}", value: {columns: [id, v]}, sync: none, writes: behind}` + "\n")
	if _, err := engine.Open(context.Background(), bad, engine.Options{}); err == nil || !strings.Contains(err.Error(), "{{t}}") {
		t.Fatalf("Open of a write-behind cache whose keys spread over the cluster: %v, want a refusal naming the hash tag", err)
	}
	cfg := e.Config(`  t: {table: t, key: "{{t}}:{id}", value: {columns: [id, v]}, sync: none, writes: behind, ttl: 1h}` + "\n")
	c := e.Open(cfg)
	ctx := context.Background()
	for id := range 50 {
		putBehind(t, c, "t", map[string]any{"id": id, "v": id})
	}
	putBehind(t, c, "t", map[string]any{"id": 7, "v": -7}) // refused: t:7 is removed, then read from the table
	if err := e.RC.Do(ctx, e.RC.B().Del().Key("{t}:3").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "t", "{t}:3"); err != nil || string(v) != `{"id":3,"v":3}` {
		t.Fatalf("Get of an evicted key whose write is queued = %s, %v", v, err)
	}
	runDrain(t, c)
	waitDrained(e, "t")
	for id := range 50 {
		k := fmt.Sprintf("{t}:%d", id)
		if v, err := c.Get(ctx, "t", k); err != nil || string(v) != fmt.Sprintf(`{"id":%d,"v":%d}`, id, id) {
			t.Errorf("drained: Get %s = %s, %v", k, v, err)
		}
	}
	if n := len(deadLetters(e, "t")); n != 1 {
		t.Errorf("%d dead letters, want 1", n)
	}
}

// TestReloadLeavesQueuedKeys: with no change feed, a reload (what a
// refresh or a repair runs) of a key whose write-behind write is queued
// writes nothing, whether the key was evicted or holds the queued value,
// and whether present keys are kept or reloaded: the table's row is older
// than the queued write (DESIGN invariant 7). Once drained, the key holds
// the row.
func TestReloadLeavesQueuedKeys(t *testing.T) {
	e := world.New(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO t VALUES (1, 0), (2, 0)`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {columns: [id, v]}, sync: none, writes: behind, ttl: 1h, refresh: on-expiry}` + "\n")
	c := e.Open(cfg)
	ctx := context.Background()
	putBehind(t, c, "t", map[string]any{"id": 1, "v": 5})
	putBehind(t, c, "t", map[string]any{"id": 2, "v": 6})
	if err := e.RC.Do(ctx, e.RC.B().Del().Key("t:1").Build()).Error(); err != nil { // evicted; t:2 stays
		t.Fatal(err)
	}
	for _, present := range []bool{false, true} {
		res, err := c.Reload(ctx, "t", []string{"t:1", "t:2"}, present)
		if err != nil || res.Written != 0 {
			t.Fatalf("Reload (present %v) of queued keys: %+v, %v; want nothing written", present, res, err)
		}
		if v, ok := e.Get("t:1"); ok {
			t.Fatalf("after a reload (present %v), the evicted t:1 = %s; its write v=5 is queued", present, v)
		}
		if v, _ := e.Get("t:2"); v != `{"id":2,"v":6}` {
			t.Fatalf("after a reload (present %v), t:2 = %s; want the queued v=6", present, v)
		}
	}
	runDrain(t, c)
	waitDrained(e, "t")
	if v, _ := e.Get("t:2"); v != `{"id":2,"v":6}` {
		t.Fatalf("drained: t:2 = %s", v)
	}
	if res, err := c.Reload(ctx, "t", []string{"t:1"}, false); err != nil || res.Written != 1 {
		t.Fatalf("drained: Reload of t:1 = %+v, %v; want it written", res, err)
	}
	if v, _ := e.Get("t:1"); v != `{"id":1,"v":5}` {
		t.Fatalf("drained and reloaded: t:1 = %s", v)
	}
}
