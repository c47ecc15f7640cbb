// Package keymiss gives read-through to clients that only speak Redis: it
// listens for Redis keymiss events and fills the missed key of a cache with
// fill: on-miss, so the client's next GET hits. The first read still misses;
// that is the trade-off of not going through cachesync.
package keymiss

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync"
	"github.com/cachesync/cachesync/config"
)

// Stats counts what a listener did.
type Stats struct {
	Events  atomic.Int64 // keymiss events received
	Filled  atomic.Int64 // fills started
	Ignored atomic.Int64 // keys of no on-miss cache, or seen again within the window
	Dropped atomic.Int64 // events dropped because fills were backed up
	Errors  atomic.Int64 // fills that failed
}

// Listener fills what plain Redis clients miss.
type Listener struct {
	api    *cachesync.Client
	redis  rueidis.Client
	caches []*config.Cache // with fill: on-miss
	db     int
	log    *slog.Logger
	Stats  Stats

	mu     sync.Mutex
	recent map[string]time.Time // key -> last fill start: our own fill's reads miss too
}

// Window is how long a key's further misses are ignored after a fill
// starts: the fill's own reads cause keymiss events as well.
const Window = time.Second

// New returns the listener of cfg's caches with fill: on-miss, or nil when there are none.
func New(cfg *config.Config, api *cachesync.Client, redis rueidis.Client, log *slog.Logger) (*Listener, error) {
	l := &Listener{api: api, redis: redis, log: log.With("component", "keymiss"), recent: map[string]time.Time{}}
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

// Enable makes every Redis primary publish keymiss events ('E' and 'm' in
// notify-keyspace-events), or says exactly what to configure when it may not.
func (l *Listener) Enable(ctx context.Context) error {
	for addr, node := range l.redis.Nodes() {
		m, err := node.Do(ctx, node.B().ConfigGet().Parameter("notify-keyspace-events").Build()).AsStrMap()
		if err != nil {
			return fmt.Errorf("redis %s: read notify-keyspace-events: %w; set it to include E and m (e.g. notify-keyspace-events Em) for fill: on-miss", addr, err)
		}
		flags := m["notify-keyspace-events"]
		want := flags
		for _, f := range "Em" {
			if !strings.ContainsRune(want, f) {
				want += string(f)
			}
		}
		if want == flags {
			continue
		}
		if err := node.Do(ctx, node.B().ConfigSet().ParameterValue().ParameterValue("notify-keyspace-events", want).Build()).Error(); err != nil {
			return fmt.Errorf("redis %s: notify-keyspace-events is %q and cachesync may not change it (%v): configure notify-keyspace-events %q for fill: on-miss", addr, flags, err, want)
		}
		l.log.Info("enabled keymiss events", "redis", addr, "notify-keyspace-events", want)
	}
	return nil
}

// Run listens on every primary until ctx is done, resubscribing after a
// disconnection, and fills with up to workers fills at a time.
func (l *Listener) Run(ctx context.Context, workers int) error {
	if err := l.Enable(ctx); err != nil {
		return err
	}
	keys := make(chan string, 1024)
	var fillers, subscribers sync.WaitGroup
	for range workers {
		fillers.Add(1)
		go func() {
			defer fillers.Done()
			for key := range keys {
				l.fill(ctx, key)
			}
		}()
	}
	channel := fmt.Sprintf("__keyevent@%d__:keymiss", l.db)
	for addr, node := range l.redis.Nodes() {
		subscribers.Add(1)
		go func() {
			defer subscribers.Done()
			l.subscribe(ctx, addr, node, channel, keys)
		}()
	}
	// The subscribers end with ctx; then the fillers finish and end.
	subscribers.Wait()
	close(keys)
	fillers.Wait()
	return nil
}

func (l *Listener) subscribe(ctx context.Context, addr string, node rueidis.Client, channel string, keys chan<- string) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := node.Receive(ctx, node.B().Subscribe().Channel(channel).Build(), func(m rueidis.PubSubMessage) {
			l.Stats.Events.Add(1)
			select {
			case keys <- m.Message:
			default:
				l.Stats.Dropped.Add(1)
			}
		})
		if ctx.Err() != nil {
			return
		}
		l.log.Warn("keymiss subscription ended; resubscribing", "redis", addr, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (l *Listener) fill(ctx context.Context, key string) {
	var cache *config.Cache
	for _, c := range l.caches {
		if _, ok := c.Template.Parse(key); ok {
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
	if err != nil && !errors.Is(err, cachesync.ErrNotFound) && ctx.Err() == nil {
		l.Stats.Errors.Add(1)
		l.log.Error("fill on keymiss failed", "cache", cache.Name, "key", key, "err", err)
	}
}

// first reports whether key had no fill start within Window, and notes this one.
func (l *Listener) first(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if t, ok := l.recent[key]; ok && now.Sub(t) < Window {
		return false
	}
	if len(l.recent) > 100_000 {
		for k, t := range l.recent {
			if now.Sub(t) >= Window {
				delete(l.recent, k)
			}
		}
	}
	l.recent[key] = now
	return true
}
