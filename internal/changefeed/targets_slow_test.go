package changefeed_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestTargetsSlowRebuildAtStart: with several targets, a rebuild at the
// start of a session that takes longer than prepareTimeout (10 s; here its
// snapshot waits for a transaction left open) is not a target that does not
// answer: with one target the session simply waits. On main, every target
// is given up after 10 s and the session ends ("no target can be
// written"), again and again, so a multi-target feed over a table that
// takes over 10 s to copy never starts.
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
	open, err := pgx.Connect(ctx, w.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close(ctx)
	tx, err := open.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT txid_current()`); err != nil { // a snapshot waits for it to end
		t.Fatal(err)
	}
	f = w.StartFeed(cfg)
	a, tb := target(t, f, "a"), target(t, f, "b")
	world.WaitFor(t, "a rebuild waiting for its snapshot", func() bool {
		var n int
		w.DB.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE_REPLICATION_SLOT%cachesync_snap_%'`).Scan(&n)
		return n > 0
	})
	// The event looked for is a give-up that a correct feed never makes;
	// the bound only decides how long to look (2.5 × prepareTimeout).
	for end := time.Now().Add(25 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if a.Away() || tb.Away() || f.Stats.Reconnects.Load() > 0 {
			t.Fatalf("a slow rebuild was taken for an unreachable target: a away %v, b away %v, sessions restarted %d",
				a.Away(), tb.Away(), f.Stats.Reconnects.Load())
		}
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	w.WaitEqual("*", rows(w, "both"))
	b.WaitEqual("both:*", rows(w, "both"))
	b.WaitEqual("onlyb:*", rows(w, "onlyb"))
}
