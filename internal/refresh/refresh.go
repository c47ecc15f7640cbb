// Package refresh reloads cache keys from PostgreSQL when they expire
// (refresh: on-expiry), before they expire (refresh: ahead), and on cron
// schedules. Expired-key events from Redis are the fast path; they are
// fire-and-forget, so every write of a refreshing cache also records the
// key's expiry time in the cache's expiry record (a sorted set), and the
// refresher reads that record too: what expired while it was down or
// disconnected is reloaded as soon as it runs again. The reloads themselves
// are engine.Engine.Reload: guarded against writing an older row
// (watched, or under leases), batched, one query each.
package refresh

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/keyevents"
	"github.com/cachesync/cachesync/internal/latency"
)

// Counts are what refreshes did with keys, in all or for one cache; safe
// for concurrent reads.
type Counts struct {
	Refreshed atomic.Int64 // keys written back, on expiry or ahead
	Repaired  atomic.Int64 // of those, keys that expired before this refresher ran, or were found over Late after they expired: missed, then repaired
	Kept      atomic.Int64 // keys found present (already refilled, or written by someone else)
	NotFound  atomic.Int64 // keys whose row was gone: deleted or marked
	Scheduled atomic.Int64 // keys written by scheduled reloads
}

// Stats counts what a refresher did; safe for concurrent reads.
type Stats struct {
	Counts
	Events  atomic.Int64 // expired-key events received
	Ignored atomic.Int64 // expired keys that belong to no refreshing cache
	Dropped atomic.Int64 // events dropped while reloads were backed up (the record repairs them)
	Errors  atomic.Int64 // reload batches that failed (their keys are retried from the record)
	// Notify counts the checks of notify-keyspace-events on the nodes.
	Notify keyevents.Health
	// Delays times a recorded expiry to the key's refresh, for keys
	// refreshed after they expired.
	Delays *latency.Histogram
}

// Late is how long after its recorded expiry a key must still be missing
// to count as repaired rather than refreshed in time.
const Late = time.Second

// BatchSize bounds the keys of one reload: one query, one pipeline.
const BatchSize = 500

// Workers bounds the reloads that run at once, so a mass expiry does not
// stampede the database.
const Workers = 4

// pollPage is how many due keys one read of an expiry record takes.
const pollPage = Workers * BatchSize

// Refresher keeps the keys of one config's refreshing caches.
type Refresher struct {
	api       *engine.Engine
	redis     rueidis.Client
	refreshed []*config.Cache // refresh: on-expiry or ahead
	scheduled []*config.Cache // with schedule entries
	db        int
	log       *slog.Logger
	Stats     Stats
	// PerCache counts by cache, for every cache that refreshes or has a schedule.
	PerCache map[string]*Counts
	// CheckEvery is how often every node's notify-keyspace-events is
	// checked (besides after every resubscription) and its expired flags
	// enabled again; New sets keyevents.DefaultEvery, and a change must
	// come before Run.
	CheckEvery time.Duration

	since int64 // unix ms when Run began
	work  chan batch
	mu    sync.Mutex
	busy  map[string]bool // cache NUL key: in a reload now
}

// batch is keys of one cache to reload.
type batch struct {
	cache     *config.Cache
	keys      []string
	expiries  []int64 // recorded expiry of each key (unix ms), 0 when unknown
	present   bool    // reload present keys too (ahead, schedule)
	scheduled bool
}

// New returns the refresher of cfg's caches, or nil when no cache
// refreshes or has a schedule.
func New(cfg *config.Config, api *engine.Engine, redis rueidis.Client, log *slog.Logger) (*Refresher, error) {
	r := &Refresher{api: api, redis: redis, log: log.With("component", "refresh"),
		work: make(chan batch, Workers), busy: map[string]bool{}, CheckEvery: keyevents.DefaultEvery}
	r.Stats.Delays = latency.New(latency.Slow)
	r.PerCache = map[string]*Counts{}
	for _, name := range cfg.CacheNames() {
		c := cfg.Caches[name]
		if c.Refreshes() {
			r.refreshed = append(r.refreshed, c)
		}
		if len(c.Schedule) > 0 {
			r.scheduled = append(r.scheduled, c)
		}
		if c.Refreshes() || len(c.Schedule) > 0 {
			r.PerCache[name] = &Counts{}
		}
	}
	if len(r.refreshed) == 0 && len(r.scheduled) == 0 {
		return nil, nil
	}
	opt, err := cfg.RedisOption()
	if err != nil {
		return nil, err
	}
	r.db = opt.SelectDB
	return r, nil
}

// Listens reports whether r listens for expired-key events: whether a
// cache refreshes on expiry or ahead.
func (r *Refresher) Listens() bool { return len(r.refreshed) > 0 }

