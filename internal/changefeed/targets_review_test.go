package changefeed_test

import (
	"context"
	"testing"

	"github.com/cachesync/cachesync/config"
)

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
