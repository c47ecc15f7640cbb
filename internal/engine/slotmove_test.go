package engine_test

import (
	"context"
	"fmt"
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

// TestFillWhileSlotMoves: a key's slot is moving between two Redis
// Cluster primaries. A Get's fill (its lease taken on the node the slot
// moves to, the key not there) and an Invalidate (the key on the node it
// moves from, its companions not) are refused by Redis (TRYAGAIN) until
// the move ends: each waits for it, and then does what it does.
func TestFillWhileSlotMoves(t *testing.T) {
	ctx := context.Background()
	c := testenv.StartCluster(t, 3)
	e := newEnvOn(t, c.Nodes[0], `CREATE TABLE kv (k text PRIMARY KEY, v text NOT NULL);
		INSERT INTO kv VALUES ('a', 'va'), ('b', 'vb')`)
	api := e.Open(e.Config(`  kv: {table: kv, key: "kv:{k}", value: {format: string, column: v}, sync: none}
`))
	if _, err := api.Get(ctx, "kv", "kv:b"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key string
		do  func() error
	}{
		{"kv:a", func() error {
			v, err := api.Get(ctx, "kv", "kv:a")
			if err == nil && string(v) != "va" {
				err = fmt.Errorf("Get = %q, want va", v)
			}
			return err
		}},
		{"kv:b", func() error { return api.Invalidate(ctx, "kv", "kv:b") }},
	} {
		from := c.Owner(t, tc.key)
		to := c.Nodes[0]
		if to == from {
			to = c.Nodes[1]
		}
		fc := from.NodeClient(t)
		slot, err := fc.Do(ctx, fc.B().ClusterKeyslot().Key(tc.key).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		refused := func() int { return from.Refused(t, "TRYAGAIN") + to.Refused(t, "TRYAGAIN") }
		before := refused()
		c.StartMove(t, from, to, int(slot))
		done := make(chan error, 1)
		go func() { done <- tc.do() }()
		world.WaitFor(t, "Redis to refuse "+tc.key+"'s script while its slot moves", func() bool { return refused() > before })
		c.MoveSlots(t, from, to, int(slot), int(slot))
		if err := <-done; err != nil {
			t.Fatalf("%s while its slot moved: %v", tc.key, err)
		}
	}
	if v, _ := e.Get("kv:a"); v != "va" {
		t.Fatalf("kv:a = %q after its fill, want va", v)
	}
	if _, ok := e.Get("kv:b"); ok {
		t.Fatal("kv:b still there after Invalidate")
	}
}
