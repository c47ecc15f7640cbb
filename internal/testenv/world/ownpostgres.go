package world

import (
	"fmt"
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
	w := &World{T: tb, Name: fmt.Sprintf("w%d", seq.Add(1)), Redis: rds, Nodes: []*testenv.Redis{rds}}
	w.DB, w.DBURL = pg.Database(tb, w.Name, schema)
	w.RC = rds.Client(tb)
	return w, pg
}
