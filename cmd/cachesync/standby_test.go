package main

import (
	"testing"

	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestStandbyTakesOver: two `cachesync run` of one config. The second
// waits quietly, blocked on the slot's lock: one line when it starts
// waiting, none while it waits, one when it takes over. kill -9 of the
// first, under changes; the second carries on and Redis ends equal to the
// table.
func TestStandbyTakesOver(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(1000))
	cfg := w.WriteConfig(itemsCaches)
	active := w.Daemon(cfg)
	active.WaitLog("streaming changes")
	standby := w.Daemon(cfg)
	standby.WaitLog("waiting to take over")
	world.WaitSession(t, w.DB, "the standby waits on the slot's lock", `wait_event_type = 'Lock' AND wait_event = 'advisory' AND datname = current_database()`)
	for i := range 50 {
		w.Exec(`UPDATE items SET val = val + 1 WHERE id = $1`, 1+i)
	}
	waitItems(w)
	if n := len(standby.Stderr.Lines("waiting")); n != 1 {
		t.Fatalf("the standby logged %d lines about waiting while the active one ran, want 1:\n%s", n, standby.Tail(20))
	}

	active.Kill()
	w.Exec(`UPDATE items SET val = val + 1, note = 'after the kill' WHERE id BETWEEN 100 AND 150`)
	standby.WaitLog("took over the replication slot")
	waitItems(w)
	if n := len(standby.Stderr.Lines("waiting")); n != 1 {
		t.Errorf("the standby logged %d lines about waiting, want 1:\n%s", n, standby.Tail(20))
	}
	if n := len(standby.Stderr.Lines("took over the replication slot")); n != 1 {
		t.Errorf("the standby logged %d take-overs, want 1:\n%s", n, standby.Tail(20))
	}
	standby.Stop()
}
