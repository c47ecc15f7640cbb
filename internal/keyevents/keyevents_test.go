package keyevents_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/keyevents"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestFlagsKept: notify-keyspace-events loses a listener's flags (Redis
// restarted without persistence, someone's CONFIG SET, on one primary of a
// Cluster); the listener enables them again, adding only what is missing,
// logs one warning naming the node and the value, counts one re-enable
// per listener, and events reach it again. Two listeners (two features)
// of one process never undo each other's flags.
func TestFlagsKept(t *testing.T) {
	for _, tc := range []struct {
		name     string
		topology string
		flags    []string      // one listener of expired events per entry
		every    time.Duration // how often the listeners check
		set      string        // notify-keyspace-events someone sets, or "restart"
		// How many listeners enable flags again: with two, the second
		// finds what the first added.
		min, max int
	}{
		{name: "restart", flags: []string{"Ex"}, every: time.Hour, set: "restart", min: 1, max: 1},
		{name: "config set", flags: []string{"Ex"}, every: 10 * time.Millisecond, set: "", min: 1, max: 1},
		{name: "others' flags kept", flags: []string{"Ex"}, every: 10 * time.Millisecond, set: "K$", min: 1, max: 1},
		{name: "x covered by A", flags: []string{"Ex"}, every: 10 * time.Millisecond, set: "AE", min: 0, max: 0},
		{name: "two features", flags: []string{"Ex", "Exm"}, every: 10 * time.Millisecond, set: "", min: 1, max: 2},
		{name: "cluster restart", topology: "cluster", flags: []string{"Ex"}, every: time.Hour, set: "restart", min: 1, max: 1},
		{name: "cluster config set", topology: "cluster", flags: []string{"Ex"}, every: 10 * time.Millisecond, set: "g", min: 1, max: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := world.NewRedisOnly(t, tc.topology)
			rc := w.RC
			// The node whose flags go: on a Cluster, not the one the client was given.
			node := w.Nodes[len(w.Nodes)-1]
			nc := node.NodeClient(t)
			key := node.KeyOn(t, "probe:")
			var logs testenv.LogBuffer
			var listeners []*listener
			for _, flags := range tc.flags {
				l := listen(t, rc, keyevents.Events{Flags: flags, Feature: "test " + flags, Every: tc.every}, &logs)
				l.expires(t, rc, key)
				listeners = append(listeners, l)
			}
			if got := logs.Lines("level=WARN"); len(got) != 0 {
				t.Fatalf("warnings before the flags were lost: %q", got)
			}

			was := tc.set
			if tc.set == "restart" {
				if err := node.Restart(); err != nil {
					t.Fatal(err)
				}
				was = ""
			} else {
				setFlags(t, nc, tc.set)
			}
			for _, l := range listeners {
				l.expires(t, rc, key)
			}
			// The flags checked again (they may have been enabled before
			// the events came, or never lost): none is left to enable.
			for _, l := range listeners {
				checks := l.health.Checks.Load()
				world.WaitFor(t, "another check", func() bool { return l.health.Checks.Load() > checks || tc.every == time.Hour })
			}

			var reenabled int
			for _, l := range listeners {
				reenabled += int(l.health.Reenabled.Load())
				if !l.health.OK() {
					t.Errorf("%s: not OK", l.ev.Feature)
				}
			}
			if reenabled < tc.min || reenabled > tc.max {
				t.Errorf("%d re-enables, want %d to %d", reenabled, tc.min, tc.max)
			}
			warnings := logs.Lines(`level=WARN msg="notify-keyspace-events lost its flags; enabled again" redis=` + node.Addr + " ")
			if len(warnings) != reenabled {
				t.Errorf("%d warnings, want %d; log:\n%s", len(warnings), reenabled, logs.String())
			}
			got := flagsOf(t, nc)
			for _, want := range tc.set + strings.Join(tc.flags, "") {
				if !strings.ContainsRune(got, want) && !(want == 'x' && strings.ContainsRune(got, 'A')) && tc.set != "restart" {
					t.Errorf("notify-keyspace-events %q lacks %q", got, want)
				}
			}
			if tc.max == 0 && !sameFlags(got, tc.set) {
				t.Errorf("notify-keyspace-events %q, want %q untouched", got, tc.set)
			}
			if len(warnings) > 0 {
				// The first warning names the value it found (in Redis's order).
				_, v, _ := strings.Cut(warnings[0], " was=")
				v, _, _ = strings.Cut(v, " ")
				if v == `""` {
					v = ""
				}
				if !sameFlags(v, was) {
					t.Errorf("warning names the value %q, want %q: %s", v, was, warnings[0])
				}
			}
		})
	}
}

// sameFlags reports whether a and b hold the same flags, in any order.
func sameFlags(a, b string) bool {
	return len(a) == len(b) && strings.Trim(a, b) == "" && strings.Trim(b, a) == ""
}

