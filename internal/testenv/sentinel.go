package testenv

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/rueidis"
)

// Sentinel is a Redis primary with a replica, watched by one Redis
// Sentinel (quorum 1) under the name Master: a failover in a test.
type Sentinel struct {
	Primary, Replica, Sentinel *Redis
	Master                     string
	sc                         rueidis.Client // of the Sentinel
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
	s.sc = s.Sentinel.NodeClient(tb)
	WaitFor(tb, "the sentinel to know the replica", func() bool {
		replicas, err := s.sc.Do(context.Background(), s.sc.B().Arbitrary("SENTINEL", "REPLICAS").Args(s.Master).Build()).ToArray()
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
	addr, err := s.sc.Do(context.Background(), s.sc.B().SentinelGetMasterAddrByName().Master(s.Master).Build()).AsStrSlice()
	if err != nil || len(addr) != 2 {
		tb.Fatalf("SENTINEL GET-MASTER-ADDR-BY-NAME: %v %v", addr, err)
	}
	return addr[0] + ":" + addr[1]
}

// WaitPrimary waits until the Sentinel names r as the primary.
func (s *Sentinel) WaitPrimary(tb testing.TB, r *Redis) {
	tb.Helper()
	WaitFor(tb, fmt.Sprintf("the sentinel to name %s the primary", r.Addr), func() bool { return s.PrimaryAddr(tb) == r.Addr })
}

// Failover makes the Sentinel fail over now (SENTINEL FAILOVER), the
// replica's agreement aside.
func (s *Sentinel) Failover(tb testing.TB) {
	tb.Helper()
	if err := s.sc.Do(context.Background(), s.sc.B().Arbitrary("SENTINEL", "FAILOVER").Args(s.Master).Build()).Error(); err != nil {
		tb.Fatalf("SENTINEL FAILOVER: %v", err)
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
