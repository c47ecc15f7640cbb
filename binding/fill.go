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

// AppendInvalidate appends InvalidateCmd, and the removal of key from the
// expiry record when the cache keeps one (an invalidated key is not
// reloaded when its old expiry comes).
func (b *Binding) AppendInvalidate(cmds []rueidis.Completed, rb rueidis.Builder, key string) []rueidis.Completed {
	cmds = append(cmds, InvalidateCmd(rb, key))
	if b.Record != "" {
		cmds = append(cmds, rb.Zrem().Key(b.Record).Member(key).Build())
	}
	return cmds
}

// RecordKey names the expiry record of a cache that refreshes: a sorted set
// of its keys scored by when they expire (unix ms), written with every value,
// so a refresher that was down finds what expired meanwhile.
func RecordKey(cache string) string { return "cachesync:expiry:{" + cache + "}" }

// fill writes a value, a "not found" marker or a deletion only if the
// fill's lease is still there and (unless it overwrites) the key is still
// missing: a change-feed write either sets the key or ends the lease, an
// invalidation ends the lease, so a fill that read the row before a newer
// change loses. It records the key's expiry in the cache's expiry record
// (KEYS[5]) when there is one.
// KEYS: key, lease, neg, stale[, record]. ARGV: token, mode (s string, h hash,
// n not found, d delete), overwrite (1 or 0), ttl ms, expires at (unix ms),
// stale copy ttl ms (0: none), stale copy, value...
const fill = `if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[3] == '0' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[4])
if ARGV[2] == 'n' or ARGV[2] == 'd' then
  redis.call('DEL', KEYS[1], KEYS[4])
  if KEYS[5] then redis.call('ZREM', KEYS[5], KEYS[1]) end
  if ARGV[2] == 'n' then redis.call('SET', KEYS[3], '1', 'PX', ttl) end
  return 1
end
redis.call('DEL', KEYS[3])
if tonumber(ARGV[6]) > 0 then redis.call('SET', KEYS[4], ARGV[7], 'PX', ARGV[6]) end
if ARGV[2] == 's' then
  if ttl > 0 then redis.call('SET', KEYS[1], ARGV[8], 'PX', ttl) else redis.call('SET', KEYS[1], ARGV[8]) end
else
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(ARGV, 8))
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
if KEYS[5] and ttl > 0 then redis.call('ZADD', KEYS[5], ARGV[5], KEYS[1]) end
return 1`

// queue sets a value like a fresh feed write (ending a fill's lease and a
// not-found marker) and appends the row to a write-behind stream, atomically.
// KEYS: key, lease, neg, stale, stream[, record]. ARGV: mode (s|h), ttl ms,
// expires at (unix ms), stale copy ttl ms (0: none), stale copy, row JSON,
// row's column names, value...
const queue = `redis.call('DEL', KEYS[2], KEYS[3])
local ttl = tonumber(ARGV[2])
if tonumber(ARGV[4]) > 0 then redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[4]) end
if ARGV[1] == 's' then
  if ttl > 0 then redis.call('SET', KEYS[1], ARGV[8], 'PX', ttl) else redis.call('SET', KEYS[1], ARGV[8]) end
else
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(ARGV, 8))
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
if KEYS[6] and ttl > 0 then redis.call('ZADD', KEYS[6], ARGV[3], KEYS[1]) end
return redis.call('XADD', KEYS[5], '*', 'key', KEYS[1], 'row', ARGV[6], 'cols', ARGV[7])`

// QueueCmd writes v under key and appends row (JSON, with its column names
// joined by NUL, so the drainer need not parse the row) to the write-behind
// stream, in one step: a value is in Redis exactly when its write is queued.
func (b *Binding) QueueCmd(rb rueidis.Builder, key, stream string, v *Value, row, cols string) rueidis.Completed {
	w := b.writeArgs(v)
	keys := []string{key, LeaseKey(key), NegKey(key), StaleKey(key), stream}
	if b.Record != "" {
		keys = append(keys, b.Record)
	}
	return rb.Eval().Script(queue).Numkeys(int64(len(keys))).Key(keys...).
		Arg(append([]string{w.mode, w.ttl, w.expiresAt, w.staleTTL, w.stale, row, cols}, w.value...)...).Build()
}

// FillCmd writes v under key if token still holds the lease and the key is
// still missing; a nil v writes the "not found" marker with negTTL instead.
// Its result is 1 when written.
func (b *Binding) FillCmd(rb rueidis.Builder, key, token string, v *Value, negTTL time.Duration) rueidis.Completed {
	mode := "n"
	if v != nil {
		mode = ""
	}
	return b.fillCmd(rb, key, token, v, mode, false, negTTL)
}

