package latency

import (
	"testing"
	"time"
)

func TestHistogram(t *testing.T) {
	h := New(Fast)
	for _, d := range []time.Duration{10 * time.Microsecond, 50 * time.Microsecond, 60 * time.Microsecond, time.Millisecond, time.Hour} {
		h.Observe(d)
	}
	cum, n, sum := h.Snapshot()
	if n != 5 || sum != 10*time.Microsecond+50*time.Microsecond+60*time.Microsecond+time.Millisecond+time.Hour {
		t.Fatalf("count %d sum %v", n, sum)
	}
	for _, tc := range []struct {
		bound time.Duration
		want  uint64
	}{{50 * time.Microsecond, 2}, {100 * time.Microsecond, 3}, {800 * time.Microsecond, 3}, {1600 * time.Microsecond, 4}, {Fast[len(Fast)-1], 4}} {
		for i, b := range Fast {
			if b == tc.bound && cum[i] != tc.want {
				t.Errorf("≤ %v: %d, want %d", b, cum[i], tc.want)
			}
		}
	}
	if m := h.Mean(); m != sum/5 {
		t.Errorf("mean %v, want %v", m, sum/5)
	}
	if q := h.Quantile(0.5); q != 100*time.Microsecond {
		t.Errorf("median bound %v", q)
	}
	if q := h.Quantile(1); q != -1 {
		t.Errorf("max bound %v, want beyond", q)
	}
}
