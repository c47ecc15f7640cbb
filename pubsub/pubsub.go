// Package pubsub publishes messages to topics and delivers them to
// subscribers in order, with a replay of what a subscriber missed: each
// topic is a Redis Stream, a message's stream entry ID is its ID, and a
// subscriber that resumes after an ID receives every message published
// after it that is still kept, or is told that some are gone.
//
// Publish adds an entry and trims the stream in one script: entries more
// than the retention older than the newest go (by the time in their IDs,
// which Redis stamps), and beyond MaxLen entries the oldest go too. The
// script records the ID of the last entry trimmed in the stream itself
// (XSETID MAXDELETEDID), so a subscriber resuming after an ID learns
// exactly whether a message after it was trimmed. A topic nobody publishes
// to expires once its newest entry is twice the retention old; a
// subscriber resuming after an ID older than that on an expired (or
// re-created) topic is told messages may be gone, as they may. A
// subscription that read on meanwhile (Next reads at least once a
// retention while it waits) is not: it saw that nothing was published.
//
// A Subscription reads the replay with XRANGE from the ID it resumes
// after, then waits with a blocking XREAD from the last ID it delivered and
// reads on with XRANGE: replay and live messages come from one stream in
// one order, so none is skipped or repeated.
package pubsub

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Defaults of Options.
const (
	// DefaultRetention is how long a message is kept when Options.Retention
	// is zero.
	DefaultRetention = time.Hour
	// DefaultMaxLen is how many messages a topic keeps at most when
	// Options.MaxLen is zero.
	DefaultMaxLen = 10000
	// MaxTopic is the longest topic name, in bytes.
	MaxTopic = 256
)

// ErrBadTopic is returned for a topic name that is empty or longer than
// MaxTopic bytes.
var ErrBadTopic = errors.New("bad topic")

// ErrBadID is returned for a message ID to resume after that is not a
// stream entry ID (MS or MS-SEQ, decimal).
var ErrBadID = errors.New("bad message ID")

// Options tunes the topics; the zero value takes the defaults.
type Options struct {
	// Retention is how long a message is kept: at each publish, messages
	// more than Retention older than the new one are trimmed, measured by the
	// time in their IDs (default DefaultRetention, at least a millisecond).
	Retention time.Duration
	// MaxLen bounds how many messages a topic keeps: beyond it the oldest
	// are trimmed whatever their age (default DefaultMaxLen).
	MaxLen int64
}

// Topics publishes to and subscribes to topics, each a Redis Stream.
type Topics struct {
	client    rueidis.Client
	prefix    string
	retention int64 // milliseconds
	maxLen    int64
}

// batch bounds the entries one read returns.
const batch = 100

var (
	//go:embed ids.lua
	idsLua string
	//go:embed publish.lua
	publishLua string
	//go:embed read.lua
	readLua string

	publishScript = rueidis.NewLuaScript(idsLua + publishLua)
	readScript    = rueidis.NewLuaScript(idsLua + readLua)
)

// New returns the topics of client whose stream keys start with prefix,
// which must not contain "{" or "}" (each key is PREFIX{topic}, the topic
// its hash tag). It panics on a bad prefix or negative options, which are
// the caller's mistakes.
func New(client rueidis.Client, prefix string, o Options) *Topics {
	if strings.ContainsAny(prefix, "{}") {
		panic(fmt.Sprintf("pubsub: the key prefix %q contains { or }", prefix))
	}
	if o.Retention < 0 || o.MaxLen < 0 {
		panic(fmt.Sprintf("pubsub: negative options %+v", o))
	}
	if o.Retention == 0 {
		o.Retention = DefaultRetention
	}
	if o.MaxLen == 0 {
		o.MaxLen = DefaultMaxLen
	}
	return &Topics{client: client, prefix: prefix, retention: max(o.Retention.Milliseconds(), 1), maxLen: o.MaxLen}
}

// key returns the stream key of topic, or ErrBadTopic.
func (t *Topics) key(topic string) (string, error) {
	if topic == "" || len(topic) > MaxTopic {
		return "", fmt.Errorf("%w: %d bytes, not 1 to %d", ErrBadTopic, len(topic), MaxTopic)
	}
	return t.prefix + "{" + topic + "}", nil
}

// Publish adds data to topic and returns its message ID, trimming what
// is past the retention or beyond MaxLen.
func (t *Topics) Publish(ctx context.Context, topic string, data []byte) (string, error) {
	key, err := t.key(topic)
	if err != nil {
		return "", err
	}
	id, err := publishScript.Exec(ctx, t.client, []string{key},
		[]string{string(data), strconv.FormatInt(t.retention, 10), strconv.FormatInt(t.maxLen, 10)}).ToString()
	if err != nil {
		return "", fmt.Errorf("topic %q: publish: %w", topic, err)
	}
	return id, nil
}

// Message is one published message.
type Message struct {
	// ID is the stream entry ID: MS-SEQ, increasing within a topic.
	ID string
	// Data is what was published.
	Data []byte
}

// Subscription reads one topic's messages in order; it is not safe for
// concurrent use. It holds no connection or goroutine between calls, so
// it needs no closing.
type Subscription struct {
	t     *Topics
	topic string
	key   string
	last  string   // the ID after which the next message comes
	since string   // Redis's time (ms) when nothing followed last, or ""
	first *reading // what Subscribe read, for the first Next
}

// reading is what one read found: messages, whether some are gone, the
// ID after which reading goes on, and Redis's time (ms) if nothing
// followed it then.
type reading struct {
	msgs   []Message
	missed bool
	last   string
	since  string
}

