package world

import (
	"sync/atomic"
	"testing"
)

// WaitCount waits until the counter c (a field of a feed's, a refresher's,
// a listener's Stats) is at least want, and fails the test with what it
// counted if that does not happen within Patience. Counters move when the
// work they count returns, a moment after its effects are visible.
func WaitCount(tb testing.TB, what string, c *atomic.Int64, want int64) {
	tb.Helper()
	if !Within(Patience, func() bool { return c.Load() >= want }) {
		tb.Fatalf("never within %v: %s %d, want at least %d", Patience, what, c.Load(), want)
	}
}
