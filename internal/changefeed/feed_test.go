package changefeed_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/changefeed"
	"github.com/cachesync/cachesync/internal/schema"
)

// TestTypes checks the JSON form of every common column type, written once
// by the snapshot rebuild (row 1, present before start) and once by the
// stream (row 2), for insert, update and delete, NULLs included.
func TestTypes(t *testing.T) {
	e := newEnv(t, `CREATE DOMAIN price AS numeric(8,2) CHECK (VALUE >= 0);
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
	e.exec(`INSERT INTO typed (id, i2, i8, n, f, t, b, j, jb, ts, u, by, ia, ta, p) VALUES (1, ` + values + `)`)
	e.exec(`INSERT INTO typed (id) VALUES (3)`)
	cfg := e.config("  typed: {table: typed, key: \"typed:{id}\"}\n")
	e.start(cfg)
	e.waitEqual("typed:*", lit(map[string]string{`typed:1`: `{"id":1,` + want, `typed:3`: `{"id":3,` + nulls}))

	e.exec(`INSERT INTO typed (id, i2, i8, n, f, t, b, j, jb, ts, u, by, ia, ta, p) VALUES (2, ` + values + `)`)
	e.exec(`INSERT INTO typed (id) VALUES (4)`)
	e.waitEqual("typed:*", lit(map[string]string{
		`typed:1`: `{"id":1,` + want, `typed:2`: `{"id":2,` + want,
		`typed:3`: `{"id":3,` + nulls, `typed:4`: `{"id":4,` + nulls,
	}))

	e.exec(`UPDATE typed SET i2 = NULL, t = '', ia = '{}' WHERE id = 2`)
	e.exec(`UPDATE typed SET b = false WHERE id = 4`)
	e.exec(`DELETE FROM typed WHERE id IN (1, 3)`)
	upd := strings.NewReplacer(`"i2":1,`, `"i2":null,`, `"t":"a \"q\"\n\\",`, `"t":"",`, `"ia":[1,null,3]`, `"ia":[]`).Replace(want)
	e.waitEqual("typed:*", lit(map[string]string{
		`typed:2`: `{"id":2,` + upd,
		`typed:4`: `{"id":4,` + strings.Replace(nulls, `"b":null`, `"b":false`, 1),
	}))
}

// TestFormats covers hash and string values, renamed fields, a key of two
// placeholders, a key that moves, and transactions over many rows and tables.
func TestFormats(t *testing.T) {
	e := newEnv(t, `CREATE TABLE stock (store text, item text, qty int, note text, PRIMARY KEY (store, item));
		CREATE TABLE prices (item text PRIMARY KEY, price numeric(6,2))`)
	cfg := e.config(`  stock: {table: stock, key: "stock:{store}:{item}", value: {format: hash, columns: {count: qty, remark: note}}}
  qty: {table: stock, key: "qty:{store}:{item}", value: {format: string, column: qty}}
  prices: {table: public.prices, key: "price:{item}", value: {format: json, columns: {name: item, euro: price}}}
`)
	e.start(cfg)
	e.exec(`BEGIN;
		INSERT INTO stock VALUES ('north', 'apple', 5, 'crisp'), ('north', 'pear', 7, NULL), ('south', 'apple', 1, 'last one');
		INSERT INTO prices VALUES ('apple', 1.99), ('pear', 2.50);
		COMMIT`)
	e.waitEqual("*", lit(map[string]string{
		"stock:north:apple": "count=5 remark=crisp", "stock:north:pear": "count=7", "stock:south:apple": "count=1 remark=last one",
		"qty:north:apple": "5", "qty:north:pear": "7", "qty:south:apple": "1",
		"price:apple": `{"name":"apple","euro":1.99}`, "price:pear": `{"name":"pear","euro":2.50}`,
	}))

	e.exec(`BEGIN;
		UPDATE stock SET qty = qty + 10, note = NULL WHERE item = 'apple';
		UPDATE stock SET store = 'east' WHERE item = 'pear';
		DELETE FROM prices WHERE item = 'pear';
		UPDATE prices SET item = 'green apple' WHERE item = 'apple';
		COMMIT`)
	e.waitEqual("*", lit(map[string]string{
		"stock:north:apple": "count=15", "stock:east:pear": "count=7", "stock:south:apple": "count=11",
		"qty:north:apple": "15", "qty:east:pear": "7", "qty:south:apple": "11",
		"price:green apple": `{"name":"green apple","euro":1.99}`,
	}))
}

// TestTruncate: a truncate removes every key of the table's caches, and only those.
func TestTruncate(t *testing.T) {
	e := newEnv(t, `CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text);
		INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 3000) g;
		INSERT INTO b VALUES (1, 'b1')`)
	cfg := e.config("  a: {table: a, key: \"a:{id}\", value: {format: string, column: v}}\n  b: {table: b, key: \"b:{id}\", value: {format: string, column: v}}\n")
	e.start(cfg)
	e.waitEqual("a:*", func() map[string]string { return e.rows(`SELECT 'a:' || id, v FROM a`) })
	e.exec(`BEGIN; INSERT INTO a VALUES (0, 'before'); TRUNCATE a; INSERT INTO a VALUES (5, 'after'); COMMIT`)
	e.waitEqual("*", lit(map[string]string{"a:5": "after", "b:1": "b1"}))
}

// TestTTL: keys get the cache's TTL, shortened by at most the jitter.
func TestTTL(t *testing.T) {
	e := newEnv(t, `CREATE TABLE s (id int PRIMARY KEY, v text); INSERT INTO s SELECT g, 'v' FROM generate_series(1, 200) g`)
	cfg := e.config("  s: {table: s, key: \"s:{id}\", value: {format: string, column: v}, ttl: 100s, ttl_jitter: 50%}\n")
	// Expiry times on Redis' clock (the machine's, as ours): each key was
	// written after start and before the reads, with a TTL in [50, 100] s.
	start := time.Now().UnixMilli()
	e.start(cfg)
	e.waitEqual("s:*", func() map[string]string { return e.rows(`SELECT 's:' || id, v FROM s`) })
	ctx := context.Background()
	lo, hi := int64(1<<62), int64(0)
	for i := 1; i <= 200; i++ {
		at, err := e.client.Do(ctx, e.client.B().Pexpiretime().Key(fmt.Sprintf("s:%d", i)).Build()).AsInt64()
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
	e := newEnv(t, `CREATE TABLE h (id int PRIMARY KEY, v bigint NOT NULL);
		INSERT INTO h SELECT g, 0 FROM generate_series(1, 20000) g`)
	cfg := e.config("  h: {table: h, key: \"h:{id}\", value: {format: string, column: v}}\n")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, err := pgConnect(ctx, e.dbURL)
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
		}
	}()
	time.Sleep(50 * time.Millisecond) // let writes be in flight when the slot and snapshot are made
	f := e.start(cfg)
	waitFor(t, func() bool { return f.Stats.Rebuilds.Load() == 1 && f.Stats.Txns.Load() > 20 })
	cancel()
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	e.waitEqual("h:*", func() map[string]string { return e.rows(`SELECT 'h:' || id, v::text FROM h`) })
}

// TestRedisLost: Redis flushed, then restarted empty, under a running feed:
// each time the cache is rebuilt and equals the database, and changes go on.
func TestRedisLost(t *testing.T) {
	e := newEnv(t, `CREATE TABLE r (id int PRIMARY KEY, v text); INSERT INTO r SELECT g, 'v' || g FROM generate_series(1, 1000) g`)
	cfg := e.config("  r: {table: r, key: \"r:{id}\", value: {format: string, column: v}}\n")
	f := e.start(cfg)
	want := func() map[string]string { return e.rows(`SELECT 'r:' || id, v FROM r`) }
	e.waitEqual("r:*", want)

	if err := e.client.Do(context.Background(), e.client.B().Flushall().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	e.waitEqual("r:*", want)
	e.exec(`UPDATE r SET v = 'after flush' WHERE id = 7`)
	e.waitEqual("r:*", want)

	if err := e.redis.Restart(); err != nil {
		t.Fatal(err)
	}
	e.waitEqual("r:*", want)
	e.exec(`UPDATE r SET v = 'after restart' WHERE id = 8`)
	e.waitEqual("r:*", want)
	if n := f.Stats.Rebuilds.Load(); n != 3 {
		t.Fatalf("rebuilds = %d, want 3 (start, flush, restart)", n)
	}
}

// TestPostgresRestart: the feed reconnects and resumes from its slot.
func TestPostgresRestart(t *testing.T) {
	e := newEnv(t, `CREATE TABLE p (id int PRIMARY KEY, v text); INSERT INTO p VALUES (1, 'one')`)
	cfg := e.config("  p: {table: p, key: \"p:{id}\", value: {format: string, column: v}}\n")
	f := e.start(cfg)
	want := func() map[string]string { return e.rows(`SELECT 'p:' || id, v FROM p`) }
	e.waitEqual("p:*", want)
	if err := pg.Restart(); err != nil {
		t.Fatal(err)
	}
	db, err := pgConnect(context.Background(), e.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	e.db = db
	e.exec(`INSERT INTO p SELECT g, 'v' || g FROM generate_series(2, 500) g`)
	e.exec(`UPDATE p SET v = 'changed' WHERE id = 1`)
	e.waitEqual("p:*", want)
	if f.Stats.Rebuilds.Load() != 1 {
		t.Fatalf("rebuilds = %d, want 1: a PostgreSQL restart must resume from the slot", f.Stats.Rebuilds.Load())
	}
}

// TestUnmappableRow: a row whose key cannot be made is counted and skipped;
// the rows around it land.
func TestUnmappableRow(t *testing.T) {
	e := newEnv(t, `CREATE TABLE u (store text, item text, qty int, PRIMARY KEY (store, item))`)
	cfg := e.config("  u: {table: u, key: \"u:{store}:{item}\", value: {format: string, column: qty}}\n")
	f := e.start(cfg)
	e.exec(`BEGIN; INSERT INTO u VALUES ('a', 'x', 1), ('b:c', 'x', 2), ('d', 'x', 3); COMMIT`)
	e.exec(`INSERT INTO u VALUES ('e', 'x', 4)`)
	e.waitEqual("u:*", lit(map[string]string{"u:a:x": "1", "u:d:x": "3", "u:e:x": "4"}))
	if n := f.Stats.MapErrors.Load(); n != 1 {
		t.Fatalf("map errors = %d, want 1", n)
	}
}

// TestUnmappableRowRemovesItsKeys: a row that cannot be written leaves no
// value behind (DESIGN invariant 9): every key it could have held is
// removed in its batch, and the row is counted. A NULL string value has no
// value to store: its key is absent, as for a deleted row.
func TestUnmappableRowRemovesItsKeys(t *testing.T) {
	e := newEnv(t, `CREATE TABLE inv (store text, item text, qty int, price numeric(6,2), PRIMARY KEY (store, item));
		INSERT INTO inv VALUES ('s1', 'apple', 5, 1.99), ('s2', 'pear', 3, 2.50), ('s3', 'kiwi', 1, 0.50)`)
	cfg := e.config(`  stock: {table: inv, key: "stock:{store}:{item}", value: {format: string, column: qty}}
  price: {table: inv, key: "price:{store}:{item}", value: {format: string, column: price}}
`)
	f := e.start(cfg)
	want := map[string]string{
		"stock:s1:apple": "5", "stock:s2:pear": "3", "stock:s3:kiwi": "1",
		"price:s1:apple": "1.99", "price:s2:pear": "2.50", "price:s3:kiwi": "0.50",
	}
	e.waitEqual("*", lit(want))
	ctx := context.Background()
	// step runs sql, then a marker insert in a later transaction, and
	// compares Redis with want once the marker's key is there: the feed
	// applies in commit order, so sql's writes are in by then.
	marker := 0
	step := func(what, sql string, errs int64) {
		t.Helper()
		marker++
		e.exec(sql)
		e.exec(`INSERT INTO inv VALUES ('m', $1, 0, 0)`, fmt.Sprint(marker))
		mk := fmt.Sprintf("stock:m:%d", marker)
		waitFor(t, func() bool { n, _ := e.client.Do(ctx, e.client.B().Exists().Key(mk).Build()).AsInt64(); return n == 1 })
		e.exec(`DELETE FROM inv WHERE store = 'm'`)
		waitFor(t, func() bool { n, _ := e.client.Do(ctx, e.client.B().Exists().Key(mk).Build()).AsInt64(); return n == 0 })
		if d := diff(want, e.snapshot("*")); d != "" {
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
	e.exec(`ALTER TABLE inv ALTER COLUMN qty TYPE text`)
	if err := e.client.Do(ctx, e.client.B().Set().Key("stock:s4:pear").Value("stray").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	delete(want, "stock:s2:pear")
	delete(want, "price:s2:pear")
	want["price:s4:pear"] = "2.50"
	step("value not encodable", `UPDATE inv SET store = 's4', qty = 'many' WHERE store = 's2'`, 3)
}

// TestToast: an update that leaves a large (TOASTed) value unchanged still
// writes the whole value, with the default replica identity (the row is read
// back) and with REPLICA IDENTITY FULL (from the old row).
func TestToast(t *testing.T) {
	e := newEnv(t, `CREATE TABLE d (id int PRIMARY KEY, body text, n int);
		CREATE TABLE df (id int PRIMARY KEY, body text, n int); ALTER TABLE df REPLICA IDENTITY FULL`)
	cfg := e.config("  d: {table: d, key: \"d:{id}\", value: {columns: [id, body, n]}}\n  df: {table: df, key: \"df:{id}\", value: {columns: [id, body, n]}}\n")
	f := e.start(cfg)
	// md5 chains do not compress, so the value is stored out of line.
	big := `(SELECT string_agg(md5(g::text || $1), '') FROM generate_series(1, 400) g)`
	for _, tbl := range []string{"d", "df"} {
		e.exec(`INSERT INTO `+tbl+` VALUES (1, `+big+`, 0)`, tbl)
		e.exec(`UPDATE ` + tbl + ` SET n = n + 1 WHERE id = 1`)
		e.exec(`UPDATE ` + tbl + ` SET n = n + 1 WHERE id = 1`)
	}
	want := func() map[string]string {
		return e.rows(`SELECT 'd:' || id, json_build_object('id', id, 'body', body, 'n', n)::text FROM d
			UNION ALL SELECT 'df:' || id, json_build_object('id', id, 'body', body, 'n', n)::text FROM df`)
	}
	e.waitEqual("d*", func() map[string]string {
		m := want()
		for k, v := range m { // json_build_object spaces its output
			m[k] = strings.NewReplacer(`" : `, `":`, `, "`, `,"`).Replace(v)
		}
		return m
	})
	if len(e.snapshot("d:1")["d:1"]) < 12000 {
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
	e := newEnv(t, `CREATE TABLE d (id int PRIMARY KEY, body text, n int)`)
	cfg := e.config("  d: {table: d, key: \"d:{id}\", value: {format: string, column: n}}\n  b: {table: d, key: \"b:{id}\", value: {columns: [body]}}\n")
	f := e.start(cfg)
	e.exec(`INSERT INTO d VALUES (1, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g), 0)`)
	e.waitEqual("d:*", lit(map[string]string{"d:1": "0"}))
	e.exec(`BEGIN; UPDATE d SET id = 2, n = 1 WHERE id = 1; DELETE FROM d WHERE id = 2; INSERT INTO d VALUES (3, 'x', 3); COMMIT`)
	e.waitEqual("*", lit(map[string]string{"d:3": "3", "b:3": `{"body":"x"}`}))
	if n := f.Stats.MapErrors.Load(); n != 0 {
		t.Fatalf("map errors = %d", n)
	}
}

// TestRebuildOnRequest: a cache named in Rebuild (cachesync resync) is
// cleared of stray keys and refilled; a changed mapping rebuilds on its own.
func TestRebuildOnRequest(t *testing.T) {
	e := newEnv(t, `CREATE TABLE q (id int PRIMARY KEY, v text); INSERT INTO q SELECT g, 'v' || g FROM generate_series(1, 100) g`)
	cfg := e.config("  q: {table: q, key: \"q:{id}\", value: {format: string, column: v}}\n")
	f := e.start(cfg)
	want := func() map[string]string { return e.rows(`SELECT 'q:' || id, v FROM q`) }
	e.waitEqual("q:*", want)
	f.stop(t)

	ctx := context.Background()
	e.client.Do(ctx, e.client.B().Set().Key("q:5").Value("wrong").Build())
	e.client.Do(ctx, e.client.B().Set().Key("q:1000").Value("stray").Build())
	f = e.start(cfg, func(f *changefeed.Feed) { f.Rebuild = []string{"q"} })
	e.waitEqual("q:*", want)
	f.stop(t)

	cfg = e.config("  q: {table: q, key: \"q:{id}\", value: {format: json, columns: [v]}}\n")
	e.start(cfg)
	e.waitEqual("q:*", func() map[string]string { return e.rows(`SELECT 'q:' || id, '{"v":"' || v || '"}' FROM q`) })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestResume: a restarted feed resumes from its slot without a rebuild, even
// after the slot moved past unrelated WAL, and applies what changed meanwhile.
func TestResume(t *testing.T) {
	e := newEnv(t, `CREATE TABLE m (id int PRIMARY KEY, v text); CREATE TABLE other (id int);
		INSERT INTO m SELECT g, 'v' || g FROM generate_series(1, 100) g`)
	cfg := e.config("  m: {table: m, key: \"m:{id}\", value: {format: string, column: v}}\n")
	want := func() map[string]string { return e.rows(`SELECT 'm:' || id, v FROM m`) }
	f := e.start(cfg)
	e.waitEqual("m:*", want)
	e.exec(`UPDATE m SET v = 'x' WHERE id = 1`)
	e.waitEqual("m:*", want)

	// Unrelated WAL: the slot's confirmed position must still move past it.
	var before string
	if err := e.db.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, cfg.SlotName("db")).Scan(&before); err != nil {
		t.Fatal(err)
	}
	e.exec(`INSERT INTO other SELECT generate_series(1, 10000)`)
	var target string
	if err := e.db.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&target); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		var ok bool
		err := e.db.QueryRow(context.Background(), `SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1`,
			cfg.SlotName("db"), target).Scan(&ok)
		return err == nil && ok
	})
	if err := f.stop(t); err != nil {
		t.Fatal(err)
	}

	e.exec(`UPDATE m SET v = 'while stopped' WHERE id < 10`)
	e.exec(`DELETE FROM m WHERE id > 90`)
	f = e.start(cfg)
	e.waitEqual("m:*", want)
	if n := f.Stats.Rebuilds.Load(); n != 0 {
		t.Fatalf("rebuilds after restart = %d, want 0 (resume from the slot)", n)
	}
}

// TestStandby: a second feed of the same config waits for the first and
// touches nothing; when the first stops, it takes over without a rebuild.
func TestStandby(t *testing.T) {
	e := newEnv(t, `CREATE TABLE s (id int PRIMARY KEY, v text); INSERT INTO s SELECT g, 'v' || g FROM generate_series(1, 100) g`)
	cfg := e.config("  s: {table: s, key: \"s:{id}\", value: {format: string, column: v}}\n")
	want := func() map[string]string { return e.rows(`SELECT 's:' || id, v FROM s`) }
	a := e.start(cfg)
	e.waitEqual("s:*", want)
	b := e.start(cfg)
	waitFor(t, func() bool { return b.Stats.Reconnects.Load() >= 2 }) // it tried, and waits
	e.exec(`UPDATE s SET v = 'by a' WHERE id = 1`)
	e.waitEqual("s:*", want)
	if b.Stats.Rebuilds.Load() != 0 || b.Stats.Txns.Load() != 0 || a.Stats.Rebuilds.Load() != 1 {
		t.Fatalf("standby did work while the slot was taken: rebuilds %d, txns %d", b.Stats.Rebuilds.Load(), b.Stats.Txns.Load())
	}
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	e.exec(`UPDATE s SET v = 'by b' WHERE id = 2`)
	e.waitEqual("s:*", want)
	if b.Stats.Rebuilds.Load() != 0 || b.Stats.Txns.Load() == 0 {
		t.Fatalf("standby took over with rebuilds %d, txns %d; want 0 and > 0", b.Stats.Rebuilds.Load(), b.Stats.Txns.Load())
	}
}

// TestPartitioned: a cache of a partitioned table sees the changes of its partitions.
func TestPartitioned(t *testing.T) {
	e := newEnv(t, `CREATE TABLE pt (region text, id int, v text, PRIMARY KEY (region, id)) PARTITION BY LIST (region);
		CREATE TABLE pt_eu PARTITION OF pt FOR VALUES IN ('eu'); CREATE TABLE pt_us PARTITION OF pt FOR VALUES IN ('us');
		INSERT INTO pt VALUES ('eu', 1, 'a'), ('us', 1, 'b')`)
	cfg := e.config("  pt: {table: pt, key: \"pt:{region}:{id}\", value: {format: string, column: v}}\n")
	e.start(cfg)
	want := func() map[string]string { return e.rows(`SELECT 'pt:' || region || ':' || id, v FROM pt`) }
	e.waitEqual("pt:*", want)
	e.exec(`INSERT INTO pt VALUES ('eu', 2, 'c'), ('us', 2, 'd'), ('eu', 3, 'e')`)
	e.exec(`UPDATE pt SET v = 'changed' WHERE id = 1`)
	e.exec(`UPDATE pt SET region = 'us' WHERE region = 'eu' AND id = 3`) // moves between partitions
	e.exec(`DELETE FROM pt WHERE region = 'us' AND id = 1`)
	e.waitEqual("pt:*", want)
}

// TestSchemaErrors: a cache that does not fit its live table is refused with
// an error naming the field.
func TestSchemaErrors(t *testing.T) {
	e := newEnv(t, `CREATE TABLE k (a int, b int, c text, PRIMARY KEY (a, b));
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
		cfg := e.config("  c: " + tt.cache + "\n")
		_, err := schema.LoadTables(context.Background(), e.db, []*config.Cache{cfg.Caches["c"]})
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v", tt.cache, err)
		case tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want)):
			t.Errorf("%s: error %v, want %q", tt.cache, err, tt.want)
		}
	}
}