// Subscribe starts reading topic after the message ID lastID, or, when
// lastID is "", after the newest message: every message published once
// Subscribe returned is delivered. lastID "0" replays every message kept,
// and never reports missed ones. It returns ErrBadTopic or ErrBadID for
// bad input.
func (t *Topics) Subscribe(ctx context.Context, topic, lastID string) (*Subscription, error) {
	key, err := t.key(topic)
	if err != nil {
		return nil, err
	}
	if lastID != "" {
		if lastID, err = parseID(lastID); err != nil {
			return nil, err
		}
	}
	s := &Subscription{t: t, topic: topic, key: key, last: lastID}
	if s.first, err = s.read(ctx); err != nil {
		return nil, err
	}
	if len(s.first.msgs) == 0 && !s.first.missed {
		s.last, s.since, s.first = s.first.last, s.first.since, nil
	}
	return s, nil
}

// parseID returns id (MS or MS-SEQ, each a decimal uint64) as MS-SEQ, or
// ErrBadID.
func parseID(id string) (string, error) {
	ms, seq, hasSeq := strings.Cut(id, "-")
	m, err := strconv.ParseUint(ms, 10, 64)
	s := uint64(0)
	if err == nil && hasSeq {
		s, err = strconv.ParseUint(seq, 10, 64)
	}
	if err != nil {
		return "", fmt.Errorf("%w: %.50q is not MS-SEQ", ErrBadID, id)
	}
	return strconv.FormatUint(m, 10) + "-" + strconv.FormatUint(s, 10), nil
}

// Position returns the ID after which the next message comes: the last
// one Next returned, or where the subscription started. A subscriber that
// resumes after it misses nothing still kept.
func (s *Subscription) Position() string { return s.last }

// Next returns the next messages in order, waiting until there is one or
// ctx ends (then it returns ctx's error). missed reports that messages
// after Position (as it was before this call) are gone, trimmed before
// they were read, or may be, expired with an idle topic (see the package
// doc): they came before the messages returned, which may then be none.
func (s *Subscription) Next(ctx context.Context) (msgs []Message, missed bool, err error) {
	r := s.first
	s.first = nil
	for r == nil {
		if r, err = s.read(ctx); err != nil {
			return nil, false, err
		}
		if len(r.msgs) == 0 && !r.missed {
			s.since, r = r.since, nil
			if err := s.wait(ctx); err != nil {
				return nil, false, err
			}
		}
	}
	s.last, s.since = r.last, r.since
	return r.msgs, r.missed, nil
}

// read reads the messages after s.last.
func (s *Subscription) read(ctx context.Context) (*reading, error) {
	reply, err := readScript.Exec(ctx, s.t.client, []string{s.key},
		[]string{s.last, strconv.Itoa(batch), strconv.FormatInt(s.t.retention, 10), s.since}).ToArray()
	if err != nil {
		return nil, s.fail(ctx, "read", err)
	}
	if len(reply) != 5 {
		return nil, fmt.Errorf("topic %q: read: %d values in the reply, not 5", s.topic, len(reply))
	}
	missed, err := reply[0].AsInt64()
	if err != nil {
		return nil, fmt.Errorf("topic %q: read: %w", s.topic, err)
	}
	r := &reading{missed: missed == 1}
	if r.last, err = reply[1].ToString(); err != nil {
		return nil, fmt.Errorf("topic %q: read: %w", s.topic, err)
	}
	entries, err := reply[2].AsXRange()
	if err != nil {
		return nil, fmt.Errorf("topic %q: read: %w", s.topic, err)
	}
	for _, e := range entries {
		r.msgs = append(r.msgs, Message{ID: e.ID, Data: []byte(e.FieldValues["d"])})
		r.last = e.ID
	}
	if caught, err := reply[4].AsInt64(); err != nil {
		return nil, fmt.Errorf("topic %q: read: %w", s.topic, err)
	} else if caught == 1 {
		now, err := reply[3].AsInt64()
		if err != nil {
			return nil, fmt.Errorf("topic %q: read: %w", s.topic, err)
		}
		r.since = strconv.FormatInt(now, 10)
	}
	return r, nil
}

// wait returns once the stream has an entry after s.last, ctx ended, or
// a retention passed: a blocking XREAD on a connection of its own. A
// cancelled ctx unblocks it (CLIENT UNBLOCK, or rueidis closes the
// connection). Reading again at least once a retention keeps the
// subscription's since recent, which tells a stream that expired while
// nothing was published (read.lua).
func (s *Subscription) wait(ctx context.Context) error {
	block := s.t.retention
	if dl, ok := ctx.Deadline(); ok {
		// A little short of the deadline, so Redis answers first and the
		// connection is reused without an unblock.
		left := time.Until(dl)
		if block = min(block, (left - left/10).Milliseconds()); block < 1 {
			return s.fail(ctx, "wait", context.DeadlineExceeded)
		}
	}
	c := s.t.client
	err := c.Do(ctx, c.B().Xread().Count(1).Block(block).Streams().Key(s.key).Id(s.last).Build().UnblockOnCancel()).Error()
	if err != nil && !rueidis.IsRedisNil(err) {
		return s.fail(ctx, "wait", err)
	}
	return nil
}

// fail wraps err of what, or ctx's error once ctx ended, so a caller can
// tell a cancelled or timed out subscription from a failed one. An error
// at ctx's deadline counts as ctx's (a dial under ctx fails with an i/o
// timeout at the deadline, as ctx's timer is about to fire).
func (s *Subscription) fail(ctx context.Context, what string, err error) error {
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		<-ctx.Done()
	}
	if ctx.Err() != nil {
		return fmt.Errorf("topic %q: %s: %w", s.topic, what, context.Cause(ctx))
	}
	return fmt.Errorf("topic %q: %s: %w", s.topic, what, err)
}
