// Package keyevents turns on Redis keyspace event notifications and listens
// to one event on every node, resubscribing after a disconnection: what
// the keymiss listener and the expiry refresher stand on. Redis publishes
// these events at most once and only to whoever listens at that moment, and
// only while notify-keyspace-events has their flags: a Redis restarted
// without persistence comes back without them, and anyone may CONFIG SET
// them away. So a listener checks the flags on each node whenever its
// subscription there is (re)established and every Events.Every, and
// enables them again.
//
// The nodes are those of the client's view of the topology,
// rueidis.Client.Nodes(): the one node, or a Redis Cluster's primaries and
// their replicas. A listener compares them with the nodes it listens to
// every second (a look at the client's memory, no command): a node that
// joined is subscribed to and its flags checked as at the start; one that
// left is listened to no more (its goroutines end, and its count in
// Health.Refused is given back). A rueidis Cluster client updates that view
// when one of its commands is redirected (MOVED, ASK) or fails, when a
// connection closes, and every ClusterOption.ShardsRefreshInterval, which
// config.RedisOption sets for every client of cachesync (rueidis's default
// is never): a primary added by resharding, or a replica, is listened to
// within seconds, without a restart. Events published before that are
// lost: the refresher's expiry record still brings back the keys cachesync
// wrote, and a plain client's next miss of a key publishes another keymiss.
//
// Replicas are listened to as well. Redis publishes an expired event
// where the key expires, on its primary (a replica deletes the key when
// its primary tells it to, and publishes del), but a keymiss event on the
// node that was read: a replica too, when clients read from replicas
// (READONLY). And a replica already subscribed, with its flags on, misses
// nothing when a failover promotes it. Each costs a connection per
// listener, and its flags' checks.
package keyevents

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// DefaultEvery is how often a listener checks notify-keyspace-events on
// each node when Events.Every is not set.
const DefaultEvery = 10 * time.Second

// checkTimeout bounds one check of one node.
const checkTimeout = 5 * time.Second

// enabling serializes the checks of this process: two features adding
// their flags at once would each write back the other's old value.
var enabling sync.Mutex

// Events is what one feature listens to, and the flags that make Redis publish it.
type Events struct {
	// Channel is the channel subscribed to on every node, e.g. Channel(0, "expired").
	Channel string
	// Flags are the notify-keyspace-events flags that publish Channel's
	// events, e.g. "Ex" for expired keys.
	Flags string
	// Feature is the configuration that needs them, named in logs and
	// errors, e.g. "fill: on-miss".
	Feature string
	// Every is how often the flags are checked on each node besides
	// after every (re)subscription; DefaultEvery when zero.
	Every time.Duration
	// Health, when not nil, counts what the checks found.
	Health *Health
}

// Health counts what the checks of a listener's flags found; safe for concurrent reads.
type Health struct {
	Checks    atomic.Int64 // checks of one node's flags that got an answer
	Reenabled atomic.Int64 // times a node had lost the flags and they were enabled again
	Refused   atomic.Int64 // nodes that refuse CONFIG now: their flags cannot be checked or enabled
}

// OK reports whether every node's flags were found or enabled at its
// last check (none refuses CONFIG).
func (h *Health) OK() bool { return h.Refused.Load() == 0 }

// ensure adds to notify-keyspace-events on node what flags lacks, returning
// the value it found and the value it set ("" when nothing was missing).
func ensure(ctx context.Context, addr string, node rueidis.Client, flags, feature string) (have, set string, err error) {
	enabling.Lock()
	defer enabling.Unlock()
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	m, err := node.Do(ctx, node.B().ConfigGet().Parameter("notify-keyspace-events").Build()).AsStrMap()
	if err != nil {
		return "", "", &checkError{err: err, configure: flags, msg: fmt.Sprintf("redis %s: read notify-keyspace-events: %v; make sure it includes %s (e.g. notify-keyspace-events %s) for %s",
			addr, err, strings.Join(strings.Split(flags, ""), " and "), flags, feature)}
	}
	have = m["notify-keyspace-events"]
	want := have + missing(have, flags)
	if want == have {
		return have, "", nil
	}
	if err := node.Do(ctx, node.B().ConfigSet().ParameterValue().ParameterValue("notify-keyspace-events", want).Build()).Error(); err != nil {
		return have, "", &checkError{err: err, configure: want, msg: fmt.Sprintf("redis %s: notify-keyspace-events is %q and cachesync may not change it (%v): configure notify-keyspace-events %q for %s",
			addr, have, err, want, feature)}
	}
	return have, want, nil
}

