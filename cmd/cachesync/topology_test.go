package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestRefreshOnNewPrimary: the daemon refreshes a cache on expiry on a
// three-primary Cluster; a fourth primary joins and takes slots of the
// first while it runs (resharding). The daemon subscribes to expired
// events on the new node and enables its keyspace events there, with no
// restart; then a key of a moved slot that a plain Redis client set to
// expire (SET with PX: nothing in the expiry record, only the event
// tells) expires on the new node and is back with its row's value.
func TestRefreshOnNewPrimary(t *testing.T) {
	w := world.NewTopology(t, "cluster", `CREATE TABLE kv (k text PRIMARY KEY, v text NOT NULL)`)
	c := &testenv.Cluster{Nodes: w.Nodes}
	d := w.Daemon(w.WriteConfig(`  kv: {table: kv, key: "kv:{k}", value: {format: string, column: v}, sync: none, ttl: 1h, refresh: on-expiry}
`))
	d.WaitLog("cachesync running")

	fourth := c.AddPrimary(t)
	c.MoveSlots(t, w.Nodes[0], fourth, 0, 199)
	nc := fourth.NodeClient(t)
	const channel = "__keyevent@0__:expired"
	d.WaitFor("the daemon listening for expired events on the new node, their flags on", func() bool {
		subs, err := nc.Do(context.Background(), nc.B().PubsubNumsub().Channel(channel).Build()).AsIntMap()
		flags, err2 := nc.Do(context.Background(), nc.B().ConfigGet().Parameter("notify-keyspace-events").Build()).AsStrMap()
		f := flags["notify-keyspace-events"]
		return err == nil && err2 == nil && subs[channel] > 0 && strings.Contains(f, "E") && (strings.Contains(f, "x") || strings.Contains(f, "A"))
	})

	key := fourth.KeyOn(t, "kv:")
	w.Exec(`INSERT INTO kv VALUES ($1, 'from the table')`, strings.TrimPrefix(key, "kv:"))
	w.Do(w.RC.B().Set().Key(key).Value("set by hand").Px(300 * time.Millisecond).Build())
	d.WaitFor(key+" refreshed from the table", func() bool { v, _ := w.Get(key); return v == "from the table" })
	d.Stop()
}
