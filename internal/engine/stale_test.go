package engine_test

import (
	"context"
	"errors"
	"testing"

	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestStale: after a key expires, stale-while-revalidate serves the old
// value at once while one refresh loads the new one; with PostgreSQL down,
// stale-if-error serves it instead of failing; an invalidation or a missing
// row leaves nothing stale to serve.
func TestStale(t *testing.T) {
	e := newEnv(t, `CREATE TABLE s (id int PRIMARY KEY, v text); INSERT INTO s VALUES (1, 'old'), (2, 'two')`)
	// An hour's TTL, and keys expired on purpose: a short TTL would make the
	// fills' leases (half of it) short enough to lose on a slow machine.
	cfg := e.Config(`  s: {table: s, key: "s:{id}", value: {format: string, column: v}, sync: none, ttl: 1h,
       stale_while_revalidate: 1h, stale_if_error: 1h}
  e: {table: s, key: "e:{id}", value: {format: string, column: v}, sync: none, ttl: 1h, stale_if_error: 1h}
`)
	c := e.Open(cfg)
	ctx := context.Background()
	get := func(cache, key string) (string, error) {
		v, err := c.Get(ctx, cache, key)
		return string(v), err
	}
	expired := func(key string) {
		if n, err := e.RC.Do(ctx, e.RC.B().Pexpire().Key(key).Milliseconds(1).Build()).AsInt64(); err != nil || n != 1 {
			t.Fatalf("PEXPIRE %s = %d, %v: the fill did not write it", key, n, err)
		}
		world.WaitFor(t, key+" expires", func() bool {
			n, _ := e.RC.Do(ctx, e.RC.B().Exists().Key(key).Build()).AsInt64()
			return n == 0
		})
	}
	if v, err := get("s", "s:1"); err != nil || v != "old" {
		t.Fatalf("first Get = %q, %v", v, err)
	}
	e.Exec(`UPDATE s SET v = 'new' WHERE id = 1`)
	expired("s:1")
	before := queries(e, "public.s")
	if v, err := get("s", "s:1"); err != nil || v != "old" {
		t.Fatalf("Get after expiry = %q, %v; want the stale %q", v, err, "old")
	}
	// The refresh runs in the background and fills the new value.
	world.WaitFor(t, "the background refresh fills s:1", func() bool {
		v, ok := e.Get("s:1")
		return ok && v == "new"
	})
	if n := queries(e, "public.s") - before; n != 1 {
		t.Fatalf("%d queries for one stale read, want 1 refresh", n)
	}
	if c.Stats.StaleWhileRevalidate.Load() != 1 {
		t.Fatalf("stale-while-revalidate count %d, want 1", c.Stats.StaleWhileRevalidate.Load())
	}

	// Invalidated: nothing stale is left to serve.
	if err := c.Invalidate(ctx, "s", "s:1"); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.RC.Do(ctx, e.RC.B().Exists().Key(binding.CompanionsOf("s:1").Stale).Build()).AsInt64(); n != 0 {
		t.Fatal("Invalidate left the stale copy")
	}

	// PostgreSQL down: stale-if-error serves the expired value; a key with
	// no stale copy fails with ErrUnavailable.
	if v, err := get("e", "e:2"); err != nil || v != "two" {
		t.Fatalf("Get e:2 = %q, %v", v, err)
	}
	expired("e:2")
	if err := world.Postgres(t).Stop(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { world.Postgres(t).Start() }) // for the tests after this one, should this one fail
	if v, err := get("e", "e:2"); err != nil || v != "two" {
		t.Fatalf("Get e:2 with PostgreSQL down = %q, %v; want the stale %q", v, err, "two")
	}
	if _, err := get("e", "e:1"); !errors.Is(err, engine.ErrUnavailable) {
		t.Fatalf("Get e:1 (never cached) with PostgreSQL down: %v, want ErrUnavailable", err)
	}
	if c.Stats.StaleIfError.Load() != 1 {
		t.Fatalf("stale-if-error count %d, want 1", c.Stats.StaleIfError.Load())
	}
	if err := world.Postgres(t).Start(); err != nil {
		t.Fatal(err)
	}
}
