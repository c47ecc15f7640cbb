// Package cachesync is the Go API over cachesync's caches (bindings):
// read-through Get that never stampedes the database, write-through Put,
// and Invalidate. Values are written to Redis by the same binding code as the
// change feed, so the daemon and the library agree on every key and value.
package cachesync

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"
	"golang.org/x/sync/singleflight"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/changefeed"
	"github.com/cachesync/cachesync/internal/latency"
	"github.com/cachesync/cachesync/internal/pgsource"
	"github.com/cachesync/cachesync/internal/schema"
)

// Errors a caller can test with errors.Is.
var (
	ErrNotFound     = errors.New("not found")
	ErrUnknownCache = errors.New("unknown cache")
	// ErrBadKey is a key that is not one of the cache's: it does not fit
	// the template, holds no value of a key column, or spells a value
	// otherwise than the change feed writes its row's key ("x:01" for
	// "x:1"): every row has exactly one key.
	ErrBadKey = errors.New("bad key")
	// ErrUnavailable wraps a failure to reach Redis or PostgreSQL: worth a retry.
	ErrUnavailable = errors.New("unavailable")
)

// Client reads and writes caches through Redis and PostgreSQL.
type Client struct {
	cfg     *config.Config
	redis   rueidis.Client
	loaders map[string]*pgsource.Loader
	caches  map[string]*cache
	flights singleflight.Group
	state   *changefeed.State
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

// CacheStats returns the counters of cache name, or nil for an unknown cache.
func (c *Client) CacheStats(name string) *CacheStats {
	if ca, ok := c.caches[name]; ok {
		return ca.stats
	}
	return nil
}

// Options tune a Client; the zero value is good.
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
}

