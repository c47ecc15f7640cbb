package engine_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

const l1Schema = `CREATE TABLE l1t (id int PRIMARY KEY, v text NOT NULL);
INSERT INTO l1t SELECT g, 'v' || g FROM generate_series(1, 20) g;`

// l1Cache keeps its copies longer than any wait of the world: a copy that
// is dropped was dropped by an invalidation, not by its TTL.
const l1Cache = `  l1:
    table: l1t
    key: "l1:{id}"
    value: {format: string, column: v}
    sync: changefeed
    l1: {max: 1MiB, ttl: 1h}
`

// mustGet is e's Get of key in cache l1.
func mustGet(t *testing.T, e *engine.Engine, key string) string {
	t.Helper()
	v, err := e.Get(context.Background(), "l1", key)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	return string(v)
}

// TestL1 reads a key through three processes' L1s (three engines, each
// with connections of its own), then changes it each way a key changes: by
// the change feed, by a Put from one of them, by a Redis-side DEL and SET.
// Every process drops its copy (Redis's push, counted) and reads the new
// value; the process that wrote reads its write at once.
func TestL1(t *testing.T) {
	world.EachTopology(t, func(t *testing.T, topology string) {
		w := world.NewTopology(t, topology, l1Schema)
		cfg := w.Config(l1Cache)
		w.Feed(cfg)
		procs := []*engine.Engine{w.Open(cfg), w.Open(cfg), w.Open(cfg)}
		ctx := context.Background()

		// hold reads key in every process until its L1 answers (a Get
		// right after a fill may still find the copy of the missing key,
		// until the fill's invalidation arrives).
		hold := func(key, want string) {
			t.Helper()
			for i, e := range procs {
				hits := e.L1Stats("l1").Hits.Load()
				world.WaitFor(t, fmt.Sprintf("process %d's L1 hit of %s", i, key), func() bool {
					if got := mustGet(t, e, key); got != want {
						t.Fatalf("process %d: Get %s = %q, want %q", i, key, got, want)
					}
					return e.L1Stats("l1").Hits.Load() > hits
				})
			}
		}
		// reads waits until each process has missed its L1 since misses
		// were counted (its copy dropped on Redis's push: only that can end
		// its hits, the copies living an hour; the writer's own Get in
		// change may be that miss), then requires its Get to read want. A
		// copy an invalidation failed to drop keeps the wait going.
		reads := func(key, want string, misses []int64) {
			t.Helper()
			for i, e := range procs {
				world.WaitFor(t, fmt.Sprintf("process %d's copy of %s dropped", i, key), func() bool {
					if e.L1Stats("l1").Misses.Load() == misses[i] {
						mustGet(t, e, key)
					}
					return e.L1Stats("l1").Misses.Load() > misses[i]
				})
				if got := mustGet(t, e, key); got != want {
					t.Fatalf("process %d: Get %s = %q once its copy was dropped, want %q", i, key, got, want)
				}
			}
		}
		counts := func() []int64 {
			var n []int64
			for _, e := range procs {
				n = append(n, e.L1Stats("l1").Misses.Load())
			}
			return n
		}

		cases := []struct {
			name, key, want string
			change          func(key string)
		}{
			{"change feed", "l1:1", "fed", func(key string) { w.Exec(`UPDATE l1t SET v = 'fed' WHERE id = 1`) }},
			{"put by another process", "l1:2", "put", func(key string) {
				if _, err := procs[0].Put(ctx, "l1", map[string]any{"id": 2, "v": "put"}); err != nil {
					t.Fatal(err)
				}
				// The writer reads its write at once: no wait.
				if got := mustGet(t, procs[0], key); got != "put" {
					t.Fatalf("the writer's Get after its Put = %q, want put", got)
				}
			}},
			{"redis-side set", "l1:3", "set", func(key string) { w.Do(w.RC.B().Set().Key(key).Value("set").Build()) }},
			{"redis-side del", "l1:4", "v4", func(key string) { w.Do(w.RC.B().Del().Key(key).Build()) }},
			{"invalidate by another process", "l1:5", "v5", func(key string) {
				if err := procs[1].Invalidate(ctx, "l1", key); err != nil {
					t.Fatal(err)
				}
			}},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				before := mustGet(t, procs[0], c.key)
				hold(c.key, before)
				n := counts()
				c.change(c.key)
				reads(c.key, c.want, n)
			})
		}
	})
}

