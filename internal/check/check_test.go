package check_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/changefeed"
	"github.com/cachesync/cachesync/internal/check"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/testenv"
)

var pg *testenv.Postgres

func TestMain(m *testing.M) { os.Exit(testenv.RunWithPostgres(m, &pg)) }

var dbs atomic.Int64

// env is a database with table t (id, v, note), Redis, a config with one
// cache over t kept by a change feed, the feed and an API client.
type env struct {
	t   *testing.T
	db  *pgx.Conn
	rc  rueidis.Client
	cfg *config.Config
	api *engine.Engine
}

func newEnv(t *testing.T, rows int) *env {
	t.Helper()
	ctx := t.Context()
	name := fmt.Sprintf("check%d", dbs.Add(1))
	db, dbURL := pg.Database(t, name, fmt.Sprintf(`CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text);
		INSERT INTO t SELECT g, g, 'n' || g FROM generate_series(1, %d) g`, rows))
	rds := testenv.StartRedis(t)
	rc := rds.Client(t)
	cfg, err := config.Load(strings.NewReader(fmt.Sprintf(`name: %s
redis: {url: %q}
sources: {db: {url: %q}}
caches:
  t: {table: t, key: "t:{id}", value: {columns: [id, v, note]}}
`, name, rds.URL(), dbURL)))
	if err != nil {
		t.Fatal(err)
	}
	f := changefeed.New(cfg, "db", rc, slog.New(slog.NewTextHandler(io.Discard, nil)))
	testenv.Go(t, f.Run)
	deadline := time.Now().Add(30 * time.Second)
	for f.Stats.Rebuilds.Load() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("feed did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	api, err := engine.Open(ctx, cfg, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(api.Close)
	return &env{t: t, db: db, rc: rc, cfg: cfg, api: api}
}

func (e *env) check(opt check.Options) *check.Report {
	e.t.Helper()
	r, err := check.Run(e.t.Context(), e.cfg, e.api, e.rc, "t", opt)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) do(cmd rueidis.Completed) {
	e.t.Helper()
	if err := e.rc.Do(context.Background(), cmd).Error(); err != nil {
		e.t.Fatal(err)
	}
}

// TestCheckFindsAndRepairs: a planted stale value, a deleted key and a key
// without a row are found, named, and repaired; then the check is clean.
func TestCheckFindsAndRepairs(t *testing.T) {
	e := newEnv(t, 500)
	for _, opt := range []check.Options{{}, {Lookup: true}} {
		if r := e.check(opt); !r.Consistent() || r.Keys != 500 || r.Rows != 500 {
			t.Fatalf("fresh cache, %+v: %+v", opt, r)
		}
	}
	e.do(e.rc.B().Set().Key("t:7").Value(`{"id":7,"v":0,"note":"n7"}`).Build())       // stale
	e.do(e.rc.B().Del().Key("t:8").Build())                                           // missing
	e.do(e.rc.B().Set().Key("t:9999").Value(`{"id":9999,"v":1,"note":null}`).Build()) // extra
	for _, opt := range []check.Options{{}, {Lookup: true}, {Sample: 500}} {
		r := e.check(opt)
		if r.Consistent() || r.Stale.Count != 1 || r.Stale.Examples[0] != "t:7" || r.Missing.Count != 1 || r.Missing.Examples[0] != "t:8" {
			t.Fatalf("%+v: %+v", opt, r)
		}
		if want := map[bool]int{true: 1, false: 0}[opt.Sample == 0]; r.Extra.Count != want { // a sample reads rows: no extra keys
			t.Fatalf("%+v: extra %+v, want %d", opt, r.Extra, want)
		}
	}
	r := e.check(check.Options{Repair: true})
	if r.Repaired != 3 {
		t.Fatalf("repaired %d, want 3: %+v", r.Repaired, r)
	}
	if r := e.check(check.Options{}); !r.Consistent() {
		t.Fatalf("after the repair: %+v", r)
	}
}

// TestCheckLive: checks run back to back for 30 s while writers update,
// insert and delete rows; none reports a difference (the feed keeps up,
// and keys that change meanwhile are read again before they count).
func TestCheckLive(t *testing.T) {
	e := newEnv(t, 2000)
	ctx, stop := context.WithCancel(t.Context())
	var writes atomic.Int64
	werr := make(chan error, 1)
	stopped := false
	halt := func() error { // the writers end before the test does
		if stopped {
			return nil
		}
		stopped = true
		stop()
		return <-werr
	}
	defer halt()
	go func() {
		for ctx.Err() == nil {
			id := 1 + rand.IntN(2500)
			var err error
			switch rand.IntN(4) {
			case 0:
				_, err = e.db.Exec(ctx, `DELETE FROM t WHERE id = $1`, id)
			case 1:
				_, err = e.db.Exec(ctx, `INSERT INTO t VALUES ($1, 0, 'new') ON CONFLICT DO NOTHING`, id)
			default:
				_, err = e.db.Exec(ctx, `UPDATE t SET v = v + 1 WHERE id = $1`, id)
			}
			if err != nil && ctx.Err() == nil {
				werr <- err
				return
			}
			writes.Add(1)
		}
		werr <- nil
	}()
	end := time.Now().Add(30 * time.Second)
	checks := 0
	for time.Now().Before(end) {
		r := e.check(check.Options{Lookup: checks%2 == 1}) // both ways of comparing
		if !r.Consistent() {
			halt()
			t.Fatalf("check %d reported differences on a consistent live system: %+v", checks+1, r)
		}
		checks++
	}
	if err := halt(); err != nil {
		t.Fatal(err)
	}
	if checks < 3 || writes.Load() < 1000 {
		t.Fatalf("%d checks during %d writes: too few to mean anything", checks, writes.Load())
	}
	t.Logf("%d checks, none with a false positive, during %d writes", checks, writes.Load())
}
