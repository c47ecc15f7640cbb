package changefeed_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/changefeed"
	"github.com/cachesync/cachesync/internal/schema"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestTypes checks the JSON form of every common column type, written once
// by the snapshot rebuild (row 1, present before start) and once by the
// stream (row 2), for insert, update and delete, NULLs included.
func TestTypes(t *testing.T) {
	w := world.New(t, `CREATE DOMAIN price AS numeric(8,2) CHECK (VALUE >= 0);
		CREATE TABLE typed (id int PRIMARY KEY, i2 smallint, i8 bigint, n numeric, f float8, t text,
		b bool, j json, jb jsonb, ts timestamptz, u uuid, by bytea, ia int[], ta text[], p price,
		g int GENERATED ALWAYS AS (id * 2) STORED)`)
	const values = `1, 9007199254740993, 1.50, 0.1, E'a "q"\n\\', true, '{"b":1, "a":2}', '{"b":1,"a":2}',
		'2024-03-01 10:00:00.5+02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x0102ff', '{1,NULL,3}', '{"x y",NULL,"NULL"}', 2.5`
	// The domain price is a number; the generated column is left out (pgoutput does not send it).
	const want = `"i2":1,"i8":9007199254740993,"n":1.50,"f":0.1,"t":"a \"q\"\n\\","b":true,"j":{"b":1, "a":2},` +
		`"jb":{"a": 2, "b": 1},"ts":"2024-03-01T08:00:00.5Z","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",` +
		`"by":"AQL/","ia":[1,null,3],"ta":["x y",null,"NULL"],"p":2.50}`
	const nulls = `"i2":null,"i8":null,"n":null,"f":null,"t":null,"b":null,"j":null,"jb":null,"ts":null,"u":null,"by":null,"ia":null,"ta":null,"p":null}`
	w.Exec(`INSERT INTO typed (id, i2, i8, n, f, t, b, j, jb, ts, u, by, ia, ta, p) VALUES (1, ` + values + `)`)
	w.Exec(`INSERT INTO typed (id) VALUES (3)`)
	cfg := w.Config("  typed: {table: typed, key: \"typed:{id}\"}\n")
	w.StartFeed(cfg)
	w.WaitEqual("typed:*", lit(map[string]string{`typed:1`: `{"id":1,` + want, `typed:3`: `{"id":3,` + nulls}))

	w.Exec(`INSERT INTO typed (id, i2, i8, n, f, t, b, j, jb, ts, u, by, ia, ta, p) VALUES (2, ` + values + `)`)
	w.Exec(`INSERT INTO typed (id) VALUES (4)`)
	w.WaitEqual("typed:*", lit(map[string]string{
		`typed:1`: `{"id":1,` + want, `typed:2`: `{"id":2,` + want,
		`typed:3`: `{"id":3,` + nulls, `typed:4`: `{"id":4,` + nulls,
	}))

	w.Exec(`UPDATE typed SET i2 = NULL, t = '', ia = '{}' WHERE id = 2`)
	w.Exec(`UPDATE typed SET b = false WHERE id = 4`)
	w.Exec(`DELETE FROM typed WHERE id IN (1, 3)`)
	upd := strings.NewReplacer(`"i2":1,`, `"i2":null,`, `"t":"a \"q\"\n\\",`, `"t":"",`, `"ia":[1,null,3]`, `"ia":[]`).Replace(want)
	w.WaitEqual("typed:*", lit(map[string]string{
		`typed:2`: `{"id":2,` + upd,
		`typed:4`: `{"id":4,` + strings.Replace(nulls, `"b":null`, `"b":false`, 1),
	}))
}

