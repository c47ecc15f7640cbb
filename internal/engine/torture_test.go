package engine_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/drain"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/state"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestTorture runs writers through the API (write-through and write-behind,
// with its drainer) and straight to the database, readers that fill on
// misses, invalidations, batch reloads (what refreshes and check's repairs
// run: watched, and under leases when refused; with the feed, present keys
// are renewed, never overwritten) and the change feed together on 100 keys
// for 20 s;
// once writes stop and the queue is drained, every key must read as the
// database says (DESIGN invariant 2: no stale value after quiescence).
func TestTorture(t *testing.T) {
	if testing.Short() {
		t.Skip("20 s torture test")
	}
	e := newEnv(t, `CREATE TABLE t (id int PRIMARY KEY, v bigint NOT NULL);
		INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {format: string, column: v}, negative_ttl: 1h, writes: behind}` + "\n")
	e.Feed(cfg)
	clients := []*engine.Engine{e.Open(cfg), e.Open(cfg)}

	// Writes stop once every operation has returned: the clock only stops
	// new ones. An operation cut short by its context could still take
	// effect after the database is read below: PostgreSQL commits a
	// statement it received although its client gave up (a Put's outcome
	// is then unknown, docs/API.md), and rueidis still sends a command it
	// queued before the context ended.
	ctx := context.Background()
	end := time.Now().Add(20 * time.Second)
	var work []func(r *rand.Rand) error // each run over and over by world.Hammer
	var puts, behinds, sqls, gets, invalidations, deletes, reloads int64
	var mu sync.Mutex
	count := func(n *int64) { mu.Lock(); *n++; mu.Unlock() }
	run := func(f func(r *rand.Rand) error) { work = append(work, f) }
	for i := range 2 { // writers through the API
		c := clients[i]
		run(func(r *rand.Rand) error {
			_, err := c.Put(ctx, "t", map[string]any{"id": 1 + r.IntN(100), "v": r.Int64N(1 << 40)})
			if errors.Is(err, engine.ErrNotApplied) {
				err = nil
			}
			count(&puts)
			return err
		})
	}
	for i := range 2 { // writers behind, drained by one client
		c := clients[i]
		run(func(r *rand.Rand) error {
			_, err := c.PutBehind(ctx, "t", map[string]any{"id": 1 + r.IntN(100), "v": r.Int64N(1 << 40)})
			count(&behinds)
			return err
		})
	}
	drainCtx, stopDrain := context.WithCancel(context.Background())
	drained := make(chan error, 1)
	go func() { drained <- drain.Run(drainCtx, clients[1]) }()
	defer func() {
		stopDrain()
		if err := <-drained; err != nil {
			t.Error(err)
		}
	}()
	for range 2 { // writers straight to the database: updates, deletes, re-inserts
		conn, err := pgx.Connect(context.Background(), e.DBURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		run(func(r *rand.Rand) error {
			id := 1 + r.IntN(100)
			var err error
			switch r.IntN(10) {
			case 0:
				_, err = conn.Exec(ctx, `DELETE FROM t WHERE id = $1`, id)
				count(&deletes)
			case 1:
				_, err = conn.Exec(ctx, `INSERT INTO t VALUES ($1, $2) ON CONFLICT DO NOTHING`, id, r.Int64N(1<<40))
			default:
				_, err = conn.Exec(ctx, `UPDATE t SET v = $2 WHERE id = $1`, id, r.Int64N(1<<40))
			}
			count(&sqls)
			return err
		})
	}
	for i := range 4 { // readers that fill, and invalidations
		c := clients[i%2]
		run(func(r *rand.Rand) error {
			key := fmt.Sprintf("t:%d", 1+r.IntN(100))
			if r.IntN(20) == 0 {
				count(&invalidations)
				return c.Invalidate(ctx, "t", key)
			}
			_, err := c.Get(ctx, "t", key)
			if errors.Is(err, engine.ErrNotFound) {
				err = nil
			}
			count(&gets)
			return err
		})
	}
	for i := range 2 { // reloads of 20 keys, missing ones only or present ones too
		c := clients[i]
		run(func(r *rand.Rand) error {
			keys := make([]string, 20)
			for j := range keys {
				keys[j] = fmt.Sprintf("t:%d", 1+r.IntN(100))
			}
			slices.Sort(keys)
			_, err := c.Reload(ctx, "t", slices.Compact(keys), r.IntN(2) == 0)
			count(&reloads)
			return err
		})
	}
	if _, errs := world.Hammer(end, work...); len(errs) > 0 {
		t.Fatal(errs)
	}
	t.Logf("%d puts, %d behind, %d SQL writes (%d deletes), %d gets, %d invalidations, %d reloads", puts, behinds, sqls, deletes, gets, invalidations, reloads)

	// The drainer empties the queue.
	world.WaitFor(t, "the drainer empties the queue", func() bool {
		n, err := e.RC.Do(context.Background(), e.RC.B().Xlen().Key(binding.StreamKey("t")).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return n == 0
	})

	// Quiescence: the feed catches up; then every key reads as the database says.
	want := map[int]string{}
	rows, err := e.DB.Query(context.Background(), `SELECT id, v::text FROM t`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int
		var v string
		rows.Scan(&id, &v)
		want[id] = v
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	// Wait for the feed to apply everything, then look once: a stale value
	// or marker would persist (no TTL, an hour's negative TTL), not heal.
	var target string
	if err := e.DB.QueryRow(context.Background(), `SELECT pg_current_wal_insert_lsn()::text`).Scan(&target); err != nil {
		t.Fatal(err)
	}
	lsn, err := pglogrepl.ParseLSN(target)
	if err != nil {
		t.Fatal(err)
	}
	rec := state.New(e.RC, cfg.Name)
	world.WaitFor(t, "the feed catches up to "+lsn.String(), func() bool {
		applied, _, err := rec.Applied(context.Background(), "db")
		if err != nil {
			t.Fatal(err)
		}
		return applied >= lsn
	})
	bad := 0
	var example string
	for id := 1; id <= 100; id++ {
		key := fmt.Sprintf("t:%d", id)
		cached, inRedis := e.Get(key)
		w, exists := want[id]
		got, err := clients[0].Get(context.Background(), "t", key)
		switch {
		case inRedis && (!exists || cached != w):
			bad++
			example = fmt.Sprintf("%s: Redis holds %s; database %s (exists %v)", key, cached, w, exists)
		case exists && (err != nil || string(got) != w):
			bad++
			example = fmt.Sprintf("%s: Get = %s, %v; database %s", key, got, err, w)
		case !exists && !errors.Is(err, engine.ErrNotFound):
			bad++
			example = fmt.Sprintf("%s: Get = %s, %v; the row is deleted", key, got, err)
		}
	}
	if bad > 0 {
		t.Fatalf("%d keys disagree with the database after quiescence, e.g. %s", bad, example)
	}
}

// TestTortureWithoutFeed: a cache without a change feed, kept by Put (which
// invalidates after its commit), with readers that fill, invalidations and
// batch reloads that overwrite present keys (refresh: ahead's reload)
// together on 50 keys for 10 s; once writes stop, every key in Redis reads
// as the database says (a reload that read a row before a Put's commit must
// not have overwritten the key after the Put's invalidation).
func TestTortureWithoutFeed(t *testing.T) {
	if testing.Short() {
		t.Skip("10 s torture test")
	}
	e := newEnv(t, `CREATE TABLE t (id int PRIMARY KEY, v bigint NOT NULL);
		INSERT INTO t SELECT g, 0 FROM generate_series(1, 50) g`)
	cfg := e.Config(`  t: {table: t, key: "t:{id}", value: {format: string, column: v}, sync: none}` + "\n")
	clients := []*engine.Engine{e.Open(cfg), e.Open(cfg)}
	// Operations run to their end (a Put cancelled while it commits is
	// TestPutCancelledWhileCommitting's); the clock only stops new ones.
	ctx := context.Background()
	key := func(r *rand.Rand) string { return fmt.Sprintf("t:%d", 1+r.IntN(50)) }
	var work []func(r *rand.Rand) error
	for _, c := range clients {
		work = append(work,
			func(r *rand.Rand) error { // writers through the API
				_, err := c.Put(ctx, "t", map[string]any{"id": 1 + r.IntN(50), "v": r.Int64N(1 << 40)})
				return err
			},
			func(r *rand.Rand) error { // readers that fill, and invalidations
				if r.IntN(20) == 0 {
					return c.Invalidate(ctx, "t", key(r))
				}
				_, err := c.Get(ctx, "t", key(r))
				return err
			},
			func(r *rand.Rand) error { // reloads, overwriting present keys, or filling missing ones (watching only the removal count)
				keys := []string{key(r), key(r), key(r), key(r), key(r)}
				slices.Sort(keys)
				_, err := c.Reload(ctx, "t", slices.Compact(keys), r.IntN(2) == 0)
				return err
			})
	}
	ops, errs := world.Hammer(time.Now().Add(10*time.Second), work...)
	for _, err := range errs {
		t.Fatal(err)
	}
	rows, err := e.DB.Query(context.Background(), `SELECT id, v::text FROM t`)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for rows.Next() {
		var id int
		var v string
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		want[fmt.Sprintf("t:%d", id)] = v
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	cached := 0
	for k, w := range want {
		v, ok := e.Get(k)
		if ok && v != w {
			t.Errorf("%s: Redis holds %s, the database %s", k, v, w)
		}
		if ok {
			cached++
		}
	}
	if cached == 0 {
		t.Fatal("no key cached at the end: nothing was compared")
	}
	t.Logf("%d operations, %d keys cached at the end", ops, cached)
}
