package drain_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"testing"

	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/drain"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// drain runs c.Drain until the test ends.
func runDrain(t *testing.T, c *engine.Engine) {
	testenv.Go(t, func(ctx context.Context) error { return drain.Run(ctx, c) })
}

// waitRows waits until query returns want (id -> value text).
func waitRows(e *world.World, query string, want map[int]string) {
	e.T.Helper()
	var got map[int]string
	if !world.Within(world.Patience, func() bool {
		got = map[int]string{}
		rows, err := e.DB.Query(context.Background(), query)
		if err != nil {
			e.T.Fatal(err)
		}
		for rows.Next() {
			var id int
			var v string
			rows.Scan(&id, &v)
			got[id] = v
		}
		return maps.Equal(got, want)
	}) {
		e.T.Fatalf("table has %v, want %v", got, want)
	}
}

// TestWriteBehind: values are in Redis at once, PostgreSQL gets the last
// write of each key, a refused row goes to the dead-letter stream with its
// key invalidated, and the rest drains.
func TestWriteBehind(t *testing.T) {
	e := world.New(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL CHECK (v >= 0))`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {columns: [id, v]}, sync: none, writes: behind}` + "\n")
	c := e.Open(cfg)
	ctx := context.Background()
	want := map[int]string{}
	for i := range 200 {
		id, v := i%10, i
		putBehind(t, c, "t", map[string]any{"id": id, "v": v})
		want[id] = fmt.Sprint(v)
		if got, _ := e.Get(fmt.Sprintf("t:%d", id)); got != fmt.Sprintf(`{"id":%d,"v":%d}`, id, v) {
			t.Fatalf("redis t:%d = %s right after PutBehind", id, got)
		}
	}
	putBehind(t, c, "t", map[string]any{"id": 99, "v": -1}) // refused by the CHECK
	putBehind(t, c, "t", map[string]any{"id": 100, "v": 1})
	want[100] = "1"
	runDrain(t, c)
	waitRows(e, `SELECT id, v::text FROM t`, want)
	// Dead letters and acknowledgements come once the rest committed, a
	// moment after the rows are seen: every entry leaves the stream.
	waitDrained(e, "t")

	dead, err := e.RC.Do(ctx, e.RC.B().Xrange().Key(binding.DeadLetterKey("t")).Start("-").End("+").Build()).AsXRange()
	if err != nil || len(dead) != 1 || dead[0].FieldValues["key"] != "t:99" || dead[0].FieldValues["error"] == "" {
		t.Fatalf("dead letters %v, %v; want one for t:99 with its error", dead, err)
	}
	if _, ok := e.Get("t:99"); ok {
		t.Fatal("t:99 still holds the refused value")
	}
	for _, bad := range []map[string]any{{"v": 1}, {"id": nil, "v": 1}, {"id": 1}, {"id": 1, "v": 1, "colour": "red"}} {
		if _, err := c.PutBehind(ctx, "t", bad); !errors.Is(err, engine.ErrBadRow) {
			t.Errorf("PutBehind(%v) error %v, want ErrBadRow", bad, err)
		}
	}
}

// TestWriteBehindTakeover: entries a crashed drainer read but never
// acknowledged are applied by the next one before newer entries, so each
// key ends with its last write.
func TestWriteBehindTakeover(t *testing.T) {
	e := world.New(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {columns: [id, v]}, sync: none, writes: behind}` + "\n")
	c := e.Open(cfg)
	ctx := context.Background()
	put := func(id, v int) { putBehind(t, c, "t", map[string]any{"id": id, "v": v}) }
	for i := range 50 {
		put(i%5, i)
	}
	// A drainer reads them all and dies before writing or acknowledging.
	stream := binding.StreamKey("t")
	if err := e.RC.Do(ctx, e.RC.B().XgroupCreate().Key(stream).Group("cachesync").Id("0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	read, err := e.RC.Do(ctx, e.RC.B().Xreadgroup().Group("cachesync", "crashed").Count(1000).Streams().Key(stream).Id(">").Build()).AsXRead()
	if err != nil || len(read[stream]) != 50 {
		t.Fatalf("read %d, %v", len(read[stream]), err)
	}
	// Newer writes of the same keys arrive; a new drainer starts at once.
	for i := 50; i < 60; i++ {
		if i%2 == 0 {
			put(i%5, i)
		}
	}
	runDrain(t, c)
	waitRows(e, `SELECT id, v::text FROM t`, map[int]string{0: "50", 1: "56", 2: "52", 3: "58", 4: "54"})
	// Acknowledged after their commit, a moment after the rows are seen.
	waitAcked(e, "t")
}

func TestMain(m *testing.M) { world.Main(m) }
