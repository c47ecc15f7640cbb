package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/pgsource"
)

// Reloaded counts what a Reload did with its keys.
type Reloaded struct {
	Written  int // values written: filled, or overwritten under a lease
	Kept     int // present keys kept, their expiry recorded anew or their TTL renewed
	NotFound int // keys whose row is gone: deleted, or marked "not found" (or a hash of NULLs: deleted)
	Skipped  int // keys whose lease another fill held, or that changed meanwhile
	// Wrote tells, per key, whether its value was written.
	Wrote []bool
}

// Reload brings keys of cache name back from PostgreSQL: the refreshes
// (on expiry, ahead, scheduled) are made of it. A missing key is filled
// (loaded and written unless a change came meanwhile). A present key is
// kept when present is false (only its expiry is recorded anew); when
// present is true it is reloaded too: overwritten, or, when the change feed
// keeps the cache, given a renewed TTL, since its value is the feed's and a
// reload could only bring back an older row. A key whose row is gone is
// deleted, or marked "not found" for negative_ttl (not_found: negative).
//
// On one Redis node it is a watched reload (binding/watch.go): one query
// and a few Redis round trips for all keys. Keys that changed meanwhile
// (with the others of their transaction), and on a Redis Cluster or in a
// write-behind cache all keys, are reloaded under leases instead, as Get's
// fill does.
func (c *Engine) Reload(ctx context.Context, name string, keys []string, present bool) (Reloaded, error) {
	ca, values, bad, err := c.parseKeys(name, keys)
	if err != nil {
		return Reloaded{Wrote: make([]bool, len(keys))}, err
	}
	if len(bad) == 0 {
		return c.reload(ctx, ca, keys, values, present)
	}
	// A key of the cache's that spells a row's key otherwise (left by an
	// older version) is a stale copy: removed, with its expiry record, as
	// an invalidation removes a key. Any other is not the cache's: left.
	var good []int // indexes of the keys to reload
	var goodKeys []string
	var goodValues [][]string
	removed := 0
	for i, key := range keys {
		switch {
		case values[i] != nil:
			good, goodKeys, goodValues = append(good, i), append(goodKeys, key), append(goodValues, values[i])
		case ca.b.Owns(key):
			if err := c.invalidate(ctx, ca, key); err != nil {
				return Reloaded{Wrote: make([]bool, len(keys))}, fmt.Errorf("cache %q: redis %w: %w", name, ErrUnavailable, err)
			}
			removed++
		}
	}
	c.opts.Logger.Warn("reload: skipped keys that are not the cache's spelling of a row's key", "cache", name, "keys", len(bad), "removed", removed, "first", keys[bad[0]])
	done, err := c.reload(ctx, ca, goodKeys, goodValues, present)
	wrote := make([]bool, len(keys))
	for j, i := range good {
		wrote[i] = done.Wrote[j]
	}
	done.Wrote = wrote
	done.Skipped += len(bad)
	return done, err
}

// reload is Reload of keys that are the cache's, with their values.
func (c *Engine) reload(ctx context.Context, ca *cache, keys []string, values [][]string, present bool) (Reloaded, error) {
	action := binding.ClaimRecord
	switch {
	case present && ca.cfg.Sync == config.SyncChangefeed:
		action = binding.ClaimRenew
	case present:
		action = binding.ClaimLease
	}
	if c.redis.Mode() == rueidis.ClientModeCluster || ca.b.Queued {
		// (A write-behind cache's fills check its pending marks in their
		// script, which a watched reload could not.)
		return c.reloadLeased(ctx, ca, keys, values, action, present)
	}
	done, refused, err := c.reloadWatched(ctx, ca, keys, values, action)
	if err != nil || len(refused) == 0 {
		return done, err
	}
	// Leases settle which write wins for keys that changed since watched.
	retry, retryValues := make([]string, len(refused)), make([][]string, len(refused))
	for j, i := range refused {
		retry[j], retryValues[j] = keys[i], values[i]
	}
	more, err := c.reloadLeased(ctx, ca, retry, retryValues, action, present)
	for j, i := range refused {
		done.Wrote[i] = more.Wrote[j]
	}
	done.Written += more.Written
	done.Kept += more.Kept
	done.NotFound += more.NotFound
	done.Skipped += more.Skipped
	return done, err
}

// reloadWatched is Reload on one Redis node: keys watched, then loaded,
// then written a transaction at a time. It returns the indexes of the keys
// of refused transactions, which it left alone and did not count.
func (c *Engine) reloadWatched(ctx context.Context, ca *cache, keys []string, values [][]string, action string) (Reloaded, []int, error) {
	done := Reloaded{Wrote: make([]bool, len(keys))}
	claimed, w, err := ca.b.Watch(ctx, c.redis, keys, action, time.Now())
	if err != nil {
		return done, nil, fmt.Errorf("cache %q: redis %w: %w", ca.cfg.Name, ErrUnavailable, err)
	}
	defer w.Close(ctx)
	fills, of, err := c.loadFills(ctx, ca, keys, values, claimed)
	if err != nil {
		return done, nil, err
	}
	refused, err := w.Exec(ctx, fills, of)
	if err != nil {
		return done, nil, fmt.Errorf("cache %q: redis %w: %w", ca.cfg.Name, ErrUnavailable, err)
	}
	done.count(claimed, fills, of, nil, refused) // what was not refused was written
	return done, refused, nil
}

