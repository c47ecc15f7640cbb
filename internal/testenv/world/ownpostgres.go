package world

import (
	"testing"

	"github.com/cachesync/cachesync/internal/testenv"
)

// NewOwnPostgres is a world with a Redis node and a PostgreSQL of its own,
// returned too: for a test that stops, kills or restarts PostgreSQL, which
// the package's other tests share otherwise.
func NewOwnPostgres(tb testing.TB, schema string) (*World, *testenv.Postgres) {
	tb.Helper()
	pg := testenv.StartPostgres(tb)
	rds := testenv.StartRedis(tb)
	return newWorld(tb, pg, rds, schema), pg
}