// TestFormats covers hash and string values, renamed fields, a key of two
// placeholders, a key that moves, and transactions over many rows and tables.
func TestFormats(t *testing.T) {
	w := world.New(t, `CREATE TABLE stock (store text, item text, qty int, note text, PRIMARY KEY (store, item));
		CREATE TABLE prices (item text PRIMARY KEY, price numeric(6,2))`)
	cfg := w.Config(`  stock: {table: stock, key: "stock:{store}:{item}", value: {format: hash, columns: {count: qty, remark: note}}}
  qty: {table: stock, key: "qty:{store}:{item}", value: {format: string, column: qty}}
  prices: {table: public.prices, key: "price:{item}", value: {format: json, columns: {name: item, euro: price}}}
`)
	w.StartFeed(cfg)
	w.Exec(`BEGIN;
		INSERT INTO stock VALUES ('north', 'apple', 5, 'crisp'), ('north', 'pear', 7, NULL), ('south', 'apple', 1, 'last one');
		INSERT INTO prices VALUES ('apple', 1.99), ('pear', 2.50);
		COMMIT`)
	w.WaitEqual("*", lit(map[string]string{
		"stock:north:apple": "count=5 remark=crisp", "stock:north:pear": "count=7", "stock:south:apple": "count=1 remark=last one",
		"qty:north:apple": "5", "qty:north:pear": "7", "qty:south:apple": "1",
		"price:apple": `{"name":"apple","euro":1.99}`, "price:pear": `{"name":"pear","euro":2.50}`,
	}))

	w.Exec(`BEGIN;
		UPDATE stock SET qty = qty + 10, note = NULL WHERE item = 'apple';
		UPDATE stock SET store = 'east' WHERE item = 'pear';
		DELETE FROM prices WHERE item = 'pear';
		UPDATE prices SET item = 'green apple' WHERE item = 'apple';
		COMMIT`)
	w.WaitEqual("*", lit(map[string]string{
		"stock:north:apple": "count=15", "stock:east:pear": "count=7", "stock:south:apple": "count=11",
		"qty:north:apple": "15", "qty:east:pear": "7", "qty:south:apple": "11",
		"price:green apple": `{"name":"green apple","euro":1.99}`,
	}))
}

// TestTruncate: a truncate removes every key of the table's caches, and only those.
func TestTruncate(t *testing.T) {
	w := world.New(t, `CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text);
		INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 3000) g;
		INSERT INTO b VALUES (1, 'b1')`)
	cfg := w.Config("  a: {table: a, key: \"a:{id}\", value: {format: string, column: v}}\n  b: {table: b, key: \"b:{id}\", value: {format: string, column: v}}\n")
	w.StartFeed(cfg)
	w.WaitEqual("a:*", func() map[string]string { return w.Rows(`SELECT 'a:' || id, v FROM a`) })
	w.Exec(`BEGIN; INSERT INTO a VALUES (0, 'before'); TRUNCATE a; INSERT INTO a VALUES (5, 'after'); COMMIT`)
	w.WaitEqual("*", lit(map[string]string{"a:5": "after", "b:1": "b1"}))
}

