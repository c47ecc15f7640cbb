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

// NewOnServers is a world on a PostgreSQL and a Redis the test started
// itself, with options of their own (TLS, pg_hba.conf rules): the world's
// database, made by schema, is one of pg's.
func NewOnServers(tb testing.TB, pg *testenv.Postgres, rds *testenv.Redis, schema string) *World {
	tb.Helper()
	return newWorld(tb, pg, rds, schema)
}
