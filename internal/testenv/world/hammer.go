package world

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Hammer calls each of work over and over, each in a goroutine of its own
// with a random source of its own, until end (a call under way runs to its
// end), and returns how many calls returned nil and the errors that
// stopped a goroutine.
func Hammer(end time.Time, work ...func(r *rand.Rand) error) (int64, []error) {
	var wg sync.WaitGroup
	var ops atomic.Int64
	errs := make(chan error, len(work))
	for _, f := range work {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(rand.Uint64(), 0))
			for time.Now().Before(end) {
				if err := f(r); err != nil {
					errs <- err
					return
				}
				ops.Add(1)
			}
		})
	}
	wg.Wait()
	close(errs)
	var out []error
	for err := range errs {
		out = append(out, err)
	}
	return ops.Load(), out
}
