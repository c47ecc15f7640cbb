package changefeed_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/changefeed"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// twoTargets is a world whose config has two targets: a, the world's
// Redis, holding cache both; b, another Redis (started with args), holding
// both and onlyb. buffer is b's.
func twoTargets(t *testing.T, buffer int, args ...string) (w, b *world.World, cfg *config.Config) {
	w = world.New(t, `CREATE TABLE items (id int PRIMARY KEY, v text);
		INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 500) g`)
	b = w.Target(testenv.StartRedis(t, testenv.WithRedisArgs(args...)))
	yaml := w.TargetsYAML(`  both: {table: items, key: "both:{id}", value: {format: string, column: v}}
  onlyb: {table: items, key: "onlyb:{id}", value: {format: string, column: v}, targets: [b]}
`, fmt.Sprintf("name: a, url: %q", w.Redis.URL()), fmt.Sprintf("name: b, url: %q, buffer: %d", b.Redis.URL(), buffer))
	cfg, err := config.Load(strings.NewReader(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return w, b, cfg
}

// rows is the table as cache prefix's keys.
func rows(w *world.World, prefix string) func() map[string]string {
	return func() map[string]string { return w.Rows(`SELECT '` + prefix + `:' || id, v FROM items`) }
}

// stopB runs cfg's feed until b is built, then stops b's Redis; it
// returns the feed's targets a and b.
func stopB(t *testing.T, w, b *world.World, cfg *config.Config) (a, tb *changefeed.Target) {
	t.Helper()
	f := w.StartFeed(cfg)
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
	if err := b.Redis.Stop(); err != nil {
		t.Fatal(err)
	}
	return target(t, f, "a"), target(t, f, "b")
}

// target returns the feed's target named name.
func target(t *testing.T, f *world.Feed, name string) *changefeed.Target {
	for _, tg := range f.Targets {
		if tg.Name == name {
			return tg
		}
	}
	t.Fatalf("no target %q", name)
	return nil
}

// confirmed returns the position the feed's slot confirmed.
func confirmed(t *testing.T, w *world.World) pglogrepl.LSN {
	var s string
	if err := w.DB.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, "cachesync_"+w.Name).Scan(&s); err != nil {
		t.Fatal(err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// TestTargetsFromOneFeed: one slot keeps two targets in step, each with the
// caches that list it.
func TestTargetsFromOneFeed(t *testing.T) {
	w, b, cfg := twoTargets(t, config.DefaultBuffer)
	f := w.StartFeed(cfg)
	w.WaitEqual("*", rows(w, "both"))
	b.WaitEqual("both:*", rows(w, "both"))
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
	w.Exec(`UPDATE items SET v = v || '+' WHERE id % 3 = 0; DELETE FROM items WHERE id % 7 = 0; INSERT INTO items VALUES (1000, 'new')`)
	w.WaitEqual("*", rows(w, "both"))
	b.WaitEqual("both:*", rows(w, "both"))
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
	if a, bb := target(t, f, "a"), target(t, f, "b"); a.Stats.Rebuilds.Load() != 1 || bb.Stats.Rebuilds.Load() != 2 {
		t.Fatalf("rebuilds: a %d, b %d; want 1 and 2", a.Stats.Rebuilds.Load(), bb.Stats.Rebuilds.Load())
	}
}

// TestTargetStoppedCatchesUp: a target stopped while changes flow holds
// the others back in nothing; restarted with its data within its buffer, it
// applies what it missed without a rebuild.
func TestTargetStoppedCatchesUp(t *testing.T) {
	w, b, cfg := twoTargets(t, config.DefaultBuffer, "--appendonly", "yes", "--appendfsync", "always")
	a, tb := stopB(t, w, b, cfg)
	for i := range 20 {
		w.Exec(`UPDATE items SET v = $1 || id WHERE id % 20 = $2`, fmt.Sprint("r", i, "-"), i)
	}
	w.WaitEqual("*", rows(w, "both")) // a goes on
	if err := b.Redis.Start(); err != nil {
		t.Fatal(err)
	}
	b.WaitEqual("both:*", rows(w, "both"))
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
	if a.Stats.Rebuilds.Load() != 1 || tb.Stats.Rebuilds.Load() != 2 || tb.Away() {
		t.Fatalf("rebuilds: a %d, b %d (want 1 and 2: none after the start); b away %v", a.Stats.Rebuilds.Load(), tb.Stats.Rebuilds.Load(), tb.Away())
	}
}

// TestTargetLeftBehind: a target that misses more changes than its buffer
// holds is left behind: the slot's confirmed position moves on with the
// others; once it answers, it is rebuilt while the others stream.
func TestTargetLeftBehind(t *testing.T) {
	w, b, cfg := twoTargets(t, 50)
	a, tb := stopB(t, w, b, cfg)
	for i := range 100 {
		w.Exec(`UPDATE items SET v = $1 WHERE id = $2`, fmt.Sprint("gone-", i), i+1)
	}
	world.WaitFor(t, "b left behind", tb.Away)
	w.WaitEqual("*", rows(w, "both"))
	// The slot keeps nothing for b now: it confirms what a applied.
	applied := pglogrepl.LSN(a.Stats.AppliedLSN.Load())
	world.WaitFor(t, "the slot to confirm what a applied", func() bool { return confirmed(t, w) >= applied })
	if err := b.Redis.Start(); err != nil { // empty: it kept nothing
		t.Fatal(err)
	}
	w.Exec(`UPDATE items SET v = 'back' WHERE id = 500`)
	b.WaitEqual("both:*", rows(w, "both"))
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
	world.WaitFor(t, "b streaming again", func() bool { return !tb.Away() })
	if a.Stats.Rebuilds.Load() != 1 || tb.Stats.Rebuilds.Load() != 4 {
		t.Fatalf("rebuilds: a %d, b %d; want 1 and 4 (b's two caches again)", a.Stats.Rebuilds.Load(), tb.Stats.Rebuilds.Load())
	}
	w.Exec(`DELETE FROM items WHERE id <= 10`)
	w.WaitEqual("*", rows(w, "both"))
	b.WaitEqual("both:*", rows(w, "both"))
}

// TestTargetDownAtStart: a feed starts with one target down; the other
// streams, across a new session too, and the missing one is built once it
// answers.
func TestTargetDownAtStart(t *testing.T) {
	w, b, cfg := twoTargets(t, config.DefaultBuffer)
	if err := b.Redis.Stop(); err != nil {
		t.Fatal(err)
	}
	f := w.StartFeed(cfg)
	w.WaitEqual("*", rows(w, "both"))
	w.Exec(`UPDATE items SET v = 'while b was down' WHERE id < 50`)
	w.WaitEqual("*", rows(w, "both"))
	world.WaitFor(t, "b away", target(t, f, "b").Away)
	// The stream breaks while b is still down: the session ends, b's wait
	// with it, and the next one streams a's changes.
	before := f.Stats.Reconnects.Load()
	w.Exec(`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1`, "cachesync_"+w.Name)
	world.WaitFor(t, "a new session", func() bool { return f.Stats.Reconnects.Load() > before })
	w.Exec(`UPDATE items SET v = 'after the stream broke' WHERE id < 50`)
	w.WaitEqual("*", rows(w, "both"))
	if err := b.Redis.Start(); err != nil {
		t.Fatal(err)
	}
	b.WaitEqual("both:*", rows(w, "both"))
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
}

// TestTargetBackFromOlderDump: a target whose Redis comes back from an
// older dump (its state record behind what this session applied to it, but
// present) must be rebuilt: applying only the changes its queue still holds
// on top of the dump loses those between the dump and its failure.
func TestTargetBackFromOlderDump(t *testing.T) {
	w, b, cfg := twoTargets(t, config.DefaultBuffer)
	w.StartFeed(cfg)
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
	b.WaitEqual("both:*", rows(w, "both"))
	ctx := context.Background()
	if err := b.RC.Do(ctx, b.RC.B().Save().Build()).Error(); err != nil { // dump.rdb: b as built
		t.Fatal(err)
	}
	w.Exec(`UPDATE items SET v = 'after the dump' WHERE id <= 100`)
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
	b.WaitEqual("both:*", rows(w, "both"))
	if err := b.Redis.Stop(); err != nil { // no save points: the dump stays the older one
		t.Fatal(err)
	}
	w.Exec(`UPDATE items SET v = 'while b was down' WHERE id > 400`)
	w.WaitEqual("*", rows(w, "both"))
	if err := b.Redis.Start(); err != nil { // loads the dump: without 'after the dump'
		t.Fatal(err)
	}
	b.WaitEqual("both:*", rows(w, "both"))
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
}

// TestTargetsSlowRebuildAtStart: with several targets, a rebuild at the
// start of a session that takes longer than the feed's TargetTimeout (here
// its snapshot waits for a transaction left open) is not a target that does
// not answer: the session waits for it, as with one target. (Once every
// target was given up after the timeout and the session ended, again and
// again: a feed over a table that takes longer to copy never started.)
func TestTargetsSlowRebuildAtStart(t *testing.T) {
	w, b, cfg := twoTargets(t, config.DefaultBuffer)
	f := w.StartFeed(cfg) // creates the slot and publication
	w.WaitEqual("*", rows(w, "both"))
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
	if err := f.Stop(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, rw := range []*world.World{w, b} { // both targets lost their data: both are rebuilt
		if err := rw.RC.Do(ctx, rw.RC.B().Flushall().Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	release := holdSnapshots(t, w)
	const timeout = 500 * time.Millisecond
	f = w.StartFeed(cfg, func(f *changefeed.Feed) { f.TargetTimeout = timeout })
	a, tb := target(t, f, "a"), target(t, f, "b")
	waitSnapshotHeld(t, w)
	// The event looked for is a give-up that a correct feed never makes;
	// the bound only decides how long to look (5 × the timeout).
	for end := time.Now().Add(5 * timeout); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if a.Away() || tb.Away() || f.Stats.Reconnects.Load() > 0 {
			t.Fatalf("a slow rebuild was taken for an unreachable target: a away %v, b away %v, sessions restarted %d",
				a.Away(), tb.Away(), f.Stats.Reconnects.Load())
		}
	}
	release()
	w.WaitEqual("*", rows(w, "both"))
	b.WaitEqual("both:*", rows(w, "both"))
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
}

// TestTargetsSameRedis: two targets that are one Redis under two URLs
// would share cachesync's state and fence each other: the feed stops with
// a config error naming the second.
func TestTargetsSameRedis(t *testing.T) {
	w := world.New(t, `CREATE TABLE items (id int PRIMARY KEY, v text)`)
	yaml := w.TargetsYAML(`  both: {table: items, key: "both:{id}", value: {format: string, column: v}}
`, fmt.Sprintf("name: a, url: %q", w.Redis.URL()), fmt.Sprintf("name: b, url: %q", strings.Replace(w.Redis.URL(), "127.0.0.1", "localhost", 1)))
	cfg, err := config.Load(strings.NewReader(yaml))
	if err != nil {
		t.Fatal(err)
	}
	f := w.StartFeed(cfg)
	world.WaitFor(t, "the feed to end", f.Ended)
	err = f.Stop()
	if want := `redis.b.url: the same Redis as target "a"`; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("feed ended with %v, want %q", err, want)
	}
}

// TestTargetsResync: a cache named for a rebuild (cachesync resync) is
// rebuilt in every target that holds it, and only it.
func TestTargetsResync(t *testing.T) {
	w, b, cfg := twoTargets(t, config.DefaultBuffer)
	f := w.StartFeed(cfg)
	w.WaitEqual("*", rows(w, "both"))
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
	if err := f.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, rw := range []*world.World{w, b} { // written behind cachesync's back
		if err := rw.RC.Do(context.Background(), rw.RC.B().Set().Key("both:1").Value("junk").Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	f = w.StartFeed(cfg, func(f *changefeed.Feed) { f.Rebuild = []string{"both"} })
	w.WaitEqual("*", rows(w, "both"))
	b.WaitEqual("both:*", rows(w, "both"))
	if a, tb := target(t, f, "a"), target(t, f, "b"); a.Stats.Rebuilds.Load() != 1 || tb.Stats.Rebuilds.Load() != 1 {
		t.Fatalf("rebuilds: a %d, b %d; want 1 each (both, not onlyb)", a.Stats.Rebuilds.Load(), tb.Stats.Rebuilds.Load())
	}
}

// TestTargetRebuiltWhileOthersStream: a session starts with one target in
// need of a rebuild (its Redis lost its data while no feed ran) and one
// that needs none: the second streams while the first is rebuilt, even
// while the rebuild's snapshot waits (for a transaction left open).
func TestTargetRebuiltWhileOthersStream(t *testing.T) {
	w, b, cfg := twoTargets(t, config.DefaultBuffer)
	f := w.StartFeed(cfg)
	w.WaitEqual("*", rows(w, "both"))
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
	if err := f.Stop(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.RC.Do(ctx, b.RC.B().Flushall().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	release := holdSnapshots(t, w)
	f = w.StartFeed(cfg)
	waitSnapshotHeld(t, w)
	w.Exec(`UPDATE items SET v = 'while b is rebuilt' WHERE id <= 20`)
	w.WaitEqual("*", rows(w, "both")) // a streams meanwhile
	release()
	b.WaitEqual("both:*", rows(w, "both"))
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
	if a, tb := target(t, f, "a"), target(t, f, "b"); a.Stats.Rebuilds.Load() != 0 || tb.Stats.Rebuilds.Load() != 2 {
		t.Fatalf("rebuilds: a %d, b %d; want 0 and 2", a.Stats.Rebuilds.Load(), tb.Stats.Rebuilds.Load())
	}
}

// holdSnapshots keeps a transaction with an ID open in w's database, so a
// snapshot taken meanwhile (a rebuild's) waits for it, until release.
func holdSnapshots(t *testing.T, w *world.World) (release func()) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, w.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT txid_current()`); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// waitSnapshotHeld waits until a snapshot waits for holdSnapshots'
// transaction.
func waitSnapshotHeld(t *testing.T, w *world.World) {
	world.WaitFor(t, "a rebuild's snapshot waiting", func() bool {
		var n int
		w.DB.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE_REPLICATION_SLOT%cachesync_snap_%'`).Scan(&n)
		return n > 0
	})
}

// TestTargetBehindAtStartHoldsConfirmed: a session starts with target b
// behind a (b was down while a applied changes, then the feed stopped) and
// b's rebuild of one cache waiting for its snapshot. b is counted from its
// own position, so the slot must confirm nothing past it: a later session
// would otherwise find b behind the slot, take its Redis for one that lost
// data, and rebuild every cache of it.
func TestTargetBehindAtStartHoldsConfirmed(t *testing.T) {
	w, b, cfg := twoTargets(t, config.DefaultBuffer, "--appendonly", "yes", "--appendfsync", "always")
	f := w.StartFeed(cfg)
	w.WaitEqual("*", rows(w, "both"))
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
	if err := b.Redis.Stop(); err != nil {
		t.Fatal(err)
	}
	w.Exec(`UPDATE items SET v = 'while b is down' WHERE id <= 20`)
	w.WaitEqual("*", rows(w, "both")) // a applies; b's queue holds the change
	if err := f.Stop(); err != nil {
		t.Fatal(err)
	}
	held := confirmed(t, w) // b's position: it applied nothing since
	if err := b.Redis.Start(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	world.WaitFor(t, "b's record of onlyb removed (b needs its rebuild)", func() bool { // (the client reconnects)
		return b.RC.Do(ctx, b.RC.B().Hdel().Key(binding.StateKey(cfg.Name)).Field("cache:onlyb").Build()).Error() == nil
	})
	release := holdSnapshots(t, w)
	f = w.StartFeed(cfg)
	waitSnapshotHeld(t, w) // b's rebuild of onlyb waits; b applies nothing
	if err := f.Stop(); err != nil {
		t.Fatal(err)
	}
	release()
	if got := confirmed(t, w); got != held {
		t.Fatalf("the slot confirmed %s while b, counted, stood at %s", got, held)
	}
}