// TestRefused: a Redis that refuses CONFIG (an ACL without it), from the
// start or once the listener runs: one error, naming the node and exactly
// what to configure, however many checks are refused; Health says not OK;
// events configured by hand still arrive; allowed again, the listener
// says so once and enables what is missing (a warning when it had found
// them before).
func TestRefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		atStart bool
	}{
		{"from the start", true},
		{"while running", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := world.NewRedisOnly(t, "single")
			r, admin := w.Redis, w.RC
			r.SetUser(t, "cs", "on", ">pw", "~*", "&*", "+@all")
			if tc.atStart {
				r.SetUser(t, "cs", "-config")
			}
			rc := r.ClientAs(t, "cs", "pw")

			var logs testenv.LogBuffer
			l := listen(t, rc, keyevents.Events{Flags: "Ex", Feature: "test", Every: 10 * time.Millisecond}, &logs)
			if !tc.atStart {
				l.expires(t, rc, "probe:1")
				r.SetUser(t, "cs", "-config")
			}
			setFlags(t, admin, "")
			// Several periods' checks refused, one error.
			world.WaitFor(t, "refused checks", func() bool { return l.health.Refused.Load() == 1 })
			checks := l.health.Checks.Load()
			world.WaitFor(t, "more refused checks", func() bool { return l.health.Checks.Load() >= checks+5 })
			errs := logs.Lines("level=ERROR")
			if len(errs) != 1 || !strings.Contains(errs[0], `configure="notify-keyspace-events Ex"`) || !strings.Contains(errs[0], "redis="+r.Addr) {
				t.Fatalf("errors logged: %q, want one naming the node and notify-keyspace-events Ex", errs)
			}
			if l.health.OK() {
				t.Error("OK while CONFIG is refused")
			}
			// Configured by hand, the events arrive.
			setFlags(t, admin, "Ex")
			l.expires(t, rc, "probe:2")

			setFlags(t, admin, "")
			r.SetUser(t, "cs", "+config")
			// Never found before, the flags are enabled as at a start (info);
			// found once, they were lost (a warning).
			enabled, reenabled := `msg="enabled keyspace events"`, int64(0)
			if !tc.atStart {
				enabled, reenabled = `msg="notify-keyspace-events lost its flags; enabled again"`, 1
			}
			world.WaitFor(t, "the flags enabled again", func() bool { return l.health.OK() && len(logs.Lines(enabled)) == 1 })
			if n := l.health.Reenabled.Load(); n != reenabled {
				t.Errorf("%d re-enables counted, want %d", n, reenabled)
			}
			l.expires(t, rc, "probe:3")
			if n := len(logs.Lines(`msg="redis allows cachesync's CONFIG again"`)); n != 1 {
				t.Errorf("%d lines saying CONFIG is allowed again, want 1", n)
			}
			if n := len(logs.Lines("level=ERROR")); n != 1 {
				t.Errorf("%d errors, want 1", n)
			}
			if f := flagsOf(t, admin); !strings.Contains(f, "x") || !strings.Contains(f, "E") {
				t.Errorf("notify-keyspace-events %q", f)
			}
		})
	}
}

// listener is a running Listen of expired events and the keys it got.
type listener struct {
	ev     keyevents.Events
	health *keyevents.Health
	mu     sync.Mutex
	keys   map[string]int
}

// listen runs keyevents.Listen for expired events in db 0 until the test ends.
func listen(t *testing.T, rc rueidis.Client, ev keyevents.Events, logs *testenv.LogBuffer) *listener {
	t.Helper()
	ev.Channel = keyevents.Channel(0, "expired")
	ev.Health = &keyevents.Health{}
	l := &listener{ev: ev, health: ev.Health, keys: map[string]int{}}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	testenv.Go(t, func(ctx context.Context) error {
		keyevents.Listen(ctx, rc, ev, log, func(key string) {
			l.mu.Lock()
			l.keys[key]++
			l.mu.Unlock()
		})
		return nil
	})
	return l
}

// expires makes key expire until l gets its expired event.
func (l *listener) expires(t *testing.T, rc rueidis.Client, key string) {
	t.Helper()
	got := func() int {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.keys[key]
	}
	seen := got()
	world.WaitFor(t, l.ev.Feature+": an expired event of "+key, func() bool {
		if got() > seen {
			return true
		}
		// Set again, to expire after a millisecond (found expired by the
		// next SET or by Redis's own sweep); errors are retried: a
		// restarted node may not answer yet.
		_ = rc.Do(t.Context(), rc.B().Set().Key(key).Value("1").Px(time.Millisecond).Build()).Error()
		return false
	})
}

// flagsOf returns the notify-keyspace-events of rc's node, trying again
// while its connection is broken (by a restart).
func flagsOf(t *testing.T, rc rueidis.Client) string {
	t.Helper()
	var m map[string]string
	var err error
	world.WaitFor(t, "CONFIG GET", func() bool {
		m, err = rc.Do(t.Context(), rc.B().ConfigGet().Parameter("notify-keyspace-events").Build()).AsStrMap()
		_, answered := rueidis.IsRedisErr(err)
		return err == nil || answered
	})
	if err != nil {
		t.Fatal(err)
	}
	return m["notify-keyspace-events"]
}

func setFlags(t *testing.T, rc rueidis.Client, flags string) {
	t.Helper()
	if err := rc.Do(t.Context(), rc.B().ConfigSet().ParameterValue().ParameterValue("notify-keyspace-events", flags).Build()).Error(); err != nil {
		t.Fatal(err)
	}
}
