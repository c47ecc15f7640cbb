package testenv

import (
	"context"
	"strings"
	"testing"
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
	waitUntil(tb, "the replica to sync with "+primary.Addr, func() bool {
		info, err := rc.Do(ctx, rc.B().Info().Section("replication").Build()).ToString()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	return r
}

// Owner returns the primary of c that holds key's slot.
func (c *Cluster) Owner(tb testing.TB, key string) *Redis {
	tb.Helper()
	for _, n := range c.Nodes {
		nc := n.NodeClient(tb)
		// A node answers for its own slots; another redirects (MOVED).
		if err := nc.Do(context.Background(), nc.B().Exists().Key(key).Build()).Error(); err == nil {
			if info, err := nc.Do(context.Background(), nc.B().Info().Section("replication").Build()).ToString(); err == nil && strings.Contains(info, "role:master") {
				return n
			}
		}
	}
	tb.Fatalf("no node of the cluster holds %s", key)
	return nil
}
