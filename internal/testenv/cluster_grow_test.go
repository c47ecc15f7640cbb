package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// TestClusterGrow: a primary added to a running three-primary Cluster and
// given slots of the first takes their keys with their values and TTLs;
// the same client reads every key after each move; a new Cluster client
// lists the node once it holds slots, and not once, its slots moved away,
// it is taken out of the cluster.
func TestClusterGrow(t *testing.T) {
	c := StartCluster(t, 3)
	rc := c.Client(t)
	ctx := context.Background()
	const n = 2000 // about 60 in the 500 slots moved
	var sets rueidis.Commands
	for i := range n {
		sets = append(sets, rc.B().Set().Key(fmt.Sprint("k", i)).Value(fmt.Sprint(i)).Ex(time.Hour).Build())
	}
	for _, res := range rc.DoMulti(ctx, sets...) {
		if err := res.Error(); err != nil {
			t.Fatal(err)
		}
	}
	fourth := c.AddPrimary(t)
	if len(c.Nodes) != 4 || c.Nodes[3] != fourth {
		t.Fatalf("c.Nodes has %d nodes after AddPrimary, want 4 ending with the new one", len(c.Nodes))
	}
	if got := nodesOf(t, c); got != 3 {
		t.Errorf("a new client lists %d nodes while the fourth holds no slot, want 3", got)
	}

	c.MoveSlots(t, c.Nodes[0], fourth, 0, 499)
	nc := fourth.NodeClient(t)
	moved, err := nc.Do(ctx, nc.B().Dbsize().Build()).AsInt64()
	if err != nil || moved == 0 {
		t.Fatalf("the fourth node holds %d keys (%v), want some of the %d", moved, err, n)
	}
	check := func(when string) {
		t.Helper()
		var reads rueidis.Commands
		for i := range n {
			k := fmt.Sprint("k", i)
			reads = append(reads, rc.B().Get().Key(k).Build(), rc.B().Pttl().Key(k).Build())
		}
		res := rc.DoMulti(ctx, reads...) // by slot
		for i := range n {
			v, err := res[2*i].ToString()
			ttl, err2 := res[2*i+1].AsInt64()
			if err != nil || err2 != nil || v != fmt.Sprint(i) || ttl <= 0 {
				t.Fatalf("%s: k%d = %q (%v), PTTL %d (%v); want %d with a TTL", when, i, v, err, ttl, err2, i)
			}
		}
	}
	check("after the move")
	if got := nodesOf(t, c); got != 4 {
		t.Errorf("a new client lists %d nodes once the fourth holds slots, want 4", got)
	}
	key := fourth.KeyOn(t, "probe:")
	if err := rc.Do(ctx, rc.B().Set().Key(key).Value("1").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if v, err := nc.Do(ctx, nc.B().Get().Key(key).Build()).ToString(); err != nil || v != "1" {
		t.Errorf("GET %s on the fourth node = %q, %v; want the value set through the cluster", key, v, err)
	}

	c.MoveSlots(t, fourth, c.Nodes[1], 0, 499)
	check("after the move back")
	c.RemoveNode(t, fourth)
	check("after the fourth node's removal")
	if len(c.Nodes) != 3 {
		t.Fatalf("c.Nodes has %d nodes after RemoveNode, want 3", len(c.Nodes))
	}
	if got := nodesOf(t, c); got != 3 {
		t.Errorf("a new client lists %d nodes once the fourth was taken out, want 3", got)
	}
}

// nodesOf returns how many nodes a new Cluster client of c lists.
func nodesOf(t *testing.T, c *Cluster) int {
	t.Helper()
	cl, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{c.Nodes[0].Addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	return len(cl.Nodes())
}
