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
// Redis Cluster primary CLUSTER SLOTS names (replicas, and nodes that
// serve no slot, hold no key of their own), also one the client has not
// learned of yet.
func EachPrimary(ctx context.Context, client rueidis.Client, fn func(addr string, node rueidis.Client) error) error {
	if client.Mode() != rueidis.ClientModeCluster {
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
	routes, err := ReadRoutes(ctx, client)
	if err != nil {
		return err
	}
	for n, addr := range routes.addr {
		node, err := reach(ctx, client, addr, routes.slot[n])
		if err != nil {
			return err
		}
		if err := fn(addr, node); err != nil {
			return err
		}
	}
	return nil
}

// reach returns the client's node addr, which serves slot. A client learns
// of a primary added by resharding only when it rescans the topology
// (every few seconds) or is redirected there: a read of a key of slot
// (OBJECT ENCODING, which publishes no keymiss event) redirects it.
func reach(ctx context.Context, client rueidis.Client, addr string, slot uint16) (rueidis.Client, error) {
	key := "{" + slotTags()[slot] + "}"
	// (The node asked may not know of the move yet: a few tries.)
	for wait := time.Millisecond; ; wait *= 2 {
		if node, ok := client.Nodes()[addr]; ok {
			return node, nil
		}
		if wait > time.Second {
			return nil, fmt.Errorf("cluster slots names primary %s, which the client is not redirected to", addr)
		}
		if err := client.Do(ctx, client.B().ObjectEncoding().Key(key).Build()).Error(); err != nil && !rueidis.IsRedisNil(err) {
			return nil, fmt.Errorf("reach %s: %w", addr, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// ScanTemplate is scanKeys for the keys of template t that owns accepts
// (nil: those t parses).
func ScanTemplate(ctx context.Context, client rueidis.Client, t *Template, owns func(key string) bool, fn func(keys []string) error) error {
	if owns == nil {
		owns = func(k string) bool { _, ok := t.Parse(k); return ok }
	}
	return scanKeys(ctx, client, t.Pattern(), owns, fn)
}
