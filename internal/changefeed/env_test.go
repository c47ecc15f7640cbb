package changefeed_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/changefeed"
	"github.com/cachesync/cachesync/internal/testenv"
)

// pg is one PostgreSQL cluster shared by the package's tests; each test has
// its own database and config name (slot names are cluster-wide).
var pg *testenv.Postgres

func TestMain(m *testing.M) { os.Exit(testenv.RunWithPostgres(m, &pg)) }

var dbSeq atomic.Int64

// env is one test's world: a database of its own, a Redis of its own.
type env struct {
	t      *testing.T
	name   string
	dbURL  string
	db     *pgx.Conn
	redis  *testenv.Redis
	client rueidis.Client
}

func newEnv(t *testing.T, schema string) *env {
	t.Helper()
	return newEnvOn(t, testenv.StartRedis(t), schema)
}

// newEnvOn is newEnv on a Redis of the test's choosing: a node of a
// testenv.Cluster gives the feed and e.client cluster clients.
func newEnvOn(t *testing.T, rds *testenv.Redis, schema string) *env {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("t%d", dbSeq.Add(1))
	if err := pg.CreateDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, name: name, dbURL: pg.URL(name), redis: rds}
	var err error
	if e.db, err = pgx.Connect(ctx, e.dbURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close(context.Background()) })
	e.exec(schema)
	if e.client, err = rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{e.redis.Addr}, DisableCache: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.client.Close)
	return e
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// config loads a config whose caches section is caches (YAML, indented by 2).
func (e *env) config(caches string) *config.Config {
	e.t.Helper()
	y := fmt.Sprintf("name: %s\nredis: {url: %q}\nsources:\n  db: {url: %q}\ncaches:\n%s", e.name, e.redis.URL(), e.dbURL, caches)
	cfg, err := config.Load(strings.NewReader(y))
	if err != nil {
		e.t.Fatal(err)
	}
	return cfg
}

// feed is a running Feed owned by a test.
type feed struct {
	*changefeed.Feed
	cancel context.CancelFunc
	done   chan error
}

// start runs the feed of cfg's only source until stop or test cleanup.
func (e *env) start(cfg *config.Config, opts ...func(*changefeed.Feed)) *feed {
	e.t.Helper()
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{e.redis.Addr}, DisableCache: true})
	if err != nil {
		e.t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	f := &feed{Feed: changefeed.New(cfg, "db", client, log), done: make(chan error, 1)}
	for _, o := range opts {
		o(f.Feed)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go func() { f.done <- f.Run(ctx) }()
	e.t.Cleanup(func() { f.stop(e.t); client.Close() })
	return f
}

// stop cancels the feed and returns the error Run returned.
func (f *feed) stop(t *testing.T) error {
	t.Helper()
	f.cancel()
	select {
	case err, ok := <-f.done:
		if ok {
			close(f.done)
		}
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("feed did not stop within 20 s")
		return nil
	}
}

// snapshot returns every key matching pattern with its value (GET, or a
// sorted field=value list for hashes).
func (e *env) snapshot(pattern string) map[string]string {
	e.t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	var cursor uint64
	for {
		entry, err := e.client.Do(ctx, e.client.B().Scan().Cursor(cursor).Match(pattern).Count(1000).Build()).AsScanEntry()
		if err != nil {
			e.t.Fatal(err)
		}
		for _, k := range entry.Elements {
			if strings.HasPrefix(k, "cachesync:") {
				continue // cachesync's own state
			}
			typ, _ := e.client.Do(ctx, e.client.B().Type().Key(k).Build()).ToString()
			switch typ {
			case "string":
				out[k], _ = e.client.Do(ctx, e.client.B().Get().Key(k).Build()).ToString()
			case "hash":
				m, _ := e.client.Do(ctx, e.client.B().Hgetall().Key(k).Build()).AsStrMap()
				var kv []string
				for f, v := range m {
					kv = append(kv, f+"="+v)
				}
				sort.Strings(kv)
				out[k] = strings.Join(kv, " ")
			}
		}
		if cursor = entry.Cursor; cursor == 0 {
			return out
		}
	}
}

// waitEqual waits until the keys matching pattern are exactly want, and
// fails with the difference if that does not happen within the deadline.
func (e *env) waitEqual(pattern string, want func() map[string]string) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		w, got := want(), e.snapshot(pattern)
		d := diff(w, got)
		if d == "" {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("redis %s differs from the database after 30 s:\n%s", pattern, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func diff(want, got map[string]string) string {
	var b strings.Builder
	n := 0
	keys := map[string]bool{}
	for k := range want {
		keys[k] = true
	}
	for k := range got {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		w, wok := want[k]
		g, gok := got[k]
		if wok == gok && w == g {
			continue
		}
		if n++; n > 10 {
			continue
		}
		switch {
		case !gok:
			fmt.Fprintf(&b, "  missing %s (want %s)\n", k, w)
		case !wok:
			fmt.Fprintf(&b, "  extra   %s = %s\n", k, g)
		default:
			fmt.Fprintf(&b, "  stale   %s = %s, want %s\n", k, g, w)
		}
	}
	if n > 10 {
		fmt.Fprintf(&b, "  ... %d differences in all\n", n)
	}
	return b.String()
}

// rows runs a query returning (key, value) text pairs: the expected cache.
func (e *env) rows(sql string) map[string]string {
	e.t.Helper()
	rows, err := e.db.Query(context.Background(), sql)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			e.t.Fatal(err)
		}
		out[k] = v
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// lit returns a fixed expectation.
func lit(m map[string]string) func() map[string]string { return func() map[string]string { return m } }

func pgConnect(ctx context.Context, url string) (*pgx.Conn, error) { return pgx.Connect(ctx, url) }
