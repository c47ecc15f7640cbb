package state_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/internal/state"
	"github.com/cachesync/cachesync/internal/testenv"
)

// TestRenewed: a Cluster primary whose first replica attaches takes a new
// replication ID, having lost nothing: Renewed takes the new ID for the
// old one, and nothing is gone. The same primary demoted by a failover and
// promoted back between two checks (its data replaced by its replica's
// meanwhile) takes a new one too, as the same process: it is gone.
func TestRenewed(t *testing.T) {
	c := testenv.StartCluster(t, 3)
	cl := c.Client(t)
	ctx := context.Background()
	info := func() []state.Primary {
		t.Helper()
		ps, err := state.PrimaryInfo(ctx, cl)
		if err != nil {
			t.Fatal(err)
		}
		return ps
	}
	prev := info()
	if len(prev) != 3 {
		t.Fatalf("%d primaries, want 3: %v", len(prev), prev)
	}
	for _, p := range prev {
		if p.ID == "" || p.RunID == "" || p.Epoch == "" {
			t.Fatalf("a primary without its replication ID, run ID or config epoch: %+v", p)
		}
	}
	primary := c.Nodes[1]
	replica := c.AddReplica(t, primary)
	now := info()
	was := state.IDs(prev)
	if state.Gone(was, state.IDs(now)) == "" {
		t.Fatal("no replication ID changed when the primary's first replica attached: the test shows nothing")
	}
	renewed := state.Renewed(was, prev, now)
	if id := state.Gone(renewed, state.IDs(now)); id != "" {
		t.Fatalf("%s is gone after a replica attached to its primary; Renewed gave %v for %v", id, renewed, state.IDs(now))
	}
	slices.Sort(renewed)
	if !slices.Equal(renewed, state.IDs(now)) {
		t.Fatalf("Renewed gave %v, want the primaries' IDs %v", renewed, state.IDs(now))
	}

	failover(t, c, replica, primary, false)
	// (Back at once: a primary votes for one failover of the same slots
	// per two node timeouts, so the second takes them over unvoted.)
	failover(t, c, primary, replica, true)
	back := info()
	if !slices.ContainsFunc(back, func(p state.Primary) bool { return p.RunID == primary.Info(t, "server", "run_id") }) {
		t.Fatalf("the primary is not one again: %v", back)
	}
	if id := state.Gone(state.Renewed(state.IDs(now), now, back), state.IDs(back)); id == "" {
		t.Fatal("a primary demoted and promoted back, its data replaced meanwhile, was taken for the same one")
	}
}

// failover makes replica, a replica of primary, take over (CLUSTER
// FAILOVER, or CLUSTER FAILOVER TAKEOVER) once it replicates from it, and
// waits until every node says it holds the slots.
func failover(t *testing.T, c *testenv.Cluster, replica, primary *testenv.Redis, takeover bool) {
	t.Helper()
	rc := replica.NodeClient(t)
	testenv.WaitFor(t, replica.Addr+" to replicate from "+primary.Addr, func() bool {
		info, err := rc.Do(context.Background(), rc.B().Info().Section("replication").Build()).ToString()
		return err == nil && strings.Contains(info, "role:slave") && strings.Contains(info, "master_link_status:up") &&
			strings.Contains(info, "master_port:"+strconv.Itoa(primary.Port))
	})
	cmd := rc.B().ClusterFailover().Build()
	if takeover {
		cmd = rc.B().ClusterFailover().Takeover().Build()
	}
	if err := rc.Do(context.Background(), cmd).Error(); err != nil {
		t.Fatal(err)
	}
	c.WaitGone(t, primary)
}
