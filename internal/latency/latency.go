// Package latency is a lock-free histogram of durations with fixed
// buckets: cheap enough to time every cache read, and read out as a
// Prometheus histogram by the metrics package.
package latency

import (
	"sync/atomic"
	"time"
)

// Fast are bounds for reads: 50µs doubling to about 1.6s.
var Fast = exponential(50*time.Microsecond, 16)

// Slow are bounds for refresh delays: 1ms doubling to about 16s.
var Slow = exponential(time.Millisecond, 15)

func exponential(first time.Duration, n int) []time.Duration {
	b := make([]time.Duration, n)
	for i := range b {
		b[i] = first << i
	}
	return b
}

// Histogram counts durations by its bounds.
type Histogram struct {
	bounds []time.Duration
	counts []atomic.Int64 // per bucket; the last: beyond every bound
	sum    atomic.Int64   // nanoseconds
}

// New returns a histogram with the given upper bounds, in increasing order.
func New(bounds []time.Duration) *Histogram {
	return &Histogram{bounds: bounds, counts: make([]atomic.Int64, len(bounds)+1)}
}

// Observe counts d.
func (h *Histogram) Observe(d time.Duration) {
	i := 0
	for i < len(h.bounds) && d > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(d))
}

// Bounds returns the upper bounds of the buckets.
func (h *Histogram) Bounds() []time.Duration { return h.bounds }

// Snapshot returns the cumulative count at each bound, the total count and
// the sum of the durations.
func (h *Histogram) Snapshot() (cumulative []uint64, count uint64, sum time.Duration) {
	cumulative = make([]uint64, len(h.bounds))
	var n uint64
	for i := range h.bounds {
		n += uint64(h.counts[i].Load())
		cumulative[i] = n
	}
	return cumulative, n + uint64(h.counts[len(h.bounds)].Load()), time.Duration(h.sum.Load())
}

// Mean returns the mean of the durations (0 when empty).
func (h *Histogram) Mean() time.Duration {
	_, n, sum := h.Snapshot()
	if n == 0 {
		return 0
	}
	return sum / time.Duration(n)
}

// Quantile returns the bound of the bucket holding quantile q (0 when
// empty; -1 when beyond the last bound).
func (h *Histogram) Quantile(q float64) time.Duration {
	cum, n, _ := h.Snapshot()
	if n == 0 {
		return 0
	}
	for i, c := range cum {
		if float64(c) >= q*float64(n) {
			return h.bounds[i]
		}
	}
	return -1
}
