package main

import (
	"encoding/json"
	"fmt"
	"strings"
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
	if got := activeOf(t, cfg); !strings.HasSuffix(got, fmt.Sprintf(":%d", active.PID())) {
		t.Errorf("cachesync status names %q as active, want the first daemon, pid %d", got, active.PID())
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
	if got := activeOf(t, cfg); !strings.HasSuffix(got, fmt.Sprintf(":%d", standby.PID())) {
		t.Errorf("cachesync status names %q as active, want the standby, pid %d", got, standby.PID())
	}
	standby.Stop()
	if got := activeOf(t, cfg); got != "" {
		t.Errorf("cachesync status names %q as active with no daemon running", got)
	}
}

// activeOf is the daemon `cachesync status --json` names as streaming the
// config's source db.
func activeOf(t *testing.T, cfg string) string {
	t.Helper()
	code, out, errOut := world.CLI(t, nil, "status", "--config", cfg, "--json")
	if code != 0 {
		t.Fatalf("cachesync status: exit %d: %s", code, errOut)
	}
	var r struct {
		Sources map[string]struct{ Active string } `json:"sources"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("cachesync status --json: %v\n%s", err, out)
	}
	return r.Sources["db"].Active
}
