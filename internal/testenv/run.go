package testenv

import (
	"context"
	"sync"
	"testing"
)

// Go runs run (a feed, a refresher) in a goroutine until the returned stop
// is called or the test ends, whichever comes first; stop cancels run's
// context, waits for it to return, and fails the test if it returned an
// error.
func Go(tb testing.TB, run func(ctx context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				tb.Error(err)
			}
		})
	}
	tb.Cleanup(stop)
	return stop
}
