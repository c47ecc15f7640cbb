package engine

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/binding"
)

// Invalidate removes key from cache name; a fill in progress for it loses.
//
// A complete cache (a change feed and no TTL: every row has its key) stays
// complete: the key is loaded again at once, by a fill like Get's, so an
// invalidation there means "reload this key from the table".
//
// A key of the cache's spelled otherwise than the change feed writes its
// row's key ("x:01", left by an older version) is removed too.
func (c *Engine) Invalidate(ctx context.Context, name, key string) error {
	ca, ok := c.caches[name]
	if !ok {
		return fmt.Errorf("cache %q: %w", name, ErrUnknownCache)
	}
	_, err := ca.b.ParseKey(key)
	if err != nil && !ca.b.Owns(key) {
		return fmt.Errorf("cache %q: %w: %w", name, ErrBadKey, err)
	}
	// A row's key that held a value leaves its exists marker (with a
	// feed); another spelling is no row's, and the feed never writes it.
	spelled := err == nil
	cmds := func() []rueidis.Completed {
		if spelled {
			return ca.b.AppendDrop(nil, c.redis.B(), key)
		}
		return ca.b.AppendInvalidate(nil, c.redis.B(), key)
	}
	if err := c.remove(ctx, cmds); err != nil {
		return fmt.Errorf("cache %q: redis %w: %w", name, ErrUnavailable, err)
	}
	if !spelled {
		return nil // another spelling of a row's key: its row has its own
	}
	if err := c.refill(ctx, ca, key); err != nil {
		return err
	}
	return c.l1Sync(ctx, ca, key)
}

// refill loads key again after its invalidation when ca is complete.
func (c *Engine) refill(ctx context.Context, ca *cache, key string) error {
	if !ca.cfg.Complete() {
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

// invalidate removes key with its companions and its expiry record.
func (c *Engine) invalidate(ctx context.Context, ca *cache, key string) error {
	return c.remove(ctx, func() []rueidis.Completed { return ca.b.AppendInvalidate(nil, c.redis.B(), key) })
}

// remove sends the commands of a key's removal, those cmds builds, all of
// them again while a Cluster slot's move refuses one (it did not run; the
// others may run twice).
func (c *Engine) remove(ctx context.Context, cmds func() []rueidis.Completed) error {
	return binding.UntilMoved(ctx, func() error {
		for _, r := range c.redis.DoMulti(ctx, cmds()...) {
			if err := r.Error(); err != nil {
				return err
			}
		}
		return nil
	})
}
