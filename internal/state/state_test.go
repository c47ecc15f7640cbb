package state_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/state"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

func TestMain(m *testing.M) { world.Main(m) }

// TestClaimFences: once a second session claims the source, the first
// one's writes write nothing (ErrFenced), on one node and on a Cluster, and
// the second one's go on; once Redis loses what cachesync wrote (a flush),
// a write says so (ErrRedisLost).
func TestClaimFences(t *testing.T) {
	world.EachTopology(t, func(t *testing.T, topology string) {
		rc := testenv.StartTopology(t, topology)
		ctx := context.Background()
		s := state.New(rc, "cfg")
		if err := s.Forget(ctx, "db", nil, true, 100); err != nil {
			t.Fatal(err)
		}
		claim := func() *state.Writer {
			t.Helper()
			w, err := s.Claim(ctx, "db")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(w.Close)
			return w
		}
		// set writes v to keys k:1 .. k:9 (over several slots) and
		// moves the applied position from from to to.
		set := func(w *state.Writer, v string, from, to pglogrepl.LSN) error {
			var writes []rueidis.Completed
			for _, k := range []string{"k:1", "k:2", "k:3", "k:4", "k:5", "k:6", "k:7", "k:8", "k:9"} {
				writes = append(writes, rc.B().Set().Key(k).Value(v).Build())
			}
			return w.Advance(ctx, writes, from, to)
		}
		holds := func(want string) {
			t.Helper()
			for _, k := range []string{"k:1", "k:5", "k:9"} {
				if got, err := rc.Do(ctx, rc.B().Get().Key(k).Build()).ToString(); err != nil || got != want {
					t.Fatalf("%s = %q (%v), want %q", k, got, err, want)
				}
			}
		}

		old := claim()
		if err := set(old, "old", 100, 200); err != nil {
			t.Fatal(err)
		}
		taker := claim()
		if err := set(old, "late", 200, 300); !errors.Is(err, state.ErrFenced) {
			t.Fatalf("a write after another's claim: %v, want ErrFenced", err)
		}
		holds("old")
		if err := set(taker, "new", 200, 300); err != nil {
			t.Fatal(err)
		}
		holds("new")
		if applied, _, err := s.Applied(ctx, "db"); err != nil || applied != 300 {
			t.Fatalf("applied %v (%v), want 0/12C", applied, err)
		}

		for _, n := range rc.Nodes() {
			if err := n.Do(ctx, n.B().Flushall().Build()).Error(); err != nil {
				t.Fatal(err)
			}
		}
		if err := set(taker, "after the flush", 300, 400); !errors.Is(err, state.ErrRedisLost) {
			t.Fatalf("a write after Redis lost the claim: %v, want ErrRedisLost", err)
		}
	})
}
