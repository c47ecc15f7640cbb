package refresh_test

import (
	"context"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/keyevents"
	"github.com/cachesync/cachesync/internal/refresh"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestRecordCoversNewPrimary: a key of a refreshing cache lives on a
// primary the refresher does not listen to yet (added by resharding after
// it started; its client, which rescans nothing and never runs a command
// into the moved slots, has not learnt of it). The key's expired event is
// lost, and the expiry record, read through the slot of its own, brings
// the key back with its row's value.
func TestRecordCoversNewPrimary(t *testing.T) {
	e := newEnv(t, "cluster", `CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)`, `
  t: {table: t, key: "t:{id}", value: {format: string, column: v}, ttl: 1s, sync: none, refresh: on-expiry}
`)
	unaware := e.Redis.Client(t)
	r, err := refresh.New(e.cfg, e.api, unaware, world.Logger())
	if err != nil {
		t.Fatal(err)
	}
	testenv.Go(t, r.Run)

	// Slots move from a primary that does not hold the record.
	c := &testenv.Cluster{Nodes: e.Nodes}
	from := 0
	if c.Owner(t, binding.RecordKey("t")) == e.Nodes[0] {
		from = 1
	}
	fourth := c.AddPrimary(t)
	lo := from * 16384 / 3 // testenv.StartCluster's share of the slots
	c.MoveSlots(t, e.Nodes[from], fourth, lo, lo+199)

	key := fourth.KeyOn(t, "t:")
	e.Exec(`INSERT INTO t VALUES ($1, 'first')`, strings.TrimPrefix(key, "t:"))
	// (A fill may lose, to its lease's end on a machine busy for longer:
	// it is set-up here, so it is made again until it writes.)
	world.WaitFor(t, "a fill of "+key, func() bool {
		res, err := e.api.Reload(t.Context(), "t", []string{key}, false)
		if err != nil {
			t.Fatalf("fill %s: %v", key, err)
		}
		if res.Written != 1 {
			t.Logf("fill %s: %+v", key, res)
		}
		return res.Written == 1
	})
	e.Exec(`UPDATE t SET v = 'second' WHERE id = $1`, strings.TrimPrefix(key, "t:"))
	world.WaitFor(t, key+" refreshed from the record after it expired", func() bool { v, _ := e.Get(key); return v == "second" })

	if _, ok := unaware.Nodes()[fourth.Addr]; ok {
		t.Fatal("the refresher's client learnt of the new primary: its event may have been heard")
	}
	nc := fourth.NodeClient(t)
	channel := keyevents.Channel(0, "expired")
	if subs, err := nc.Do(context.Background(), nc.B().PubsubNumsub().Channel(channel).Build()).AsIntMap(); err != nil || subs[channel] != 0 {
		t.Fatalf("%d subscriptions to expired events on the new primary (%v), want none", subs[channel], err)
	}
}
