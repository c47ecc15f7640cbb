package testenv

import (
	"context"
	"net"
	"strconv"
	"testing"
)

// Announce makes node r of c tell clients that addr (a Proxy in front of
// it, on 127.0.0.1) is its address (cluster-announce-ip and -port; the
// nodes' own bus is unchanged), and waits until every node of c names
// addr's port for r's slots: a client that learns the topology afterwards
// reaches r through addr. (Owner and the other helpers that tell nodes by
// their port do not know r afterwards.)
func (c *Cluster) Announce(tb testing.TB, r *Redis, addr string) {
	tb.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	rc := r.NodeClient(tb)
	before, err := slotOwners(ctx, rc)
	if err != nil {
		tb.Fatal(err)
	}
	var mine []int
	for s, p := range before {
		if p == int64(r.Port) {
			mine = append(mine, s)
		}
	}
	if len(mine) == 0 {
		tb.Fatalf("%s holds no slot", r.Addr)
	}
	if err := rc.Do(ctx, rc.B().ConfigSet().ParameterValue().ParameterValue("cluster-announce-ip", host).
		ParameterValue("cluster-announce-port", port).Build()).Error(); err != nil {
		tb.Fatalf("announce %s for %s: %v", addr, r.Addr, err)
	}
	want, _ := strconv.ParseInt(port, 10, 64)
	for _, n := range c.Nodes {
		nc := n.NodeClient(tb)
		WaitFor(tb, n.Addr+" to name "+addr+" for the slots of "+r.Addr, func() bool {
			owners, err := slotOwners(ctx, nc)
			if err != nil {
				return false
			}
			for _, s := range mine {
				if owners[s] != want {
					return false
				}
			}
			return true
		})
	}
}
