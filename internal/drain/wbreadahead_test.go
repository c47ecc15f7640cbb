package drain_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestWriteBehindReadAheadFailure: the drainer claims entries, reads ahead
// newer ones, and the upsert of the claimed batch fails (its backend is
// terminated while blocked on a row lock). Nothing may be acknowledged or
// trimmed that was not committed: every write, each to its own key, must
// reach the table, with no kill and no restart.
func TestWriteBehindReadAheadFailure(t *testing.T) {
	e := world.New(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)`)
	e.Exec(`INSERT INTO t VALUES (1, 0)`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {columns: [id, v]}, sync: none, writes: behind}` + "\n")
	c := e.Open(cfg)
	ctx := context.Background()
	put := func(id, v int) { putBehind(t, c, "t", map[string]any{"id": id, "v": v}) }
	stream := binding.StreamKey("t")
	put(1, 1) // P: read by a drainer that crashed
	if err := e.RC.Do(ctx, e.RC.B().XgroupCreate().Key(stream).Group("cachesync").Id("0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := e.RC.Do(ctx, e.RC.B().Xreadgroup().Group("cachesync", "crashed").Count(1000).Streams().Key(stream).Id(">").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	want := map[int]string{1: "1"}
	for id := 11; id <= 20; id++ { // U: unread; the read-ahead takes them
		put(id, id)
		want[id] = fmt.Sprint(id)
	}
	tx := e.LockRows(`SELECT * FROM t WHERE id = 1 FOR UPDATE`)
	runDrain(t, c)
	// Wait until the claimed batch blocks on the lock and the read-ahead
	// has taken the 10 newer entries (11 pending), then fail the upsert.
	pid := world.WaitSession(t, e.DB, "the drainer's upsert blocks", `wait_event_type = 'Lock' AND datname = current_database()`)
	world.WaitFor(t, "the drainer reads ahead", func() bool {
		p, err := e.RC.Do(ctx, e.RC.B().Xpending().Key(stream).Group("cachesync").Build()).ToArray()
		if err != nil {
			t.Fatal(err)
		}
		n, _ := p[0].AsInt64()
		return n == 11
	})
	if _, err := e.DB.Exec(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	tx.Rollback(ctx)
	put(21, 21) // later writes are committed, acknowledged and trimmed
	want[21] = "21"
	waitRows(e, `SELECT id, v::text FROM t`, want)
}
