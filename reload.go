package cachesync

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/binding"
	"github.com/cachesync/cachesync/config"
)

// Reloaded counts what a Reload did with its keys.
type Reloaded struct {
	Written  int // values written: filled, or overwritten under a lease
	Kept     int // present keys kept, their expiry recorded anew or their TTL renewed
	NotFound int // keys whose row is gone: deleted, or marked "not found"
	Skipped  int // keys whose lease another fill held, or that changed meanwhile
	// Wrote tells, per key, whether its value was written.
	Wrote []bool
}

// Reload brings keys of cache name back from PostgreSQL: the refreshes
// (on expiry, ahead, scheduled) are made of it. A missing key is filled
// under a lease, like Get's fill. A present key is kept when present is
// false (only its expiry is recorded anew); when present is true it is
// reloaded too: overwritten under a lease, or, when the change feed keeps
// the cache, given a renewed TTL, since its value is the feed's and a
// reload could only bring back an older row. A key whose row is gone is
// deleted, or marked "not found" for negative_ttl (not_found: negative).
// It costs one query and two pipelined Redis round trips for all keys.
func (c *Client) Reload(ctx context.Context, name string, keys []string, present bool) (Reloaded, error) {
	done := Reloaded{Wrote: make([]bool, len(keys))}
	ca, values, err := c.parseKeys(name, keys)
	if err != nil {
		return done, err
	}
	action := binding.ClaimRecord
	switch {
	case present && ca.cfg.Sync == config.SyncChangefeed:
		action = binding.ClaimRenew
	case present:
		action = binding.ClaimLease
	}
	token := newToken()
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
	var load []int // indexes of leased keys
	for i, cl := range claimed {
		switch {
		case cl.Leased:
			load = append(load, i)
		case cl.Held:
			done.Skipped++
		default:
			done.Kept++
		}
	}
	if len(load) == 0 {
		return done, nil
	}
	want := make([][]string, len(load))
	for j, i := range load {
		want[j] = values[i]
	}
	rows, err := ca.loader.LoadRows(ctx, ca.table, ca.cols, ca.cfg.Template.Columns(), want, true)
	if err != nil {
		c.release(ctx, keys, load, token)
		return done, fmt.Errorf("cache %q: postgres %w: %w", name, ErrUnavailable, err)
	}
	byKey := make(map[string][][]byte, len(rows))
	for _, row := range rows {
		if k, err := ca.b.Key(row); err == nil {
			byKey[k] = row
		}
	}
	var writes []binding.Fill
	var written []int // index in keys of each write
	var release []int // leased keys whose row cannot be stored
	for _, i := range load {
		row, ok := byKey[keys[i]]
		if !ok {
			// Not among the rows by its rendering: a key spelled unlike
			// PostgreSQL prints its values ("item:01") still has its row.
			if row, err = ca.loader.LoadRow(ctx, ca.table, ca.cols, ca.cfg.Template.Columns(), values[i]); err != nil {
				c.release(ctx, keys, load, token)
				return done, fmt.Errorf("cache %q: postgres %w: %w", name, ErrUnavailable, err)
			}
		}
		var v *binding.Value
		if row != nil {
			enc, err := ca.encode(row)
			if err != nil {
				c.opts.Logger.Warn("reload: row cannot be stored; key left alone", "cache", name, "key", keys[i], "err", err)
				release = append(release, i)
				continue
			}
			v = &enc
		}
		writes = append(writes, ca.b.Fill(keys[i], v, claimed[i].Present, ca.cfg.NotFound == config.NotFoundNegative, ca.cfg.NegativeTTL))
		written = append(written, i)
	}
	if len(release) > 0 {
		c.release(ctx, keys, release, token)
		done.Skipped += len(release)
	}
	wrote, err := ca.b.ExecFills(ctx, c.redis, token, writes, dueBy)
	if err != nil {
		return done, fmt.Errorf("cache %q: redis %w: write: %w", name, ErrUnavailable, err)
	}
	for j, n := range wrote {
		i := written[j]
		switch {
		case n == 1 && writes[j].Deletes():
			done.NotFound++
		case n == 1:
			done.Written++
			done.Wrote[i] = true
		default:
			done.Skipped++
		}
	}
	return done, nil
}

// release gives up the leases of keys[i] for i in idx.
func (c *Client) release(ctx context.Context, keys []string, idx []int, token string) {
	cmds := make(rueidis.Commands, len(idx))
	for j, i := range idx {
		cmds[j] = binding.ReleaseCmd(c.redis.B(), keys[i], token)
	}
	c.redis.DoMulti(context.WithoutCancel(ctx), cmds...)
}

// KeysWhere returns the keys of cache name whose rows match where, a SQL
// condition over its table: what a scheduled reload with where: reloads.
func (c *Client) KeysWhere(ctx context.Context, name, where string) ([]string, error) {
	ca, ok := c.caches[name]
	if !ok {
		return nil, fmt.Errorf("cache %q: %w", name, ErrUnknownCache)
	}
	sql := fmt.Sprintf("SELECT %s FROM %s WHERE %s", strings.Join(quoteAll(ca.cfg.Template.Columns()), ", "), ca.table.Quoted, where)
	var keys []string
	conn, err := ca.loader.Pool().Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("cache %q: postgres %w: %w", name, ErrUnavailable, err)
	}
	defer conn.Release()
	res := conn.Conn().PgConn().ExecParams(ctx, sql, nil, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, fmt.Errorf("cache %q: where %q: %w", name, where, res.Err)
	}
	for _, row := range res.Rows {
		k, err := ca.cfg.Template.Render(nil, row)
		if err != nil {
			return nil, fmt.Errorf("cache %q: where %q: %w", name, where, err)
		}
		keys = append(keys, string(k))
	}
	return keys, nil
}
