package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/binding"
)

// Peek returns what Redis holds for keys of cache name, in one pipeline,
// as Get would return each (a hash as a JSON object of its fields), and nil
// for a missing key. It fills nothing: what a consistency check reads.
func (c *Engine) Peek(ctx context.Context, name string, keys []string) ([][]byte, error) {
	ca, ok := c.caches[name]
	if !ok {
		return nil, fmt.Errorf("cache %q: %w", name, ErrUnknownCache)
	}
	out := make([][]byte, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	if ca.cfg.Format != binding.FormatHash {
		vals, err := rueidis.MGet(c.redis, ctx, keys) // one MGET per slot on a Cluster
		if err != nil {
			return nil, fmt.Errorf("cache %q: redis %w: %w", name, ErrUnavailable, err)
		}
		for i, k := range keys {
			v := vals[k]
			if b, err := v.AsBytes(); err == nil {
				out[i] = b
			}
		}
		return out, nil
	}
	cmds := make(rueidis.Commands, len(keys))
	for i, k := range keys {
		cmds[i] = c.redis.B().Hgetall().Key(k).Build()
	}
	for i, r := range c.redis.DoMulti(ctx, cmds...) {
		m, err := r.AsStrMap()
		if e, ok := rueidis.IsRedisErr(err); ok && strings.HasPrefix(e.Error(), "WRONGTYPE") {
			out[i] = []byte("(not a hash)") // differs from every row's value: reported
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("cache %q: redis %w: %w", name, ErrUnavailable, err)
		}
		if len(m) > 0 {
			out[i], _ = json.Marshal(m)
		}
	}
	return out, nil
}

// Want returns what Redis should hold for keys of cache name, read from
// PostgreSQL now in one query: the value as Get returns it, or nil for a
// key whose row does not exist (or cannot be stored). With forShare the
// rows are read FOR SHARE (see pgsource.Loader.LoadRows): no commit the
// change feed may already have applied is missed; it needs the UPDATE
// privilege and briefly holds up writers of those rows.
func (c *Engine) Want(ctx context.Context, name string, keys []string, forShare bool) ([][]byte, error) {
	ca, values, _, err := c.parseKeys(name, keys)
	if err != nil {
		return nil, err
	}
	values = slices.DeleteFunc(values, func(v []string) bool { return v == nil }) // no row is any other key's
	rows, err := ca.loader.LoadRows(ctx, ca.table, ca.cols, ca.cfg.Template.Columns(), values, forShare)
	if err != nil {
		return nil, fmt.Errorf("cache %q: postgres %w: %w", name, ErrUnavailable, err)
	}
	byKey := make(map[string][]byte, len(rows))
	for _, row := range rows {
		if k, v, ok := ca.stored(row); ok {
			byKey[k] = v
		}
	}
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = byKey[k]
	}
	return out, nil
}

// parseKeys returns cache name and the column values of each key: nil for
// a key that is none of the cache's rows' (ParseKey), such as another
// spelling of a row's key that an older version wrote, listed in bad.
func (c *Engine) parseKeys(name string, keys []string) (ca *cache, values [][]string, bad []int, err error) {
	ca, ok := c.caches[name]
	if !ok {
		return nil, nil, nil, fmt.Errorf("cache %q: %w", name, ErrUnknownCache)
	}
	values = make([][]string, len(keys))
	for i, key := range keys {
		if values[i], err = ca.b.ParseKey(key); err != nil {
			bad = append(bad, i)
		}
	}
	return ca, values, bad, nil
}

// EachRow calls fn with the key and value (as Get returns it) of every row
// of cache name's table, streamed in one query: what a full consistency
// check compares Redis with. A row that cannot be keyed or stored is
// skipped. fn must not keep value; an error from fn ends the stream.
func (c *Engine) EachRow(ctx context.Context, name string, fn func(key string, value []byte) error) error {
	ca, ok := c.caches[name]
	if !ok {
		return fmt.Errorf("cache %q: %w", name, ErrUnknownCache)
	}
	rows, err := ca.loader.Reads().Query(ctx, "SELECT "+strings.Join(quoteAll(ca.cols), ", ")+" FROM "+ca.table.Quoted, pgx.QueryResultFormats{pgx.TextFormatCode})
	if err != nil {
		return fmt.Errorf("cache %q: postgres %w: %w", name, ErrUnavailable, err)
	}
	defer rows.Close()
	for rows.Next() {
		if key, v, ok := ca.stored(rows.RawValues()); ok {
			if err := fn(key, v); err != nil {
				return err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("cache %q: postgres %w: %w", name, ErrUnavailable, err)
	}
	return nil
}

// stored returns the key of row and the value Redis holds for it, as Get
// returns it; ok is false for a row with no key or no value to store.
func (ca *cache) stored(row [][]byte) (key string, value []byte, ok bool) {
	key, err := ca.b.Key(row)
	if err != nil {
		return "", nil, false
	}
	v, err := ca.b.Encode(row)
	if err != nil {
		return "", nil, false
	}
	return key, v.Result(ca.cfg.Format), true
}
