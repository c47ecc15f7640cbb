package binding

import (
	"context"
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
// when there is one. It takes many keys at once (one script call for a
// refresh batch, rather than one per key) and returns 1 or 0 for each.
// KEYS: [record,] then per key: key, lease, neg, stale. ARGV: has record
// (1 or 0), then per key: the count of its arguments, then token, mode (s
// string, h hash, n not found, d delete), overwrite (1 or 0), ttl ms,
// expires at (unix ms), stale copy ttl ms (0: none), stale copy, value...
const fill = `local rec = nil
local k = 0
if ARGV[1] == '1' then rec = KEYS[1]; k = 1 end
local function one(key, lease, neg, stale, A)
  if redis.call('GET', lease) ~= A[1] then return 0 end
  redis.call('DEL', lease)
  if A[3] == '0' and redis.call('EXISTS', key) == 1 then return 0 end
  local ttl = tonumber(A[4])
  if A[2] == 'n' or A[2] == 'd' then
    redis.call('DEL', key, stale)
    if rec then redis.call('ZREM', rec, key) end
    if A[2] == 'n' then redis.call('SET', neg, '1', 'PX', ttl) end
    return 1
  end
  redis.call('DEL', neg)
  if tonumber(A[6]) > 0 then redis.call('SET', stale, A[7], 'PX', A[6]) end
  if A[2] == 's' then
    if ttl > 0 then redis.call('SET', key, A[8], 'PX', ttl) else redis.call('SET', key, A[8]) end
  else
    redis.call('DEL', key)
    redis.call('HSET', key, unpack(A, 8))
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  end
  if rec and ttl > 0 then redis.call('ZADD', rec, A[5], key) end
  return 1
end
local out = {}
local a = 2
while k < #KEYS do
  local n = tonumber(ARGV[a])
  out[#out + 1] = one(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], {unpack(ARGV, a + 1, a + n)})
  a = a + n + 1
  k = k + 4
end
return out`

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
// Its result is [1] when written, [0] when not.
func (b *Binding) FillCmd(rb rueidis.Builder, key, token string, v *Value, negTTL time.Duration) rueidis.Completed {
	mode := "n"
	if v != nil {
		mode = ""
	}
	return evalCmd(rb, fill, b.join([]rueidis.LuaExec{b.fillExec(key, token, v, mode, false, negTTL)}, true))
}

// ReloadCmd is FillCmd for a refresh (its result is [1] when written): it also overwrites a present key when
// overwrite is set (the lease was taken on a present key), and for a nil v
// (no row) it deletes the key, or writes the "not found" marker with negTTL
// when negative.
func (b *Binding) ReloadCmd(rb rueidis.Builder, key, token string, v *Value, overwrite, negative bool, negTTL time.Duration) rueidis.Completed {
	return evalCmd(rb, fill, b.join([]rueidis.LuaExec{b.Reload(key, token, v, overwrite, negative, negTTL)}, true))
}

// Reload is ReloadCmd's keys and arguments, for ExecReloads.
func (b *Binding) Reload(key, token string, v *Value, overwrite, negative bool, negTTL time.Duration) rueidis.LuaExec {
	mode := ""
	switch {
	case v == nil && negative:
		mode = "n"
	case v == nil:
		mode = "d"
	}
	return b.fillExec(key, token, v, mode, overwrite, negTTL)
}

// Refresh batches run the scripts by EVALSHA (rueidis loads them first),
// BatchKeys keys a call: a script call per key would cost Redis more than
// the work inside it.
var (
	fillScript  = rueidis.NewLuaScript(fill)
	claimScript = rueidis.NewLuaScript(claim)
)

// BatchKeys is how many keys one script call of ExecClaims or ExecReloads
// takes; the calls of a batch go in one pipeline.
const BatchKeys = 100

// ExecClaims runs Claim executions, BatchKeys keys a script call, in one
// pipeline, and returns each key's result.
func (b *Binding) ExecClaims(ctx context.Context, c rueidis.Client, execs []rueidis.LuaExec) ([]string, error) {
	out := make([]string, 0, len(execs))
	for _, r := range claimScript.ExecMulti(ctx, c, b.batches(execs, false)...) {
		vals, err := r.AsStrSlice()
		if err != nil {
			return nil, err
		}
		out = append(out, vals...)
	}
	return out, nil
}

// ExecReloads runs Reload executions like ExecClaims; each result is 1 when written.
func (b *Binding) ExecReloads(ctx context.Context, c rueidis.Client, execs []rueidis.LuaExec) ([]int64, error) {
	out := make([]int64, 0, len(execs))
	for _, r := range fillScript.ExecMulti(ctx, c, b.batches(execs, true)...) {
		vals, err := r.AsIntSlice()
		if err != nil {
			return nil, err
		}
		out = append(out, vals...)
	}
	return out, nil
}

// batches joins per-key executions into script calls of BatchKeys keys:
// the record first when there is one, each key's arguments prefixed by
// their count when counted.
func (b *Binding) batches(execs []rueidis.LuaExec, counted bool) []rueidis.LuaExec {
	var out []rueidis.LuaExec
	for lo := 0; lo < len(execs); lo += BatchKeys {
		out = append(out, b.join(execs[lo:min(lo+BatchKeys, len(execs))], counted))
	}
	return out
}

func (b *Binding) join(execs []rueidis.LuaExec, counted bool) rueidis.LuaExec {
	var j rueidis.LuaExec
	j.Args = append(j.Args, "0")
	if b.Record != "" {
		j.Keys, j.Args[0] = append(j.Keys, b.Record), "1"
	}
	for _, e := range execs {
		j.Keys = append(j.Keys, e.Keys...)
		if counted {
			j.Args = append(j.Args, strconv.Itoa(len(e.Args)))
		}
		j.Args = append(j.Args, e.Args...)
	}
	return j
}

func evalCmd(rb rueidis.Builder, script string, e rueidis.LuaExec) rueidis.Completed {
	return rb.Eval().Script(script).Numkeys(int64(len(e.Keys))).Key(e.Keys...).Arg(e.Args...).Build()
}

func (b *Binding) fillExec(key, token string, v *Value, mode string, overwrite bool, negTTL time.Duration) rueidis.LuaExec {
	keys := []string{key, LeaseKey(key), NegKey(key), StaleKey(key)}
	over := "0"
	if overwrite {
		over = "1"
	}
	if v == nil {
		return rueidis.LuaExec{Keys: keys, Args: []string{token, mode, over, strconv.FormatInt(max(negTTL.Milliseconds(), 1), 10), "0", "0", ""}}
	}
	w := b.writeArgs(v)
	return rueidis.LuaExec{Keys: keys, Args: append([]string{token, w.mode, over, w.ttl, w.expiresAt, w.staleTTL, w.stale}, w.value...)}
}

// claim decides what a refresh does with each of many keys, atomically: a
// present key is kept ('p') after its expiry is recorded anew when the record
// is off by over a second (action r) or
// its TTL is renewed (action x: its value is the change feed's, current
// already), or leased for a reload that overwrites it (action l: 'l'); a
// missing key is leased for a fill ('a'). 'h': someone else holds the lease.
// KEYS: [record,] then per key: key, lease, stale. ARGV: has record (1 or 0),
// then per key: action, token, lease ms, now (unix ms), ttl ms, stale copy
// ttl ms (0: none).
const claim = `local rec = nil
local k = 0
if ARGV[1] == '1' then rec = KEYS[1]; k = 1 end
local function one(key, lease, stale, action, token, leaseMs, now, ttl, staleTTL)
  local pttl = redis.call('PTTL', key)
  if pttl ~= -2 and action ~= 'l' then
    if action == 'x' and pttl >= 0 then
      pttl = tonumber(ttl)
      redis.call('PEXPIRE', key, pttl)
      if tonumber(staleTTL) > 0 then redis.call('PEXPIRE', stale, staleTTL) end
    end
    if rec then
      if pttl < 0 then
        redis.call('ZREM', rec, key)
      else
        local at = tonumber(now) + pttl
        local was = redis.call('ZSCORE', rec, key)
        if action == 'x' or not was or math.abs(tonumber(was) - at) > 1000 then redis.call('ZADD', rec, at, key) end
      end
    end
    return 'p'
  end
  if not redis.call('SET', lease, token, 'NX', 'PX', leaseMs) then return 'h' end
  if pttl == -2 then return 'a' end
  return 'l'
end
local out = {}
local a = 2
while k < #KEYS do
  out[#out + 1] = one(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5])
  a = a + 6
  k = k + 3
end
return out`

// Claim actions for a present key.
const (
	ClaimRecord = "r" // keep it; record its expiry anew
	ClaimRenew  = "x" // keep it with a renewed TTL (its value is current)
	ClaimLease  = "l" // lease it for a reload that overwrites it
)

// ClaimCmd starts a refresh of key: see claim. Its result is ['p'] (present,
// kept), ['a'] (missing, leased), ['l'] (present, leased) or ['h'] (lease
// held by another).
func (b *Binding) ClaimCmd(rb rueidis.Builder, key, action, token string, lease time.Duration, now time.Time) rueidis.Completed {
	return evalCmd(rb, claim, b.join([]rueidis.LuaExec{b.Claim(key, action, token, lease, now)}, false))
}

// Claim is ClaimCmd's keys and arguments, for ExecClaims.
func (b *Binding) Claim(key, action, token string, lease time.Duration, now time.Time) rueidis.LuaExec {
	keys := []string{key, LeaseKey(key), StaleKey(key)}
	ttl := b.ttl()
	staleTTL := int64(0)
	if b.Stale > 0 {
		staleTTL = (ttl + b.Stale).Milliseconds()
	}
	return rueidis.LuaExec{Keys: keys, Args: []string{action, token, strconv.FormatInt(max(lease.Milliseconds(), 1), 10),
		strconv.FormatInt(now.UnixMilli(), 10), strconv.FormatInt(ttl.Milliseconds(), 10), strconv.FormatInt(staleTTL, 10)}}
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
