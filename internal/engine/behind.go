package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/pgtext"
)

// Write-behind: PutBehind writes the value to Redis, appends the row to the
// cache's Redis Stream and marks the key pending in one Lua script;
// the drainer (run by the daemon, internal/drain) applies the stream to PostgreSQL.

// ErrNotBehind reports PutBehind on a cache without writes: behind.
var ErrNotBehind = errors.New("the cache does not take write-behind (writes: behind)")

// PutBehind writes row to Redis at once and queues it for PostgreSQL; it
// returns the row's key once Redis acknowledged both. The row must hold the
// key's columns and every column the cached value shows; it takes the
// values Put takes (input.go). Until the drainer applies it, the key holds
// the values as given (a timestamp, say, as written); once applied, the
// row as PostgreSQL stored it. Redis must keep its data through a crash
// (appendonly yes) for the queue to be durable.
func (c *Engine) PutBehind(ctx context.Context, name string, row map[string]any) (string, error) {
	ca, ok := c.caches[name]
	if !ok {
		return "", fmt.Errorf("cache %q: %w", name, ErrUnknownCache)
	}
	if ca.cfg.Writes != config.WritesBehind {
		return "", fmt.Errorf("cache %q: %w", name, ErrNotBehind)
	}
	if err := ca.checkRow(row); err != nil {
		return "", fmt.Errorf("cache %q: %w", name, err)
	}
	for _, col := range ca.cols {
		if _, ok := row[col]; !ok {
			return "", fmt.Errorf("cache %q: %w: write-behind needs column %q (the cached value shows it)", name, ErrBadRow, col)
		}
	}
	// The queued row: each column's input text, as a JSON string (json and
	// jsonb embedded), which json_populate_recordset converts as its
	// column's input function would.
	cols := make([]string, 0, len(row))
	for col := range row {
		cols = append(cols, col)
	}
	slices.Sort(cols)
	inputs := make(map[string][]byte, len(row))
	rowJSON := []byte{'{'}
	for i, name := range cols {
		col, _ := ca.table.Column(name) // checkRow checked it
		t, err := inputText(ca.cfg.Format, col, row[name])
		if err != nil {
			return "", fmt.Errorf("cache %q: %w: column %q: %w", ca.cfg.Name, ErrBadRow, name, err)
		}
		inputs[name] = t
		if i > 0 {
			rowJSON = append(rowJSON, ',')
		}
		rowJSON = append(pgtext.AppendJSONString(rowJSON, name), ':')
		switch {
		case t == nil:
			rowJSON = append(rowJSON, "null"...)
		case isJSON(col.TypeOID):
			if !json.Valid(t) {
				return "", fmt.Errorf("cache %q: %w: column %q is not JSON", ca.cfg.Name, ErrBadRow, name)
			}
			rowJSON = append(rowJSON, t...)
		default:
			rowJSON = pgtext.AppendJSONString(rowJSON, string(t))
		}
	}
	rowJSON = append(rowJSON, '}')
	text := make([][]byte, len(ca.cols))
	for i, col := range ca.cols {
		text[i] = inputs[col]
	}
	key, err := c.KeyOf(name, row) // the key columns as PostgreSQL prints them ("01" is 1)
	if err != nil {
		return "", err
	}
	keyValues, _ := ca.cfg.Template.Parse(key)
	for i, v := range keyValues { // the key columns, first in ca.cols
		text[i] = []byte(v)
	}
	v, err := ca.b.EncodeGiven(text)
	if err != nil {
		return "", fmt.Errorf("cache %q: %w: %w", name, ErrBadRow, err)
	}
	// (A refused script did not run: it runs again.)
	err = binding.UntilMoved(ctx, func() error {
		return c.redis.Do(ctx, ca.b.QueueCmd(c.redis.B(), key, &v, string(rowJSON), strings.Join(cols, "\x00"))).Error()
	})
	if err != nil {
		return "", fmt.Errorf("cache %q: redis %w: %w", name, ErrUnavailable, err)
	}
	if err := c.l1Sync(ctx, ca, key); err != nil {
		return key, err
	}
	return key, nil
}

// WriteBehind is one write-behind cache as its drainer (internal/drain)
// sees it.
type WriteBehind struct {
	e  *Engine
	ca *cache
}

// WriteBehinds returns the caches with writes: behind, in the config's order.
func (c *Engine) WriteBehinds() []WriteBehind {
	var out []WriteBehind
	for _, name := range c.cfg.CacheNames() {
		if ca := c.caches[name]; ca.cfg.Writes == config.WritesBehind {
			out = append(out, WriteBehind{c, ca})
		}
	}
	return out
}

// Cache returns the cache's config.
func (w WriteBehind) Cache() *config.Cache { return w.ca.cfg }

// Binding returns the cache's binding, resolved against its table.
func (w WriteBehind) Binding() *binding.Binding { return w.ca.b }

// Redis returns the engine's Redis client.
func (w WriteBehind) Redis() rueidis.Client { return w.e.redis }

// Stats returns the cache's counters.
func (w WriteBehind) Stats() *CacheStats { return w.ca.stats }

// Logger returns the engine's logger.
func (w WriteBehind) Logger() *slog.Logger { return w.e.opts.Logger }

// LockName names the cache's drain lock, one per config and cache.
func (w WriteBehind) LockName() string {
	return "cachesync drain " + w.e.cfg.Name + " " + w.ca.cfg.Name
}

// Complete tells a cache whose Redis holds a key for every row.
func (w WriteBehind) Complete() bool { return w.ca.cfg.Complete() }

// Session opens a PostgreSQL session of its own on the cache's source.
func (w WriteBehind) Session(ctx context.Context) (*pgconn.PgConn, error) {
	return w.ca.loader.Session(ctx)
}

// UpsertSQL is the statement that upserts the rows of a JSON array $1,
// each of columns cols, by the cache's key; without a change feed it
// returns the rows as stored (the columns a fill selects).
func (w WriteBehind) UpsertSQL(cols []string) (string, error) {
	sql, err := w.ca.upsertJSON(cols)
	if err != nil {
		return "", err
	}
	if w.ca.cfg.Sync != config.SyncChangefeed {
		sql += " RETURNING " + strings.Join(quoteAll(w.ca.cols), ", ")
	}
	return sql, nil
}

// Refill loads key again after its removal when the cache is complete.
func (w WriteBehind) Refill(ctx context.Context, key string) error { return w.e.refill(ctx, w.ca, key) }
