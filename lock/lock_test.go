package lock_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/lock"
)

// hold is long enough that no holder in these tests loses the lock to its
// TTL while it holds it, however busy the machine.
const hold = time.Minute

// TestRace: 50 goroutines each taking the lock 4 times (Acquire, waiting)
// never hold it together, by a count of holders kept in the process, and
// each acquisition's fence is greater than the one before it; on one node
// and on a Cluster.
func TestRace(t *testing.T) {
	for _, topology := range []string{"single", "cluster"} {
		t.Run(topology, func(t *testing.T) {
			locks := lock.New(testenv.StartTopology(t, topology), "test:lock:")
			var holders atomic.Int32
			var mu sync.Mutex // guards last and fences, not the lock
			var last int64
			errs := make(chan error, 50*4*2) // room for every error: a send never blocks
			var wg sync.WaitGroup
			for range 50 {
				wg.Go(func() {
					for range 4 {
						lease, err := locks.Acquire(t.Context(), "job{1}", hold)
						if err != nil {
							errs <- err
							return
						}
						if n := holders.Add(1); n != 1 {
							errs <- errors.New(strconv.Itoa(int(n)) + " holders at once")
						}
						mu.Lock()
						if lease.Fence <= last {
							errs <- errors.New("fence " + strconv.FormatInt(lease.Fence, 10) + " after " + strconv.FormatInt(last, 10))
						}
						last = lease.Fence
						mu.Unlock()
						holders.Add(-1)
						if err := locks.Release(t.Context(), lease.Name, lease.Token); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if last != 200 {
				t.Fatalf("the last fence is %d after 200 acquisitions, want 200", last)
			}
		})
	}
}

// TestExpiredHolder: a holder whose lock expired and was taken by another
// can neither release nor extend the other's lock.
func TestExpiredHolder(t *testing.T) {
	r := testenv.StartRedis(t)
	c := r.Client(t)
	locks := lock.New(c, "test:lock:")
	old, err := locks.TryAcquire(t.Context(), "report", 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "the first lease expired", func() bool {
		return pttl(t, c, "test:lock:{report}") == -2
	})
	next, err := locks.TryAcquire(t.Context(), "report", hold)
	if err != nil {
		t.Fatal(err)
	}
	if next.Fence <= old.Fence {
		t.Fatalf("fence %d after %d", next.Fence, old.Fence)
	}
	if err := locks.Release(t.Context(), "report", old.Token); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("the expired holder's release: %v, want ErrNotHeld", err)
	}
	if err := locks.Extend(t.Context(), "report", old.Token, time.Hour); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("the expired holder's extend: %v, want ErrNotHeld", err)
	}
	if ms := pttl(t, c, "test:lock:{report}"); ms <= 0 || ms > hold.Milliseconds() {
		t.Fatalf("the next holder's lock has PTTL %d after the expired holder's release and extend, want its own TTL", ms)
	}
	if _, err := locks.TryAcquire(t.Context(), "report", hold); !errors.Is(err, lock.ErrHeld) {
		t.Fatalf("TryAcquire of a held lock: %v, want ErrHeld", err)
	}
	// The holder extends and releases its own lock.
	if err := locks.Extend(t.Context(), "report", next.Token, time.Hour); err != nil {
		t.Fatal(err)
	}
	if ms := pttl(t, c, "test:lock:{report}"); ms <= hold.Milliseconds() {
		t.Fatalf("PTTL %d after the holder extended to an hour", ms)
	}
	if err := locks.Release(t.Context(), "report", next.Token); err != nil {
		t.Fatal(err)
	}
	if err := locks.Release(t.Context(), "report", next.Token); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("a second release: %v, want ErrNotHeld", err)
	}
	if ms := pttl(t, c, "test:lock:{report}:fence"); ms != -1 {
		t.Fatalf("the fencing counter has PTTL %d: it must never expire", ms)
	}
}

// TestAcquireHonoursContext: Acquire waiting for a held lock returns the
// context's error when it is cancelled or its deadline passes.
func TestAcquireHonoursContext(t *testing.T) {
	r := testenv.StartRedis(t)
	locks := lock.New(r.Client(t), "test:lock:")
	if _, err := locks.TryAcquire(t.Context(), "busy", hold); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := locks.Acquire(ctx, "busy", hold)
		done <- err
	}()
	// The waiter has tried more than once: it is waiting, not failing.
	testenv.WaitFor(t, "the waiter tried three times", func() bool { return evalshas(t, r) >= 3 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire cancelled: %v, want context.Canceled", err)
	}
	ctx, cancel = context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	if _, err := locks.Acquire(ctx, "busy", hold); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire past its deadline: %v, want context.DeadlineExceeded", err)
	}
}

// TestBadInput: names that cannot share a hash tag and TTLs below a
// millisecond are refused.
func TestBadInput(t *testing.T) {
	locks := lock.New(nil, "p:")
	for _, name := range []string{"", "}x"} {
		if _, err := locks.TryAcquire(context.Background(), name, time.Second); !errors.Is(err, lock.ErrName) {
			t.Errorf("TryAcquire(%q): %v, want ErrName", name, err)
		}
	}
	if _, err := locks.TryAcquire(context.Background(), "x", time.Microsecond); !errors.Is(err, lock.ErrTTL) {
		t.Errorf("TryAcquire with a TTL of 1µs: %v, want ErrTTL", err)
	}
}

func pttl(t *testing.T, c rueidis.Client, key string) int64 {
	t.Helper()
	n, err := c.Do(context.Background(), c.B().Pttl().Key(key).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// evalshas is how many EVALSHAs r has run.
func evalshas(t *testing.T, r *testenv.Redis) int {
	t.Helper()
	v, _ := strings.CutPrefix(r.Info(t, "commandstats", "cmdstat_evalsha"), "calls=")
	n, err := strconv.Atoi(v[:strings.IndexByte(v, ',')])
	if err != nil {
		t.Fatal(err)
	}
	return n
}