// TestTTL: keys get the cache's TTL, shortened by at most the jitter.
func TestTTL(t *testing.T) {
	w := world.New(t, `CREATE TABLE s (id int PRIMARY KEY, v text); INSERT INTO s SELECT g, 'v' FROM generate_series(1, 200) g`)
	cfg := w.Config("  s: {table: s, key: \"s:{id}\", value: {format: string, column: v}, ttl: 100s, ttl_jitter: 50%}\n")
	// Expiry times on Redis' clock (the machine's, as ours): each key was
	// written after start and before the reads, with a TTL in [50, 100] s.
	start := time.Now().UnixMilli()
	w.StartFeed(cfg)
	w.WaitEqual("s:*", func() map[string]string { return w.Rows(`SELECT 's:' || id, v FROM s`) })
	lo, hi := int64(1<<62), int64(0)
	for i := 1; i <= 200; i++ {
		at, err := w.Do(w.RC.B().Pexpiretime().Key(fmt.Sprintf("s:%d", i)).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		lo, hi = min(lo, at), max(hi, at)
	}
	end := time.Now().UnixMilli()
	if lo < start+50_000 || hi > end+100_000 {
		t.Fatalf("expiry times [%d, %d] ms, want within [%d, %d]: written between %d and %d with TTLs of 50 to 100 s", lo, hi, start+50_000, end+100_000, start, end)
	}
	if hi-lo < 10_000 {
		t.Fatalf("expiry times [%d, %d] ms: no jitter", lo, hi)
	}
}

// TestSnapshotHandover writes continuously while the feed starts and
// rebuilds from its snapshot: nothing between snapshot and stream is lost.
func TestSnapshotHandover(t *testing.T) {
	w := world.New(t, `CREATE TABLE h (id int PRIMARY KEY, v bigint NOT NULL);
		INSERT INTO h SELECT g, 0 FROM generate_series(1, 20000) g`)
	cfg := w.Config("  h: {table: h, key: \"h:{id}\", value: {format: string, column: v}}\n")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var updates atomic.Int64
	errs := make(chan error, 1)
	wg.Go(func() {
		conn, err := pgx.Connect(ctx, w.DBURL)
		if err != nil {
			errs <- err
			return
		}
		defer conn.Close(context.Background())
		for i := 0; ctx.Err() == nil; i++ {
			if _, err := conn.Exec(ctx, `UPDATE h SET v = v + 1 WHERE id % 97 = $1`, i%97); err != nil && ctx.Err() == nil {
				errs <- err
				return
			}
			updates.Add(1)
		}
	})
	// Writes are in flight when the slot and snapshot are made.
	world.WaitFor(t, "the writer's first updates", func() bool { return updates.Load() >= 5 || len(errs) > 0 })
	f := w.StartFeed(cfg)
	world.WaitFor(t, "a rebuild and over 20 transactions streamed after it", func() bool {
		return (f.Stats.Rebuilds.Load() == 1 && f.Stats.Txns.Load() > 20) || len(errs) > 0
	})
	cancel()
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	w.WaitEqual("h:*", func() map[string]string { return w.Rows(`SELECT 'h:' || id, v::text FROM h`) })
}

// TestRedisLost: Redis flushed, then restarted empty, under a running feed:
// each time the cache is rebuilt and equals the database, and changes go on.
func TestRedisLost(t *testing.T) {
	w := world.New(t, `CREATE TABLE r (id int PRIMARY KEY, v text); INSERT INTO r SELECT g, 'v' || g FROM generate_series(1, 1000) g`)
	cfg := w.Config("  r: {table: r, key: \"r:{id}\", value: {format: string, column: v}}\n")
	f := w.StartFeed(cfg)
	want := func() map[string]string { return w.Rows(`SELECT 'r:' || id, v FROM r`) }
	w.WaitEqual("r:*", want)

	w.Do(w.RC.B().Flushall().Build())
	w.WaitEqual("r:*", want)
	w.Exec(`UPDATE r SET v = 'after flush' WHERE id = 7`)
	w.WaitEqual("r:*", want)

	if err := w.Redis.Restart(); err != nil {
		t.Fatal(err)
	}
	w.WaitEqual("r:*", want)
	w.Exec(`UPDATE r SET v = 'after restart' WHERE id = 8`)
	w.WaitEqual("r:*", want)
	if n := f.Stats.Rebuilds.Load(); n != 3 {
		t.Fatalf("rebuilds = %d, want 3 (start, flush, restart)", n)
	}
}

// TestPostgresRestart: the feed reconnects and resumes from its slot.
func TestPostgresRestart(t *testing.T) {
	w := world.New(t, `CREATE TABLE p (id int PRIMARY KEY, v text); INSERT INTO p VALUES (1, 'one')`)
	cfg := w.Config("  p: {table: p, key: \"p:{id}\", value: {format: string, column: v}}\n")
	f := w.StartFeed(cfg)
	want := func() map[string]string { return w.Rows(`SELECT 'p:' || id, v FROM p`) }
	w.WaitEqual("p:*", want)
	if err := world.Postgres(t).Restart(); err != nil {
		t.Fatal(err)
	}
	db, err := pgx.Connect(context.Background(), w.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	w.DB = db // the world's session ended with the server
	w.Exec(`INSERT INTO p SELECT g, 'v' || g FROM generate_series(2, 500) g`)
	w.Exec(`UPDATE p SET v = 'changed' WHERE id = 1`)
	w.WaitEqual("p:*", want)
	if f.Stats.Rebuilds.Load() != 1 {
		t.Fatalf("rebuilds = %d, want 1: a PostgreSQL restart must resume from the slot", f.Stats.Rebuilds.Load())
	}
}

// TestUnmappableRow: a row whose key cannot be made is counted and skipped;
// the rows around it land.
func TestUnmappableRow(t *testing.T) {
	w := world.New(t, `CREATE TABLE u (store text, item text, qty int, PRIMARY KEY (store, item))`)
	cfg := w.Config("  u: {table: u, key: \"u:{store}:{item}\", value: {format: string, column: qty}}\n")
	f := w.StartFeed(cfg)
	w.Exec(`BEGIN; INSERT INTO u VALUES ('a', 'x', 1), ('b:c', 'x', 2), ('d', 'x', 3); COMMIT`)
	w.Exec(`INSERT INTO u VALUES ('e', 'x', 4)`)
	w.WaitEqual("u:*", lit(map[string]string{"u:a:x": "1", "u:d:x": "3", "u:e:x": "4"}))
	if n := f.Stats.MapErrors.Load(); n != 1 {
		t.Fatalf("map errors = %d, want 1", n)
	}
}

// TestUnmappableRowRemovesItsKeys: a row that cannot be written leaves no
// value behind (DESIGN invariant 9): every key it could have held is
// removed in its batch, and the row is counted. A NULL string value has no
// value to store: its key is absent, as for a deleted row.
func TestUnmappableRowRemovesItsKeys(t *testing.T) {
	w := world.New(t, `CREATE TABLE inv (store text, item text, qty int, price numeric(6,2), PRIMARY KEY (store, item));
		INSERT INTO inv VALUES ('s1', 'apple', 5, 1.99), ('s2', 'pear', 3, 2.50), ('s3', 'kiwi', 1, 0.50)`)
	cfg := w.Config(`  stock: {table: inv, key: "stock:{store}:{item}", value: {format: string, column: qty}}
  price: {table: inv, key: "price:{store}:{item}", value: {format: string, column: price}}
`)
	f := w.StartFeed(cfg)
	want := map[string]string{
		"stock:s1:apple": "5", "stock:s2:pear": "3", "stock:s3:kiwi": "1",
		"price:s1:apple": "1.99", "price:s2:pear": "2.50", "price:s3:kiwi": "0.50",
	}
	w.WaitEqual("*", lit(want))
	// step runs sql, then a marker insert in a later transaction, and
	// compares Redis with want once the marker's key is there: the feed
	// applies in commit order, so sql's writes are in by then.
	marker := 0
	step := func(what, sql string, errs int64) {
		t.Helper()
		marker++
		w.Exec(sql)
		w.Exec(`INSERT INTO inv VALUES ('m', $1, 0, 0)`, fmt.Sprint(marker))
		mk := fmt.Sprintf("stock:m:%d", marker)
		world.WaitFor(t, mk+" written", func() bool { _, ok := w.Get(mk); return ok })
		w.Exec(`DELETE FROM inv WHERE store = 'm'`)
		world.WaitFor(t, mk+" removed", func() bool { _, ok := w.Get(mk); return !ok })
		if d := world.Diff(want, w.Snapshot("*")); d != "" {
			t.Fatalf("%s: redis differs:\n%s", what, d)
		}
		if n := f.Stats.MapErrors.Load(); n != errs {
			t.Fatalf("%s: map errors = %d, want %d", what, n, errs)
		}
	}

	// (a) A NULL string: no value, so no key.
	delete(want, "price:s3:kiwi")
	step("price set to NULL", `UPDATE inv SET price = NULL WHERE item = 'kiwi'`, 0)

	// (b) The row moves to a key the template cannot render (the store
	// holds the separator): the keys it held go, in both caches.
	delete(want, "stock:s1:apple")
	delete(want, "price:s1:apple")
	step("moved to an unrenderable key", `UPDATE inv SET store = 'a:b' WHERE store = 's1'`, 2)

	// (c) The value cannot be encoded (the column's type changed under the
	// running feed, which still reads it as an int): the old key and the
	// new one both go, whatever they held.
	w.Exec(`ALTER TABLE inv ALTER COLUMN qty TYPE text`)
	w.Do(w.RC.B().Set().Key("stock:s4:pear").Value("stray").Build())
	delete(want, "stock:s2:pear")
	delete(want, "price:s2:pear")
	want["price:s4:pear"] = "2.50"
	step("value not encodable", `UPDATE inv SET store = 's4', qty = 'many' WHERE store = 's2'`, 3)
}

// TestToast: an update that leaves a large (TOASTed) value unchanged still
// writes the whole value, with the default replica identity (the row is read
// back) and with REPLICA IDENTITY FULL (from the old row).
func TestToast(t *testing.T) {
	w := world.New(t, `CREATE TABLE d (id int PRIMARY KEY, body text, n int);
		CREATE TABLE df (id int PRIMARY KEY, body text, n int); ALTER TABLE df REPLICA IDENTITY FULL`)
	cfg := w.Config("  d: {table: d, key: \"d:{id}\", value: {columns: [id, body, n]}}\n  df: {table: df, key: \"df:{id}\", value: {columns: [id, body, n]}}\n")
	f := w.StartFeed(cfg)
	// md5 chains do not compress, so the value is stored out of line.
	big := `(SELECT string_agg(md5(g::text || $1), '') FROM generate_series(1, 400) g)`
	for _, tbl := range []string{"d", "df"} {
		w.Exec(`INSERT INTO `+tbl+` VALUES (1, `+big+`, 0)`, tbl)
		w.Exec(`UPDATE ` + tbl + ` SET n = n + 1 WHERE id = 1`)
		w.Exec(`UPDATE ` + tbl + ` SET n = n + 1 WHERE id = 1`)
	}
	want := func() map[string]string {
		return w.Rows(`SELECT 'd:' || id, json_build_object('id', id, 'body', body, 'n', n)::text FROM d
			UNION ALL SELECT 'df:' || id, json_build_object('id', id, 'body', body, 'n', n)::text FROM df`)
	}
	w.WaitEqual("d*", func() map[string]string {
		m := want()
		for k, v := range m { // json_build_object spaces its output
			m[k] = strings.NewReplacer(`" : `, `":`, `, "`, `,"`).Replace(v)
		}
		return m
	})
	if len(w.Snapshot("d:1")["d:1"]) < 12000 {
		t.Fatal("the large value is missing")
	}
	if f.Stats.MapErrors.Load() != 0 {
		t.Fatalf("map errors = %d", f.Stats.MapErrors.Load())
	}
}

// TestToastMovedAway: an update that moves a row with a large (TOASTed)
// value it leaves unchanged, to a key the row has left again by the time
// the feed reads it back, still removes the row's old key.
func TestToastMovedAway(t *testing.T) {
	w := world.New(t, `CREATE TABLE d (id int PRIMARY KEY, body text, n int)`)
	cfg := w.Config("  d: {table: d, key: \"d:{id}\", value: {format: string, column: n}}\n  b: {table: d, key: \"b:{id}\", value: {columns: [body]}}\n")
	f := w.StartFeed(cfg)
	w.Exec(`INSERT INTO d VALUES (1, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g), 0)`)
	w.WaitEqual("d:*", lit(map[string]string{"d:1": "0"}))
	w.Exec(`BEGIN; UPDATE d SET id = 2, n = 1 WHERE id = 1; DELETE FROM d WHERE id = 2; INSERT INTO d VALUES (3, 'x', 3); COMMIT`)
	w.WaitEqual("*", lit(map[string]string{"d:3": "3", "b:3": `{"body":"x"}`}))
	if n := f.Stats.MapErrors.Load(); n != 0 {
		t.Fatalf("map errors = %d", n)
	}
}

// TestRebuildOnRequest: a cache named in Rebuild (cachesync resync) is
// cleared of stray keys and refilled; a changed mapping rebuilds on its own.
func TestRebuildOnRequest(t *testing.T) {
	w := world.New(t, `CREATE TABLE q (id int PRIMARY KEY, v text); INSERT INTO q SELECT g, 'v' || g FROM generate_series(1, 100) g`)
	cfg := w.Config("  q: {table: q, key: \"q:{id}\", value: {format: string, column: v}}\n")
	f := w.StartFeed(cfg)
	want := func() map[string]string { return w.Rows(`SELECT 'q:' || id, v FROM q`) }
	w.WaitEqual("q:*", want)
	f.Stop()

	w.Do(w.RC.B().Set().Key("q:5").Value("wrong").Build())
	w.Do(w.RC.B().Set().Key("q:1000").Value("stray").Build())
	f = w.StartFeed(cfg, func(f *changefeed.Feed) { f.Rebuild = []string{"q"} })
	w.WaitEqual("q:*", want)
	f.Stop()

	cfg = w.Config("  q: {table: q, key: \"q:{id}\", value: {format: json, columns: [v]}}\n")
	w.StartFeed(cfg)
	w.WaitEqual("q:*", func() map[string]string { return w.Rows(`SELECT 'q:' || id, '{"v":"' || v || '"}' FROM q`) })
}

// TestResume: a restarted feed resumes from its slot without a rebuild, even
// after the slot moved past unrelated WAL, and applies what changed meanwhile.
func TestResume(t *testing.T) {
	w := world.New(t, `CREATE TABLE m (id int PRIMARY KEY, v text); CREATE TABLE other (id int);
		INSERT INTO m SELECT g, 'v' || g FROM generate_series(1, 100) g`)
	cfg := w.Config("  m: {table: m, key: \"m:{id}\", value: {format: string, column: v}}\n")
	want := func() map[string]string { return w.Rows(`SELECT 'm:' || id, v FROM m`) }
	f := w.StartFeed(cfg)
	w.WaitEqual("m:*", want)
	w.Exec(`UPDATE m SET v = 'x' WHERE id = 1`)
	w.WaitEqual("m:*", want)

	// Unrelated WAL: the slot's confirmed position must still move past it.
	var before string
	if err := w.DB.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, cfg.SlotName("db")).Scan(&before); err != nil {
		t.Fatal(err)
	}
	w.Exec(`INSERT INTO other SELECT generate_series(1, 10000)`)
	var target string
	if err := w.DB.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&target); err != nil {
		t.Fatal(err)
	}
	world.WaitFor(t, "the slot confirmed past the unrelated WAL", func() bool {
		var ok bool
		err := w.DB.QueryRow(context.Background(), `SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1`,
			cfg.SlotName("db"), target).Scan(&ok)
		return err == nil && ok
	})
	if err := f.Stop(); err != nil {
		t.Fatal(err)
	}

	w.Exec(`UPDATE m SET v = 'while stopped' WHERE id < 10`)
	w.Exec(`DELETE FROM m WHERE id > 90`)
	f = w.StartFeed(cfg)
	w.WaitEqual("m:*", want)
	if n := f.Stats.Rebuilds.Load(); n != 0 {
		t.Fatalf("rebuilds after restart = %d, want 0 (resume from the slot)", n)
	}
}