// reloadLeased is Reload under leases: the keys are claimed (ExecClaims),
// the rows of those leased loaded, then written by a fill that loses to any
// change since the claim.
func (c *Engine) reloadLeased(ctx context.Context, ca *cache, keys []string, values [][]string, action string, present bool) (Reloaded, error) {
	done := Reloaded{Wrote: make([]bool, len(keys))}
	name := ca.cfg.Name
	token := binding.NewToken()
	now, lease := time.Now(), c.leaseTTL(ca)
	// What this reload may take out of the expiry record: what was due.
	dueBy := now
	if present && ca.cfg.Refresh == config.RefreshAhead {
		dueBy = now.Add(ca.cfg.Lead())
	}
	claimed, err := ca.b.ExecClaims(ctx, c.redis, keys, action, token, lease, now, dueBy)
	if err != nil {
		// Leases some key may hold end with their short TTL.
		return done, fmt.Errorf("cache %q: redis %w: claim: %w", name, ErrUnavailable, err)
	}
	fills, of, err := c.loadFills(ctx, ca, keys, values, claimed)
	// Give up the leases of keys not to be written: all of them on an error.
	var unwritten []int
	j := 0 // of ascends
	for i, cl := range claimed {
		switch {
		case !cl.Load:
		case err == nil && j < len(of) && of[j] == i:
			j++
		default:
			unwritten = append(unwritten, i)
		}
	}
	if len(unwritten) > 0 {
		c.release(ctx, keys, unwritten, token)
	}
	if err != nil {
		return done, err
	}
	wrote, err := ca.b.ExecFills(ctx, c.redis, token, fills, dueBy)
	if err != nil {
		return done, fmt.Errorf("cache %q: redis %w: write: %w", name, ErrUnavailable, err)
	}
	done.count(claimed, fills, of, wrote, nil)
	return done, nil
}

// loadFills reads the rows of the keys claimed to load, in one query, and
// returns their writes, with the index in keys of each (ascending). A key
// whose row cannot be stored is logged and left alone.
func (c *Engine) loadFills(ctx context.Context, ca *cache, keys []string, values [][]string, claimed []binding.Claimed) ([]binding.Fill, []int, error) {
	name := ca.cfg.Name
	var load []int
	for i, cl := range claimed {
		if cl.Load {
			load = append(load, i)
		}
	}
	if len(load) == 0 {
		return nil, nil, nil
	}
	want := make([][]string, len(load))
	for j, i := range load {
		want[j] = values[i]
	}
	rows, err := ca.loader.LoadRows(ctx, ca.table, ca.cols, ca.cfg.Template.Columns(), want, true)
	if pgsource.RowLocked(err) {
		// A writer holds one of the rows: its commit ends up in Redis by
		// the feed or by its own invalidation; the keys are skipped now
		// (a refresh tries them again while they are due).
		c.opts.Logger.Debug("reload: a row is held by a writer; keys skipped", "cache", name, "keys", len(load), "err", err)
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("cache %q: %w", name, pgFailure(err))
	}
	byKey := make(map[string][][]byte, len(rows))
	for _, row := range rows {
		if k, err := ca.b.Key(row); err == nil {
			byKey[k] = row
		}
	}
	var fills []binding.Fill
	var of []int
	for _, i := range load {
		// A row PostgreSQL found by a value equal to but spelled otherwise
		// than the key's (1.50 for 1.5) is not among them: not its key.
		row := byKey[keys[i]]
		var v *binding.Value
		// (Where ParseKey cannot tell a row's key from another spelling
		// of it, no "not found" marker: the row may be there.)
		negative := ca.cfg.NotFound == config.NotFoundNegative && ca.b.ExactKeys()
		if row != nil {
			enc, err := ca.b.Encode(row)
			switch {
			case errors.Is(err, binding.ErrNoValue):
				// A hash of NULLs or a NULL string is no key: removed as
				// the feed removes it, with no "not found" marker (the
				// row is there).
				negative = false
			case err != nil:
				c.opts.Logger.Warn("reload: row cannot be stored; key left alone", "cache", name, "key", keys[i], "err", err)
				continue
			default:
				v = &enc
			}
		}
		fills = append(fills, ca.b.Fill(keys[i], v, claimed[i].Present, negative, ca.cfg.NegativeTTL))
		of = append(of, i)
	}
	return fills, of, nil
}