// Run refreshes until ctx is done: it listens for expired keys on every
// node, following the topology (keeping 'E' and 'x' in
// notify-keyspace-events, checked at each subscription and every
// CheckEvery, or logging exactly what to configure when Redis refuses
// CONFIG), reads the expiry records, and runs the schedules.
func (r *Refresher) Run(ctx context.Context) error {
	r.since = time.Now().UnixMilli()
	var wg sync.WaitGroup
	for range Workers {
		wg.Go(func() {
			for b := range r.work {
				r.reload(ctx, b)
			}
		})
	}
	var producers sync.WaitGroup
	if len(r.refreshed) > 0 {
		events := make(chan string, 65536)
		producers.Go(func() {
			ev := keyevents.Events{Channel: keyevents.Channel(r.db, "expired"), Flags: "Ex", Feature: "refresh: on-expiry and ahead",
				Every: r.CheckEvery, Health: &r.Stats.Notify}
			keyevents.Listen(ctx, r.redis, ev, r.log, func(key string) {
				r.Stats.Events.Add(1)
				select {
				case events <- key:
				default:
					r.Stats.Dropped.Add(1)
				}
			})
		})
		producers.Go(func() { r.expired(ctx, events) })
	}
	for _, c := range r.refreshed {
		producers.Go(func() { r.poll(ctx, c) })
	}
	for _, c := range r.scheduled {
		for _, s := range c.Schedule {
			producers.Go(func() { r.schedule(ctx, c, s) })
		}
	}
	producers.Wait()
	close(r.work)
	wg.Wait()
	return nil
}

// expired turns expired-key events into batches of reloads, until ctx is
// done. A batch takes whatever events are waiting, up to BatchSize a cache.
func (r *Refresher) expired(ctx context.Context, events <-chan string) {
	pending := map[*config.Cache][]string{}
	n := 0
	add := func(key string) {
		c := r.cacheOf(key)
		if c == nil {
			r.Stats.Ignored.Add(1)
			return
		}
		if !r.claim(c, key) {
			return // a reload of it is running
		}
		pending[c] = append(pending[c], key)
		n++
	}
	for {
		select {
		case <-ctx.Done():
			return
		case key := <-events:
			add(key)
		}
	drain:
		for n < BatchSize {
			select {
			case key := <-events:
				add(key)
			default:
				break drain
			}
		}
		for c, keys := range pending {
			keys = r.missing(ctx, c, keys)
			if len(keys) > 0 && !r.send(ctx, batch{cache: c, keys: keys, expiries: make([]int64, len(keys))}) {
				return
			}
			delete(pending, c)
		}
		n = 0
	}
}

// missing returns those of keys of c (from expired events, claimed) that
// are still missing. It lets the others go, counted as kept: filled again
// since, most often by a reload read from the expiry record, they need no
// reload (one would only find them present).
func (r *Refresher) missing(ctx context.Context, c *config.Cache, keys []string) []string {
	// OBJECT ENCODING, unlike EXISTS, does not publish a keymiss event for
	// a missing key, which would start a fill: on-miss of it.
	cmds := make(rueidis.Commands, len(keys))
	for i, k := range keys {
		cmds[i] = r.redis.B().ObjectEncoding().Key(k).Build()
	}
	var out, present []string
	for i, res := range r.redis.DoMulti(ctx, cmds...) {
		if res.Error() == nil {
			present = append(present, keys[i])
		} else {
			out = append(out, keys[i]) // or unknown: the reload tells
		}
	}
	r.done(c, present)
	for _, st := range []*Counts{&r.Stats.Counts, r.PerCache[c.Name]} {
		st.Kept.Add(int64(len(present)))
	}
	return out
}

// cacheOf returns the refreshing cache whose key key is, or nil: by its
// column types too, so of "user:{id}" and "user:{id}:orders" (integer ids)
// each gets its own. (cachesync's own keys, its leases, markers and stale
// copies, are no cache's.)
func (r *Refresher) cacheOf(key string) *config.Cache {
	for _, c := range r.refreshed {
		if _, err := r.api.ParseKey(c.Name, key); err == nil {
			return c
		}
	}
	return nil
}

// claim marks key of c as in a reload; false when it already is.
func (r *Refresher) claim(c *config.Cache, key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := c.Name + "\x00" + key
	if r.busy[k] {
		return false
	}
	r.busy[k] = true
	return true
}

func (r *Refresher) done(c *config.Cache, keys []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, key := range keys {
		delete(r.busy, c.Name+"\x00"+key)
	}
}

func (r *Refresher) send(ctx context.Context, b batch) bool {
	select {
	case r.work <- b:
		return true
	case <-ctx.Done():
		r.done(b.cache, b.keys)
		return false
	}
}