// Open connects to Redis and every source of cfg and checks each cache
// against its table.
func Open(ctx context.Context, cfg *config.Config, opts Options) (*Client, error) {
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = 5 * time.Second
	}
	if opts.WriteWait <= 0 {
		opts.WriteWait = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ropt, err := cfg.RedisOption()
	if err != nil {
		return nil, err
	}
	ropt.DisableCache = true
	ropt.DisableRetry = true // a caller gets ErrUnavailable at once rather than waiting out its context
	r, err := rueidis.NewClient(ropt)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	c := &Client{cfg: cfg, redis: r, loaders: map[string]*pgsource.Loader{}, caches: map[string]*cache{},
		state: changefeed.NewState(r, cfg.Name), opts: opts}
	c.bg, c.stopBg = context.WithCancel(context.Background())
	if err := c.open(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) open(ctx context.Context) error {
	for _, source := range c.cfg.SourceNames() {
		l, err := pgsource.NewLoader(ctx, c.cfg.Sources[source].URL, c.opts.Logger)
		if err != nil {
			return fmt.Errorf("sources.%s.url: %w", source, err)
		}
		c.loaders[source] = l
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
		c.caches[name] = &cache{cfg: cc, table: t, b: b, cols: cols, loader: c.loaders[cc.Source],
			stats: &CacheStats{Gets: latency.New(latency.Fast)}}
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
func (c *Client) OwnsKey(name, key string) bool {
	ca, ok := c.caches[name]
	return ok && ca.b.Owns(key)
}

// ParseKey returns the key column values of key in cache name (in the
// template's order), or an error wrapping ErrBadKey or ErrUnknownCache:
// what the HTTP API checks before it writes a row a key names.
func (c *Client) ParseKey(name, key string) ([]string, error) {
	_, values, err := c.cache(name, key)
	return values, err
}

// Close stops background refreshes and releases the connections.
func (c *Client) Close() {
	c.stopBg()
	c.bgWaiter.Wait()
	for _, l := range c.loaders {
		l.Close()
	}
	c.redis.Close()
}

func (c *Client) cache(name, key string) (*cache, []string, error) {
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

// Get returns the value of key in cache name: from Redis, or on a miss from
// PostgreSQL, filling Redis. Concurrent misses of one key make one database
// query per process (singleflight) and, across processes, one per lease
// (a Redis lease on the key; the others wait for its fill). A row that does
// not exist returns ErrNotFound and is remembered for the cache's
// negative_ttl. A hash is returned as a JSON object of its fields. The
// returned bytes may be shared: do not modify them.
func (c *Client) Get(ctx context.Context, name, key string) ([]byte, error) {
	ca, values, err := c.cache(name, key)
	if err != nil {
		return nil, err
	}
	if c.opts.DisableStats {
		return c.get(ctx, ca, key, values)
	}
	start := time.Now()
	v, err := c.get(ctx, ca, key, values)
	ca.stats.Gets.Observe(time.Since(start))
	return v, err
}

// get is Get once the key is known to fit its cache.
func (c *Client) get(ctx context.Context, ca *cache, key string, values []string) ([]byte, error) {
	if v, ok, err := c.read(ctx, ca, key); err != nil || ok {
		if ok && !c.opts.DisableStats {
			ca.stats.Hits.Add(1)
		}
		return v, err
	}
	ca.stats.Misses.Add(1)
	if w := ca.cfg.StaleWhileRevalidate; w > 0 {
		if v, ok := c.stale(ctx, ca, key, w); ok {
			c.Stats.StaleWhileRevalidate.Add(1)
			ca.stats.Stale.Add(1)
			c.bgWaiter.Add(1)
			go func() {
				defer c.bgWaiter.Done()
				c.fillOnce(c.bg, ca, key, values) // one per process; the lease makes it one across processes
			}()
			return v, nil
		}
	}
	v, err := c.fillOnce(ctx, ca, key, values)
	if err != nil && errors.Is(err, ErrUnavailable) && ca.cfg.StaleIfError > 0 {
		if sv, ok := c.stale(ctx, ca, key, ca.cfg.StaleIfError); ok {
			c.Stats.StaleIfError.Add(1)
			ca.stats.Stale.Add(1)
			c.opts.Logger.Warn("served a stale value: the database cannot be reached", "cache", ca.cfg.Name, "key", key, "err", err)
			return sv, nil
		}
	}
	return v, err
}

// stale returns the stale copy of key if it expired at most window ago.
func (c *Client) stale(ctx context.Context, ca *cache, key string, window time.Duration) ([]byte, bool) {
	res := c.redis.DoMulti(ctx, c.redis.B().Get().Key(binding.StaleKey(key)).Build(), c.redis.B().Pttl().Key(binding.StaleKey(key)).Build())
	v, err := res[0].AsBytes()
	if err != nil {
		return nil, false
	}
	left, err := res[1].AsInt64()
	// The copy outlives the key by Spec.Stale: what is left beyond
	// Stale-window is how long ago the key expired, within the window.
	if err != nil || left >= 0 && time.Duration(left)*time.Millisecond < ca.b.Stale-window {
		return nil, false
	}
	return v, true
}

// Fill loads key of cache name into Redis as a read-through miss would,
// without reading it first: for a listener that already saw the miss.
func (c *Client) Fill(ctx context.Context, name, key string) error {
	ca, values, err := c.cache(name, key)
	if err != nil {
		return err
	}
	_, err = c.fillOnce(ctx, ca, key, values)
	return err
}

// fillOnce runs one fill of key per process at a time; callers share its result.
func (c *Client) fillOnce(ctx context.Context, ca *cache, key string, values []string) ([]byte, error) {
	ran := false
	v, err, _ := c.flights.Do(ca.cfg.Name+"\x00"+key, func() (any, error) { ran = true; return c.fill(ctx, ca, key, values) })
	if !ran {
		ca.stats.Collapsed.Add(1) // another Get of this process filled it
	}
	if err != nil {
		return nil, err
	}
	return v.([]byte), nil
}

// read looks key up in Redis; ok is false on a miss.
func (c *Client) read(ctx context.Context, ca *cache, key string) ([]byte, bool, error) {
	if ca.cfg.Format == binding.FormatHash {
		m, err := c.redis.Do(ctx, c.redis.B().Hgetall().Key(key).Build()).AsStrMap()
		if err != nil {
			return nil, false, fmt.Errorf("cache %q: redis %w: %w", ca.cfg.Name, ErrUnavailable, err)
		}
		if len(m) == 0 {
			return nil, false, nil
		}
		v, _ := json.Marshal(m)
		return v, true, nil
	}
	v, err := c.redis.Do(ctx, c.redis.B().Get().Key(key).Build()).AsBytes()
	if rueidis.IsRedisNil(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("cache %q: redis %w: %w", ca.cfg.Name, ErrUnavailable, err)
	}
	return v, true, nil
}

// fill loads key's row under a lease and writes it, or waits for the fill of
// whoever holds the lease.
func (c *Client) fill(ctx context.Context, ca *cache, key string, values []string) ([]byte, error) {
	rb := c.redis.B()
	token := newToken()
	wait := time.Millisecond
	leaseTTL := c.leaseTTL(ca)
	for {
		res := c.redis.DoMulti(ctx, binding.LeaseCmd(rb, key, token, leaseTTL), rb.Exists().Key(binding.NegKey(key)).Build())
		err := res[0].Error()
		if err != nil && !rueidis.IsRedisNil(err) {
			return nil, fmt.Errorf("cache %q: redis %w: %w", ca.cfg.Name, ErrUnavailable, err)
		}
		leased := err == nil
		if neg, _ := res[1].AsInt64(); neg == 1 {
			ca.stats.NegativeHits.Add(1)
			if leased {
				c.redis.Do(context.WithoutCancel(ctx), binding.ReleaseCmd(rb, key, token))
			}
			return nil, fmt.Errorf("cache %q: key %q: %w", ca.cfg.Name, key, ErrNotFound)
		}
		if leased {
			// Filled by someone else since our miss? Then no query is needed.
			if v, ok, err := c.read(ctx, ca, key); err != nil || ok {
				c.redis.Do(context.WithoutCancel(ctx), binding.ReleaseCmd(rb, key, token))
				return v, err
			}
			v, err := c.load(ctx, ca, key, values, token)
			if !errors.Is(err, errQueued) {
				return v, err
			}
			// The key's write-behind write is queued: its value is the
			// answer, and the fill wrote nothing.
			if v, ok, err := c.queued(ctx, ca, key); err != nil || ok {
				return v, err
			}
			continue // drained meanwhile: fill again
		}
		// Someone else fills the key: wait for their value.
		if wait == time.Millisecond {
			ca.stats.Collapsed.Add(1)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, 50*time.Millisecond)
		if v, ok, err := c.read(ctx, ca, key); err != nil || ok {
			return v, err
		}
	}
}

// newToken returns a random lease token.
func newToken() string {
	var tok [16]byte
	rand.Read(tok[:])
	return hex.EncodeToString(tok[:])
}

// leaseTTL is how long a fill of ca may hold a key's lease. A fill must end
// well within the key's shortest TTL: a feed write it raced with must still
// be there when the fill checks for it.
func (c *Client) leaseTTL(ca *cache) time.Duration {
	if ttl := time.Duration(float64(ca.cfg.TTL) * (1 - float64(ca.cfg.TTLJitter)) / 2); ttl > 0 && ttl < c.opts.LeaseTTL {
		return max(ttl, time.Millisecond)
	}
	return c.opts.LeaseTTL
}

// load reads the row and writes it if the lease held; the value read is
// returned either way (it was current when read).
func (c *Client) load(ctx context.Context, ca *cache, key string, values []string, token string) ([]byte, error) {
	rb := c.redis.B()
	ca.stats.Fills.Add(1)
	row, err := ca.loader.LoadRow(ctx, ca.table, ca.cols, ca.cfg.Template.Columns(), values, true)
	if pgsource.RowLocked(err) {
		// A writer holds the row: answer with the row as committed, read
		// plainly, and cache nothing (the writer's commit may be applied
		// by the feed already, and a plain read could miss it).
		c.redis.Do(context.WithoutCancel(ctx), binding.ReleaseCmd(rb, key, token))
		return c.loadLocked(ctx, ca, key, values)
	}
	if err != nil {
		c.redis.Do(context.WithoutCancel(ctx), binding.ReleaseCmd(rb, key, token))
		return nil, fmt.Errorf("cache %q: key %q: %w", ca.cfg.Name, key, pgFailure(err))
	}
	if row == nil && !ca.b.ExactKeys() {
		// Another spelling of a row's key may name no row yet and one
		// later: remember nothing (ParseKey cannot tell 1.5 from 1.50).
		c.redis.Do(context.WithoutCancel(ctx), binding.ReleaseCmd(rb, key, token))
		return nil, fmt.Errorf("cache %q: key %q: %w", ca.cfg.Name, key, ErrNotFound)
	}
	if row == nil {
		n, err := ca.b.ExecFills(ctx, c.redis, token, []binding.Fill{ca.b.Fill(key, nil, false, true, ca.cfg.NegativeTTL)}, time.Now())
		if err != nil {
			return nil, fmt.Errorf("cache %q: redis %w: %w", ca.cfg.Name, ErrUnavailable, err)
		}
		if n[0] == binding.FillQueued {
			return nil, errQueued
		}
		return nil, fmt.Errorf("cache %q: key %q: %w", ca.cfg.Name, key, ErrNotFound)
	}
	if err := ca.ownKey(key, row); err != nil {
		c.redis.Do(context.WithoutCancel(ctx), binding.ReleaseCmd(rb, key, token))
		return nil, err
	}
	v, err := ca.b.Encode(row)
	if err != nil {
		c.redis.Do(context.WithoutCancel(ctx), binding.ReleaseCmd(rb, key, token))
		return ca.unstored(key, err)
	}
	n, err := ca.b.ExecFills(ctx, c.redis, token, []binding.Fill{ca.b.Fill(key, &v, false, false, 0)}, time.Now())
	if err != nil {
		return nil, fmt.Errorf("cache %q: redis %w: %w", ca.cfg.Name, ErrUnavailable, err)
	}
	if n[0] == binding.FillQueued {
		return nil, errQueued
	}
	return v.Result(ca.cfg.Format), nil
}

// loadLocked answers a Get of key, whose row a writer holds, without
// caching: with the key's queued write-behind value if there is one, else
// the row as committed.
func (c *Client) loadLocked(ctx context.Context, ca *cache, key string, values []string) ([]byte, error) {
	if ca.b.Queued {
		if v, ok, err := c.queued(ctx, ca, key); err != nil || ok {
			return v, err
		}
	}
	row, err := ca.loader.LoadRow(ctx, ca.table, ca.cols, ca.cfg.Template.Columns(), values, false)
	if err != nil {
		return nil, fmt.Errorf("cache %q: key %q: %w", ca.cfg.Name, key, pgFailure(err))
	}
	if row == nil {
		return nil, fmt.Errorf("cache %q: key %q: %w", ca.cfg.Name, key, ErrNotFound)
	}
	if err := ca.ownKey(key, row); err != nil {
		return nil, err
	}
	v, err := ca.b.Encode(row)
	if err != nil {
		return ca.unstored(key, err)
	}
	return v.Result(ca.cfg.Format), nil
}

// ownKey refuses a row found by key that is not the row's own key:
// PostgreSQL found it by a value equal to, but spelled otherwise than, the
// row's (1.50 for 1.5), which ParseKey cannot tell for every type.
func (ca *cache) ownKey(key string, row [][]byte) error {
	if own, err := ca.b.Key(row); err != nil || own != key {
		return fmt.Errorf("cache %q: %w: key %q is %w: it is %q", ca.cfg.Name, ErrBadKey, key, binding.ErrKeySpelling, own)
	}
	return nil
}

// queued returns the value of key's queued write-behind write; ok is false
// when none is queued.
func (c *Client) queued(ctx context.Context, ca *cache, key string) ([]byte, bool, error) {
	v, err := c.redis.Do(ctx, c.redis.B().Hget().Key(binding.QueuedKey(ca.cfg.Name)).Field(key).Build()).AsBytes()
	if rueidis.IsRedisNil(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("cache %q: redis %w: %w", ca.cfg.Name, ErrUnavailable, err)
	}
	return v, true, nil
}

// unstored answers a Get of key whose row Encode refused (err), without
// caching: a hash of NULLs is an empty object, a NULL string no value (as
// for a missing row); any other refusal is an error.
func (ca *cache) unstored(key string, err error) ([]byte, error) {
	switch {
	case errors.Is(err, binding.ErrNoValue) && ca.cfg.Format == binding.FormatHash:
		return []byte("{}"), nil
	case errors.Is(err, binding.ErrNoValue):
		return nil, fmt.Errorf("cache %q: key %q: %w (its column is NULL)", ca.cfg.Name, key, ErrNotFound)
	}
	return nil, fmt.Errorf("cache %q: key %q: %w", ca.cfg.Name, key, err)
}

// pgFailure classifies an error of PostgreSQL reading a key's row
// truthfully: unavailable (worth a retry elsewhere) when it cannot be
// reached or ended the session; a bad key when PostgreSQL refused a key
// value as data (SQLSTATE class 22: out of range, invalid text); else as
// it is (a row a writer holds, a statement refused).
func pgFailure(err error) error {
	var pgErr *pgconn.PgError
	switch {
	case pgUnreachable(err):
		return fmt.Errorf("postgres %w: %w", ErrUnavailable, err)
	case errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22"):
		return fmt.Errorf("%w: %s (SQLSTATE %s)", ErrBadKey, pgErr.Message, pgErr.Code)
	}
	return fmt.Errorf("postgres: %w", err)
}

// pgUnreachable tells an error that is not PostgreSQL's answer about the
// statement: the connection failed, or PostgreSQL ended the session
// (FATAL, PANIC).
func pgUnreachable(err error) bool {
	var pgErr *pgconn.PgError
	return !errors.As(err, &pgErr) || pgErr.Severity == "FATAL" || pgErr.Severity == "PANIC"
}

// errQueued is a fill's finding that the key's write-behind write is
// queued: the queued value, not the row, is the key's.
var errQueued = errors.New("a write-behind write of the key is queued")

// Invalidate removes key from cache name; a fill in progress for it loses.
//
// A complete cache (a change feed and no TTL: every row has its key) stays
// complete: the key is loaded again at once, by a fill like Get's, so an
// invalidation there means "reload this key from the table".
//
// A key of the cache's spelled otherwise than the change feed writes its
// row's key ("x:01", left by an older version) is removed too.
func (c *Client) Invalidate(ctx context.Context, name, key string) error {
	ca, ok := c.caches[name]
	if !ok {
		return fmt.Errorf("cache %q: %w", name, ErrUnknownCache)
	}
	_, err := ca.b.ParseKey(key)
	if err != nil && !ca.b.Owns(key) {
		return fmt.Errorf("cache %q: %w: %w", name, ErrBadKey, err)
	}
	if err := c.invalidate(ctx, ca, key); err != nil {
		return fmt.Errorf("cache %q: redis %w: %w", name, ErrUnavailable, err)
	}
	if err != nil {
		return nil // another spelling of a row's key: its row has its own
	}
	return c.refill(ctx, ca, key)
}

// refill loads key again after its invalidation when ca is complete.
func (c *Client) refill(ctx context.Context, ca *cache, key string) error {
	if !ca.complete() {
		return nil
	}
	values, err := ca.b.ParseKey(key)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	// A fill of its own: one in flight began before the invalidation, which
	// ended its lease. (A row found under another spelling of its key is
	// the feed's, under its own: the invalidation removed the other.)
	if _, err := c.fill(ctx, ca, key, values); err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, binding.ErrKeySpelling) {
		return fmt.Errorf("invalidated, then not loaded again: %w", err)
	}
	return nil
}

// complete tells a cache whose Redis holds a key for every row: one with a
// change feed and no TTL.
func (ca *cache) complete() bool { return ca.cfg.Sync == config.SyncChangefeed && ca.cfg.TTL == 0 }

// invalidate removes key with its companions and its expiry record.
func (c *Client) invalidate(ctx context.Context, ca *cache, key string) error {
	for _, r := range c.redis.DoMulti(ctx, ca.b.AppendInvalidate(nil, c.redis.B(), key)...) {
		if err := r.Error(); err != nil {
			return err
		}
	}
	return nil
}

// WALPosition returns source's current WAL insert position
// (pg_current_wal_insert_lsn): past every commit made so far, however
// synchronous_commit is set; how far the change feed has to go.
func (c *Client) WALPosition(ctx context.Context, source string) (uint64, error) {
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
func (c *Client) Cache(name string) (*config.Cache, bool) {
	ca, ok := c.caches[name]
	if !ok {
		return nil, false
	}
	return ca.cfg, true
}

// Ping checks that Redis and every source answer.
func (c *Client) Ping(ctx context.Context) error {
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
