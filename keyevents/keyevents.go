// Package keyevents turns on Redis keyspace event notifications and listens
// to one event on every primary, resubscribing after a disconnection: what
// the keymiss listener and the expiry refresher stand on. Redis publishes
// these events at most once and only to whoever listens at that moment.
package keyevents

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// enabling serializes Enable: two features adding their flags at once
// would each write back the other's old value.
var enabling sync.Mutex

// Enable makes every Redis primary publish the events flags names (e.g.
// "Ex" for expired keys; see notify-keyspace-events), adding them with
// CONFIG SET. When Redis refuses, the error says exactly what to configure
// for feature (the config option that needs it).
func Enable(ctx context.Context, redis rueidis.Client, flags, feature string, log *slog.Logger) error {
	enabling.Lock()
	defer enabling.Unlock()
	for addr, node := range redis.Nodes() {
		m, err := node.Do(ctx, node.B().ConfigGet().Parameter("notify-keyspace-events").Build()).AsStrMap()
		if err != nil {
			return fmt.Errorf("redis %s: read notify-keyspace-events: %w; set it to include %s (e.g. notify-keyspace-events %s) for %s", addr, err, strings.Join(strings.Split(flags, ""), " and "), flags, feature)
		}
		have := m["notify-keyspace-events"]
		want := have
		for _, f := range flags {
			// A stands for every key event class but m (keymiss) and n.
			if !strings.ContainsRune(want, f) && !(f != 'm' && f != 'n' && f != 'E' && f != 'K' && strings.ContainsRune(want, 'A')) {
				want += string(f)
			}
		}
		if want == have {
			continue
		}
		if err := node.Do(ctx, node.B().ConfigSet().ParameterValue().ParameterValue("notify-keyspace-events", want).Build()).Error(); err != nil {
			return fmt.Errorf("redis %s: notify-keyspace-events is %q and cachesync may not change it (%v): configure notify-keyspace-events %q for %s", addr, have, err, want, feature)
		}
		log.Info("enabled keyspace events", "redis", addr, "notify-keyspace-events", want, "for", feature)
	}
	return nil
}

// Channel is the channel of event in database db, e.g. __keyevent@0__:expired.
func Channel(db int, event string) string { return fmt.Sprintf("__keyevent@%d__:%s", db, event) }

// Listen calls fn with the key of every message on channel from every
// primary until ctx is done, resubscribing after a disconnection. fn runs
// on the subscription's connection: it must not block.
func Listen(ctx context.Context, redis rueidis.Client, channel string, log *slog.Logger, fn func(key string)) {
	var wg sync.WaitGroup
	for addr, node := range redis.Nodes() {
		wg.Go(func() { listen(ctx, addr, node, channel, log, fn) })
	}
	wg.Wait()
}

func listen(ctx context.Context, addr string, node rueidis.Client, channel string, log *slog.Logger, fn func(string)) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		// A connection of its own: Redis 7.0 may put an event caused by a
		// command (a key found expired) in the middle of that command's
		// reply when both share a connection.
		conn, release := node.Dedicate()
		err := conn.Receive(ctx, node.B().Subscribe().Channel(channel).Build(), func(m rueidis.PubSubMessage) { fn(m.Message) })
		release()
		if ctx.Err() != nil {
			return
		}
		log.Warn("subscription ended; resubscribing", "redis", addr, "channel", channel, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}
