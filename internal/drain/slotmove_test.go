package drain_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestDrainWhileSlotMoves: the slot of a write-behind cache is moving
// between two Redis Cluster primaries, its queue moved already, its other
// keys not yet: the drainer's reads are redirected (ASK) or refused
// (TRYAGAIN) until the move ends. It waits for the move to end instead of
// ending its session (no "retrying" error, no entry applied twice), and
// drains what comes after.
func TestDrainWhileSlotMoves(t *testing.T) {
	ctx := context.Background()
	c := testenv.StartCluster(t, 3)
	e := world.NewOn(t, c.Nodes[0], `CREATE TABLE wb (id int PRIMARY KEY, v bigint NOT NULL)`)
	e.Nodes = c.Nodes
	cfg := e.Config(`  wb: {table: wb, key: "{{wb}}:wb:{id}", value: {format: json, columns: {id: id, v: v}}, sync: none, writes: behind}
`)
	var logs testenv.LogBuffer
	api := e.Open(cfg, engine.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	putBehind(t, api, "wb", map[string]any{"id": 1, "v": 1})
	runDrain(t, api)
	waitRows(e, `SELECT id, v::text FROM wb`, map[int]string{1: "1"})
	waitAcked(e, "wb")

	stream := binding.StreamKey("wb")
	from := c.Owner(t, stream)
	to := c.Nodes[0]
	if to == from {
		to = c.Nodes[1]
	}
	fc := from.NodeClient(t)
	slot, err := fc.Do(ctx, fc.B().ClusterKeyslot().Key(stream).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	asked, tried := from.Refused(t, "ASK"), from.Refused(t, "TRYAGAIN")
	c.StartMove(t, from, to, int(slot), stream)
	world.WaitFor(t, "the drainer's read redirected or refused while the slot moves", func() bool {
		return from.Refused(t, "ASK") > asked || from.Refused(t, "TRYAGAIN") > tried
	})
	c.MoveSlots(t, from, to, int(slot), int(slot))
	putBehind(t, api, "wb", map[string]any{"id": 2, "v": 2})
	waitRows(e, `SELECT id, v::text FROM wb`, map[int]string{1: "1", 2: "2"})
	waitAcked(e, "wb")
	if lines := logs.Lines("retrying"); len(lines) > 0 {
		t.Fatalf("the drainer ended its session while the slot moved:\n%s", lines[0])
	}
}
