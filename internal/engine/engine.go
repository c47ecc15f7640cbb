// Package engine holds the caches behind the Go API and the daemon: a
// read-through Get that never stampedes the database (get.go), write-through
// Put (put.go), PutBehind's queue (behind.go), Invalidate, and what the
// daemon's parts need beside them: batch reloads for refresh and check
// (reload.go), Redis and the table side by side for check (peek.go), and WAL
// positions. Values are written to Redis by the same binding code as the
// change feed, so the daemon and the library agree on every key and value.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"
	"golang.org/x/sync/singleflight"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/latency"
	"github.com/cachesync/cachesync/internal/pgsource"
	"github.com/cachesync/cachesync/internal/schema"
	"github.com/cachesync/cachesync/internal/state"
)

// Errors a caller can test with errors.Is.
var (
	// ErrNotFound is a key whose row does not exist.
	ErrNotFound = errors.New("not found")
	// ErrUnknownCache is a cache name the config does not have.
	ErrUnknownCache = errors.New("unknown cache")
	// ErrBadKey is a key that is not one of the cache's: it does not fit
	// the template, holds no value of a key column, or spells a value
	// otherwise than the change feed writes its row's key ("x:01" for
	// "x:1"): every row has exactly one key.
	ErrBadKey = errors.New("bad key")
	// ErrUnavailable wraps a failure to reach Redis or PostgreSQL: worth a retry.
	ErrUnavailable = errors.New("unavailable")
)

// Engine reads and writes caches through Redis and PostgreSQL.
type Engine struct {
	cfg     *config.Config
	redis   rueidis.Client
	loaders map[string]*pgsource.Loader
	caches  map[string]*cache
	flights singleflight.Group
	state   *state.State
	opts    Options

	// Stats counts what the client did beyond plain reads and writes.
	Stats Stats

	bg       context.Context // background refreshes (stale-while-revalidate) end with Close
	stopBg   context.CancelFunc
	bgWaiter sync.WaitGroup
}

// Stats counts stale values served; safe for concurrent reads.
type Stats struct {
	StaleWhileRevalidate atomic.Int64 // stale values served while a refresh ran
	StaleIfError         atomic.Int64 // stale values served because PostgreSQL could not be reached
}

// CacheStats counts what the client did for one cache; safe for
// concurrent reads. The metrics endpoint exports them.
type CacheStats struct {
	Hits         atomic.Int64 // Gets answered from Redis
	Misses       atomic.Int64 // Gets that found no key
	NegativeHits atomic.Int64 // misses answered "not found" by the marker, without a query
	Fills        atomic.Int64 // rows loaded by Gets' fills (database queries)
	Collapsed    atomic.Int64 // misses that waited for another fill instead of querying
	Stale        atomic.Int64 // stale values served (while revalidating, or on error)
	Drained      atomic.Int64 // write-behind entries applied to PostgreSQL
	DeadLettered atomic.Int64 // write-behind entries moved to the dead-letter stream
	// Gets times every Get, hit or miss.
	Gets *latency.Histogram
}

// L1Stats returns the counters of cache name's L1, or nil for a cache
// without one.
func (c *Engine) L1Stats(name string) *L1Stats {
	if ca, ok := c.caches[name]; ok && ca.l1 != nil {
		return ca.l1.stats
	}
	return nil
}

// CacheStats returns the counters of cache name, or nil for an unknown cache.
func (c *Engine) CacheStats(name string) *CacheStats {
	if ca, ok := c.caches[name]; ok {
		return ca.stats
	}
	return nil
}

// Options tune an Engine; the zero value is good.
type Options struct {
	// LeaseTTL bounds how long one fill may hold a key before others may
	// try: the cross-process stampede window. Default 5s.
	LeaseTTL time.Duration
	// WriteWait bounds how long Put waits for the change feed to apply its
	// commit (read-your-writes), or, on a cache without one, for its
	// invalidation. Default 5s.
	WriteWait time.Duration
	// Logger receives errors worth a look; default slog.Default().
	Logger *slog.Logger
	// DisableStats stops counting and timing Gets (CacheStats, the
	// metrics): only to measure what they cost.
	DisableStats bool
}

// cache is a cache of the config with what a fill needs.
type cache struct {
	cfg    *config.Cache
	table  *pgsource.Table
	b      *binding.Binding // resolved against cols
	cols   []string         // the columns a fill selects
	loader *pgsource.Loader
	stats  *CacheStats
	l1     *l1 // nil without config.Cache.L1
}

