package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestTargetsTakeover: two targets, a and b (b with a small buffer), an
// active daemon and a standby of one config, under a writer that changes
// the table all along. b goes down (no persistence) and is left behind;
// the active daemon is killed with -9 while b is down, and the standby
// takes over and streams to a; b comes back empty and the standby builds
// it; a new standby takes over from it by kill -9 with both targets up.
// No write fails, both targets end equal to the table, and no daemon
// panics. Played with b stopped (SIGTERM) and killed (SIGKILL).
func TestTargetsTakeover(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		down func(*testenv.Redis) error
	}{
		{"stopped", (*testenv.Redis).Stop},
		{"killed", (*testenv.Redis).Kill},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			targetsTakeover(t, c.down)
		})
	}
}

// targetsTakeover plays TestTargetsTakeover, taking b down with down.
func targetsTakeover(t *testing.T, down func(*testenv.Redis) error) {
	a := world.New(t, itemsSchema(2000))
	b := a.Target(testenv.StartRedis(t)) // no persistence: back empty
	cfg := a.WriteYAML(a.TargetsYAML(itemsCaches,
		fmt.Sprintf("name: a, url: %q", a.Redis.URL()),
		fmt.Sprintf("name: b, url: %q, buffer: 500", b.Redis.URL())))
	active := a.Daemon(cfg)
	active.WaitLog("streaming changes")
	standby := a.Daemon(cfg)
	standby.WaitLog("waiting to take over")
	daemons := []*world.Proc{active, standby}

	// The writer, on a connection of its own: every write must succeed,
	// whatever happens to the daemons and to b.
	ctx, stopWriting := context.WithCancel(context.Background())
	db, err := pgx.Connect(ctx, a.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	var writes, failed atomic.Int64
	var firstErr atomic.Pointer[string]
	var wg sync.WaitGroup
	wg.Go(func() {
		r := rand.New(rand.NewPCG(7, 11))
		for ctx.Err() == nil {
			id := 1 + r.IntN(2500)
			var err error
			switch n := r.IntN(20); {
			case n == 0:
				_, err = db.Exec(ctx, `DELETE FROM items WHERE id = $1`, id)
			case n < 3:
				_, err = db.Exec(ctx, `INSERT INTO items VALUES ($1, 0, 'inserted') ON CONFLICT (id) DO UPDATE SET val = items.val + 1`, id)
			default:
				_, err = db.Exec(ctx, `UPDATE items SET val = val + 1, note = 'w' || val WHERE id = $1`, id)
			}
			if err != nil && ctx.Err() == nil {
				failed.Add(1)
				msg := err.Error()
				firstErr.CompareAndSwap(nil, &msg)
			}
			writes.Add(1)
		}
	})
	stopped := false
	stopWriter := func() {
		if !stopped {
			stopped = true
			stopWriting()
			wg.Wait()
		}
	}
	defer stopWriter()

	// marker writes row 0, which only this test writes, and waits until
	// each of in holds it.
	marker := func(what string, in ...*world.World) {
		t.Helper()
		a.Exec(`INSERT INTO items VALUES (0, 0, $1) ON CONFLICT (id) DO UPDATE SET note = $1`, what)
		want := fmt.Sprintf(`{"id":0,"val":0,"note":%q}`, what)
		for _, v := range in {
			world.WaitFor(t, fmt.Sprintf("%s to hold item:0 %q", v.Redis.URL(), what), func() bool {
				got, _ := v.Get("item:0")
				return got == want
			})
		}
	}

	// (1) Both targets follow the table while the writer writes.
	marker("both streaming", a, b)

	// (2) b goes down, empty when it comes back; with the writer going,
	// it soon misses more than its buffer holds.
	if err := down(b.Redis); err != nil {
		t.Fatal(err)
	}
	active.WaitLog("cannot write to this target")
	active.WaitLog("target left behind")
	marker("b left behind", a)

	// (3) kill -9 of the active daemon while b is down: the standby takes
	// over and streams to a, b unreachable.
	active.Kill()
	standby.WaitLog("took over the replication slot")
	standby.WaitLog("target unreachable")
	marker("taken over while b is down", a)
	if b.Redis.PID() != 0 {
		t.Fatal("b runs again before the test started it")
	}

	// (4) b back, empty: the standby (now active) builds it.
	if err := b.Redis.Start(); err != nil {
		t.Fatal(err)
	}
	standby.WaitLog("target rebuilt; streaming its changes")
	marker("b built by the one that took over", a, b)

	// (5) A new standby; kill -9 of the active one with both targets up:
	// the new one takes over and streams to both.
	third := a.Daemon(cfg)
	daemons = append(daemons, third)
	third.WaitLog("waiting to take over")
	standby.Kill()
	third.WaitLog("took over the replication slot")
	marker("taken over with both up", a, b)

	// (6) The writer stops; both targets end equal to the table.
	stopWriter()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d writes failed; the first: %s", n, writes.Load(), *firstErr.Load())
	}
	waitItems(a)
	waitItems(b)
	for _, d := range daemons {
		if strings.Contains(d.Stderr.String(), "panic") {
			t.Errorf("%s panicked:\n%s", d.Name, d.Tail(60))
		}
	}
	t.Logf("%d writes", writes.Load())
	for _, d := range daemons {
		t.Logf("%s:\n%s", d.Name, d.Tail(40))
	}
}

