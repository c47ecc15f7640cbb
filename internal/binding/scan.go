package binding

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/rueidis"
)

// scanKeys calls fn with the keys that match pattern and that owns accepts,
// a SCAN page at a time, on every primary (a replica holds its primary's
// keys). SCAN returns a key at least once: it may come twice.
func scanKeys(ctx context.Context, client rueidis.Client, pattern string, owns func(key string) bool, fn func(keys []string) error) error {
	return EachPrimary(ctx, client, func(addr string, node rueidis.Client) error {
		var cursor uint64
		for {
			e, err := node.Do(ctx, node.B().Scan().Cursor(cursor).Match(pattern).Count(1000).Build()).AsScanEntry()
			if err != nil {
				return fmt.Errorf("scan %s: %w", addr, err)
			}
			keys := e.Elements[:0]
			for _, k := range e.Elements {
				if owns(k) {
					keys = append(keys, k)
				}
			}
			if len(keys) > 0 {
				if err := fn(keys); err != nil {
					return err
				}
			}
			if cursor = e.Cursor; cursor == 0 {
				return nil
			}
		}
	})
}

// EachPrimary calls fn with each primary of client: the one node, or each
// Redis Cluster primary (replicas are skipped).
func EachPrimary(ctx context.Context, client rueidis.Client, fn func(addr string, node rueidis.Client) error) error {
	if err := learnPrimaries(ctx, client); err != nil {
		return err
	}
	for addr, node := range client.Nodes() {
		role, err := node.Do(ctx, node.B().Role().Build()).ToArray()
		if err != nil {
			return fmt.Errorf("role of %s: %w", addr, err)
		}
		if r, _ := role[0].ToString(); r != "master" {
			continue
		}
		if err := fn(addr, node); err != nil {
			return err
		}
	}
	return nil
}

// learnPrimaries makes a Redis Cluster client know every primary CLUSTER
// SLOTS names. A client learns of a primary added by resharding only when
// it rescans the topology (every few seconds) or is redirected there: a
// read of a key in one of the primary's slots (OBJECT ENCODING, which
// publishes no keymiss event) redirects it.
func learnPrimaries(ctx context.Context, client rueidis.Client) error {
	if client.Mode() != rueidis.ClientModeCluster {
		return nil
	}
	routes, err := ReadRoutes(ctx, client)
	if err != nil {
		return err
	}
	for n, addr := range routes.addr {
		key := "{" + slotTags()[routes.fence[n]] + "}"
		// (The node asked may not know of the move yet: a few tries.)
		for wait := time.Millisecond; ; wait *= 2 {
			if _, ok := client.Nodes()[addr]; ok {
				break
			}
			if wait > time.Second {
				return fmt.Errorf("cluster slots names primary %s, which the client is not redirected to", addr)
			}
			if err := client.Do(ctx, client.B().ObjectEncoding().Key(key).Build()).Error(); err != nil && !rueidis.IsRedisNil(err) {
				return fmt.Errorf("reach %s: %w", addr, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		}
	}
	return nil
}

// ScanTemplate is scanKeys for the keys of template t that owns accepts
// (nil: those t parses).
func ScanTemplate(ctx context.Context, client rueidis.Client, t *Template, owns func(key string) bool, fn func(keys []string) error) error {
	if owns == nil {
		owns = func(k string) bool { _, ok := t.Parse(k); return ok }
	}
	return scanKeys(ctx, client, t.Pattern(), owns, fn)
}
