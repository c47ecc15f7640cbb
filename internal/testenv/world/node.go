package world

import (
	"fmt"
	"testing"
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
	nodes := startRedis(tb, topology)
	return &World{T: tb, Name: fmt.Sprintf("w%d", seq.Add(1)), DBURL: NoDatabase, Redis: nodes[0], Nodes: nodes, RC: nodes[0].Client(tb)}
}
