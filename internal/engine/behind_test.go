package engine_test

import (
	"context"
	"testing"

	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestPutBehindWhileSlotMoves: the slot of a write-behind cache (its keys
// and its queue) is moving between two Redis Cluster primaries, its queue
// moved already, its keys not yet: Redis refuses PutBehind's script
// (TRYAGAIN: some of its keys moved, some not) until the move ends.
// PutBehind waits for it to end instead of failing, and its write is
// queued.
func TestPutBehindWhileSlotMoves(t *testing.T) {
	ctx := context.Background()
	c := testenv.StartCluster(t, 3)
	e := newEnvOn(t, c.Nodes[0], `CREATE TABLE wb (id int PRIMARY KEY, v bigint NOT NULL)`)
	cfg := e.Config(`  wb: {table: wb, key: "{{wb}}:wb:{id}", value: {format: json, columns: {id: id, v: v}}, sync: none, writes: behind}
`)
	api := e.Open(cfg)
	if _, err := api.PutBehind(ctx, "wb", map[string]any{"id": 1, "v": 1}); err != nil {
		t.Fatal(err)
	}
	from := c.Owner(t, binding.StreamKey("wb"))
	to := c.Nodes[0]
	if to == from {
		to = c.Nodes[1]
	}
	fc := from.NodeClient(t)
	slot, err := fc.Do(ctx, fc.B().ClusterKeyslot().Key(binding.StreamKey("wb")).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	before := from.Refused(t, "TRYAGAIN")
	c.StartMove(t, from, to, int(slot), binding.StreamKey("wb"))

	done := make(chan error, 1)
	go func() {
		_, err := api.PutBehind(ctx, "wb", map[string]any{"id": 2, "v": 2})
		done <- err
	}()
	world.WaitFor(t, "Redis to refuse PutBehind's script while the slot moves", func() bool { return from.Refused(t, "TRYAGAIN") > before })
	c.MoveSlots(t, from, to, int(slot), int(slot))
	if err := <-done; err != nil {
		t.Fatalf("PutBehind while the slot moved: %v", err)
	}
	if v, _ := e.Get("{wb}:wb:2"); v != `{"id":2,"v":2}` {
		t.Fatalf("{wb}:wb:2 = %q after PutBehind, want its value", v)
	}
	n, err := e.RC.Do(ctx, e.RC.B().Xlen().Key(binding.StreamKey("wb")).Build()).AsInt64()
	if err != nil || n < 2 {
		t.Fatalf("the queue holds %d entries (%v), want both writes", n, err)
	}
}