// missing returns the flags of flags that have does not cover.
func missing(have, flags string) string {
	var out []rune
	for _, f := range flags {
		// A stands for every key event class but m (keymiss) and n (new).
		if strings.ContainsRune(have, f) || strings.ContainsRune(string(out), f) ||
			f != 'm' && f != 'n' && f != 'E' && f != 'K' && strings.ContainsRune(have, 'A') {
			continue
		}
		out = append(out, f)
	}
	return string(out)
}

// checkError is a failed check: its message says what to configure, and
// it unwraps to the Redis or connection error.
type checkError struct {
	err       error
	configure string // the notify-keyspace-events value to configure by hand
	msg       string
}

func (e *checkError) Error() string { return e.msg }
func (e *checkError) Unwrap() error { return e.err }

// refused reports whether err is Redis's refusal (an ACL's NOPERM, an
// unknown or refused CONFIG), not a connection's failure or a node that is
// not ready yet.
func refused(err error) bool {
	var re *rueidis.RedisError
	return errors.As(err, &re) && !re.IsNil() && !re.IsLoading() && !re.IsTryAgain() && !re.IsClusterDown()
}

// Channel is the channel of event in database db, e.g. __keyevent@0__:expired.
func Channel(db int, event string) string { return fmt.Sprintf("__keyevent@%d__:%s", db, event) }

// followEvery is how often Listen compares the nodes it listens to with
// the client's view of the topology.
const followEvery = time.Second

// Listen calls fn with the key of every message on ev.Channel from every
// node until ctx is done, resubscribing after a disconnection, following
// the topology (nodes that join or leave), and keeps ev.Flags on: it
// checks each node's notify-keyspace-events at once, whenever its
// subscription is (re)established and every ev.Every, adding what is
// missing (a warning when it had been there), and logs an error saying
// what to configure once when a node starts refusing CONFIG (then the
// flags must be set by hand; events that arrive are still handled). fn
// runs on a subscription's connection: it must not block. Listen returns
// once every goroutine it started has ended.
func Listen(ctx context.Context, redis rueidis.Client, ev Events, log *slog.Logger, fn func(key string)) {
	if ev.Every <= 0 {
		ev.Every = DefaultEvery
	}
	if ev.Health == nil {
		ev.Health = &Health{}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	listening := map[string]context.CancelFunc{} // node address: the end of its goroutines
	defer func() {
		for _, stop := range listening {
			stop()
		}
	}()
	follow := func(announce bool) {
		nodes := redis.Nodes()
		for addr, stop := range listening {
			if _, ok := nodes[addr]; !ok {
				stop()
				delete(listening, addr)
				log.Info("node left the topology; no longer listening", "redis", addr, "channel", ev.Channel)
			}
		}
		for addr, client := range nodes {
			if listening[addr] != nil {
				continue
			}
			nctx, stop := context.WithCancel(ctx)
			listening[addr] = stop
			n := &node{addr: addr, first: client, redis: redis, ev: ev, log: log}
			subscribed := make(chan struct{}, 1)
			wg.Go(func() { n.listen(nctx, subscribed, fn) })
			wg.Go(func() { n.watch(nctx, subscribed) })
			if announce {
				log.Info("listening on a new node", "redis", addr, "channel", ev.Channel)
			}
		}
	}
	follow(false)
	tick := time.NewTicker(followEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			follow(true)
		}
	}
}

// node is one node a Listen subscribes to and keeps the flags of.
type node struct {
	addr  string
	first rueidis.Client // the node's client when it joined
	redis rueidis.Client // the client whose node it is
	ev    Events
	log   *slog.Logger
	// Only watch reads and writes these.
	verified bool // the flags were found or enabled once: missing again, they were lost
	refusing bool // the last answered check was refused
}

