package binding

import (
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Companion keys hold cachesync's metadata about a user key in the same
// Redis Cluster slot: the user key is their hash tag (or its own tag is reused).
const (
	leasePrefix = "cachesync:lease:"
	negPrefix   = "cachesync:neg:"
	stalePrefix = "cachesync:stale:"
)

// StaleKey names the stale copy of key (Spec.Stale).
func StaleKey(key string) string { return stalePrefix + hashTagged(key) }

// LeaseKey names the lease of key: a fill in progress.
func LeaseKey(key string) string { return leasePrefix + hashTagged(key) }

// NegKey names the "row not found" marker of key.
func NegKey(key string) string { return negPrefix + hashTagged(key) }

// companionOf returns the user key of companion key k (of kind prefix).
func companionOf(prefix, k string) string {
	k = strings.TrimPrefix(k, prefix)
	if inner, ok := strings.CutPrefix(k, "{"); ok && strings.HasSuffix(inner, "}") {
		if u := strings.TrimSuffix(inner, "}"); hashTagged(u) != u {
			return u // the braces were added by hashTagged
		}
	}
	return k
}

// hashTagged returns key as the hash tag of a companion key: key itself when
// it has a tag of its own (Redis hashes only the first {...} part), else {key}.
func hashTagged(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key
		}
	}
	return "{" + key + "}"
}

// LeaseCmd takes the lease of key for token, if nobody holds it.
func LeaseCmd(rb rueidis.Builder, key, token string, ttl time.Duration) rueidis.Completed {
	return rb.Set().Key(LeaseKey(key)).Value(token).Nx().Px(ttl).Build()
}

// release drops a lease if token still holds it.
const release = `if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 1`

// ReleaseCmd gives up token's lease of key (a fill that failed).
func ReleaseCmd(rb rueidis.Builder, key, token string) rueidis.Completed {
	return rb.Eval().Script(release).Numkeys(1).Key(LeaseKey(key)).Arg(token).Build()
}

// InvalidateCmd removes key's value, lease and "not found" marker at once:
// a fill racing with the invalidation loses.
func InvalidateCmd(rb rueidis.Builder, key string) rueidis.Completed {
	return rb.Unlink().Key(key, LeaseKey(key), NegKey(key), StaleKey(key)).Build()
}

// fill writes a value (or a "not found" marker) only if the fill's lease is
// still there and the key is still missing: a change-feed write either sets
// the key or ends the lease, an invalidation ends the lease, so a fill that
// read the row before a newer change loses.
// KEYS: key, lease, neg, stale. ARGV: token, mode (s string, h hash, n not
// found), ttl ms, stale copy ttl ms (0: none), stale copy, value...
const fill = `if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[3])
if ARGV[2] == 'n' then
  redis.call('DEL', KEYS[1], KEYS[4])
  redis.call('SET', KEYS[3], '1', 'PX', ttl)
  return 1
end
redis.call('DEL', KEYS[3])
if tonumber(ARGV[4]) > 0 then redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[4]) end
if ARGV[2] == 's' then
  if ttl > 0 then redis.call('SET', KEYS[1], ARGV[6], 'PX', ttl) else redis.call('SET', KEYS[1], ARGV[6]) end
else
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(ARGV, 6))
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return 1`

// queue sets a value like a fresh feed write (ending a fill's lease and a
// not-found marker) and appends the row to a write-behind stream, atomically.
// KEYS: key, lease, neg, stale, stream. ARGV: mode (s|h), ttl ms, stale copy
// ttl ms (0: none), stale copy, row JSON, row's column names, value...
const queue = `redis.call('DEL', KEYS[2], KEYS[3])
local ttl = tonumber(ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[3]) end
if ARGV[1] == 's' then
  if ttl > 0 then redis.call('SET', KEYS[1], ARGV[7], 'PX', ttl) else redis.call('SET', KEYS[1], ARGV[7]) end
else
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(ARGV, 7))
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return redis.call('XADD', KEYS[5], '*', 'key', KEYS[1], 'row', ARGV[5], 'cols', ARGV[6])`

// QueueCmd writes v under key and appends row (JSON, with its column names
// joined by NUL, so the drainer need not parse the row) to the write-behind
// stream, in one step: a value is in Redis exactly when its write is queued.
func (b *Binding) QueueCmd(rb rueidis.Builder, key, stream string, v *Value, row, cols string) rueidis.Completed {
	mode, ttl, staleTTL, stale, value := b.writeArgs(v)
	return rb.Eval().Script(queue).Numkeys(5).Key(key, LeaseKey(key), NegKey(key), StaleKey(key), stream).
		Arg(append([]string{mode, ttl, staleTTL, stale, row, cols}, value...)...).Build()
}

// FillCmd writes v under key if token still holds the lease; a nil v writes
// the "not found" marker with negTTL instead. Its result is 1 when written.
func (b *Binding) FillCmd(rb rueidis.Builder, key, token string, v *Value, negTTL time.Duration) rueidis.Completed {
	keys := rb.Eval().Script(fill).Numkeys(4).Key(key, LeaseKey(key), NegKey(key), StaleKey(key))
	if v == nil {
		return keys.Arg(token, "n", strconv.FormatInt(max(negTTL.Milliseconds(), 1), 10), "0", "").Build()
	}
	mode, ttl, staleTTL, stale, value := b.writeArgs(v)
	return keys.Arg(append([]string{token, mode, ttl, staleTTL, stale}, value...)...).Build()
}

// writeArgs is how the scripts that write a value take it: mode (s string,
// h hash), TTL in ms (jittered), the stale copy's TTL in ms (0: none) and
// content, and the value (the string, or field, value, ...).
func (b *Binding) writeArgs(v *Value) (mode, ttl, staleTTL, stale string, value []string) {
	t := b.ttl()
	mode, ttl, staleTTL = "s", strconv.FormatInt(t.Milliseconds(), 10), "0"
	if b.Stale > 0 {
		staleTTL, stale = strconv.FormatInt((t+b.Stale).Milliseconds(), 10), string(v.Result(b.Format))
	}
	if b.Format == FormatHash {
		return "h", ttl, staleTTL, stale, v.Fields
	}
	return mode, ttl, staleTTL, stale, []string{string(v.Bytes)}
}