// TestTargetGoneAfterOpen: b answers the daemon's first connection and
// refuses every later one, as when it goes down just after the daemon
// started (what TestTargetsTakeover's standby met under load, b stopped
// while the daemon was starting). The daemon must go on with a, as with a
// target down at its start or one that fails while it streams, not exit.
func TestTargetGoneAfterOpen(t *testing.T) {
	t.Parallel()
	a := world.New(t, itemsSchema(100))
	b := testenv.StartRedis(t)
	front := oneConnection(t, b.Addr)
	d := a.Daemon(a.WriteYAML(a.TargetsYAML(itemsCaches,
		fmt.Sprintf("name: a, url: %q", a.Redis.URL()),
		fmt.Sprintf("name: b, url: %q", "redis://"+front+"/0"))))
	d.WaitLog("streaming changes")
	a.Exec(`UPDATE items SET note = 'while b refuses' WHERE id = 1`)
	d.WaitFor("a to hold the change", func() bool {
		v, _ := a.Get("item:1")
		return strings.Contains(v, "while b refuses")
	})
	waitItems(a)
	if d.Exited() {
		t.Fatalf("%s exited (%s):\n%s", d.Name, d.State(), d.Tail(20))
	}
}

// oneConnection listens on a free port, forwards the first connection it
// accepts to addr, and then stops listening: later connections are
// refused. It returns the address it listened on.
func oneConnection(t *testing.T, addr string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var conns []net.Conn
	var mu sync.Mutex
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", addr)
		if err != nil {
			c.Close()
			return
		}
		mu.Lock()
		conns = append(conns, c, s)
		mu.Unlock()
		wg.Go(func() { _, _ = io.Copy(s, c); s.Close() })
		_, _ = io.Copy(c, s)
		c.Close()
	})
	return ln.Addr().String()
}

// TestSecondTargetNeedsNothing: a second target whose caches need nothing
// of the daemon besides the change feed (no fills, refreshes, sampling or
// write-behind) is served by nothing, and that is no failure: the daemon
// must not report it as one ("cannot serve the target's caches") again
// and again.
func TestSecondTargetNeedsNothing(t *testing.T) {
	t.Parallel()
	a := world.New(t, itemsSchema(100))
	b := a.Target(testenv.StartRedis(t))
	d := a.Daemon(a.WriteYAML(a.TargetsYAML(itemsCaches,
		fmt.Sprintf("name: a, url: %q", a.Redis.URL()),
		fmt.Sprintf("name: b, url: %q", b.Redis.URL())) + "consistency: {sample_rate: 0}\n"))
	d.WaitLog("streaming changes")
	a.Exec(`UPDATE items SET note = 'after the start' WHERE id = 1`)
	waitItems(a)
	waitItems(b)
	if lines := d.Stderr.Lines("cannot serve the target's caches"); len(lines) > 0 {
		t.Fatalf("the daemon reports a failure of target b, which needs nothing:\n%s", strings.Join(lines, "\n"))
	}
}