// TestStandby: a second feed of the same config waits for the first, and
// waits quietly: blocked on the slot's lock (no reconnects, no polling),
// one log line when it starts waiting and one when it takes over; it
// touches nothing meanwhile, and when the first stops it takes over
// without a rebuild.
func TestStandby(t *testing.T) {
	w := world.New(t, `CREATE TABLE s (id int PRIMARY KEY, v text); INSERT INTO s SELECT g, 'v' || g FROM generate_series(1, 100) g`)
	cfg := w.Config("  s: {table: s, key: \"s:{id}\", value: {format: string, column: v}}\n")
	want := func() map[string]string { return w.Rows(`SELECT 's:' || id, v FROM s`) }
	a := w.StartFeed(cfg)
	w.WaitEqual("s:*", want)
	var log testenv.LogBuffer
	b := w.StartFeed(cfg, func(f *changefeed.Feed) { f.Log = slog.New(slog.NewTextHandler(&log, nil)) })
	world.WaitSession(t, w.DB, "the standby waits on the slot's lock", `wait_event_type = 'Lock' AND wait_event = 'advisory' AND datname = current_database()`)
	for i := range 20 {
		w.Exec(`UPDATE s SET v = 'by a' || $1::int WHERE id = 1`, i)
		w.WaitEqual("s:*", want)
	}
	if b.Stats.Rebuilds.Load() != 0 || b.Stats.Txns.Load() != 0 || a.Stats.Rebuilds.Load() != 1 {
		t.Fatalf("standby did work while the slot was taken: rebuilds %d, txns %d", b.Stats.Rebuilds.Load(), b.Stats.Txns.Load())
	}
	if n := b.Stats.Reconnects.Load(); n != 0 {
		t.Errorf("the standby reconnected %d times while it waited, want 0 (a blocking wait)", n)
	}
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	w.Exec(`UPDATE s SET v = 'by b' WHERE id = 2`)
	w.WaitEqual("s:*", want)
	if b.Stats.Rebuilds.Load() != 0 || b.Stats.Txns.Load() == 0 {
		t.Fatalf("standby took over with rebuilds %d, txns %d; want 0 and > 0", b.Stats.Rebuilds.Load(), b.Stats.Txns.Load())
	}
	waiting, took := log.Lines("waiting to take over"), log.Lines("took over the replication slot")
	if len(waiting) != 1 || len(took) != 1 {
		t.Errorf("the standby logged %d waiting and %d took-over lines, want 1 and 1:\n%s", len(waiting), len(took), log.String())
	}
}

