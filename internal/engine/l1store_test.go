package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
)

// replies returns n distinct replies as Redis sends them ("0", "1", ...),
// and one of the key "k", for driving a store as a connection does.
func replies(t *testing.T, n int) ([]rueidis.RedisMessage, rueidis.RedisMessage) {
	t.Helper()
	rc := testenv.StartRedis(t).Client(t)
	ctx := context.Background()
	msgs := make([]rueidis.RedisMessage, 0, n)
	for lo := 0; lo < n; lo += 1000 {
		var cs rueidis.Commands
		for i := lo; i < min(lo+1000, n); i++ {
			cs = append(cs, rc.B().Echo().Message(strconv.Itoa(i)).Build())
		}
		for _, r := range rc.DoMulti(ctx, cs...) {
			m, err := r.ToMessage()
			if err != nil {
				t.Fatal(err)
			}
			msgs = append(msgs, m)
		}
	}
	k, err := rc.Do(ctx, rc.B().Echo().Message("k").Build()).ToMessage()
	if err != nil {
		t.Fatal(err)
	}
	return msgs, k
}

// keep reads key through s as a connection does: a Flight that misses, its
// reply, its Update.
func keep(t *testing.T, s *l1Store, key string, v rueidis.RedisMessage) {
	t.Helper()
	if _, e := s.Flight(key, "GET", time.Hour, time.Now()); e != nil || !s.keys[key].pending() {
		t.Fatalf("Flight %s: a copy or another's read already", key)
	}
	s.Update(key, "GET", v)
}

// served returns what a Flight of key finds kept ("" for nothing).
func served(s *l1Store, key string) string {
	s.mu.RLock()
	e := s.keys[key]
	s.mu.RUnlock()
	if e == nil || e.pending() {
		return ""
	}
	v, _ := s.Flight(key, "GET", time.Hour, time.Now())
	str, _ := v.ToString()
	return str
}

// TestL1StoreBounds fills a store past its bound with keys read once: it
// keeps within it (no entry is left behind for an evicted key), counts its
// bytes exactly, keeps the copy just kept and the one in use, and Close
// empties it and ends what is pending.
func TestL1StoreBounds(t *testing.T) {
	msgs, _ := replies(t, 1000)
	stats := &L1Stats{}
	one := int64(2*len("k000")+len("GET")+msgs[100].CacheSize()) + l1EntryOverhead
	s := newL1Store(10*one, stats)
	for i := 100; i < 1000; i++ {
		key := fmt.Sprintf("k%03d", i)
		keep(t, s, key, msgs[i])
		served(s, "k100") // in use: the eviction keeps it
		if s.size > s.max || len(s.keys) > 10 {
			t.Fatalf("after %d keys the store holds %d bytes in %d keys, over its %d", i-99, s.size, len(s.keys), s.max)
		}
		if got := served(s, key); got != strconv.Itoa(i) {
			t.Fatalf("the copy just kept reads %q", got)
		}
		if stats.Bytes.Load() != s.size || s.size != int64(len(s.keys))*one {
			t.Fatalf("bytes %d, size %d, %d keys of %d", stats.Bytes.Load(), s.size, len(s.keys), one)
		}
	}
	if got := served(s, "k100"); got != "100" {
		t.Fatalf("the copy read before every other was evicted (%q)", got)
	}
	_, _ = s.Flight("pending", "GET", time.Hour, time.Now())
	_, e := s.Flight("pending", "GET", time.Hour, time.Now())
	if e == nil {
		t.Fatal("a second Flight of a key read in flight does not wait for it")
	}
	s.Close(rueidis.ErrClosing)
	if _, err := e.Wait(context.Background()); err != rueidis.ErrClosing {
		t.Fatalf("a wait for a read in flight when the connection closed: %v", err)
	}
	if stats.Bytes.Load() != 0 || stats.Flushes.Load() != 1 {
		t.Fatalf("after Close: bytes %d, %d flushes", stats.Bytes.Load(), stats.Flushes.Load())
	}
}

// TestL1StoreInvalidationOrder drives a store as one connection delivers
// replies and invalidations (in one order), with many readers, some of
// whose reads end before they are sent (Cancel), and a writer: a write
// bumps the value, then its invalidation arrives. A copy served after the
// invalidation of a newer write was handled is stale: a process that
// wrote would read its old value. (rueidis's NewSimpleCacheAdapter, which
// the store replaced, kept a copy beside a read in flight and skipped its
// invalidation: this model served stale copies.)
func TestL1StoreInvalidationOrder(t *testing.T) {
	const writes = 3000
	msgs, km := replies(t, writes+1)
	s := newL1Store(1<<30, &L1Stats{})
	var version, handled atomic.Int64 // Redis's value; the newest whose invalidation was handled
	type event struct {
		write bool
		done  chan struct{}
	}
	conn := make(chan event)
	go func() { // the connection: Redis runs each in turn, its reply or push handled in turn
		tracked := false // Redis pushes one invalidation per read (tracking is one-shot)
		for e := range conn {
			if e.write {
				v := version.Add(1)
				if tracked {
					s.Delete([]rueidis.RedisMessage{km})
					tracked = false
				}
				handled.Store(v)
			} else {
				tracked = true
				s.Update("k", "GET", msgs[version.Load()])
			}
			close(e.done)
		}
	}()
	stop := make(chan struct{})
	var readers sync.WaitGroup
	var stale, hits atomic.Int64
	for range 16 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				before := handled.Load()
				v, e := s.Flight("k", "GET", time.Hour, time.Now())
				switch {
				case e != nil:
					e.Wait(context.Background())
				case v.IsString(): // a copy
					hits.Add(1)
					str, _ := v.ToString()
					if n, err := strconv.Atoi(str); err != nil || int64(n) < before {
						stale.Add(1)
					}
					runtime.Gosched()
				default: // a miss: this reader sends the read, or its context ends first
					runtime.Gosched()
					if rand.IntN(4) == 0 {
						s.Cancel("k", "GET", context.Canceled)
						continue
					}
					d := event{done: make(chan struct{})}
					conn <- d
					<-d.done
				}
			}
		})
	}
	for range writes {
		d := event{write: true, done: make(chan struct{})}
		conn <- d
		<-d.done
		runtime.Gosched()
	}
	close(stop)
	readers.Wait()
	close(conn)
	if stale.Load() > 0 || hits.Load() == 0 {
		t.Fatalf("%d of %d copies served were older than a write whose invalidation was handled before the read began", stale.Load(), hits.Load())
	}
	if got := served(s, "k"); got != "" && got != strconv.Itoa(writes) {
		t.Fatalf("after the last write's invalidation the store serves %q, Redis holds %d", got, writes)
	}
}
