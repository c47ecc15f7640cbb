package main

import (
	"context"
	"math"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"

	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestSentinelFailover: cachesync on a primary that a Redis Sentinel
// watches, through a redis-sentinel:// URL.
//
// A planned failover (SENTINEL FAILOVER): the daemon follows the new
// primary and goes on applying changes.
//
// Then a crash that loses acknowledged writes: the replica stops reading
// (SIGSTOP, its link cut) while the daemon applies changes to the primary, which
// acknowledges them (and the slot confirms them); the primary is killed,
// the replica resumes and is promoted without them. The daemon notices
// that the applied position recorded in Redis went back and rebuilds:
// Redis ends equal to the table.
func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	s := testenv.StartSentinel(t)
	w := world.NewOn(t, s.Primary, itemsSchema(200))
	w.RC = s.Client(t) // the world reads whichever is primary
	cfg := w.WriteYAML(strings.Replace(w.YAML(itemsCaches), s.Primary.URL(), s.URL(), 1))
	d := w.Daemon(cfg)
	d.WaitLog("streaming changes")
	waitItems(w)

	s.Failover(t)
	s.WaitPrimary(t, s.Replica)
	w.Exec(`UPDATE items SET val = val + 1, note = 'after the failover' WHERE id <= 50`)
	waitItems(w)

	// Now s.Replica is the primary and s.Primary its replica, once it
	// follows.
	old := s.Primary.NodeClient(t)
	world.WaitFor(t, "the old primary to replicate from the new one", func() bool {
		info, err := old.Do(context.Background(), old.B().Info().Section("replication").Build()).ToString()
		return err == nil && strings.Contains(info, "role:slave") && strings.Contains(info, "master_link_status:up")
	})
	rebuilt := len(d.Stderr.Lines("cache rebuilt"))
	cutReplica(t, s.Primary, s.Replica)
	w.Exec(`UPDATE items SET val = val + 1, note = 'acknowledged, never replicated' WHERE id > 150`)
	waitItems(w)        // applied and acknowledged by the primary; the replica has none of it
	waitConfirmed(t, w) // and the slot will not send them again
	if err := s.Replica.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(s.Primary.PID(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	s.WaitPrimary(t, s.Primary)
	d.WaitFor("a rebuild after the failover", func() bool { return len(d.Stderr.Lines("cache rebuilt")) > rebuilt })
	w.Exec(`UPDATE items SET val = val + 1 WHERE id = 1`)
	waitItems(w)
}

// TestClusterFailover: a Redis Cluster primary that does not hold
// cachesync's state record acknowledges changes its replica never got
// (stopped), is killed, and the replica takes over. The state record,
// on another node, shows nothing; the primaries' replication IDs do: the
// daemon rebuilds, and Redis ends equal to the table.
func TestClusterFailover(t *testing.T) {
	t.Parallel()
	c, w, d := clusterItems(t, 300)
	holder := c.Owner(t, binding.StateKey(w.Name))
	primary := c.Nodes[0]
	if primary == holder {
		primary = c.Nodes[1]
	}
	replica := c.AddReplica(t, primary)
	rebuilt := len(d.Stderr.Lines("cache rebuilt"))

	cutReplica(t, replica, primary)
	w.Exec(`UPDATE items SET val = val + 1, note = 'acknowledged, never replicated'`)
	waitItems(w)
	waitConfirmed(t, w)
	if err := primary.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(replica.PID(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	rc := replica.NodeClient(t)
	if err := rc.Do(t.Context(), rc.B().ClusterFailover().Takeover().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	c.WaitGone(t, primary)
	waitItems(w)
	if len(d.Stderr.Lines("cache rebuilt")) == rebuilt {
		t.Fatalf("Redis equals the table, but the daemon did not rebuild:\n%s", d.Tail(20))
	}
}

// clusterItems runs the daemon with the items cache of rows rows on a
// three-primary Cluster, and returns them once Redis holds the table.
func clusterItems(t *testing.T, rows int) (*testenv.Cluster, *world.World, *world.Proc) {
	t.Helper()
	c := testenv.StartCluster(t, 3)
	w := world.NewOn(t, c.Nodes[0], itemsSchema(rows))
	d := w.Daemon(w.WriteConfig(itemsCaches))
	d.WaitLog("streaming changes")
	waitItems(w)
	return c, w, d
}

// waitConfirmed waits until the world's slot has confirmed every change
// committed so far: PostgreSQL will not send them again.
func waitConfirmed(t *testing.T, w *world.World) {
	t.Helper()
	var lsn string
	if err := w.DB.QueryRow(t.Context(), `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	world.WaitFor(t, "the slot to confirm the changes", func() bool {
		var ok bool
		err := w.DB.QueryRow(t.Context(), `SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE slot_name = $2`, lsn, "cachesync_"+w.Name).Scan(&ok)
		return err == nil && ok
	})
}

// cutReplica stops replica (SIGSTOP) and ends its link with primary, so
// it gets nothing of what primary is sent from now on, until SIGCONT: not
// even bytes in its socket's buffers, which a stopped process would read
// once resumed.
func cutReplica(t *testing.T, replica, primary *testenv.Redis) {
	t.Helper()
	if err := syscall.Kill(replica.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	pc := primary.NodeClient(t)
	if n, err := pc.Do(t.Context(), pc.B().ClientKill().TypeReplica().Build()).AsInt64(); err != nil || n != 1 {
		t.Fatalf("CLIENT KILL TYPE replica: %d, %v", n, err)
	}
}

// TestClusterPlannedFailover: a replica joins a Cluster primary while
// changes stream. The primary starts a new replication history for it (a
// new replication ID), having lost nothing: the daemon takes the new ID
// without a rebuild. Then the replica takes over by CLUSTER FAILOVER (no
// FORCE, no TAKEOVER: it waits until it has every write of its primary,
// so nothing is lost). The primary's replication ID is gone from the
// primaries, which the daemon cannot tell from a failover that lost
// writes: as documented, it rebuilds the caches, and Redis ends equal to
// the table.
func TestClusterPlannedFailover(t *testing.T) {
	t.Parallel()
	c, w, d := clusterItems(t, 1000)
	iw := newItemWriter(w, rand.New(rand.NewPCG(3, 4)), 1000, 1100)
	iw.start(t, math.MaxInt64) // until stopped
	iw.reach(t, 100)
	rebuilt := len(d.Stderr.Lines("cache rebuilt"))

	primary := c.Nodes[1]
	before := primary.Info(t, "replication", "master_replid")
	replica := c.AddReplica(t, primary)
	renewed := primary.Info(t, "replication", "master_replid")
	if renewed == before {
		t.Fatalf("the primary kept its replication ID %s when its first replica attached", before)
	}
	d.WaitFor("the state record to name the primary's new replication ID", func() bool {
		ids, err := w.RC.Do(context.Background(), w.RC.B().Hget().Key(binding.StateKey(w.Name)).Field("primaries:db").Build()).ToString()
		return err == nil && strings.Contains(ids, renewed)
	})
	if n := len(d.Stderr.Lines("cache rebuilt")); n != rebuilt {
		t.Fatalf("the daemon rebuilt when a replica joined a primary (nothing was lost):\n%s", d.Tail(10))
	}

	rc := replica.NodeClient(t)
	if err := rc.Do(t.Context(), rc.B().ClusterFailover().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	c.WaitGone(t, primary) // the replica holds the slots, as every node says
	d.WaitFor("a rebuild after the failover", func() bool { return len(d.Stderr.Lines("cache rebuilt")) > rebuilt })
	iw.reach(t, iw.updates.Load()+100)
	lsn := iw.stop(t)
	waitItems(w)
	d.Stop()
	requireConfirmed(w, lsn)
	if lines := d.Stderr.Lines("failed over"); len(lines) == 0 {
		t.Errorf("the daemon rebuilt, but never said a primary failed over:\n%s", d.Tail(20))
	}
}