// TestPartitioned: a cache of a partitioned table sees the changes of its partitions.
func TestPartitioned(t *testing.T) {
	w := world.New(t, `CREATE TABLE pt (region text, id int, v text, PRIMARY KEY (region, id)) PARTITION BY LIST (region);
		CREATE TABLE pt_eu PARTITION OF pt FOR VALUES IN ('eu'); CREATE TABLE pt_us PARTITION OF pt FOR VALUES IN ('us');
		INSERT INTO pt VALUES ('eu', 1, 'a'), ('us', 1, 'b')`)
	cfg := w.Config("  pt: {table: pt, key: \"pt:{region}:{id}\", value: {format: string, column: v}}\n")
	w.StartFeed(cfg)
	want := func() map[string]string { return w.Rows(`SELECT 'pt:' || region || ':' || id, v FROM pt`) }
	w.WaitEqual("pt:*", want)
	w.Exec(`INSERT INTO pt VALUES ('eu', 2, 'c'), ('us', 2, 'd'), ('eu', 3, 'e')`)
	w.Exec(`UPDATE pt SET v = 'changed' WHERE id = 1`)
	w.Exec(`UPDATE pt SET region = 'us' WHERE region = 'eu' AND id = 3`) // moves between partitions
	w.Exec(`DELETE FROM pt WHERE region = 'us' AND id = 1`)
	w.WaitEqual("pt:*", want)
}

