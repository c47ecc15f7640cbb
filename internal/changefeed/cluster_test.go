package changefeed_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/state"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestClusterAdvanceAfterWrites: on a Redis Cluster the applied LSN the feed
// records (what Put and check wait on) never runs ahead of a value written
// to another node. The node holding the value is paused for writes while
// the change is applied; once the record says the commit is applied, the
// value must read as the new one already.
func TestClusterAdvanceAfterWrites(t *testing.T) {
	ctx := context.Background()
	w := world.NewTopology(t, "cluster", `CREATE TABLE v (id int PRIMARY KEY, x text);
		INSERT INTO v SELECT g, 'old' FROM generate_series(1, 50) g`)
	if w.RC.Mode() != rueidis.ClientModeCluster {
		t.Fatal("not a cluster client")
	}
	nodes := make([]rueidis.Client, len(w.Nodes))
	for i, n := range w.Nodes {
		nodes[i] = n.NodeClient(t)
	}
	// owner returns the node holding key's slot: the others answer MOVED.
	owner := func(key string) int {
		for i, cl := range nodes {
			if err := cl.Do(ctx, cl.B().Exists().Key(key).Build()).Error(); err == nil {
				return i
			}
		}
		t.Fatalf("no node holds %s", key)
		return -1
	}
	rec := state.New(w.RC, w.Name)
	stateNode := owner(rec.Key)
	id, valueNode := 0, -1
	for i := 1; i <= 50 && valueNode < 0; i++ {
		if n := owner(fmt.Sprintf("v:%d", i)); n != stateNode {
			id, valueNode = i, n
		}
	}
	if valueNode < 0 {
		t.Fatal("no key of the table on another node than the state record")
	}
	key := fmt.Sprintf("v:%d", id)
	t.Logf("state %s on node %d, value %s on node %d", rec.Key, stateNode, key, valueNode)

	cfg := w.Config("  v: {table: v, key: \"v:{id}\", value: {format: string, column: x}}\n")
	w.StartFeed(cfg)
	get := func() string { v, _ := w.Get(key); return v }
	world.WaitFor(t, key+" = old", func() bool { return get() == "old" })

	// Writes to the value's node wait for the pause to end; reads go on.
	paused := nodes[valueNode]
	if err := paused.Do(ctx, paused.B().ClientPause().Timeout(3000).Write().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	w.Exec(`UPDATE v SET x = 'new' WHERE id = $1`, id)
	var target pglogrepl.LSN
	if err := w.DB.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()`).Scan(&target); err != nil {
		t.Fatal(err)
	}
	world.WaitFor(t, "the state record says the update is applied", func() bool {
		lsn, ok, err := rec.Applied(ctx, "db")
		return err == nil && ok && lsn >= target
	})
	if v := get(); v != "new" {
		t.Fatalf("the state record says %s is applied, but %s = %q, want \"new\": the applied LSN ran ahead of a write to another node", target, key, v)
	}
}

// TestReplicaJoinedWhileStopped: a Cluster primary whose first replica
// attached while no feed ran took a new replication ID, having lost
// nothing: the next session takes it for the same primary (the same
// process, never promoted) and rebuilds nothing. A failover while no feed
// runs makes the next session rebuild.
func TestReplicaJoinedWhileStopped(t *testing.T) {
	c := testenv.StartCluster(t, 3)
	w := world.NewOn(t, c.Nodes[0], `CREATE TABLE v (id int PRIMARY KEY, x text);
		INSERT INTO v SELECT g, 'v' || g FROM generate_series(1, 50) g`)
	w.Nodes = c.Nodes
	cfg := w.Config("  v: {table: v, key: \"v:{id}\", value: {format: string, column: x}}\n")
	f := w.Feed(cfg)
	if err := f.Stop(); err != nil {
		t.Fatal(err)
	}
	before, err := state.PrimaryInfo(context.Background(), w.RC)
	if err != nil {
		t.Fatal(err)
	}
	replica := c.AddReplica(t, c.Nodes[1])
	after, err := state.PrimaryInfo(context.Background(), w.RC)
	if err != nil {
		t.Fatal(err)
	}
	if state.Gone(state.IDs(before), state.IDs(after)) == "" {
		t.Fatal("no replication ID changed when the replica attached: the test shows nothing")
	}
	w.Exec(`UPDATE v SET x = 'after the replica joined' WHERE id <= 10`)
	f = w.StartFeed(cfg)
	w.WaitEqual("v:*", func() map[string]string { return w.Rows(`SELECT 'v:' || id, x FROM v`) })
	if n := f.Stats.Rebuilds.Load(); n != 0 {
		t.Fatalf("the session after a replica joined rebuilt %d caches, want none", n)
	}

	// A failover while no feed runs still makes the next session rebuild.
	if err := f.Stop(); err != nil {
		t.Fatal(err)
	}
	rc := replica.NodeClient(t)
	if err := rc.Do(t.Context(), rc.B().ClusterFailover().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	c.WaitGone(t, c.Nodes[1])
	w.Exec(`UPDATE v SET x = 'after the failover' WHERE id <= 10`)
	f = w.StartFeed(cfg)
	w.WaitEqual("v:*", func() map[string]string { return w.Rows(`SELECT 'v:' || id, x FROM v`) })
	if n := f.Stats.Rebuilds.Load(); n != 1 {
		t.Fatalf("the session after a failover rebuilt %d caches, want 1", n)
	}
}
