// Command demo runs the grocery catalog example end to end: it starts a
// private Redis and PostgreSQL, each in a temp dir of its own (not under the
// clone: as root, PostgreSQL runs as the postgres user, who may not reach
// it, e.g. in /root), loads examples/grocery.sql, runs cachesync on
// examples/grocery.yaml, changes a price to show it land in Redis, and
// prints how to try it by hand. Ctrl-C (or SIGTERM, SIGHUP) stops everything
// and removes the temp dirs.
//
// Usage (from the repository root; make demo does this):
//
//	go build -o bin/cachesync ./cmd/cachesync && go build -o bin/demo ./examples/demo && bin/demo
//
// (go run ./examples/demo works too, but a SIGTERM to go run kills it
// without reaching the demo, which then runs on.)
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	// An error caused by Ctrl-C during start-up (a cancelled query, say)
	// is no error: everything has been stopped and removed all the same.
	if err := run(ctx); err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	fmt.Println("starting a private Redis and PostgreSQL, in temp dirs removed when the demo stops")
	redisDir, err := os.MkdirTemp("", "cachesync-demo-redis-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(redisDir)
	rds, err := testenv.NewRedis(redisDir)
	if err != nil {
		return err
	}
	defer warn(rds.Stop)
	// In a temp dir of its own, which the postgres user reaches when we
	// are root; Close removes it.
	pg, err := testenv.NewTempPostgres()
	if err != nil {
		return err
	}
	defer warn(pg.Close)
	fmt.Printf("Redis is in %s, PostgreSQL in %s\n", rds.Dir, pg.Dir)

	dbURL := pg.URL("postgres")
	db, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer db.Close(context.Background())
	schema, err := os.ReadFile("examples/grocery.sql")
	if err != nil {
		return err
	}
	if _, err := db.Exec(ctx, string(schema)); err != nil {
		return fmt.Errorf("load examples/grocery.sql: %w", err)
	}
	fmt.Println("loaded the grocery catalog (examples/grocery.sql)")

	httpPort, err := testenv.FreePort()
	if err != nil {
		return err
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", httpPort)
	// cachesync stops (SIGTERM) on Ctrl-C and also whenever run returns
	// early, so an error never leaves it running without its servers.
	daemonCtx, stopDaemon := context.WithCancel(ctx)
	defer stopDaemon()
	daemon := exec.CommandContext(daemonCtx, "bin/cachesync", "run", "--config", "examples/grocery.yaml")
	daemon.Env = append(os.Environ(), "REDIS_URL="+rds.URL(), "DATABASE_URL="+dbURL, "HTTP_ADDR="+httpAddr)
	daemon.Stdout, daemon.Stderr = os.Stdout, os.Stderr
	daemon.Cancel = func() error { return daemon.Process.Signal(syscall.SIGTERM) }
	daemon.WaitDelay = 10 * time.Second
	if err := daemon.Start(); err != nil {
		return fmt.Errorf("start bin/cachesync (run make build first): %w", err)
	}
	var daemonErr error           // set before exited is closed
	exited := make(chan struct{}) // closed once cachesync has exited
	go func() { daemonErr = daemon.Wait(); close(exited) }()
	defer func() { stopDaemon(); <-exited }() // before Redis and PostgreSQL stop

	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{rds.Addr}, DisableCache: true})
	if err != nil {
		return err
	}
	defer client.Close()
	get := func() string {
		v, _ := client.Do(ctx, client.B().Get().Key("price:apple").Build()).ToString()
		return v
	}
	if err := waitFor(ctx, "price:apple in Redis", exited, &daemonErr, func() bool { return get() != "" }); err != nil {
		return err
	}
	// before is read ahead of the UPDATE: read after it, it could already
	// hold the new price, which would then never differ from it.
	before := get()
	fmt.Printf("\nRedis holds price:apple = %s\n", before)
	start := time.Now()
	if _, err := db.Exec(ctx, `UPDATE inventory SET price = price + 0.10, updated_at = now() WHERE item = 'apple'`); err != nil {
		return err
	}
	if err := waitFor(ctx, "the new price in Redis", exited, &daemonErr, func() bool { return get() != before }); err != nil {
		return err
	}
	fmt.Printf("UPDATE inventory SET price = price + 0.10 WHERE item = 'apple'  ->  price:apple = %s  (landed in %s)\n",
		get(), time.Since(start).Round(time.Millisecond))

	psql := filepath.Join(pg.BinDir(), "psql")
	fmt.Printf(`
cachesync is running on examples/grocery.yaml. Try it yourself in another terminal:

  watch a key:     redis-cli -p %d GET price:apple
  change a price:  %s "%s" -c "UPDATE inventory SET price = 2.49 WHERE item = 'apple'"
  add an item:     %s "%s" -c "INSERT INTO inventory (item, price, category) VALUES ('kiwi', 0.69, 'fruit')"
  delete it:       %s "%s" -c "DELETE FROM inventory WHERE item = 'kiwi'"
  a hash:          redis-cli -p %d HGETALL stock:downtown:apple
  the dashboard:   http://%s/  (and /metrics, /v1/status, /v1/caches/prices/price:apple)
  status, check:   REDIS_URL=%s DATABASE_URL="%s" HTTP_ADDR=%s bin/cachesync status --config examples/grocery.yaml
                   (and: ... bin/cachesync check --config examples/grocery.yaml)

Press Ctrl-C to stop cachesync, Redis and PostgreSQL.
`, rds.Port, psql, dbURL, psql, dbURL, psql, dbURL, rds.Port, httpAddr, rds.URL(), dbURL, httpAddr)

	select {
	case <-ctx.Done():
		// Stopped by Ctrl-C: cachesync got SIGTERM and stopped cleanly
		// unless it says otherwise.
		stopDaemon()
		<-exited
		if daemonErr != nil && !errors.Is(daemonErr, daemonCtx.Err()) {
			return fmt.Errorf("cachesync: %v", daemonErr)
		}
		return nil
	case <-exited:
		// A terminal's Ctrl-C reaches cachesync too (it shares our process
		// group), and it may stop before we have seen the signal ourselves.
		if daemonErr == nil {
			return nil
		}
		return fmt.Errorf("cachesync exited: %v", daemonErr)
	}
}

// warn prints the error of a deferred stop, if any.
func warn(stop func() error) {
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
	}
}

// waitFor polls cond until it holds, the daemon exits or 30 s pass.
func waitFor(ctx context.Context, what string, exited <-chan struct{}, daemonErr *error, cond func() bool) error {
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		select {
		case <-exited:
			return fmt.Errorf("cachesync exited: %v", *daemonErr)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out waiting for %s", what)
		}
	}
	return nil
}
