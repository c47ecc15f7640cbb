package testenv

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/redis/rueidis"
)

// AddReplica starts a node, introduces it to the cluster, makes it a
// replica of primary and waits until it has synced with it. It is added to
// c.Nodes and stopped at cleanup.
func (c *Cluster) AddReplica(tb testing.TB, primary *Redis) *Redis {
	tb.Helper()
	r := startClusterNode(tb)
	if err := c.meet(r); err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	pc, rc := primary.NodeClient(tb), r.NodeClient(tb)
	id, err := pc.Do(ctx, pc.B().ClusterMyid().Build()).ToString()
	if err != nil {
		tb.Fatal(err)
	}
	if err := rc.Do(ctx, rc.B().ClusterReplicate().NodeId(id).Build()).Error(); err != nil {
		tb.Fatalf("cluster replicate %s: %v", primary.Addr, err)
	}
	WaitFor(tb, "the replica to sync with "+primary.Addr, func() bool {
		info, err := rc.Do(ctx, rc.B().Info().Section("replication").Build()).ToString()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	return r
}

// Owner returns the primary of c that holds key's slot, as its first
// node says.
func (c *Cluster) Owner(tb testing.TB, key string) *Redis {
	tb.Helper()
	var owner *Redis
	if err := c.withNodes(func(ctx context.Context, clients []rueidis.Client) error {
		slot, err := clients[0].Do(ctx, clients[0].B().ClusterKeyslot().Key(key).Build()).AsInt64()
		if err != nil {
			return err
		}
		owners, err := slotOwners(ctx, clients[0])
		if err != nil {
			return err
		}
		for _, n := range c.Nodes {
			if int64(n.Port) == owners[slot] {
				owner = n
			}
		}
		return nil
	}); err != nil {
		tb.Fatalf("owner of %s: %v", key, err)
	}
	if owner == nil {
		tb.Fatalf("no node of the cluster holds %s", key)
	}
	return owner
}

// WaitGone waits until no other node of c names dead as the holder of
// any slot (a replica took its slots over, and every node knows it).
func (c *Cluster) WaitGone(tb testing.TB, dead *Redis) {
	tb.Helper()
	var clients []rueidis.Client
	for _, n := range c.Nodes {
		if n != dead {
			clients = append(clients, n.NodeClient(tb))
		}
	}
	WaitFor(tb, "every node to see "+dead.Addr+"'s slots taken over", func() bool {
		for _, nc := range clients {
			owners, err := slotOwners(context.Background(), nc)
			if err != nil || slices.Contains(owners[:], int64(dead.Port)) {
				return false
			}
		}
		return true
	})
}
