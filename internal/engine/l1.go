package engine

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
)

// l1 is a cache's in-process copy of its hits (config.L1): rueidis's
// client-side caching, where Redis tracks every key this process read
// (RESP3 CLIENT TRACKING) and pushes an invalidation when one changes,
// whoever changed it. The copies live in the connections' stores, one per
// Redis node: a broken connection flushes its store (rueidis closes it),
// and an invalidation that arrives while a read is in flight is ordered
// before or after its reply on the same connection, so a copy never
// outlives a change Redis made after it was read.
//
// The client has one connection per node, so a round trip on it (sync)
// passes every invalidation Redis queued for it before: after its own
// write, a process reads its write.
type l1 struct {
	client rueidis.Client
	ttl    time.Duration
	stats  *L1Stats
}

// L1Stats counts what a cache's L1 did; safe for concurrent reads.
type L1Stats struct {
	Hits          atomic.Int64 // Gets answered from process memory with a value
	Misses        atomic.Int64 // Gets that asked Redis (or waited for another's read), or found the key missing
	Invalidations atomic.Int64 // keys Redis said changed (a flush of all counts one)
	Bytes         atomic.Int64 // memory the copies hold, approximately
	Flushes       atomic.Int64 // connections closed (lost, or the client closed), each dropping its copies
}

// openL1 opens the L1 client of a cache with cfg.
func openL1(ropt rueidis.ClientOption, cfg *config.L1) (*l1, error) {
	l := &l1{ttl: cfg.TTL, stats: &L1Stats{}}
	ropt.DisableCache = false
	ropt.DisableRetry = true
	ropt.PipelineMultiplex = -1 // one connection per node: sync's round trip shares it with the reads
	ropt.CacheSizeEachConn = int(cfg.Max)
	ropt.NewCacheStoreFn = func(o rueidis.CacheStoreOption) rueidis.CacheStore {
		return newL1Store(int64(o.CacheSizeEachConn), l.stats)
	}
	c, err := rueidis.NewClient(ropt)
	if err != nil {
		return nil, fmt.Errorf("redis (l1): %w", err)
	}
	l.client = c
	return l, nil
}

// get reads the reply to cmd from the copies or, on a miss, from Redis,
// keeping it (a missing key too: its creation is pushed like a change).
// The store counts hits and misses.
func (l *l1) get(ctx context.Context, cmd rueidis.Cacheable) rueidis.RedisResult {
	return l.client.DoCache(ctx, cmd, l.ttl)
}

// sync returns once every invalidation Redis sent this process for key
// before now has dropped its copy: a round trip on the connection that
// carries them.
func (l *l1) sync(ctx context.Context, key string) error {
	return l.client.Do(ctx, l.client.B().Exists().Key(key).Build()).Error()
}

// l1Sync makes this process's next Get of key read what its own write just
// left in Redis: its copy's invalidation reaches it first. An error means
// the round trip failed (a broken connection has flushed the copies; a
// context that ended may leave the copy until its invalidation arrives).
func (c *Engine) l1Sync(ctx context.Context, ca *cache, key string) error {
	if ca.l1 == nil {
		return nil
	}
	if err := ca.l1.sync(ctx, key); err != nil {
		return fmt.Errorf("cache %q: written, but this process's l1 may still hold the older value of %q: redis %w: %w", ca.cfg.Name, key, ErrUnavailable, err)
	}
	return nil
}

// l1Store keeps the copies of one connection (a rueidis.CacheStore, which
// rueidis calls as replies and invalidations arrive on the connection, in
// their order). Each key has at most one entry: a copy, or a read in flight
// (pending) that others wait for, of one command (a cache reads its keys by
// one command: GET, or HGETALL). An invalidation drops the key's copy; it
// leaves a pending read, whose reply comes after it on the connection and
// so was read after the change. A copy is never kept beside a pending read:
// Flight replaces an expired copy, and checks again under the write lock.
// It evicts as Redis does, by sampling: of a few copies, the one used
// longest ago (an expired one first); pending reads are not evicted, and
// end with their reply or their cancellation.
type l1Store struct {
	mu    sync.RWMutex
	max   int64
	size  int64 // of the copies, under mu
	stats *L1Stats
	clock atomic.Int64        // advances with every copy kept; a copy keeps the value of its last use
	keys  map[string]*l1Entry // nil once closed
}

// l1Entry is a copy (val set) or a pending read (val unset, ch open).
type l1Entry struct {
	cmd  string
	val  rueidis.RedisMessage
	exp  int64 // unix ms: the copy's end; a pending read's end as asked by its TTL
	size int64
	used atomic.Int64
	ch   chan struct{} // closed when the pending read ends
	err  error         // why it ended without a reply
}

func (e *l1Entry) pending() bool { return e.size == 0 }

// Wait waits for a pending read's reply (rueidis.CacheEntry).
func (e *l1Entry) Wait(ctx context.Context) (rueidis.RedisMessage, error) {
	select {
	case <-ctx.Done():
		return rueidis.RedisMessage{}, ctx.Err()
	case <-e.ch:
		return e.val, e.err
	}
}

