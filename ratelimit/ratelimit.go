// Package ratelimit decides in Redis whether a request is within a rate
// limit, so that every process sharing the Redis shares the limit: a fixed
// window, an exact sliding window and GCRA, each one Lua script that reads
// the time from Redis (TIME), so the processes' clocks do not matter, and
// that gives every key it writes a TTL in the same call.
//
// Each limiter keeps one Redis key per limited id (PREFIX + id), so it
// works on Redis Cluster as on a single node.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// Algorithm names a way of limiting.
type Algorithm string

// The algorithms.
const (
	// Fixed counts requests per window aligned on multiples of the window
	// since the Unix epoch: the cheapest, but a client that spends its
	// limit at the end of one window and again at the start of the next
	// gets up to twice the limit within one window's length.
	Fixed Algorithm = "fixed"
	// Sliding keeps a log of admitted requests (a sorted set of up to Limit
	// entries per id) and admits at most Limit in ANY interval of the
	// window's length: exact, at O(Limit) memory per id.
	Sliding Algorithm = "sliding"
	// GCRA (the generic cell rate algorithm) admits Burst at once and then
	// one request every Window/Limit, keeping one timestamp per id. It has
	// no window edge: within any interval of length t it admits at most
	// Burst + t*Limit/Window.
	GCRA Algorithm = "gcra"
)

// Policy is what a Limiter allows.
type Policy struct {
	Algorithm Algorithm
	Limit     int           // requests per Window
	Window    time.Duration // at least a millisecond
	// Burst is GCRA's: how many requests it admits at once (Limit when 0).
	Burst int
}

// Validate tells what is wrong with p, if anything.
func (p Policy) Validate() error {
	switch {
	case p.Algorithm != Fixed && p.Algorithm != Sliding && p.Algorithm != GCRA:
		return fmt.Errorf("ratelimit: algorithm %q is not fixed, sliding or gcra", p.Algorithm)
	case p.Limit < 1:
		return fmt.Errorf("ratelimit: limit %d: want at least 1", p.Limit)
	case p.Window < time.Millisecond:
		return fmt.Errorf("ratelimit: window %v: want at least 1ms", p.Window)
	case p.Burst < 0:
		return fmt.Errorf("ratelimit: burst %d: must not be negative", p.Burst)
	case p.Burst != 0 && p.Algorithm != GCRA:
		return fmt.Errorf("ratelimit: burst is for gcra only, not %s", p.Algorithm)
	}
	return nil
}

// Decision is a limiter's answer to one request.
type Decision struct {
	Allowed   bool
	Limit     int // the policy's limit (GCRA: its burst)
	Remaining int // how many more requests would be admitted now
	// RetryAfter is how long to wait before the same request would be
	// admitted (0 when it was).
	RetryAfter time.Duration
	// Reset is how long until the limit is whole again: the window's end
	// (fixed), the last admitted request leaving the window (sliding), a
	// full burst (GCRA).
	Reset time.Duration
}

// ErrCost is returned for a cost below 1 or above what the policy can ever
// admit at once.
var ErrCost = errors.New("ratelimit: cost out of range")

// Limiter decides requests against one Policy, per id.
type Limiter struct {
	client rueidis.Client
	prefix string
	policy Policy
	script *rueidis.Lua
	args   [3]string // the script's ARGV limit, window and burst
	// now, when set, replaces Redis's TIME: tests drive time with it.
	now func() time.Time
}

// New returns a limiter of policy keeping its state in client under keys
// prefix + id.
func New(client rueidis.Client, prefix string, policy Policy) (*Limiter, error) {
	if err := policy.Validate(); err != nil {
		return nil, err
	}
	if policy.Algorithm == GCRA && policy.Burst == 0 {
		policy.Burst = policy.Limit
	}
	return &Limiter{client: client, prefix: prefix, policy: policy, script: scripts[policy.Algorithm],
		args: [3]string{strconv.Itoa(policy.Limit), strconv.FormatInt(policy.Window.Microseconds(), 10), strconv.Itoa(policy.Burst)}}, nil
}

// Policy returns the limiter's policy (with GCRA's Burst filled in).
func (l *Limiter) Policy() Policy { return l.policy }

// Allow decides one request of id.
func (l *Limiter) Allow(ctx context.Context, id string) (Decision, error) {
	return l.AllowN(ctx, id, 1)
}