// count adds to r what a reload did with each key but those in skip (both
// ascending): claimed, then fills[j] of keys[of[j]] written (wrote[j] 1, or
// wrote nil) or lost (0).
func (r *Reloaded) count(claimed []binding.Claimed, fills []binding.Fill, of []int, wrote []int64, skip []int) {
	j, s := 0, 0
	for i, cl := range claimed {
		filled := j < len(of) && of[j] == i
		if s < len(skip) && skip[s] == i {
			s++
			if filled {
				j++
			}
			continue
		}
		written := filled && (wrote == nil || wrote[j] == 1)
		switch {
		case written && fills[j].Deletes():
			r.NotFound++
		case written:
			r.Written++
			r.Wrote[i] = true
		case filled, cl.Load, cl.Held: // lost, not storable, or another's
			r.Skipped++
		default:
			r.Kept++
		}
		if filled {
			j++
		}
	}
}

// release gives up the leases of keys[i] for i in idx.
func (c *Engine) release(ctx context.Context, keys []string, idx []int, token string) {
	cmds := make(rueidis.Commands, len(idx))
	for j, i := range idx {
		cmds[j] = binding.CompanionsOf(keys[i]).ReleaseCmd(c.redis.B(), token)
	}
	c.redis.DoMulti(context.WithoutCancel(ctx), cmds...)
}

// KeysWhere returns the keys of cache name whose rows match where, a SQL
// condition over its table: what a scheduled reload with where: reloads.
func (c *Engine) KeysWhere(ctx context.Context, name, where string) ([]string, error) {
	ca, ok := c.caches[name]
	if !ok {
		return nil, fmt.Errorf("cache %q: %w", name, ErrUnknownCache)
	}
	keys, err := c.keysOf(ctx, ca, "WHERE "+where)
	if err != nil {
		return nil, fmt.Errorf("cache %q: where %q: %w", name, where, err)
	}
	return keys, nil
}

// smallTable is the estimated row count up to which SampleKeys orders the
// whole table by random(); beyond, it samples pages (TABLESAMPLE SYSTEM).
const smallTable = 10_000

// SampleKeys returns the keys of about n random rows of cache name's
// table (fewer when it has fewer), reading a small part of a big table:
// whole pages chosen at random (TABLESAMPLE SYSTEM), 10 at least, so a
// sample's rows come in clusters of a page. The size comes from the
// planner's estimates (a partitioned table's, summed over its
// partitions), or from the table's size on disk before any ANALYZE.
func (c *Engine) SampleKeys(ctx context.Context, name string, n int) ([]string, error) {
	ca, ok := c.caches[name]
	if !ok {
		return nil, fmt.Errorf("cache %q: %w", name, ErrUnknownCache)
	}
	var rows, pages float64
	err := ca.loader.Pool().QueryRow(ctx, `SELECT coalesce(sum(greatest(c.reltuples, 0)), 0),
		coalesce(sum(pg_relation_size(c.oid)), 0) / current_setting('block_size')::float8
		FROM pg_partition_tree($1::regclass) t JOIN pg_class c ON c.oid = t.relid`, ca.table.OID).Scan(&rows, &pages)
	if err != nil {
		return nil, fmt.Errorf("cache %q: postgres %w: %w", name, ErrUnavailable, err)
	}
	if rows == 0 {
		rows = pages * 50 // never analyzed: a guess of 50 rows a page
	}
	tail := fmt.Sprintf("ORDER BY random() LIMIT %d", n)
	if rows > smallTable {
		// Twice the share of rows wanted, for their spread over pages,
		// and 10 pages at least (fewer would often be none).
		share := max(200*float64(n)/rows, 1000/max(pages, 1))
		tail = fmt.Sprintf("TABLESAMPLE SYSTEM (%g) LIMIT %d", min(100, share), n)
	}
	keys, err := c.keysOf(ctx, ca, tail)
	if err != nil {
		return nil, fmt.Errorf("cache %q: sample: %w", name, err)
	}
	return keys, nil
}

// keysOf returns the keys of the rows of SELECT key columns FROM the
// cache's table, then tail.
func (c *Engine) keysOf(ctx context.Context, ca *cache, tail string) ([]string, error) {
	sql := fmt.Sprintf("SELECT %s FROM %s %s", strings.Join(quoteAll(ca.cfg.Template.Columns()), ", "), ca.table.Quoted, tail)
	conn, err := ca.loader.Pool().Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres %w: %w", ErrUnavailable, err)
	}
	defer conn.Release()
	res := conn.Conn().PgConn().ExecParams(ctx, sql, nil, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, res.Err
	}
	keys := make([]string, 0, len(res.Rows))
	for _, row := range res.Rows {
		k, err := ca.cfg.Template.Render(nil, row)
		if err != nil {
			return nil, err
		}
		keys = append(keys, string(k))
	}
	return keys, nil
}