// TestSchemaErrors: a cache that does not fit its live table is refused with
// an error naming the field.
func TestSchemaErrors(t *testing.T) {
	w := world.New(t, `CREATE TABLE k (a int, b int, c text, PRIMARY KEY (a, b));
		CREATE TABLE nopk (a int, c text); CREATE VIEW kv AS SELECT * FROM k;
		CREATE TABLE full_nokey (a int, c text); ALTER TABLE full_nokey REPLICA IDENTITY FULL;
		CREATE TABLE full_uniq (a int NOT NULL UNIQUE, c text); ALTER TABLE full_uniq REPLICA IDENTITY FULL`)
	tests := []struct{ cache, want string }{
		{`{table: nosuch, key: "x:{a}"}`, `config: caches.c.table: table public.nosuch does not exist`},
		{`{table: kv, key: "x:{a}:{b}"}`, `config: caches.c.table:`},
		{`{table: k, key: "x:{a}:{zz}"}`, `config: caches.c.key: column "zz" does not exist`},
		{`{table: k, key: "x:{a}:{b}", value: {columns: [a, nope]}}`, `config: caches.c.value.columns: column "nope" does not exist`},
		{`{table: k, key: "x:{a}"}`, `config: caches.c.key: columns (a) do not name one row of public.k: include the columns of a unique key such as (a, b)`},
		{`{table: nopk, key: "x:{a}"}`, `config: caches.c.key: columns (a) do not name one row of public.nopk: it has no unique key`},
		{`{table: full_nokey, key: "x:{a}"}`, `config: caches.c.key: columns (a) do not name one row`},
		{`{table: k, key: "x:{a}:{b}:{c}", sync: changefeed}`, `config: caches.c.key: column(s) c are not in the replica identity (a, b) of public.k`},
		{`{table: full_uniq, key: "x:{a}"}`, ``},
		{`{table: k, key: "x:{b}:{a}"}`, ``},
	}
	for _, tt := range tests {
		cfg := w.Config("  c: " + tt.cache + "\n")
		_, err := schema.LoadTables(context.Background(), w.DB, []*config.Cache{cfg.Caches["c"]})
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v", tt.cache, err)
		case tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want)):
			t.Errorf("%s: error %v, want %q", tt.cache, err, tt.want)
		}
	}
}