// poll reads c's expiry record for keys that expired (on-expiry) or expire
// within the last part of their TTL (ahead), until ctx is done.
func (r *Refresher) poll(ctx context.Context, c *config.Cache) {
	lead := c.Lead()
	// Often enough that an ahead refresh comes well before the expiry.
	every := min(max(c.TTL/20, 10*time.Millisecond), 100*time.Millisecond)
	if lead > 0 {
		every = min(every, max(lead/4, 5*time.Millisecond))
	}
	record := binding.RecordKey(c.Name)
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		// Read due keys a page (Workers batches) at a time until none is
		// left, from the first: those in reloads now (of this record or of
		// expired events) are skipped by their claim. (Reading from an
		// offset of the keys in reloads assumed they were the first due,
		// which they stop being once written: then as many keys that were
		// due all along, the oldest, were skipped at every read while
		// reloads kept running, for a minute on a busy machine.)
		for offset := int64(0); ctx.Err() == nil; {
			until := strconv.FormatInt(time.Now().Add(lead).UnixMilli(), 10)
			res, err := r.redis.Do(ctx, r.redis.B().Zrange().Key(record).Min("-inf").Max(until).
				Byscore().Limit(offset, pollPage).Withscores().Build()).AsZScores()
			if err != nil {
				if ctx.Err() == nil {
					r.log.Warn("read expiry record", "cache", c.Name, "err", err)
				}
				break
			}
			offset += int64(len(res))
			for start := 0; start < len(res); start += BatchSize {
				b := batch{cache: c, present: lead > 0}
				for _, z := range res[start:min(start+BatchSize, len(res))] {
					if r.claim(c, z.Member) {
						b.keys = append(b.keys, z.Member)
						b.expiries = append(b.expiries, int64(z.Score))
					}
				}
				if len(b.keys) > 0 && !r.send(ctx, b) {
					return
				}
			}
			if len(res) < pollPage {
				break
			}
		}
		t.Reset(r.untilDue(ctx, record, lead, every))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// untilDue returns how long the poll of record may sleep: until its first
// key is due (lead before its expiry), at most every. A first key due
// already is in a reload, or was skipped: the next read comes in every.
func (r *Refresher) untilDue(ctx context.Context, record string, lead, every time.Duration) time.Duration {
	first, err := r.redis.Do(ctx, r.redis.B().Zrange().Key(record).Min("0").Max("0").Withscores().Build()).AsZScores()
	if err != nil || len(first) == 0 {
		return every
	}
	d := time.Until(time.UnixMilli(int64(first[0].Score)).Add(-lead))
	if d <= 0 || d > every {
		return every
	}
	return d
}

// schedule runs one cron entry of c until ctx is done.
func (r *Refresher) schedule(ctx context.Context, c *config.Cache, s config.Schedule) {
	for {
		next := s.Every.Next(time.Now())
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		keys := s.Keys
		if s.Where != "" {
			var err error
			if keys, err = r.api.KeysWhere(ctx, c.Name, s.Where); err != nil {
				r.Stats.Errors.Add(1)
				r.log.Error("scheduled reload", "cache", c.Name, "cron", s.Cron, "err", err)
				continue
			}
		}
		for start := 0; start < len(keys); start += BatchSize {
			var b batch
			for _, key := range keys[start:min(start+BatchSize, len(keys))] {
				if r.claim(c, key) {
					b.keys = append(b.keys, key)
					b.expiries = append(b.expiries, 0)
				}
			}
			if len(b.keys) > 0 && !r.send(ctx, batch{cache: c, keys: b.keys, expiries: b.expiries, present: true, scheduled: true}) {
				return
			}
		}
	}
}

// reload runs one batch and counts what it did.
func (r *Refresher) reload(ctx context.Context, b batch) {
	defer r.done(b.cache, b.keys)
	res, err := r.api.Reload(ctx, b.cache.Name, b.keys, b.present)
	if err != nil {
		if ctx.Err() == nil {
			r.Stats.Errors.Add(1)
			r.log.Error("reload", "cache", b.cache.Name, "keys", len(b.keys), "err", err)
		}
		return
	}
	var repaired int64
	if !b.scheduled {
		now := time.Now().UnixMilli()
		for i, at := range b.expiries {
			if at == 0 || at > now || !res.Wrote[i] {
				continue
			}
			r.Stats.Delays.Observe(time.Duration(now-at) * time.Millisecond)
			if at < r.since || now-at > Late.Milliseconds() {
				repaired++
			}
		}
	}
	for _, st := range []*Counts{&r.Stats.Counts, r.PerCache[b.cache.Name]} {
		st.Kept.Add(int64(res.Kept))
		st.NotFound.Add(int64(res.NotFound))
		st.Repaired.Add(repaired)
		if b.scheduled {
			st.Scheduled.Add(int64(res.Written))
		} else {
			st.Refreshed.Add(int64(res.Written))
		}
	}
}