// l1EntryOverhead approximates an entry's memory beyond its key, command
// and reply.
const l1EntryOverhead = 160

func newL1Store(max int64, stats *L1Stats) *l1Store {
	return &l1Store{max: max, stats: stats, keys: map[string]*l1Entry{}}
}

// Flight returns key's copy for cmd, or the pending read to wait for, or
// neither: then it records a pending read, which the caller sends.
func (s *l1Store) Flight(key, cmd string, ttl time.Duration, now time.Time) (rueidis.RedisMessage, rueidis.CacheEntry) {
	ms := now.UnixMilli()
	s.mu.RLock()
	e := s.keys[key]
	if e != nil && e.cmd == cmd && !e.pending() && ms < e.exp {
		s.hit(e)
		s.mu.RUnlock()
		return e.val, nil
	}
	s.mu.RUnlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if e = s.keys[key]; e != nil && e.cmd == cmd && !e.pending() && ms < e.exp {
		s.hit(e) // kept between the locks
		return e.val, nil
	}
	s.stats.Misses.Add(1)
	switch {
	case s.keys == nil: // closed: the read goes to Redis, and is not kept
		return rueidis.RedisMessage{}, nil
	case e != nil && e.pending() && e.cmd == cmd:
		return rueidis.RedisMessage{}, e
	case e != nil && e.pending(): // another command's read: this one is sent, not kept
		return rueidis.RedisMessage{}, nil
	case e != nil:
		s.drop(key, e) // expired, or another command's
	}
	s.keys[key] = &l1Entry{cmd: cmd, exp: now.Add(ttl).UnixMilli(), ch: make(chan struct{})}
	return rueidis.RedisMessage{}, nil
}

// hit counts a copy served: a value (a missing key's copy is a miss).
func (s *l1Store) hit(e *l1Entry) {
	if now := s.clock.Load(); e.used.Load() != now {
		e.used.Store(now)
	}
	if e.val.IsNil() {
		s.stats.Misses.Add(1)
		return
	}
	s.stats.Hits.Add(1)
}

// Update keeps the reply of key's pending read for cmd and returns when
// the copy ends (unix ms): the sooner of the key's TTL in Redis and the
// read's TTL.
func (s *l1Store) Update(key, cmd string, val rueidis.RedisMessage) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.keys[key]
	if e == nil || e.cmd != cmd || !e.pending() {
		return 0 // cancelled, or closed: nothing waits for it
	}
	if at := val.CachePXAT(); at > 0 && at < e.exp {
		e.exp = at
	}
	e.val = val
	e.size = int64(2*len(key)+len(cmd)+val.CacheSize()) + l1EntryOverhead
	e.used.Store(s.clock.Add(1))
	s.size += e.size
	s.stats.Bytes.Add(e.size)
	close(e.ch)
	for s.size > s.max && s.evict(key) {
	}
	return e.exp
}

// Cancel ends key's pending read for cmd without a reply.
func (s *l1Store) Cancel(key, cmd string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.keys[key]; e != nil && e.cmd == cmd && e.pending() {
		e.err = err
		close(e.ch)
		delete(s.keys, key)
	}
}

// Delete drops the copies of keys, or of every key when keys is nil (Redis
// flushed, or ran out of room to track them).
func (s *l1Store) Delete(keys []rueidis.RedisMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if keys == nil {
		s.stats.Invalidations.Add(1)
		for key, e := range s.keys {
			if !e.pending() {
				s.drop(key, e)
			}
		}
		return
	}
	s.stats.Invalidations.Add(int64(len(keys)))
	for _, k := range keys {
		key, _ := k.ToString()
		if e := s.keys[key]; e != nil && !e.pending() {
			s.drop(key, e)
		}
	}
}

// Close drops every copy and ends every pending read with err: the
// connection is gone, and what Redis tracked for it with it.
func (s *l1Store) Close(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keys == nil {
		return
	}
	s.stats.Flushes.Add(1)
	for _, e := range s.keys {
		if e.pending() {
			e.err = err
			close(e.ch)
		}
	}
	s.stats.Bytes.Add(-s.size)
	s.size, s.keys = 0, nil
}

// drop removes key's copy e.
func (s *l1Store) drop(key string, e *l1Entry) {
	delete(s.keys, key)
	s.size -= e.size
	s.stats.Bytes.Add(-e.size)
}

// evict drops, of up to five copies of keys other than keep (Go's map
// order is random), an expired one or else the one used longest ago; false
// when there is none.
func (s *l1Store) evict(keep string) bool {
	now := time.Now().UnixMilli()
	var victim *l1Entry
	var vKey string
	n := 0
	for key, e := range s.keys {
		if key == keep || e.pending() {
			continue
		}
		if e.exp <= now {
			victim, vKey = e, key
			break
		}
		if victim == nil || e.used.Load() < victim.used.Load() {
			victim, vKey = e, key
		}
		if n++; n == 5 {
			break
		}
	}
	if victim == nil {
		return false
	}
	s.drop(vKey, victim)
	return true
}