// client returns n's client in the current view of the topology: a
// Cluster client may replace a node's connection (a node that left and
// came back between two looks, a MOVED naming the node that answered it)
// and close the old one, through which nothing gets through from then on.
func (n *node) client() rueidis.Client {
	if c, ok := n.redis.Nodes()[n.addr]; ok {
		return c
	}
	return n.first // leaving: Listen stops n soon
}

// listen subscribes to the channel on n until ctx is done, resubscribing
// after a disconnection, and signals subscribed at every subscription.
func (n *node) listen(ctx context.Context, subscribed chan<- struct{}, fn func(string)) {
	var ok atomic.Bool // subscribed since the last disconnection
	hooked := rueidis.WithOnSubscriptionHook(ctx, func(s rueidis.PubSubSubscription) {
		if s.Kind == "subscribe" {
			ok.Store(true)
			select {
			case subscribed <- struct{}{}:
			default: // a check is due already
			}
		}
	})
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		// A connection of its own: Redis 7.0 may put an event caused by a
		// command (a key found expired) in the middle of that command's
		// reply when both share a connection.
		client := n.client()
		conn, release := client.Dedicate()
		err := conn.Receive(hooked, client.B().Subscribe().Channel(n.ev.Channel).Build(), func(m rueidis.PubSubMessage) { fn(m.Message) })
		release()
		if ctx.Err() != nil {
			return
		}
		if ok.Swap(false) {
			backoff = 100 * time.Millisecond
		}
		n.log.Warn("subscription ended; resubscribing", "redis", n.addr, "channel", n.ev.Channel, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// watch checks n's flags at once, then at every subscription and every
// n.ev.Every, until ctx is done.
func (n *node) watch(ctx context.Context, subscribed <-chan struct{}) {
	tick := time.NewTicker(n.ev.Every)
	defer tick.Stop()
	defer func() {
		if n.refusing { // no longer this listener's to report
			n.ev.Health.Refused.Add(-1)
		}
	}()
	for {
		n.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-subscribed:
		case <-tick.C:
		}
	}
}

// check makes sure n publishes the events, logging what it had to do:
// enabling them the first time is news (info); later, the flags were lost
// (a restart without persistence, someone's CONFIG SET: a warning). A
// refusal is logged once, when it starts, and its end once too; a failed
// connection is left to the resubscription, which checks again.
func (n *node) check(ctx context.Context) {
	have, set, err := ensure(ctx, n.addr, n.client(), n.ev.Flags, n.ev.Feature)
	if err != nil {
		var ce *checkError
		if ctx.Err() != nil || !refused(err) || !errors.As(err, &ce) {
			n.log.Debug("cannot check keyspace events now", "redis", n.addr, "for", n.ev.Feature, "err", err)
			return
		}
		n.ev.Health.Checks.Add(1)
		if !n.refusing {
			n.refusing = true
			n.ev.Health.Refused.Add(1)
			n.log.Error("redis refuses cachesync's CONFIG: configure notify-keyspace-events by hand, or it publishes no events for "+n.ev.Feature,
				"redis", n.addr, "configure", "notify-keyspace-events "+ce.configure, "for", n.ev.Feature, "err", err)
		}
		return
	}
	n.ev.Health.Checks.Add(1)
	if n.refusing {
		n.refusing = false
		n.ev.Health.Refused.Add(-1)
		n.log.Info("redis allows cachesync's CONFIG again", "redis", n.addr, "notify-keyspace-events", have, "for", n.ev.Feature)
	}
	switch {
	case set == "":
	case !n.verified:
		n.log.Info("enabled keyspace events", "redis", n.addr, "notify-keyspace-events", set, "was", have, "for", n.ev.Feature)
	default:
		n.ev.Health.Reenabled.Add(1)
		n.log.Warn("notify-keyspace-events lost its flags; enabled again", "redis", n.addr, "notify-keyspace-events", set, "was", have, "for", n.ev.Feature)
	}
	n.verified = true
}
