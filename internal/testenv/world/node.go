package world

import (
	"fmt"
	"testing"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
)

// NoDatabase is the DBURL of a world without a database: no server
// listens there, so a config of the world loads and whatever reads its
// source fails at once.
const NoDatabase = "postgres://127.0.0.1:1/none?sslmode=disable"

// NewRedisOnly is a world of a Redis of topology ("single", or "cluster":
// three primaries) and no database (DB is nil, DBURL NoDatabase): for
// tests of what only Redis serves, in a package that then needs no Main.
func NewRedisOnly(tb testing.TB, topology string) *World {
	tb.Helper()
	w := &World{T: tb, Name: fmt.Sprintf("w%d", seq.Add(1)), DBURL: NoDatabase}
	if topology == "cluster" {
		w.Nodes = testenv.StartCluster(tb, 3).Nodes
	} else {
		w.Nodes = []*testenv.Redis{testenv.StartRedis(tb)}
	}
	w.Redis = w.Nodes[0]
	w.RC = w.Redis.Client(tb)
	return w
}

// NodeClient returns a client of node alone, closed when the test ends:
// on a Cluster its commands reach that node (a key of another's slots is
// answered MOVED), and CONFIG, INFO and the like are that node's.
func NodeClient(tb testing.TB, node *testenv.Redis) rueidis.Client {
	tb.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{node.Addr}, ForceSingleClient: true, DisableCache: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}
