package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/pgsource"
)

// Get returns the value of key in cache name: from Redis, or on a miss from
// PostgreSQL, filling Redis. Concurrent misses of one key make one database
// query per process (singleflight) and, across processes, one per lease
// (a Redis lease on the key; the others wait for its fill). A row that does
// not exist returns ErrNotFound and is remembered for the cache's
// negative_ttl. A hash is returned as a JSON object of its fields. The
// returned bytes may be shared: do not modify them.
func (c *Engine) Get(ctx context.Context, name, key string) ([]byte, error) {
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
func (c *Engine) get(ctx context.Context, ca *cache, key string, values []string) ([]byte, error) {
	if v, ok, err := c.lookup(ctx, ca, key); err != nil || ok {
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
func (c *Engine) stale(ctx context.Context, ca *cache, key string, window time.Duration) ([]byte, bool) {
	stale := binding.CompanionsOf(key).Stale
	res := c.redis.DoMulti(ctx, c.redis.B().Get().Key(stale).Build(), c.redis.B().Pttl().Key(stale).Build())
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
func (c *Engine) Fill(ctx context.Context, name, key string) error {
	ca, values, err := c.cache(name, key)
	if err != nil {
		return err
	}
	_, err = c.fillOnce(ctx, ca, key, values)
	return err
}

// fillOnce runs one fill of key per process at a time; callers share its result.
func (c *Engine) fillOnce(ctx context.Context, ca *cache, key string, values []string) ([]byte, error) {
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

// lookup looks key up in the cache's L1, if it has one, else in Redis; ok
// is false on a miss.
func (c *Engine) lookup(ctx context.Context, ca *cache, key string) ([]byte, bool, error) {
	if ca.l1 == nil {
		return c.read(ctx, ca, key)
	}
	b := ca.l1.client.B()
	cmd, reply := b.Get().Key(key).Cache(), stringReply
	if ca.cfg.Format == binding.FormatHash {
		cmd, reply = b.Hgetall().Key(key).Cache(), hashReply
	}
	return reply(ca, ca.l1.get(ctx, cmd))
}

// read looks key up in Redis; ok is false on a miss.
func (c *Engine) read(ctx context.Context, ca *cache, key string) ([]byte, bool, error) {
	if ca.cfg.Format == binding.FormatHash {
		return hashReply(ca, c.redis.Do(ctx, c.redis.B().Hgetall().Key(key).Build()))
	}
	return stringReply(ca, c.redis.Do(ctx, c.redis.B().Get().Key(key).Build()))
}

// hashReply is the value of a hash key's HGETALL reply r.
func hashReply(ca *cache, r rueidis.RedisResult) ([]byte, bool, error) {
	m, err := r.AsStrMap()
	if err != nil {
		return nil, false, fmt.Errorf("cache %q: redis %w: %w", ca.cfg.Name, ErrUnavailable, err)
	}
	if len(m) == 0 {
		return nil, false, nil
	}
	v, _ := json.Marshal(m)
	return v, true, nil
}

// stringReply is the value of a string key's GET reply r.
func stringReply(ca *cache, r rueidis.RedisResult) ([]byte, bool, error) {
	v, err := r.AsBytes()
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
func (c *Engine) fill(ctx context.Context, ca *cache, key string, values []string) ([]byte, error) {
	rb := c.redis.B()
	token := binding.NewToken()
	wait := time.Millisecond
	leaseTTL := c.leaseTTL(ca)
	comp := binding.CompanionsOf(key)
	for {
		res := c.redis.DoMulti(ctx, comp.LeaseCmd(rb, token, leaseTTL), rb.Exists().Key(comp.Neg).Build())
		err := res[0].Error()
		if err != nil && !rueidis.IsRedisNil(err) {
			return nil, fmt.Errorf("cache %q: redis %w: %w", ca.cfg.Name, ErrUnavailable, err)
		}
		leased := err == nil
		if neg, _ := res[1].AsInt64(); neg == 1 {
			ca.stats.NegativeHits.Add(1)
			if leased {
				c.redis.Do(context.WithoutCancel(ctx), comp.ReleaseCmd(rb, token))
			}
			return nil, fmt.Errorf("cache %q: key %q: %w", ca.cfg.Name, key, ErrNotFound)
		}
		if leased {
			// Filled by someone else since our miss? Then no query is needed.
			if v, ok, err := c.read(ctx, ca, key); err != nil || ok {
				c.redis.Do(context.WithoutCancel(ctx), comp.ReleaseCmd(rb, token))
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

// leaseTTL is how long a fill of ca may hold a key's lease. A fill must end
// well within the key's shortest TTL: a feed write it raced with must still
// be there when the fill checks for it.
func (c *Engine) leaseTTL(ca *cache) time.Duration {
	if ttl := time.Duration(float64(ca.cfg.TTL) * (1 - float64(ca.cfg.TTLJitter)) / 2); ttl > 0 && ttl < c.opts.LeaseTTL {
		return max(ttl, time.Millisecond)
	}
	return c.opts.LeaseTTL
}

// load reads the row and writes it if the lease held; the value read is
// returned either way (it was current when read).
func (c *Engine) load(ctx context.Context, ca *cache, key string, values []string, token string) ([]byte, error) {
	release := func() { // the lease, when nothing is written
		c.redis.Do(context.WithoutCancel(ctx), binding.CompanionsOf(key).ReleaseCmd(c.redis.B(), token))
	}
	ca.stats.Fills.Add(1)
	row, err := ca.loader.LoadRow(ctx, ca.table, ca.cols, ca.cfg.Template.Columns(), values, true)
	if pgsource.RowLocked(err) {
		// A writer holds the row: answer with the row as committed, read
		// plainly, and cache nothing (the writer's commit may be applied
		// by the feed already, and a plain read could miss it).
		release()
		return c.loadLocked(ctx, ca, key, values)
	}
	if err != nil {
		release()
		return nil, fmt.Errorf("cache %q: key %q: %w", ca.cfg.Name, key, pgFailure(err))
	}
	if row == nil && !ca.b.ExactKeys() {
		// Another spelling of a row's key may name no row yet and one
		// later: remember nothing (ParseKey cannot tell 1.5 from 1.50).
		release()
		return nil, fmt.Errorf("cache %q: key %q: %w", ca.cfg.Name, key, ErrNotFound)
	}
	if row == nil {
		n, err := c.fillKey(ctx, ca, token, ca.b.Fill(key, nil, false, true, ca.cfg.NegativeTTL))
		if err != nil {
			return nil, fmt.Errorf("cache %q: redis %w: %w", ca.cfg.Name, ErrUnavailable, err)
		}
		if n[0] == binding.FillQueued {
			return nil, errQueued
		}
		return nil, fmt.Errorf("cache %q: key %q: %w", ca.cfg.Name, key, ErrNotFound)
	}
	if err := ca.ownKey(key, row); err != nil {
		release()
		return nil, err
	}
	v, err := ca.b.Encode(row)
	if err != nil {
		release()
		return ca.unstored(key, err)
	}
	n, err := c.fillKey(ctx, ca, token, ca.b.Fill(key, &v, false, false, 0))
	if err != nil {
		return nil, fmt.Errorf("cache %q: redis %w: %w", ca.cfg.Name, ErrUnavailable, err)
	}
	if n[0] == binding.FillQueued {
		return nil, errQueued
	}
	return v.Result(ca.cfg.Format), nil
}

// fillKey writes one key's fill (ExecFills), again while a Cluster
// slot's move refuses its script (it did not run).
func (c *Engine) fillKey(ctx context.Context, ca *cache, token string, f binding.Fill) ([]int64, error) {
	var n []int64
	err := binding.UntilMoved(ctx, func() (err error) {
		n, err = ca.b.ExecFills(ctx, c.redis, token, []binding.Fill{f}, time.Now())
		return err
	})
	return n, err
}

// loadLocked answers a Get of key, whose row a writer holds, without
// caching: with the key's queued write-behind value if there is one, else
// the row as committed.
func (c *Engine) loadLocked(ctx context.Context, ca *cache, key string, values []string) ([]byte, error) {
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
func (c *Engine) queued(ctx context.Context, ca *cache, key string) ([]byte, bool, error) {
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
