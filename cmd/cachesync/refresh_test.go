package main

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"
)

// TestRefreshRacesFeed: keys with 1 s TTLs are refreshed on expiry by the
// daemon while SQL writers update, delete and re-insert their rows; the
// change feed and the refreshes write the same keys. Once the feed has
// applied the last write, every key equals its row and no deleted row is
// back, checked over a second of further refreshes. A refresh that read a
// row before it was deleted must lose (DESIGN invariant 2): the feed's
// delete ends its lease. (Such a lost race would show for up to the 1 s TTL,
// until the key's next refresh finds no row: the check comes at once.)
func TestRefreshRacesFeed(t *testing.T) {
	b := newBed(t, "refreshrace")
	const n = 200
	b.exec(fmt.Sprintf(`CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
		INSERT INTO t SELECT g, 0 FROM generate_series(1, %d) g`, n))
	cfg := b.writeConfig("refreshrace.yaml", fmt.Sprintf(`name: refreshrace
redis: {url: %q}
sources: {main: {url: %q}}
caches:
  t: {table: t, key: "t:{id}", value: {format: string, column: v}, ttl: 1s, sync: changefeed, refresh: on-expiry}
`, b.redis.URL(), b.dbURL))
	d := b.run(cfg)
	d.waitLog(t, "cachesync running", 30*time.Second)

	ctx := t.Context()
	end := time.Now().Add(8 * time.Second)
	deletes := 0
	for i := 0; time.Now().Before(end); i++ {
		id := 1 + rand.IntN(n)
		var err error
		switch i % 3 {
		case 0:
			_, err = b.db.Exec(ctx, `UPDATE t SET v = v + 1 WHERE id = $1`, id)
		case 1:
			var tag interface{ RowsAffected() int64 }
			tag, err = b.db.Exec(ctx, `DELETE FROM t WHERE id = $1`, id)
			if err == nil && tag.RowsAffected() == 1 {
				deletes++
			}
		default:
			_, err = b.db.Exec(ctx, `INSERT INTO t VALUES ($1, $2) ON CONFLICT DO NOTHING`, id, i)
		}
		if err != nil {
			t.Fatal(err)
		}
		if d.exited() {
			t.Fatalf("daemon exited: %s\n%s", d.state(), tail(d.stderr.String(), 30))
		}
	}

	want := func() map[string]string {
		rows, err := b.db.Query(ctx, `SELECT id, v FROM t`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		m := map[string]string{}
		for rows.Next() {
			var id, v int
			if err := rows.Scan(&id, &v); err != nil {
				t.Fatal(err)
			}
			m["t:"+strconv.Itoa(id)] = strconv.Itoa(v)
		}
		return m
	}()
	// The feed has applied everything once it applied a last insert.
	b.exec(fmt.Sprintf(`INSERT INTO t VALUES (%d, 7)`, n+1))
	want[fmt.Sprintf("t:%d", n+1)] = "7"
	deadline := time.Now().Add(20 * time.Second)
	for {
		if v, err := b.rc.Do(ctx, b.rc.B().Get().Key(fmt.Sprintf("t:%d", n+1)).Build()).ToString(); err == nil && v == "7" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the feed did not apply the last insert")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Keys keep expiring and coming back: a key may be missing for a
	// moment (its refresh on the way), never stale, never a deleted row's.
	for range 5 {
		got, err := redisStrings(ctx, b.rc, "t:*")
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range got {
			if w, ok := want[k]; !ok {
				t.Fatalf("%s = %s, but its row is deleted", k, v)
			} else if v != w && v != "<not a string>" {
				t.Fatalf("%s = %s, its row holds %s", k, v, w)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%d deletes among the writes; %d rows remain", deletes, len(want))
	if deletes == 0 {
		t.Fatal("no row was deleted: the test tested nothing")
	}
	d.stopOK(t)
}
