package testenv

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// Cluster is a private Redis Cluster of primaries (no replicas), each a
// Redis on a free 127.0.0.1 port in its own temp dir.
type Cluster struct {
	Nodes []*Redis
}

// StartCluster starts n primaries sharing the 16384 hash slots evenly,
// waits until every node reports the cluster ok, and stops them at cleanup.
func StartCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	NeedServers(tb)
	c := &Cluster{}
	for range n {
		c.Nodes = append(c.Nodes, startClusterNode(tb))
	}
	if err := c.form(n); err != nil {
		tb.Fatal(err)
	}
	return c
}

// StartTopology starts a Redis of topology ("single", or "cluster": three
// primaries) and returns a client of it, closed at cleanup.
func StartTopology(tb testing.TB, topology string) rueidis.Client {
	tb.Helper()
	if topology == "cluster" {
		return StartCluster(tb, 3).Client(tb)
	}
	return StartRedis(tb).Client(tb)
}

// startClusterNode starts a Redis with cluster mode on, stopped at cleanup.
func startClusterNode(tb testing.TB) *Redis {
	tb.Helper()
	return StartRedis(tb, clusterNode)
}

// clusterNode is the option of a Cluster node: cluster mode on.
var clusterNode = WithRedisArgs("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000")

// clusterPatience bounds forming or changing a Cluster: only a failure
// exhausts it, on a machine as busy as a CI's.
const clusterPatience = Patience

// form gives each node its share of the slots and introduces it to the first.
func (c *Cluster) form(n int) error {
	return c.withNodes(func(ctx context.Context, clients []rueidis.Client) error {
		return c.assign(ctx, clients, n)
	})
}

// assign gives each of the n nodes (clients) its share of the slots,
// introduces it to the first, and waits until the cluster is ok.
func (c *Cluster) assign(ctx context.Context, clients []rueidis.Client, n int) error {
	for i, cl := range clients {
		// Each its own config epoch, as redis-cli --cluster create gives:
		// with all at 0 until gossip settles who bumps, a slot's move (the
		// importing node's claim) can lose to its old owner's.
		if err := cl.Do(ctx, cl.B().ClusterSetConfigEpoch().ConfigEpoch(int64(i+1)).Build()).Error(); err != nil {
			return fmt.Errorf("cluster node %s: set config epoch: %w", c.Nodes[i].Addr, err)
		}
		lo, hi := i*16384/n, (i+1)*16384/n-1
		if err := cl.Do(ctx, cl.B().Arbitrary("CLUSTER", "ADDSLOTSRANGE").Args(strconv.Itoa(lo), strconv.Itoa(hi)).Build()).Error(); err != nil {
			return fmt.Errorf("cluster node %s: add slots: %w", c.Nodes[i].Addr, err)
		}
		if i > 0 {
			if err := clients[0].Do(ctx, clients[0].B().ClusterMeet().Ip("127.0.0.1").Port(int64(c.Nodes[i].Port)).Build()).Error(); err != nil {
				return fmt.Errorf("cluster meet %s: %w", c.Nodes[i].Addr, err)
			}
		}
	}
	return c.waitOK(ctx, clients)
}

// waitOK waits until every node (clients, one per node of c.Nodes)
// reports the cluster ok and knows every node.
func (c *Cluster) waitOK(ctx context.Context, clients []rueidis.Client) error {
	for i, cl := range clients {
		for {
			info, err := cl.Do(ctx, cl.B().ClusterInfo().Build()).ToString()
			if err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, fmt.Sprintf("cluster_known_nodes:%d\r", len(c.Nodes))) {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("cluster node %s never reported the cluster ok: %q, %v", c.Nodes[i].Addr, info, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// withNodes calls fn with a client of each node of c.Nodes alone, in
// order, and a context that ends after clusterPatience.
func (c *Cluster) withNodes(fn func(ctx context.Context, clients []rueidis.Client) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), clusterPatience)
	defer cancel()
	var clients []rueidis.Client
	defer func() {
		for _, cl := range clients {
			cl.Close()
		}
	}()
	for _, node := range c.Nodes {
		cl, err := node.nodeClient()
		if err != nil {
			return err
		}
		clients = append(clients, cl)
	}
	return fn(ctx, clients)
}

// URL returns the redis:// URL of the first node: a cluster client finds
// the others from it.
func (c *Cluster) URL() string { return c.Nodes[0].URL() }

// Client returns a cluster client (no client-side cache) that closes when
// the test ends.
func (c *Cluster) Client(tb testing.TB) rueidis.Client { return c.Nodes[0].Client(tb) }
