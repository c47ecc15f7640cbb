// Package session keeps web sessions in Redis: an unguessable id, a value,
// an idle timeout that each use slides, and an absolute lifetime that no
// use extends. Every operation is one round trip, and the clock is Redis's
// (TIME), so every process agrees on when a session ends.
package session

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// ErrNotFound is returned for a session that does not exist: never
// created, destroyed, or expired.
var ErrNotFound = errors.New("session not found")

// ErrBadID is returned for an id that Create cannot have made.
var ErrBadID = errors.New("not a session id")

// Defaults of Options.
const (
	DefaultIdle     = 30 * time.Minute
	DefaultLifetime = 24 * time.Hour
)

// IDLen is the length of a session id: 128 random bits, base64url without
// padding.
const IDLen = 22

// Options are the time limits of one session.
type Options struct {
	// Idle ends the session when it goes unused this long; each Get and
	// Update starts it again. Zero means DefaultIdle.
	Idle time.Duration
	// Lifetime ends the session this long after Create, however it is
	// used. Zero means DefaultLifetime.
	Lifetime time.Duration
}

// Session is a session as Redis holds it.
type Session struct {
	ID   string
	Data []byte
	// TTL is how long the session lives unless it is used again: the idle
	// timeout, or less near the end of its lifetime.
	TTL time.Duration
	// Ends is when the lifetime ends, by Redis's clock.
	Ends time.Time
}

// Store creates and reads sessions under a key prefix.
type Store struct {
	rc     rueidis.Client
	prefix string
}

// New returns the sessions of rc whose keys begin with prefix, which must
// not contain "{" (the id is the key's Cluster hash tag).
func New(rc rueidis.Client, prefix string) (*Store, error) {
	if strings.Contains(prefix, "{") {
		return nil, fmt.Errorf("session: prefix %q contains {", prefix)
	}
	return &Store{rc: rc, prefix: prefix}, nil
}

// A session is a hash: data (the value), idle (the idle timeout in ms)
// and end (the end of its lifetime, unix ms by Redis's TIME). Its TTL is
// always min(idle, end - now), so it never outlives its lifetime. Each
// script returns {data, ttl ms, end ms}, or nil when the session is gone.
// A plain GETEX PX cannot cap the TTL by the lifetime, hence the scripts.
const now = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// create: ARGV data, idle ms, lifetime ms. Nil when the id is taken.
var create = rueidis.NewLuaScript(now + `
if redis.call('EXISTS', KEYS[1]) == 1 then return nil end
local idle, life = tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl = math.min(idle, life)
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'idle', ARGV[2], 'end', string.format('%.0f', now + life))
redis.call('PEXPIRE', KEYS[1], ttl)
return {ARGV[1], ttl, string.format('%.0f', now + life)}
`)

// touch: ARGV[1] "set" and ARGV[2] the new data, or nothing to read.
var touch = rueidis.NewLuaScript(now + `
local s = redis.call('HMGET', KEYS[1], 'data', 'idle', 'end')
if not s[1] then return nil end
local ttl = math.min(tonumber(s[2]), tonumber(s[3]) - now)
if ttl <= 0 then
	redis.call('DEL', KEYS[1])
	return nil
end
if ARGV[1] == 'set' then
	redis.call('HSET', KEYS[1], 'data', ARGV[2])
	s[1] = ARGV[2]
end
redis.call('PEXPIRE', KEYS[1], ttl)
return {s[1], ttl, s[3]}
`)

// Create stores a new session holding data, with a new 128-bit id from
// crypto/rand, and returns it.
func (s *Store) Create(ctx context.Context, data []byte, opts Options) (Session, error) {
	idle, life := opts.Idle, opts.Lifetime
	if idle == 0 {
		idle = DefaultIdle
	}
	if life == 0 {
		life = DefaultLifetime
	}
	if idle < time.Millisecond || life < time.Millisecond {
		return Session{}, fmt.Errorf("session: idle %v and lifetime %v must be at least 1ms", idle, life)
	}
	for range 3 { // a taken id is as likely as guessing one: never
		id := NewID()
		sess, err := s.run(ctx, create, id, string(data), fmt.Sprint(idle.Milliseconds()), fmt.Sprint(life.Milliseconds()))
		if !errors.Is(err, ErrNotFound) {
			return sess, err
		}
	}
	return Session{}, errors.New("session: create: three new ids were taken")
}

// Get returns the session id and slides its expiry: it lives its idle
// timeout from now, but not past its lifetime.
func (s *Store) Get(ctx context.Context, id string) (Session, error) {
	return s.run(ctx, touch, id)
}

// Update replaces the data of the session id and slides its expiry as Get
// does; it fails with ErrNotFound when the session is gone, and never
// creates one.
func (s *Store) Update(ctx context.Context, id string, data []byte) (Session, error) {
	return s.run(ctx, touch, id, "set", string(data))
}

// Destroy ends the session id; ErrNotFound when there was none.
func (s *Store) Destroy(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	n, err := s.rc.Do(ctx, s.rc.B().Del().Key(s.Key(id)).Build()).AsInt64()
	if err != nil {
		return fmt.Errorf("session: destroy: %w", err)
	}
	if n == 0 {
		return fmt.Errorf("session: destroy: %w", ErrNotFound)
	}
	return nil
}

// Key returns the Redis key of the session id.
func (s *Store) Key(id string) string { return s.prefix + "{" + id + "}" }

// run runs script on the session id's key with args and reads its reply.
func (s *Store) run(ctx context.Context, script *rueidis.Lua, id string, args ...string) (Session, error) {
	if err := checkID(id); err != nil {
		return Session{}, err
	}
	arr, err := script.Exec(ctx, s.rc, []string{s.Key(id)}, args).ToArray()
	if rueidis.IsRedisNil(err) {
		return Session{}, fmt.Errorf("session %s: %w", id, ErrNotFound)
	}
	if err == nil && len(arr) != 3 {
		err = fmt.Errorf("a reply of %d values", len(arr))
	}
	var sess Session
	var ttl, end int64
	if err == nil {
		sess.Data, err = arr[0].AsBytes()
	}
	if err == nil {
		ttl, err = arr[1].AsInt64()
	}
	if err == nil {
		end, err = arr[2].AsInt64()
	}
	if err != nil {
		return Session{}, fmt.Errorf("session %s: %w", id, err)
	}
	sess.ID, sess.TTL, sess.Ends = id, time.Duration(ttl)*time.Millisecond, time.UnixMilli(end)
	return sess, nil
}

// NewID returns a new session id: 128 bits from crypto/rand, base64url
// without padding (IDLen characters).
func NewID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails: it crashes the program first
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// checkID returns ErrBadID unless id is one NewID can return.
func checkID(id string) error {
	if len(id) != IDLen {
		return fmt.Errorf("session: %q: %w", id, ErrBadID)
	}
	if b, err := base64.RawURLEncoding.Strict().DecodeString(id); err != nil || len(b) != 16 {
		return fmt.Errorf("session: %q: %w", id, ErrBadID)
	}
	return nil
}
