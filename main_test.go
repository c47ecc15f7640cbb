package cachesync_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/changefeed"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestMain gives the examples what a user of the grocery config has: a
// PostgreSQL with examples/grocery.sql, a Redis, REDIS_URL and DATABASE_URL
// naming them, and the daemon's change feed running. Under -short the
// examples, which need those servers, do not run.
func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		flag.Set("test.run", "^$")
		os.Exit(m.Run())
	}
	os.Exit(withGrocery(m))
}

// testPG is the package's PostgreSQL, started by TestMain; the
// benchmarks make databases of their own in it.
var testPG *testenv.Postgres

func withGrocery(m *testing.M) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	pg, err := testenv.NewTempPostgres()
	if err != nil {
		return fail(err)
	}
	defer pg.Close()
	testPG = pg
	dir, err := os.MkdirTemp("", "cachesync-example-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(dir)
	rds, err := testenv.NewRedis(dir)
	if err != nil {
		return fail(err)
	}
	defer rds.Stop()
	if err := pg.CreateDatabase(ctx, "shop"); err != nil {
		return fail(err)
	}
	schema, err := os.ReadFile("examples/grocery.sql")
	if err != nil {
		return fail(err)
	}
	db, err := pgx.Connect(ctx, pg.URL("shop"))
	if err != nil {
		return fail(err)
	}
	_, err = db.Exec(ctx, string(schema))
	db.Close(ctx)
	if err != nil {
		return fail(err)
	}
	os.Setenv("REDIS_URL", rds.URL())
	os.Setenv("DATABASE_URL", pg.URL("shop"))

	cfg, err := config.LoadFile("examples/grocery.yaml")
	if err != nil {
		return fail(err)
	}
	opt, err := cfg.RedisOption()
	if err != nil {
		return fail(err)
	}
	rc, err := rueidis.NewClient(opt)
	if err != nil {
		return fail(err)
	}
	defer rc.Close()
	feed := changefeed.New(cfg, "catalog", world.Logger(), rc)
	done := make(chan error, 1)
	go func() { done <- feed.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if !world.Within(world.Patience, func() bool { return feed.Stats.Rebuilds.Load() >= int64(len(feed.Caches)) }) {
		return fail(fmt.Errorf("the change feed did not build the caches within %v", world.Patience))
	}
	return m.Run()
}