// AllowN decides a request of id that costs n: it is admitted whole or
// not at all.
func (l *Limiter) AllowN(ctx context.Context, id string, n int) (Decision, error) {
	most := l.policy.Limit
	if l.policy.Algorithm == GCRA {
		most = l.policy.Burst
	}
	if n < 1 || n > most {
		return Decision{}, fmt.Errorf("%w: %d, want 1 to %d", ErrCost, n, most)
	}
	now := "-1" // the script asks Redis
	if l.now != nil {
		now = strconv.FormatInt(l.now().UnixMicro(), 10)
	}
	args := []string{l.args[0], l.args[1], l.args[2], strconv.Itoa(n), now}
	got, err := l.script.Exec(ctx, l.client, []string{l.prefix + id}, args).AsIntSlice()
	if err != nil {
		return Decision{}, fmt.Errorf("ratelimit %s: id %q: %w", l.policy.Algorithm, id, err)
	}
	if len(got) != 4 {
		return Decision{}, fmt.Errorf("ratelimit %s: id %q: the script returned %v", l.policy.Algorithm, id, got)
	}
	limit := l.policy.Limit
	if l.policy.Algorithm == GCRA {
		limit = l.policy.Burst
	}
	return Decision{Allowed: got[0] == 1, Limit: limit, Remaining: int(max(got[1], 0)),
		RetryAfter: time.Duration(got[2]) * time.Microsecond, Reset: time.Duration(got[3]) * time.Microsecond}, nil
}

// scripts are the algorithms' scripts. Each takes KEYS[1] the id's key and
// ARGV limit, window (µs), burst, cost, now (µs since the epoch, or -1 for
// Redis TIME); and returns {allowed (1/0), remaining, retry after (µs),
// reset (µs)}. Numbers are written with %d: tostring would write a large
// one in exponent form.
var scripts = map[Algorithm]*rueidis.Lua{Fixed: fixedScript, Sliding: slidingScript, GCRA: gcraScript}

const clock = `
local limit, window, burst, cost, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
`

// fixedScript counts in a hash {w: window number, n: count}: a count of an
// older window counts as 0, and the hash expires at its window's end.
var fixedScript = rueidis.NewLuaScript(clock + `
local w = math.floor(now / window)
local reset = (w + 1) * window - now
local got = redis.call('HMGET', KEYS[1], 'w', 'n')
local n = 0
if tonumber(got[1]) == w then n = tonumber(got[2]) end
if n + cost > limit then
  return {0, limit - n, reset, reset}
end
n = n + cost
redis.call('HSET', KEYS[1], 'w', string.format('%d', w), 'n', string.format('%d', n))
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.ceil(reset / 1000)))
return {1, limit - n, 0, reset}
`)

// slidingScript logs each admitted unit of cost as a member of a sorted
// set scored by its time; the window is (now - window, now].
var slidingScript = rueidis.NewLuaScript(clock + `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - window))
local n = redis.call('ZCARD', KEYS[1])
if n + cost > limit then
  -- the request fits once the (n + cost - limit)th oldest entry has left
  local e = redis.call('ZRANGE', KEYS[1], n + cost - limit - 1, n + cost - limit - 1, 'WITHSCORES')
  local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  return {0, limit - n, tonumber(e[2]) + window - now, tonumber(newest[2]) + window - now}
end
local args = {}
for i = 1, cost do
  -- unique while the clock does not go back: n grows within one now
  args[#args + 1] = string.format('%d', now)
  args[#args + 1] = string.format('%d:%d:%d', now, n, i)
end
redis.call('ZADD', KEYS[1], unpack(args))
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.ceil(window / 1000)))
return {1, limit - n - cost, 0, window}
`)

// gcraScript keeps the theoretical arrival time (TAT, µs) of the id: a
// request is admitted when TAT + cost*interval - now fits within
// burst*interval. The key expires when TAT is past.
var gcraScript = rueidis.NewLuaScript(clock + `
local interval = math.ceil(window / limit)
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local new = tat + cost * interval
local allowAt = new - burst * interval
if now < allowAt then
  return {0, math.floor((burst * interval - (tat - now)) / interval), allowAt - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', string.format('%d', math.ceil((new - now) / 1000)))
return {1, math.floor((burst * interval - (new - now)) / interval), 0, new - now}
`)
