package check_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/check"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

func TestMain(m *testing.M) { world.Main(m) }

// env is a world whose table t (id, v, note) has rows rows, one cache over
// t kept by a change feed, and an API client.
type env struct {
	*world.World
	cfg *config.Config
	api *engine.Engine
}

func newEnv(t *testing.T, rows int) *env {
	t.Helper()
	w := world.New(t, fmt.Sprintf(`CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text);
		INSERT INTO t SELECT g, g, 'n' || g FROM generate_series(1, %d) g`, rows))
	cfg := w.Config(`  t: {table: t, key: "t:{id}", value: {columns: [id, v, note]}}` + "\n")
	w.Feed(cfg)
	return &env{World: w, cfg: cfg, api: w.Open(cfg)}
}

func (e *env) check(opt check.Options) *check.Report {
	e.T.Helper()
	r, err := check.Run(e.T.Context(), e.cfg, e.api, e.RC, "t", opt)
	if err != nil {
		e.T.Fatal(err)
	}
	return r
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
	e.Do(e.RC.B().Set().Key("t:7").Value(`{"id":7,"v":0,"note":"n7"}`).Build())       // stale
	e.Do(e.RC.B().Del().Key("t:8").Build())                                           // missing
	e.Do(e.RC.B().Set().Key("t:9999").Value(`{"id":9999,"v":1,"note":null}`).Build()) // extra
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
				_, err = e.DB.Exec(ctx, `DELETE FROM t WHERE id = $1`, id)
			case 1:
				_, err = e.DB.Exec(ctx, `INSERT INTO t VALUES ($1, 0, 'new') ON CONFLICT DO NOTHING`, id)
			default:
				_, err = e.DB.Exec(ctx, `UPDATE t SET v = v + 1 WHERE id = $1`, id)
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
