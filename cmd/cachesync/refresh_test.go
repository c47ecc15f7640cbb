package main

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv/world"
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
	const n = 200
	w := world.New(t, fmt.Sprintf(`CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
		INSERT INTO t SELECT g, 0 FROM generate_series(1, %d) g`, n))
	d := w.Daemon(w.WriteConfig(`  t: {table: t, key: "t:{id}", value: {format: string, column: v}, ttl: 1s, sync: changefeed, refresh: on-expiry}
`))
	d.WaitLog("cachesync running")

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
				_, err = w.DB.Exec(ctx, `UPDATE t SET v = v + 1 WHERE id = $1`, id)
			case 1:
				var tag interface{ RowsAffected() int64 }
				tag, err = w.DB.Exec(ctx, `DELETE FROM t WHERE id = $1`, id)
				if err == nil && tag.RowsAffected() == 1 {
					deletes++
				}
			default:
				_, err = w.DB.Exec(ctx, `INSERT INTO t VALUES ($1, $2) ON CONFLICT DO NOTHING`, id, i)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if d.Exited() {
			t.Fatalf("daemon exited: %s\n%s", d.State(), d.Tail(30))
		}
		marker++
		checkKeys(w, rowsOf(w, d, marker), fmt.Sprintf("round %d", round))
	}
	// Keys keep expiring and coming back after the writes stop.
	for range 5 {
		checkKeys(w, rowsOf(w, d, 0), "after the writes")
		time.Sleep(200 * time.Millisecond) // lets time pass on purpose: keys expire and are refreshed
	}
	want := rowsOf(w, d, 0)
	t.Logf("%d deletes among the writes; %d rows remain", deletes, len(want))
	if deletes == 0 {
		t.Fatal("no row was deleted: the test tested nothing")
	}
	d.Stop()
}

// rowsOf reads table t as keys and values; with marker > 0 it first inserts
// row marker (an id the writers never touch) and waits until the feed of d
// has applied it, and so everything committed before it.
func rowsOf(w *world.World, d *world.Proc, marker int) map[string]string {
	w.T.Helper()
	if marker > 0 {
		w.Exec(fmt.Sprintf(`INSERT INTO t VALUES (%d, -1)`, marker))
		d.WaitFor(fmt.Sprintf("the feed applying insert %d", marker), func() bool {
			v, _ := w.Get(fmt.Sprintf("t:%d", marker))
			return v == "-1"
		})
	}
	return w.Rows(`SELECT 't:' || id, v::text FROM t`)
}

// checkKeys fails when a key holds another value than its row, or is there
// while its row is deleted; a key may be missing (its refresh on the way).
func checkKeys(w *world.World, want map[string]string, when string) {
	w.T.Helper()
	for k, v := range w.Snapshot("t:*") {
		if wv, ok := want[k]; !ok {
			w.T.Fatalf("%s: %s = %s, but its row is deleted", when, k, v)
		} else if v != wv && v != "" { // "": expired while Snapshot read it
			w.T.Fatalf("%s: %s = %s, its row holds %s", when, k, v, wv)
		}
	}
}
