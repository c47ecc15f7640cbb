// Package keymiss gives read-through to clients that only speak Redis: it
// listens for Redis keymiss events and fills the missed key of a cache with
// fill: on-miss, so the client's next GET hits. The first read still misses;
// that is the trade-off of not going through cachesync.
package keymiss

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/keyevents"
)

// Stats counts what a listener did.
type Stats struct {
	Events  atomic.Int64 // keymiss events received
	Filled  atomic.Int64 // fills started
	Ignored atomic.Int64 // keys of no on-miss cache, or seen again within the window
	Dropped atomic.Int64 // events dropped because fills were backed up
	Errors  atomic.Int64 // fills that failed
	// Notify counts the checks of notify-keyspace-events on the nodes.
	Notify keyevents.Health
}

// Listener fills what plain Redis clients miss.
type Listener struct {
	api    *engine.Engine
	redis  rueidis.Client
	caches []*config.Cache // with fill: on-miss
	db     int
	log    *slog.Logger
	Stats  Stats
	// Window is how long a key's further misses are ignored after a fill
	// starts (the fill's own reads miss too); New sets DefaultWindow, and
	// a change must come before Run.
	Window time.Duration
	// CheckEvery is how often every node's notify-keyspace-events is
	// checked (besides after every resubscription) and its keymiss flags
	// enabled again; New sets keyevents.DefaultEvery, and a change must
	// come before Run.
	CheckEvery time.Duration

	mu     sync.Mutex
	recent map[string]time.Time // key -> last fill start: our own fill's reads miss too
}

// DefaultWindow is the listener's Window: long enough for a fill's own
// reads to have missed, short enough that a key missed again soon after
// is filled again.
const DefaultWindow = time.Second

// New returns the listener of cfg's caches with fill: on-miss, or nil when there are none.
func New(cfg *config.Config, api *engine.Engine, redis rueidis.Client, log *slog.Logger) (*Listener, error) {
	l := &Listener{api: api, redis: redis, log: log.With("component", "keymiss"), recent: map[string]time.Time{}, Window: DefaultWindow, CheckEvery: keyevents.DefaultEvery}
	for _, name := range cfg.CacheNames() {
		if c := cfg.Caches[name]; c.Fill == config.FillOnMiss {
			l.caches = append(l.caches, c)
		}
	}
	if len(l.caches) == 0 {
		return nil, nil
	}
	opt, err := cfg.RedisOption()
	if err != nil {
		return nil, err
	}
	l.db = opt.SelectDB
	return l, nil
}

// Run listens on every node (replicas too: a client may read there),
// following the topology, until ctx is done, resubscribing after a
// disconnection, and fills with up to workers fills at a time. It keeps
// keymiss events on ('E' and 'm' in notify-keyspace-events, checked on
// every node at each subscription and every CheckEvery), or logs
// exactly what to configure when Redis refuses CONFIG.
func (l *Listener) Run(ctx context.Context, workers int) error {
	events := keyevents.Events{Channel: keyevents.Channel(l.db, "keymiss"), Flags: "Em", Feature: "fill: on-miss",
		Every: l.CheckEvery, Health: &l.Stats.Notify}
	keys := make(chan string, 1024)
	var fillers sync.WaitGroup
	for range workers {
		fillers.Go(func() {
			for key := range keys {
				l.fill(ctx, key)
			}
		})
	}
	keyevents.Listen(ctx, l.redis, events, l.log, func(key string) {
		l.Stats.Events.Add(1)
		select {
		case keys <- key:
		default:
			l.Stats.Dropped.Add(1)
		}
	})
	// The subscriptions ended with ctx; then the fillers finish and end.
	close(keys)
	fillers.Wait()
	return nil
}

func (l *Listener) fill(ctx context.Context, key string) {
	var cache *config.Cache
	for _, c := range l.caches {
		if _, err := l.api.ParseKey(c.Name, key); err == nil { // by its column types too
			cache = c
			break
		}
	}
	if cache == nil || !l.first(key) {
		l.Stats.Ignored.Add(1)
		return
	}
	l.Stats.Filled.Add(1)
	err := l.api.Fill(ctx, cache.Name, key)
	if err != nil && !errors.Is(err, engine.ErrNotFound) && !errors.Is(err, engine.ErrBadKey) && ctx.Err() == nil {
		l.Stats.Errors.Add(1)
		l.log.Error("fill on keymiss failed", "cache", cache.Name, "key", key, "err", err)
	}
}

// first reports whether key had no fill start within l.Window, and notes this one.
func (l *Listener) first(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if t, ok := l.recent[key]; ok && now.Sub(t) < l.Window {
		return false
	}
	if len(l.recent) > 100_000 {
		for k, t := range l.recent {
			if now.Sub(t) >= l.Window {
				delete(l.recent, k)
			}
		}
	}
	l.recent[key] = now
	return true
}
