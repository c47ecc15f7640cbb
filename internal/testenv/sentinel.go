package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// Sentinel is a Redis primary with a replica, watched by one Redis
// Sentinel (quorum 1) under the name Master: a failover in a test.
type Sentinel struct {
	Primary, Replica, Sentinel *Redis
	Master                     string
}

// StartSentinel starts a primary, its replica and a Sentinel watching
// them, all stopped when the test ends, and waits until the Sentinel knows
// the replica.
func StartSentinel(tb testing.TB) *Sentinel {
	tb.Helper()
	s := &Sentinel{Master: "cachesync"}
	s.Primary = StartRedis(tb)
	s.Replica = StartRedis(tb, WithRedisArgs("--replicaof", "127.0.0.1", fmt.Sprint(s.Primary.Port)))
	s.Sentinel = StartRedis(tb, func(r *Redis) {
		r.conf = fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 1\nsentinel down-after-milliseconds %[1]s 1000\nsentinel failover-timeout %[1]s 5000\n", s.Master, s.Primary.Port)
		r.args = append(r.args, "--sentinel")
	})
	c := s.Sentinel.NodeClient(tb)
	waitUntil(tb, "the sentinel to know the replica", func() bool {
		replicas, err := c.Do(context.Background(), c.B().Arbitrary("SENTINEL", "REPLICAS").Args(s.Master).Build()).ToArray()
		return err == nil && len(replicas) == 1
	})
	return s
}

// URL is the redis-sentinel:// URL of the watched primary, database 0.
func (s *Sentinel) URL() string {
	return "redis-sentinel://" + s.Sentinel.Addr + "/" + s.Master + "/0"
}

// PrimaryAddr is the address the Sentinel names as the primary now.
func (s *Sentinel) PrimaryAddr(tb testing.TB) string {
	tb.Helper()
	c := s.Sentinel.NodeClient(tb)
	addr, err := c.Do(context.Background(), c.B().SentinelGetMasterAddrByName().Master(s.Master).Build()).AsStrSlice()
	if err != nil || len(addr) != 2 {
		tb.Fatalf("SENTINEL GET-MASTER-ADDR-BY-NAME: %v %v", addr, err)
	}
	return addr[0] + ":" + addr[1]
}

// WaitPrimary waits until the Sentinel names r as the primary.
func (s *Sentinel) WaitPrimary(tb testing.TB, r *Redis) {
	tb.Helper()
	waitUntil(tb, fmt.Sprintf("the sentinel to name %s the primary", r.Addr), func() bool { return s.PrimaryAddr(tb) == r.Addr })
}

// waitUntil polls ok until it holds, failing the test after a minute.
func waitUntil(tb testing.TB, what string, ok func() bool) {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for !ok() {
		if time.Now().After(deadline) {
			tb.Fatalf("never within a minute: %s", what)
		}
		time.Sleep(20 * time.Millisecond) // polls a condition of servers that tell no one
	}
}

// Client returns a client of the primary the Sentinel names, following it
// through failovers, closed when the test ends.
func (s *Sentinel) Client(tb testing.TB) rueidis.Client {
	tb.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{s.Sentinel.Addr}, Sentinel: rueidis.SentinelOption{MasterSet: s.Master}, DisableCache: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}
