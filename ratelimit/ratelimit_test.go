package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
)

var algorithms = []Algorithm{Fixed, Sliding, GCRA}

// t0 is a fake time in the middle of an hour: tests that drive the clock
// start there, so a window of an hour never ends during a test by chance.
var t0 = time.Date(2026, 1, 1, 10, 30, 0, 0, time.UTC)

// limiter returns a limiter of p on c whose clock is *now when now is not
// nil (else Redis's TIME), keyed under a prefix of the test's own.
func limiter(t *testing.T, c rueidis.Client, p Policy, now *time.Time) *Limiter {
	t.Helper()
	l, err := New(c, "test:rl:"+t.Name()+":", p)
	if err != nil {
		t.Fatal(err)
	}
	if now != nil {
		l.now = func() time.Time { return *now }
	}
	return l
}

// pttl returns the PTTL of id's key: -1 when it has no TTL, -2 when it is
// missing.
func pttl(t *testing.T, c rueidis.Client, l *Limiter, id string) int64 {
	t.Helper()
	n, err := c.Do(context.Background(), c.B().Pttl().Key(l.prefix+id).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestExactUnderLoad: 50 goroutines asking 4 times each against a limit of
// 100 get exactly 100 admitted, on one node and on a Cluster, by Redis's
// clock (where a window edge cannot fall in the test: not the fixed
// window's) and by a clock held still; and Redis's clock gives sane
// first decisions (testRedisClock).
func TestExactUnderLoad(t *testing.T) {
	for _, topology := range []string{"single", "cluster"} {
		t.Run(topology, func(t *testing.T) {
			c := testenv.StartTopology(t, topology)
			testRedisClock(t, c)
			for _, alg := range algorithms {
				for _, redisClock := range []bool{false, true} {
					if redisClock && alg == Fixed {
						continue // an hour's window may end during the test
					}
					t.Run(fmt.Sprintf("%s/redis clock %v", alg, redisClock), func(t *testing.T) {
						now := t0
						clock := &now
						if redisClock {
							clock = nil
						}
						l := limiter(t, c, Policy{Algorithm: alg, Limit: 100, Window: time.Hour}, clock)
						var admitted atomic.Int64
						errs := make(chan error, 50)
						var wg sync.WaitGroup
						for range 50 {
							wg.Go(func() {
								for range 4 {
									d, err := l.Allow(t.Context(), "user:1")
									if err != nil {
										errs <- err
										return
									}
									if d.Allowed {
										admitted.Add(1)
									}
								}
							})
						}
						wg.Wait()
						close(errs)
						for err := range errs {
							t.Fatal(err)
						}
						if n := admitted.Load(); n != 100 {
							t.Fatalf("%d admitted of 200, want exactly the limit, 100", n)
						}
						if ms := pttl(t, c, l, "user:1"); ms <= 0 {
							t.Fatalf("PTTL %d after the load: the key has no TTL", ms)
						}
					})
				}
			}
		})
	}
}

// TestWindowEdge: a client that spends its limit just before a fixed
// window's end and again just after it gets twice the limit within five
// minutes of an hour's window, as Fixed documents; the sliding window and
// GCRA admit nothing more then.
func TestWindowEdge(t *testing.T) {
	c := testenv.StartRedis(t).Client(t)
	const limit = 10
	end := t0.Truncate(time.Hour).Add(time.Hour) // a fixed window's end
	for _, tt := range []struct {
		alg   Algorithm
		after int // admitted just after the edge
	}{{Fixed, limit}, {Sliding, 0}, {GCRA, 0}} {
		t.Run(string(tt.alg), func(t *testing.T) {
			// Five minutes before the end, not less: Redis expires the
			// counter by its own clock, which does not stand still.
			now := end.Add(-5 * time.Minute)
			l := limiter(t, c, Policy{Algorithm: tt.alg, Limit: limit, Window: time.Hour}, &now)
			if n := spend(t, l, 2*limit); n != limit {
				t.Fatalf("%d admitted before the edge, want %d", n, limit)
			}
			now = end.Add(time.Millisecond)
			if n := spend(t, l, 2*limit); n != tt.after {
				t.Fatalf("%d admitted just after the edge, want %d", n, tt.after)
			}
		})
	}
}

// spend asks n times and returns how many were admitted.
func spend(t *testing.T, l *Limiter, n int) int {
	t.Helper()
	admitted := 0
	for range n {
		d, err := l.Allow(t.Context(), "edge")
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed {
			admitted++
		}
	}
	return admitted
}

// TestSweep drives each limiter with requests of random cost at random
// times over several windows and checks, for every request: the key
// carries a TTL after it, Remaining agrees with what was admitted, a
// denied request is admitted at exactly RetryAfter later and not a
// microsecond earlier; and over the whole run what each algorithm
// promises: the fixed window at most Limit per aligned window, the sliding
// window at most Limit in any window's length (and Limit reached), GCRA at
// most Burst + t*Limit/Window in any interval t.
func TestSweep(t *testing.T) {
	c := testenv.StartRedis(t).Client(t)
	const limit, window = 20, time.Hour
	for _, p := range []Policy{
		{Algorithm: Fixed, Limit: limit, Window: window},
		{Algorithm: Sliding, Limit: limit, Window: window},
		{Algorithm: GCRA, Limit: limit, Window: window},
		{Algorithm: GCRA, Limit: limit, Window: window, Burst: 5},
	} {
		t.Run(fmt.Sprintf("%s burst %d", p.Algorithm, p.Burst), func(t *testing.T) {
			now := t0
			l := limiter(t, c, p, &now)
			rng := rand.New(rand.NewPCG(1, 2))
			type admit struct {
				at   time.Time
				cost int
			}
			var admitted []admit
			for range 600 {
				now = now.Add(time.Duration(rng.Int64N(int64(window / 40))).Truncate(time.Microsecond)) // the scripts' unit
				if end := now.Truncate(window).Add(window); p.Algorithm == Fixed && end.Sub(now) < time.Second {
					// Redis expires the counter by its own clock, at the
					// window's end by this one: left a second, the real
					// time between two calls might pass it.
					now = end
				}
				cost := 1 + rng.IntN(3)
				d, err := l.AllowN(t.Context(), "sweep", cost)
				if err != nil {
					t.Fatal(err)
				}
				if ms := pttl(t, c, l, "sweep"); ms <= 0 {
					t.Fatalf("at %v: PTTL %d after a decision (%+v): the key has no TTL", now, ms, d)
				}
				if d.Allowed {
					admitted = append(admitted, admit{now, cost})
					continue
				}
				if d.Remaining >= cost || d.RetryAfter <= 0 {
					t.Fatalf("at %v: cost %d denied with %+v", now, cost, d)
				}
				before := now
				now = before.Add(d.RetryAfter - time.Microsecond)
				if d2, err := l.AllowN(t.Context(), "sweep", cost); err != nil || d2.Allowed {
					t.Fatalf("cost %d admitted (%v) 1µs before the RetryAfter %v of %+v", cost, err, d.RetryAfter, d)
				}
				now = before.Add(d.RetryAfter)
				d2, err := l.AllowN(t.Context(), "sweep", cost)
				if err != nil || !d2.Allowed {
					t.Fatalf("cost %d denied (%v) at the RetryAfter %v of %+v: %+v", cost, err, d.RetryAfter, d, d2)
				}
				admitted = append(admitted, admit{now, cost})
			}
			// sum[i] is the cost admitted before admitted[i] (times never
			// decrease); in counts what was admitted in [from, to].
			sum := []int{0}
			for _, a := range admitted {
				sum = append(sum, sum[len(sum)-1]+a.cost)
			}
			in := func(from, to time.Time) int {
				i := sort.Search(len(admitted), func(i int) bool { return !admitted[i].at.Before(from) })
				j := sort.Search(len(admitted), func(j int) bool { return admitted[j].at.After(to) })
				return sum[j] - sum[max(i, 0)]
			}
			burst := p.Burst
			if burst == 0 {
				burst = p.Limit
			}
			most := 0
			for _, a := range admitted {
				switch p.Algorithm {
				case Fixed:
					start := a.at.Truncate(window)
					most = max(most, in(start, start.Add(window-time.Microsecond)))
				case Sliding:
					most = max(most, in(a.at.Add(-window+time.Microsecond), a.at))
				case GCRA:
					for _, b := range admitted {
						if span := b.at.Sub(a.at); span >= 0 {
							if got, bound := in(a.at, b.at), burst+int(span*limit/window); got > bound {
								t.Fatalf("GCRA admitted %d in %v from %v, more than burst %d + %d", got, span, a.at, burst, bound-burst)
							}
						}
					}
				}
			}
			if p.Algorithm != GCRA && most != limit {
				t.Fatalf("at most %d admitted in a window, want the limit, %d", most, limit)
			}
			if len(admitted) < 100 {
				t.Fatalf("only %d of 600 requests admitted: the sweep proves little", len(admitted))
			}
		})
	}
}

// testRedisClock: by Redis's TIME, a first request is admitted with
// Limit-1 remaining and a reset within the window, for each algorithm.
func testRedisClock(t *testing.T, c rueidis.Client) {
	for _, alg := range algorithms {
		l := limiter(t, c, Policy{Algorithm: alg, Limit: 3, Window: time.Minute}, nil)
		d, err := l.Allow(t.Context(), string(alg))
		if err != nil {
			t.Fatal(err)
		}
		if !d.Allowed || d.Remaining != 2 || d.Limit != 3 || d.Reset <= 0 || d.Reset > time.Minute || d.RetryAfter != 0 {
			t.Errorf("%s: first decision by Redis's clock %+v", alg, d)
		}
		if ms := pttl(t, c, l, string(alg)); ms <= 0 || ms > time.Minute.Milliseconds() {
			t.Errorf("%s: PTTL %d, want within the minute's window", alg, ms)
		}
	}
}

// TestBadInput: policies and costs that cannot work are refused before
// Redis is asked.
func TestBadInput(t *testing.T) {
	for _, p := range []Policy{
		{Algorithm: "leaky", Limit: 1, Window: time.Second},
		{Algorithm: Fixed, Limit: 0, Window: time.Second},
		{Algorithm: Sliding, Limit: 1, Window: time.Microsecond},
		{Algorithm: GCRA, Limit: 1, Window: time.Second, Burst: -1},
		{Algorithm: Fixed, Limit: 1, Window: time.Second, Burst: 2},
	} {
		if _, err := New(nil, "p:", p); err == nil {
			t.Errorf("New(%+v) took it", p)
		}
	}
	l, err := New(nil, "p:", Policy{Algorithm: GCRA, Limit: 10, Window: time.Second, Burst: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, -1, 4} {
		if _, err := l.AllowN(context.Background(), "x", n); !errors.Is(err, ErrCost) {
			t.Errorf("AllowN(%d) with a burst of 3: %v, want ErrCost", n, err)
		}
	}
}
