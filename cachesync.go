// Package cachesync is the Go API over cachesync's caches: a read-through
// Get that never stampedes the database, write-through Put, write-behind
// PutBehind, and Invalidate. Each cache is a binding of a PostgreSQL table
// to Redis keys (config.Cache); the daemon (cmd/cachesync) keeps Redis in
// step with every change of the table, and writes by the same code, so the
// daemon and the library agree on every key and value.
package cachesync

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/engine"
)

// Errors a caller can test with errors.Is.
var (
	// ErrNotFound is a key whose row does not exist.
	ErrNotFound = engine.ErrNotFound
	// ErrUnknownCache is a cache name the config does not have.
	ErrUnknownCache = engine.ErrUnknownCache
	// ErrBadKey is a key that is not one of the cache's: it does not fit
	// the template, holds no value of a key column, or spells a value
	// otherwise than the change feed writes its row's key ("x:01" for
	// "x:1"): every row has exactly one key.
	ErrBadKey = engine.ErrBadKey
	// ErrUnavailable wraps a failure to reach Redis or PostgreSQL: worth a retry.
	ErrUnavailable = engine.ErrUnavailable
	// ErrBadRow is a row that does not fit the cache's table.
	ErrBadRow = engine.ErrBadRow
	// ErrNotApplied is a write that committed to PostgreSQL but that the
	// change feed did not apply to Redis within Options.WriteWait (is the
	// daemon running?). The database has the row; Redis will get it when
	// the feed runs.
	ErrNotApplied = engine.ErrNotApplied
	// ErrNotBehind is PutBehind on a cache without writes: behind.
	ErrNotBehind = engine.ErrNotBehind
)

// RowError is PostgreSQL refusing a written row (a constraint, a bad value).
type RowError = engine.RowError

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
	// Target names the Redis target the client serves, of a config with
	// several: its caches, in its Redis. Default: the first.
	Target string
}

// Client reads and writes caches through Redis and PostgreSQL; it is safe
// for concurrent use.
type Client struct{ e *engine.Engine }

// Open connects to Redis and every source of cfg and checks each cache
// against its table.
func Open(ctx context.Context, cfg *config.Config, opts Options) (*Client, error) {
	if opts.Target != "" {
		if !slices.Contains(cfg.TargetNames(), opts.Target) {
			return nil, fmt.Errorf("cachesync: no target %q in the config (targets: %s)", opts.Target, strings.Join(cfg.TargetNames(), ", "))
		}
		cfg = cfg.ForTarget(opts.Target)
	}
	e, err := engine.Open(ctx, cfg, engine.Options{LeaseTTL: opts.LeaseTTL, WriteWait: opts.WriteWait, Logger: opts.Logger})
	if err != nil {
		return nil, err
	}
	return &Client{e}, nil
}

// Close stops background refreshes and releases the connections.
func (c *Client) Close() { c.e.Close() }

// Get returns the value of key in cache name: from Redis, or on a miss from
// PostgreSQL, filling Redis. Concurrent misses of one key make one database
// query per process and, across processes, one per lease (a Redis lease on
// the key; the others wait for its fill); a fill that read before a newer
// change never overwrites it. A row that does not exist returns ErrNotFound
// and is remembered for the cache's negative_ttl. A hash is returned as a
// JSON object of its fields. The returned bytes may be shared: do not
// modify them.
func (c *Client) Get(ctx context.Context, name, key string) ([]byte, error) {
	return c.e.Get(ctx, name, key)
}

// Put writes row (column name → value) to the cache's table, inserting or
// updating by the key's columns, and returns the row's key. Values are
// taken as JSON carries them and as Get returns them: a string as
// PostgreSQL's input reads it, numbers, booleans, nil; base64 for bytea;
// any JSON value for json; a JSON array for an array; also time.Time and
// []byte. Then Redis is made to agree: on a cache with a change feed Put
// waits until the feed has applied the commit (a Get after Put reads the
// new value) or returns ErrNotApplied after WriteWait; on a cache without
// one, Put invalidates the key. A row PostgreSQL refuses is a *RowError.
func (c *Client) Put(ctx context.Context, name string, row map[string]any) (string, error) {
	return c.e.Put(ctx, name, row)
}

// PutBehind writes row to Redis at once and queues it for PostgreSQL; it
// returns the row's key once Redis acknowledged both. The row must hold
// the key's columns and every column the cached value shows; it takes the
// values Put takes. The daemon (cachesync run) applies the queue to the
// table in order; Redis must keep its data through a crash (appendonly
// yes) for the queue to be durable.
func (c *Client) PutBehind(ctx context.Context, name string, row map[string]any) (string, error) {
	return c.e.PutBehind(ctx, name, row)
}

// Invalidate removes key from cache name; a fill in progress for it loses.
// A complete cache (a change feed and no TTL: every row has its key) stays
// complete: the key is loaded again at once, so an invalidation there
// means "reload this key from the table".
func (c *Client) Invalidate(ctx context.Context, name, key string) error {
	return c.e.Invalidate(ctx, name, key)
}
