package testenv

import (
	"testing"
	"time"
)

// Patience bounds every wait of the test bed: long enough that only a
// condition that never comes exhausts it, on a machine as busy as a CI's.
const Patience = time.Minute

// WaitFor waits until ok holds, failing the test after Patience.
func WaitFor(tb testing.TB, what string, ok func() bool) {
	tb.Helper()
	if !Within(Patience, ok) {
		tb.Fatalf("never within %v: %s", Patience, what)
	}
}

// Within polls ok until it holds (true) or d has passed (false): at once,
// then after 2 ms, the pause doubling up to 50 ms, so that a condition
// soon met is seen soon and a slow one does not load the machine.
func Within(d time.Duration, ok func() bool) bool {
	pause := 2 * time.Millisecond
	for deadline := time.Now().Add(d); !ok(); pause = min(2*pause, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
	}
	return true
}
