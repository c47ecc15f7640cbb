// Command demo runs the grocery catalog example end to end: it starts a
// private Redis and PostgreSQL under .demo/, loads examples/grocery.sql, runs
// cachesync on examples/grocery.yaml, changes a price to show it land in
// Redis, and prints how to try it by hand. Ctrl-C stops everything.
//
// Usage (from the repository root; make demo does this):
//
//	go build -o bin/cachesync ./cmd/cachesync && go run ./examples/demo
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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	dir, err := filepath.Abs(".demo")
	if err != nil {
		return err
	}
	for _, d := range []string{dir, filepath.Join(dir, "redis"), filepath.Join(dir, "postgres")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		os.Chmod(d, 0o755) // the postgres user must reach its data folder
	}
	fmt.Println("starting a private Redis and PostgreSQL under", dir)
	rds, err := testenv.NewRedis(filepath.Join(dir, "redis"))
	if err != nil {
		return err
	}
	defer rds.Stop()
	pg, err := testenv.NewPostgres(filepath.Join(dir, "postgres"))
	if err != nil {
		return err
	}
	defer pg.Stop()

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
	daemon := exec.CommandContext(ctx, "bin/cachesync", "run", "--config", "examples/grocery.yaml")
	daemon.Env = append(os.Environ(), "REDIS_URL="+rds.URL(), "DATABASE_URL="+dbURL, "HTTP_ADDR="+httpAddr)
	daemon.Stdout, daemon.Stderr = os.Stdout, os.Stderr
	daemon.Cancel = func() error { return daemon.Process.Signal(syscall.SIGTERM) }
	daemon.WaitDelay = 10 * time.Second
	if err := daemon.Start(); err != nil {
		return fmt.Errorf("start bin/cachesync (run make build first): %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- daemon.Wait() }()

	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{rds.Addr}, DisableCache: true})
	if err != nil {
		return err
	}
	defer client.Close()
	get := func() string {
		v, _ := client.Do(ctx, client.B().Get().Key("price:apple").Build()).ToString()
		return v
	}
	if err := waitFor(ctx, exited, func() bool { return get() != "" }); err != nil {
		return err
	}
	fmt.Printf("\nRedis holds price:apple = %s\n", get())
	if _, err := db.Exec(ctx, `UPDATE inventory SET price = price + 0.10, updated_at = now() WHERE item = 'apple'`); err != nil {
		return err
	}
	start, before := time.Now(), get()
	if err := waitFor(ctx, exited, func() bool { return get() != before }); err != nil {
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
		if err := <-exited; err != nil && !errors.Is(err, ctx.Err()) {
			return fmt.Errorf("cachesync: %v", err)
		}
		return nil
	case err := <-exited:
		return fmt.Errorf("cachesync exited: %v", err)
	}
}

// waitFor polls cond until it holds, the daemon exits or 30 s pass.
func waitFor(ctx context.Context, exited chan error, cond func() bool) error {
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		select {
		case err := <-exited:
			return fmt.Errorf("cachesync exited: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out waiting for Redis")
		}
	}
	return nil
}