// Open connects to Redis and every source of cfg and checks each cache
// against its table.
func Open(ctx context.Context, cfg *config.Config, opts Options) (*Engine, error) {
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = 5 * time.Second
	}
	if opts.WriteWait <= 0 {
		opts.WriteWait = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	cfg = cfg.ForTarget(cfg.Redis.Name) // of several targets, the caches of the one it serves
	ropt, err := cfg.RedisOption()
	if err != nil {
		return nil, err
	}
	l1opt := ropt
	ropt.DisableCache = true
	ropt.DisableRetry = true // a caller gets ErrUnavailable at once rather than waiting out its context
	r, err := rueidis.NewClient(ropt)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	c := &Engine{cfg: cfg, redis: r, loaders: map[string]*pgsource.Loader{}, caches: map[string]*cache{},
		state: state.New(r, cfg.Name), opts: opts}
	c.bg, c.stopBg = context.WithCancel(context.Background())
	if err := c.open(ctx, l1opt); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Engine) open(ctx context.Context, l1opt rueidis.ClientOption) error {
	for _, source := range c.cfg.SourceNames() {
		l, err := pgsource.NewLoader(ctx, c.cfg.Sources[source].URL, c.opts.Logger)
		if err != nil {
			return fmt.Errorf("sources.%s.url: %w", source, err)
		}
		c.loaders[source] = l
		if err := l.Pool().Ping(ctx); err != nil {
			return fmt.Errorf("sources.%s.url: cannot connect: %w", source, err)
		}
	}
	for _, name := range c.cfg.CacheNames() {
		cc := c.cfg.Caches[name]
		var t *pgsource.Table
		err := c.loaders[cc.Source].Pool().AcquireFunc(ctx, func(conn *pgxpool.Conn) error {
			tables, err := schema.LoadTables(ctx, conn.Conn(), []*config.Cache{cc})
			t = tables[cc.Table]
			return err
		})
		if err != nil {
			return err
		}
		b, cols, err := schema.SelectBinding(cc, t)
		if err != nil {
			return err
		}
		if cc.Writes == config.WritesBehind && c.redis.Mode() == rueidis.ClientModeCluster {
			if err := binding.QueueSlotError(name, cc.Template); err != nil {
				return config.FieldError("caches."+name+".key", "%v", err)
			}
		}
		ca := &cache{cfg: cc, table: t, b: b, cols: cols, loader: c.loaders[cc.Source],
			stats: &CacheStats{Gets: latency.New(latency.Fast)}}
		c.caches[name] = ca
		if cc.L1 != nil {
			if ca.l1, err = openL1(l1opt, cc.L1); err != nil {
				return fmt.Errorf("caches.%s.l1: %w", name, err)
			}
		}
	}
	bindings := map[string]*binding.Binding{}
	for name, ca := range c.caches {
		bindings[name] = ca.b
		for i, s := range ca.cfg.Schedule {
			for _, k := range s.Keys {
				if _, err := ca.b.ParseKey(k); err != nil {
					return config.FieldError(fmt.Sprintf("caches.%s.schedule[%d].keys", name, i), "%v", err)
				}
			}
		}
	}
	return schema.CheckKeyspaces(bindings)
}

// OwnsKey tells a key of cache name's in any spelling of its values
// (binding.Binding.Owns): what a consistency check reports as extra when
// it is not the row's own spelling.
func (c *Engine) OwnsKey(name, key string) bool {
	ca, ok := c.caches[name]
	return ok && ca.b.Owns(key)
}

// ParseKey returns the key column values of key in cache name (in the
// template's order), or an error wrapping ErrBadKey or ErrUnknownCache:
// what the HTTP API checks before it writes a row a key names.
func (c *Engine) ParseKey(name, key string) ([]string, error) {
	_, values, err := c.cache(name, key)
	return values, err
}

// Close stops background refreshes and releases the connections.
func (c *Engine) Close() {
	c.stopBg()
	c.bgWaiter.Wait()
	for _, l := range c.loaders {
		l.Close()
	}
	for _, ca := range c.caches {
		if ca.l1 != nil {
			ca.l1.client.Close()
		}
	}
	c.redis.Close()
}

func (c *Engine) cache(name, key string) (*cache, []string, error) {
	ca, ok := c.caches[name]
	if !ok {
		return nil, nil, fmt.Errorf("cache %q: %w", name, ErrUnknownCache)
	}
	values, err := ca.b.ParseKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("cache %q: %w: %w", name, ErrBadKey, err)
	}
	return ca, values, nil
}

// SlotHolder returns which process streams source's slot: the
// application_name of the session that holds its lock ("cachesync
// HOST:PID"), or "" when none does.
func (c *Engine) SlotHolder(ctx context.Context, source string) (string, error) {
	l, ok := c.loaders[source]
	if !ok {
		return "", fmt.Errorf("source %q: unknown", source)
	}
	return pgsource.SlotHolder(ctx, l.Pool(), c.cfg.SlotName(source))
}

// WALPosition returns source's current WAL insert position
// (pg_current_wal_insert_lsn): past every commit made so far, however
// synchronous_commit is set; how far the change feed has to go.
func (c *Engine) WALPosition(ctx context.Context, source string) (uint64, error) {
	l, ok := c.loaders[source]
	if !ok {
		return 0, fmt.Errorf("source %q: unknown", source)
	}
	pos, err := pgsource.WALInsertPosition(ctx, l.Pool())
	if err != nil {
		return 0, fmt.Errorf("source %q: %w", source, err)
	}
	return uint64(pos), nil
}

// Cache returns the config of cache name.
func (c *Engine) Cache(name string) (*config.Cache, bool) {
	ca, ok := c.caches[name]
	if !ok {
		return nil, false
	}
	return ca.cfg, true
}

// Ping checks that Redis and every source answer.
func (c *Engine) Ping(ctx context.Context) error {
	if err := c.redis.Do(ctx, c.redis.B().Ping().Build()).Error(); err != nil {
		return fmt.Errorf("redis %w: %w", ErrUnavailable, err)
	}
	for name, l := range c.loaders {
		if err := l.Pool().Ping(ctx); err != nil {
			return fmt.Errorf("source %s %w: %w", name, ErrUnavailable, err)
		}
	}
	return nil
}
