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
// change feed and the refreshes write the same keys. After each burst of
// writes, once the feed has applied it, every key equals its row and no
// deleted row is back; so too over a second of refreshes after the last.
// A refresh that read a row before it was deleted must lose (DESIGN
// invariant 2): the feed's delete ends its lease. Here a refresh's write
// nearly always lands before the feed's delete, which then removes it, so
// the lost race itself is rare; TestReloadLoses (package cachesync) stages
// it step by step.
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
	// Rounds: a burst of writes, then a barrier (an insert the feed must
	// apply, after all the burst), then every key against its row. A
	// refresh that wrote a row it read before a change shows at the next
	// check: it lasts until the key's next expiry, a second later.
	deletes, marker := 0, n
	end := time.Now().Add(8 * time.Second)
	for round := 0; time.Now().Before(end); round++ {
		burst := time.Now().Add(300 * time.Millisecond)
		for i := 0; time.Now().Before(burst); i++ {
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
		}
		if d.exited() {
			t.Fatalf("daemon exited: %s\n%s", d.state(), tail(d.stderr.String(), 30))
		}
		marker++
		want := rowsOf(t, b, marker)
		checkKeys(t, b, want, fmt.Sprintf("round %d", round))
	}
	// Keys keep expiring and coming back after the writes stop.
	for range 5 {
		checkKeys(t, b, rowsOf(t, b, 0), "after the writes")
		time.Sleep(200 * time.Millisecond)
	}
	want := rowsOf(t, b, 0)
	t.Logf("%d deletes among the writes; %d rows remain", deletes, len(want))
	if deletes == 0 {
		t.Fatal("no row was deleted: the test tested nothing")
	}
	d.stopOK(t)
}

// rowsOf reads table t as keys and values; with marker > 0 it first inserts
// row marker (an id the writers never touch) and waits until the feed has
// applied it, and so everything committed before it.
func rowsOf(t *testing.T, b *bed, marker int) map[string]string {
	t.Helper()
	ctx := t.Context()
	if marker > 0 {
		b.exec(fmt.Sprintf(`INSERT INTO t VALUES (%d, -1)`, marker))
		deadline := time.Now().Add(20 * time.Second)
		for {
			if v, err := b.rc.Do(ctx, b.rc.B().Get().Key(fmt.Sprintf("t:%d", marker)).Build()).ToString(); err == nil && v == "-1" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the feed did not apply insert %d", marker)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
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
}

// checkKeys fails when a key holds another value than its row, or is there
// while its row is deleted; a key may be missing (its refresh on the way).
func checkKeys(t *testing.T, b *bed, want map[string]string, when string) {
	t.Helper()
	got, err := redisStrings(t.Context(), b.rc, "t:*")
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range got {
		if w, ok := want[k]; !ok {
			t.Fatalf("%s: %s = %s, but its row is deleted", when, k, v)
		} else if v != w && v != "<not a string>" {
			t.Fatalf("%s: %s = %s, its row holds %s", when, k, v, w)
		}
	}
}