// ReloadCmd is FillCmd for a refresh: it also overwrites a present key when
// overwrite is set (the lease was taken on a present key), and for a nil v
// (no row) it deletes the key, or writes the "not found" marker with negTTL
// when negative.
func (b *Binding) ReloadCmd(rb rueidis.Builder, key, token string, v *Value, overwrite, negative bool, negTTL time.Duration) rueidis.Completed {
	mode := ""
	switch {
	case v == nil && negative:
		mode = "n"
	case v == nil:
		mode = "d"
	}
	return b.fillCmd(rb, key, token, v, mode, overwrite, negTTL)
}

func (b *Binding) fillCmd(rb rueidis.Builder, key, token string, v *Value, mode string, overwrite bool, negTTL time.Duration) rueidis.Completed {
	keys := []string{key, LeaseKey(key), NegKey(key), StaleKey(key)}
	if b.Record != "" {
		keys = append(keys, b.Record)
	}
	cmd := rb.Eval().Script(fill).Numkeys(int64(len(keys))).Key(keys...)
	over := "0"
	if overwrite {
		over = "1"
	}
	if v == nil {
		return cmd.Arg(token, mode, over, strconv.FormatInt(max(negTTL.Milliseconds(), 1), 10), "0", "0", "").Build()
	}
	w := b.writeArgs(v)
	return cmd.Arg(append([]string{token, w.mode, over, w.ttl, w.expiresAt, w.staleTTL, w.stale}, w.value...)...).Build()
}

// claim decides what a refresh does with one key, atomically: a present key
// is kept ('p') after its expiry is recorded anew (action r) or its TTL is
// renewed (action x: its value is the change feed's, current already), or
// leased for a reload that overwrites it (action l: 'l'); a missing key is
// leased for a fill ('a'). 'h': someone else holds the lease.
// KEYS: key, lease, stale[, record]. ARGV: action, token, lease ms, now (unix
// ms), ttl ms, stale copy ttl ms (0: none).
const claim = `local pttl = redis.call('PTTL', KEYS[1])
if pttl ~= -2 and ARGV[1] ~= 'l' then
  if ARGV[1] == 'x' and pttl >= 0 then
    pttl = tonumber(ARGV[5])
    redis.call('PEXPIRE', KEYS[1], pttl)
    if tonumber(ARGV[6]) > 0 then redis.call('PEXPIRE', KEYS[3], ARGV[6]) end
  end
  if KEYS[4] then
    if pttl >= 0 then redis.call('ZADD', KEYS[4], tonumber(ARGV[4]) + pttl, KEYS[1]) else redis.call('ZREM', KEYS[4], KEYS[1]) end
  end
  return 'p'
end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return 'h' end
if pttl == -2 then return 'a' end
return 'l'`

// Claim actions for a present key.
const (
	ClaimRecord = "r" // keep it; record its expiry anew
	ClaimRenew  = "x" // keep it with a renewed TTL (its value is current)
	ClaimLease  = "l" // lease it for a reload that overwrites it
)

// ClaimCmd starts a refresh of key: see claim. Its result is 'p' (present,
// kept), 'a' (missing, leased), 'l' (present, leased) or 'h' (lease held by
// another).
func (b *Binding) ClaimCmd(rb rueidis.Builder, key, action, token string, lease time.Duration, now time.Time) rueidis.Completed {
	keys := []string{key, LeaseKey(key), StaleKey(key)}
	if b.Record != "" {
		keys = append(keys, b.Record)
	}
	ttl := b.ttl()
	staleTTL := int64(0)
	if b.Stale > 0 {
		staleTTL = (ttl + b.Stale).Milliseconds()
	}
	return rb.Eval().Script(claim).Numkeys(int64(len(keys))).Key(keys...).
		Arg(action, token, strconv.FormatInt(max(lease.Milliseconds(), 1), 10), strconv.FormatInt(now.UnixMilli(), 10),
			strconv.FormatInt(ttl.Milliseconds(), 10), strconv.FormatInt(staleTTL, 10)).Build()
}

// writeArgs is how the scripts that write a value take it: mode (s string,
// h hash), TTL in ms (jittered), when it expires (unix ms, for the expiry
// record), the stale copy's TTL in ms (0: none) and content, and the value
// (the string, or field, value, ...).
type writeArgs struct {
	mode, ttl, expiresAt, staleTTL, stale string
	value                                 []string
}

func (b *Binding) writeArgs(v *Value) writeArgs {
	t := b.ttl()
	w := writeArgs{mode: "s", ttl: strconv.FormatInt(t.Milliseconds(), 10),
		expiresAt: strconv.FormatInt(time.Now().Add(t).UnixMilli(), 10), staleTTL: "0"}
	if b.Stale > 0 {
		w.staleTTL, w.stale = strconv.FormatInt((t+b.Stale).Milliseconds(), 10), string(v.Result(b.Format))
	}
	if b.Format == FormatHash {
		w.mode, w.value = "h", v.Fields
		return w
	}
	w.value = []string{string(v.Bytes)}
	return w
}