// TestL1Quiescence hammers ten keys with the three kinds of change while
// three processes read them through their L1s; once the writes stop and
// Redis equals the table, every process reads what Redis holds.
func TestL1Quiescence(t *testing.T) {
	w := world.New(t, l1Schema)
	cfg := w.Config(l1Cache)
	w.Feed(cfg)
	procs := []*engine.Engine{w.Open(cfg), w.Open(cfg), w.Open(cfg)}
	ctx, stop := context.WithCancel(context.Background())
	var readers sync.WaitGroup
	var reads atomic.Int64
	for _, e := range procs {
		for range 2 {
			readers.Go(func() {
				for ctx.Err() == nil {
					if _, err := e.Get(ctx, "l1", fmt.Sprintf("l1:%d", 1+rand.IntN(10))); err == nil {
						reads.Add(1)
					}
				}
			})
		}
	}
	for i := range 150 {
		id := 1 + rand.IntN(10)
		key := fmt.Sprintf("l1:%d", id)
		switch i % 3 {
		case 0:
			w.Exec(`UPDATE l1t SET v = $1 WHERE id = $2`, fmt.Sprint("sql", i), id)
		case 1:
			if _, err := procs[i%len(procs)].Put(context.Background(), "l1", map[string]any{"id": id, "v": fmt.Sprint("put", i)}); err != nil {
				t.Fatal(err)
			}
		case 2:
			w.Do(w.RC.B().Del().Key(key).Build())
		}
	}
	world.WaitFor(t, "the readers' reads", func() bool { return reads.Load() > 1000 })
	stop()
	readers.Wait()
	table := func() map[string]string { return w.Rows(`SELECT 'l1:' || id, v FROM l1t WHERE id <= 10`) }
	for key, v := range table() { // refill the deleted keys
		if got := mustGet(t, procs[0], key); got != v {
			t.Fatalf("Get %s = %q, want the row's %q", key, got, v)
		}
	}
	w.WaitEqual("l1:*", func() map[string]string { return w.Rows(`SELECT 'l1:' || id, v FROM l1t`) })
	for i, e := range procs {
		if e.L1Stats("l1").Hits.Load() == 0 {
			t.Fatalf("process %d served no L1 hit: the test read nothing from its L1", i)
		}
		for key, v := range table() {
			world.WaitFor(t, fmt.Sprintf("process %d reading %s as Redis holds it", i, key), func() bool {
				return mustGet(t, e, key) == v
			})
		}
	}
}

// TestL1RedisRestart keeps copies in a process, kills Redis and starts it
// again empty, and writes other values there: the process reads them, not
// its copies (a lost connection flushed them).
func TestL1RedisRestart(t *testing.T) {
	w := world.New(t, l1Schema)
	cfg := w.Config(`  l1:
    table: l1t
    key: "l1:{id}"
    value: {format: string, column: v}
    sync: none
    l1: {max: 1MiB, ttl: 1h}
`)
	e := w.Open(cfg)
	// The first Get fills the key; its copy is kept once the fill's write
	// was pushed (dropping the copy of the missing key).
	world.WaitFor(t, "an L1 hit", func() bool {
		if got := mustGet(t, e, "l1:1"); got != "v1" {
			t.Fatalf("Get = %q, want v1", got)
		}
		return e.L1Stats("l1").Hits.Load() > 0
	})
	flushes := e.L1Stats("l1").Flushes.Load()
	if err := w.Redis.Kill(); err != nil {
		t.Fatal(err)
	}
	world.WaitFor(t, "the L1's connection to see Redis gone", func() bool { return e.L1Stats("l1").Flushes.Load() > flushes })
	if b := e.L1Stats("l1").Bytes.Load(); b != 0 {
		t.Fatalf("the L1 holds %d bytes after its connection was lost", b)
	}
	if err := w.Redis.Start(); err != nil {
		t.Fatal(err)
	}
	rc := w.Redis.NodeClient(t)
	if err := rc.Do(context.Background(), rc.B().Set().Key("l1:1").Value("after").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	world.WaitFor(t, "a Get once Redis is back", func() bool {
		v, err := e.Get(context.Background(), "l1", "l1:1")
		if err != nil {
			return false // the connection is not back yet
		}
		if string(v) != "after" {
			t.Fatalf("Get after the restart = %q, want after (a copy outlived its connection)", v)
		}
		return true
	})
}
