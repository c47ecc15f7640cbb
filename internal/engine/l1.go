package engine

import (
	"context"
	"fmt"
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
	Hits          atomic.Int64 // Gets answered from process memory
	Misses        atomic.Int64 // Gets that asked Redis, or found the key missing
	Invalidations atomic.Int64 // keys Redis said changed (a flush of all counts one)
	Bytes         atomic.Int64 // memory the copies hold, approximately
	Flushes       atomic.Int64 // connections lost, each dropping its copies
}

// openL1 opens the L1 client of a cache with cfg.
func openL1(ropt rueidis.ClientOption, cfg *config.L1) (*l1, error) {
	l := &l1{ttl: cfg.TTL, stats: &L1Stats{}}
	ropt.DisableCache = false
	ropt.DisableRetry = true
	ropt.PipelineMultiplex = -1 // one connection per node: sync's round trip shares it with the reads
	ropt.CacheSizeEachConn = int(cfg.Max)
	ropt.NewCacheStoreFn = func(o rueidis.CacheStoreOption) rueidis.CacheStore {
		return rueidis.NewSimpleCacheAdapter(newL1Store(int64(o.CacheSizeEachConn), l.stats))
	}
	ropt.OnInvalidations = func(keys []rueidis.RedisMessage) {
		l.stats.Invalidations.Add(max(int64(len(keys)), 1))
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
func (l *l1) get(ctx context.Context, cmd rueidis.Cacheable) rueidis.RedisResult {
	return l.client.DoCache(ctx, cmd, l.ttl)
}

// count counts a Get: a hit is a value found in memory.
func (l *l1) count(r rueidis.RedisResult, found bool) {
	if found && r.IsCacheHit() {
		l.stats.Hits.Add(1)
	} else {
		l.stats.Misses.Add(1)
	}
}

// sync returns once every invalidation Redis sent this process for key
// before now has dropped its copy: a round trip on the connection that
// carries them.
func (l *l1) sync(ctx context.Context, key string) error {
	return l.client.Do(ctx, l.client.B().Exists().Key(key).Build()).Error()
}

// l1Sync makes this process's next Get of key read what its own write just
// left in Redis: its copy's invalidation reaches it first. A failed round
// trip leaves the copy to the invalidation itself (a broken connection has
// flushed it already).
func (c *Engine) l1Sync(ctx context.Context, ca *cache, key string) {
	if ca.l1 == nil {
		return
	}
	if err := ca.l1.sync(ctx, key); err != nil {
		c.opts.Logger.Debug("l1: no round trip after a write", "cache", ca.cfg.Name, "key", key, "err", err)
	}
}

// l1Store keeps the copies of one connection (rueidis.SimpleCache): Get runs
// under the adapter's read lock, concurrently with other Gets; Set, Del and
// Flush under its write lock, alone. It evicts as Redis does, by sampling:
// of a few entries, the one used longest ago (an expired one first).
type l1Store struct {
	max   int64
	size  int64        // under the write lock
	stats *L1Stats     // the cache's, across its connections
	clock atomic.Int64 // advances with every Set; an entry keeps the value of its last Get
	m     map[string]*l1Entry
}

type l1Entry struct {
	v    rueidis.RedisMessage
	size int64
	used atomic.Int64
}

// l1EntryOverhead approximates an entry's memory beyond its key and value.
const l1EntryOverhead = 96

func newL1Store(max int64, stats *L1Stats) *l1Store {
	return &l1Store{max: max, stats: stats, m: map[string]*l1Entry{}}
}

func (s *l1Store) Get(key string) rueidis.RedisMessage {
	e := s.m[key]
	if e == nil {
		return rueidis.RedisMessage{}
	}
	if now := s.clock.Load(); e.used.Load() != now {
		e.used.Store(now)
	}
	return e.v
}

func (s *l1Store) Set(key string, v rueidis.RedisMessage) {
	s.Del(key)
	e := &l1Entry{v: v, size: int64(len(key)+v.CacheSize()) + l1EntryOverhead}
	e.used.Store(s.clock.Add(1))
	s.m[key] = e
	s.grow(e.size)
	for s.size > s.max && len(s.m) > 1 {
		s.evict(key)
	}
}

func (s *l1Store) Del(key string) {
	if e := s.m[key]; e != nil {
		delete(s.m, key)
		s.grow(-e.size)
	}
}

func (s *l1Store) Flush() {
	s.stats.Flushes.Add(1)
	s.grow(-s.size)
	s.m = map[string]*l1Entry{}
}

func (s *l1Store) grow(n int64) {
	s.size += n
	s.stats.Bytes.Add(n)
}

// evict removes, of up to five entries other than keep (Go's map order is
// random), an expired one or else the one used longest ago.
func (s *l1Store) evict(keep string) {
	now := time.Now().UnixMilli()
	victim, oldest, n := "", int64(0), 0
	for k, e := range s.m {
		if k == keep {
			continue
		}
		if at := e.v.CachePXAT(); at > 0 && at <= now {
			victim = k
			break
		}
		if u := e.used.Load(); victim == "" || u < oldest {
			victim, oldest = k, u
		}
		if n++; n == 5 {
			break
		}
	}
	s.Del(victim)
}
