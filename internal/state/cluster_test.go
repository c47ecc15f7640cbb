package state_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/rueidis"

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

// TestAdvanceWhileSlotMoves: a batch of the change feed's writes to a
// Redis Cluster holds a command of two keys of a slot that is moving
// between primaries, one of the keys moved, the other not: Redis refuses
// it until the move ends (TRYAGAIN for a command; the fenced script's
// step is told its node does not serve the keys). Advance waits for the move to end,
// then the batch is written and the applied LSN advanced, instead of
// failing (which ended the feed's session).
func TestAdvanceWhileSlotMoves(t *testing.T) {
	c := testenv.StartCluster(t, 3)
	cl := c.Client(t)
	ctx := context.Background()
	s := state.New(cl, "moves")
	w, err := s.Claim(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := s.Forget(ctx, "db", nil, true, 100); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"{m}a", "{m}b"} {
		if err := cl.Do(ctx, cl.B().Set().Key(k).Value("1").Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	from := c.Owner(t, "{m}")
	to := c.Nodes[0]
	if to == from {
		to = c.Nodes[1]
	}
	fc := from.NodeClient(t)
	slot, err := fc.Do(ctx, fc.B().ClusterKeyslot().Key("{m}").Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	// A command of both keys is refused (TRYAGAIN), and a script's step
	// of both told it does not serve them (ERR ... non local key).
	refused := func() int { return from.Refused(t, "TRYAGAIN") + from.Refused(t, "ERR") }
	before := refused()
	c.StartMove(t, from, to, int(slot), "{m}a")

	done := make(chan error, 1)
	go func() {
		done <- w.Advance(ctx, []rueidis.Completed{cl.B().Set().Key("{x}c").Value("1").Build(), cl.B().Unlink().Key("{m}a", "{m}b").Build()}, 100, 200)
	}()
	testenv.WaitFor(t, "Redis to refuse the write of both keys while the slot moves", func() bool { return refused() > before })
	c.MoveSlots(t, from, to, int(slot), int(slot))
	if err := <-done; err != nil {
		t.Fatalf("Advance while a slot moved: %v", err)
	}
	if n, err := cl.Do(ctx, cl.B().Exists().Key("{m}a").Build()).AsInt64(); err != nil || n != 0 {
		t.Fatalf("{m}a still there (%d, %v) after the batch that removes it", n, err)
	}
	if lsn, ok, err := s.Applied(ctx, "db"); err != nil || !ok || lsn != 200 {
		t.Fatalf("applied LSN %v (%v, %v) after Advance to 200", lsn, ok, err)
	}
}
