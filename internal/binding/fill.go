package binding

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// NewToken returns a random token: a lease's, or a write-behind drainer's
// while it holds its role.
func NewToken() string {
	var tok [16]byte
	rand.Read(tok[:])
	return hex.EncodeToString(tok[:])
}

// LeaseCmd takes the lease (c.Lease) for token, if nobody holds it.
func (c Companions) LeaseCmd(rb rueidis.Builder, token string, ttl time.Duration) rueidis.Completed {
	return rb.Set().Key(c.Lease).Value(token).Nx().Px(ttl).Build()
}

// release drops a lease if token still holds it.
const release = `if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 1`

// ReleaseCmd gives up token's lease (a fill that failed).
func (c Companions) ReleaseCmd(rb rueidis.Builder, token string) rueidis.Completed {
	return rb.Eval().Script(release).Numkeys(1).Key(c.Lease).Arg(token).Build()
}

// InvalidateCmd removes key's value, lease, "not found" marker, stale
// copy and exists marker at once: a fill racing with the invalidation
// loses.
func InvalidateCmd(rb rueidis.Builder, key string) rueidis.Completed {
	c := CompanionsOf(key)
	return rb.Unlink().Key(key, c.Lease, c.Neg, c.Stale, c.Exists).Build()
}

// AppendInvalidate appends InvalidateCmd, and the removal of key from the
// expiry record when the cache keeps one (an invalidated key is not
// reloaded when its old expiry comes): the change feed's removal of a key
// whose row is gone, or cannot be written. The cache's removal count is
// bumped first, so a watched reload (watch.go) that read the row before is
// refused even when the key was missing already.
func (b *Binding) AppendInvalidate(cmds []rueidis.Completed, rb rueidis.Builder, key string) []rueidis.Completed {
	cmds = append(cmds, rb.Incr().Key(RemovalsKey(b.Name)).Build(), InvalidateCmd(rb, key))
	return b.appendUnrecord(cmds, rb, key)
}

func (b *Binding) appendUnrecord(cmds []rueidis.Completed, rb rueidis.Builder, key string) []rueidis.Completed {
	if b.Record != "" {
		cmds = append(cmds, rb.Zrem().Key(b.Record).Member(key).Build())
	}
	return cmds
}

// markExists defines markExists(key, exists) for a script that removes
// key when the change feed does not know its row gone: if key holds a
// value, exists is set, for what is left of the value's TTL. The value may
// be the feed's write of a commit that other sessions cannot see yet (its
// commit is decoded before it is visible), which a fill could not find:
// the marker stops such a fill from marking the key "not found" (fill),
// as the value it removed would have.
const markExists = `local function markExists(key, exists)
  local ttl = redis.call('PTTL', key)
  if ttl == -1 then redis.call('SET', exists, '1')
  elseif ttl >= 0 then redis.call('SET', exists, '1', 'PX', math.max(ttl, 1)) end
end
`

// notFound is a watched reload's "not found" marker KEYS[1], for ARGV[1]
// ms, in a cache a change feed keeps: none while the key's exists marker
// KEYS[2] is there (see fill).
const notFound = `if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
return 1`

// drop is an invalidation's removal of a key that is not the change
// feed's. KEYS: key, lease, neg, stale, exists.
const drop = markExists + `markExists(KEYS[1], KEYS[5])
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return 1`

// AppendDrop appends the removal of a row's key by an invalidation that is
// not the change feed's (Invalidate, check's repairs): as
// AppendInvalidate, but in a cache a change feed keeps, a key that holds a
// value leaves its exists marker, since its row may exist though a fill
// cannot see it yet.
func (b *Binding) AppendDrop(cmds []rueidis.Completed, rb rueidis.Builder, key string) []rueidis.Completed {
	if !b.Feed {
		return b.AppendInvalidate(cmds, rb, key)
	}
	c := CompanionsOf(key)
	cmds = append(cmds, rb.Incr().Key(RemovalsKey(b.Name)).Build(),
		rb.Eval().Script(drop).Numkeys(5).Key(key, c.Lease, c.Neg, c.Stale, c.Exists).Build())
	return b.appendUnrecord(cmds, rb, key)
}

// fill writes, for each of many keys, a value, a "not found" marker or a
// deletion, each only if the fill's lease is still there and (unless it
// overwrites) the key is still missing: a change-feed write either sets the
// key or ends the lease, an invalidation ends the lease, so a fill that read
// the row before a newer change loses. While a key's exists marker is
// there, a fill that found no row writes no "not found" marker (the
// deletion only): it may have read before the change feed's latest commit
// of the row was visible (markExists); a value ends the marker. It returns
// 1 (written) or 0 per key, or 2 when a write-behind write of the key is
// queued (its pending mark names an entry still in the stream): the queue
// owns the key, and the fill writes nothing (a mark whose entry is gone is
// a leftover, and removed). A lease that is another's (ours ran out) is
// left as it is: its TTL bounds how long that fill may take. Given the
// cache's expiry record, it records each value's expiry and removes a
// deleted key, in the same step. KEYS: [record,] [stream, pending, queued
// (a write-behind cache),] then per key: key, lease, neg, stale, exists.
// ARGV: has record (1 or 0), write-behind (1 or 0), token, then per key:
// the count of its arguments, then mode (s string, h hash, n not found, d
// delete), overwrite (1 or 0), ttl ms, expires at (unix ms), stale copy
// ttl ms (0: none), stale copy, value...
const fill = `local rec, stream, pending, queuedv, k0 = nil, nil, nil, nil, 1
if ARGV[1] == '1' then rec, k0 = KEYS[k0], k0 + 1 end
if ARGV[2] == '1' then stream, pending, queuedv, k0 = KEYS[k0], KEYS[k0 + 1], KEYS[k0 + 2], k0 + 3 end
local token = ARGV[3]
local out, zadd, zrem = {}, {}, {}
local a = 4
for k = k0, #KEYS, 5 do
  local key, lease, neg, stale, exists = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local mode, over, ttl, staleTTL = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3]), tonumber(ARGV[a + 5])
  local at, v, last = ARGV[a + 4], a + 7, a + tonumber(ARGV[a])
  a = last + 1
  local r = 0
  local queued = false
  if stream then
    local id = redis.call('HGET', pending, key)
    if id and #redis.call('XRANGE', stream, id, id) > 0 then queued = true
    elseif id then
      redis.call('HDEL', pending, key)
      redis.call('HDEL', queuedv, key)
    end
  end
  if queued then
    if redis.call('GET', lease) == token then redis.call('DEL', lease) end
    r = 2
  elseif redis.call('GET', lease) == token then
    redis.call('DEL', lease)
    if mode == 's' then
      local set
      if over == '1' then
        if ttl > 0 then set = redis.call('SET', key, ARGV[v], 'PX', ttl) else set = redis.call('SET', key, ARGV[v]) end
      elseif ttl > 0 then
        set = redis.call('SET', key, ARGV[v], 'NX', 'PX', ttl)
      else
        set = redis.call('SET', key, ARGV[v], 'NX')
      end
      if set then r = 1 end
    elseif over == '1' or redis.call('EXISTS', key) == 0 then
      r = 1
      if mode == 'h' then
        redis.call('DEL', key)
        redis.call('HSET', key, unpack(ARGV, v, last))
        if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
      else
        redis.call('DEL', key, stale)
        if mode == 'n' and redis.call('EXISTS', exists) == 0 then redis.call('SET', neg, '1', 'PX', ttl) end
        if rec then zrem[#zrem + 1] = key end
      end
    end
  end
  if r == 1 and (mode == 's' or mode == 'h') then
    redis.call('DEL', neg, exists)
    if staleTTL > 0 then redis.call('SET', stale, ARGV[v - 1], 'PX', staleTTL) end
    if rec and ttl > 0 then zadd[#zadd + 1] = at; zadd[#zadd + 1] = key end
  end
  out[#out + 1] = r
end
if #zadd > 0 then redis.call('ZADD', rec, unpack(zadd)) end
if #zrem > 0 then redis.call('ZREM', rec, unpack(zrem)) end
return out`

// Fill is one key's write for ExecFills or Watched.Exec; make it with
// Binding.Fill.
type Fill struct {
	Key       string
	overwrite bool // write over a present key
	// The value; or mode n (the "not found" marker, for ttl) or d (delete).
	writeArgs
}

// Fill is the write of v under key by a fill that holds the key's lease (or
// watches the key): a value only while the key is missing, or over a
// present key when overwrite is set (the key was present when claimed). A nil v (no row)
// deletes the key, or, when negative, writes the "not found" marker for
// negTTL.
func (b *Binding) Fill(key string, v *Value, overwrite, negative bool, negTTL time.Duration) Fill {
	if v == nil {
		f := Fill{Key: key, overwrite: overwrite, writeArgs: writeArgs{mode: "d", ttl: max(negTTL.Milliseconds(), 1)}}
		if negative {
			f.mode = "n"
		}
		return f
	}
	return Fill{Key: key, overwrite: overwrite, writeArgs: b.writeArgs(v)}
}

// args are the fill script's arguments for f.
func (f Fill) args() []string {
	over := "0"
	if f.overwrite {
		over = "1"
	}
	return append([]string{f.mode, over, strconv.FormatInt(f.ttl, 10), strconv.FormatInt(f.expiresAt, 10),
		strconv.FormatInt(f.staleTTL, 10), f.stale}, f.value...)
}

// Deletes tells a fill that removes its key (no row).
func (f Fill) Deletes() bool { return f.mode == "n" || f.mode == "d" }

// ExecFills runs fills under token's leases, BatchKeys keys
// a script call, in one pipeline, and returns 1 (written) or 0 for each,
// or FillQueued for a key whose write-behind write is queued (not written).
// The expiry record is kept as record.go says; in a Redis Cluster, keys
// removed because their row is gone leave it if recorded due by dueBy.
func (b *Binding) ExecFills(ctx context.Context, c rueidis.Client, token string, fills []Fill, dueBy time.Time) ([]int64, error) {
	aside := b.recordAside(c)
	if aside {
		var keys []string
		var at []int64
		for _, f := range fills {
			if f.expiresAt > 0 {
				keys, at = append(keys, f.Key), append(at, f.expiresAt)
			}
		}
		if err := b.record(ctx, c, keys, at, true); err != nil {
			return nil, err
		}
	}
	keys := make([]string, len(fills))
	for i, f := range fills {
		keys[i] = f.Key
	}
	head := rueidis.LuaExec{Args: []string{"0", "0", token}}
	if rec := b.inScript(c); rec != "" {
		head.Keys, head.Args[0] = append(head.Keys, rec), "1"
	}
	if b.Queued {
		head.Keys, head.Args[1] = append(head.Keys, StreamKey(b.Name), PendingKey(b.Name), QueuedKey(b.Name)), "1"
	}
	out := make([]int64, len(fills))
	err := fillScript.runBatches(ctx, c, head, keys, func(i int) ([]string, []string) {
		k, args := fills[i].Key, fills[i].args()
		c := CompanionsOf(k)
		return []string{k, c.Lease, c.Neg, c.Stale, c.Exists}, append([]string{strconv.Itoa(len(args))}, args...)
	}, func(i int, r rueidis.RedisMessage) error {
		var err error
		out[i], err = r.AsInt64()
		return err
	})
	if err != nil || !aside {
		return out, err
	}
	var written, gone []string
	var at []int64
	for i, f := range fills {
		switch {
		case out[i] != 1:
		case f.Deletes():
			gone = append(gone, f.Key)
		case f.expiresAt > 0:
			written, at = append(written, f.Key), append(at, f.expiresAt)
		}
	}
	if err := b.record(ctx, c, written, at, false); err != nil {
		return nil, err
	}
	return out, b.unrecord(ctx, c, gone, dueBy)
}

// claim decides what a refresh does with each of many keys, atomically: a
// missing key is leased for a fill ('a'); a present key is leased for a
// reload that overwrites it (action l: 'l'), or kept (action r), or kept
// with its TTL renewed (action x: its value is the change feed's, current
// already). A kept key's result is its TTL in ms (-1: none). Given the
// cache's expiry record, a kept key's expiry is recorded anew (when off by
// over a second, or renewed), or, without a TTL, it leaves the record.
// 'h': another fill holds the lease.
// KEYS: [record,] then per key: key, lease, stale. ARGV: has record (1 or
// 0), action, token, lease ms, stale copy's extra ms (0: no stale copy),
// now (unix ms), then per key its TTL in ms (for x).
const claim = `local rec, k0 = nil, 1
if ARGV[1] == '1' then rec, k0 = KEYS[1], 2 end
local action, token, leaseMs, staleExtra, now = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local out, zadd, zrem = {}, {}, {}
local a = 7
for k = k0, #KEYS, 3 do
  local key = KEYS[k]
  local pttl = redis.call('PTTL', key)
  if pttl ~= -2 and action ~= 'l' then
    if action == 'x' and pttl >= 0 then
      pttl = tonumber(ARGV[a])
      redis.call('PEXPIRE', key, pttl)
      if staleExtra > 0 then redis.call('PEXPIRE', KEYS[k + 2], pttl + staleExtra) end
    end
    if rec and pttl < 0 then
      zrem[#zrem + 1] = key
    elseif rec then
      local at = now + pttl
      local was = redis.call('ZSCORE', rec, key)
      if action == 'x' or not was or math.abs(tonumber(was) - at) > 1000 then zadd[#zadd + 1] = at; zadd[#zadd + 1] = key end
    end
    out[#out + 1] = tostring(pttl)
  elseif redis.call('SET', KEYS[k + 1], token, 'NX', 'PX', leaseMs) then
    if pttl == -2 then out[#out + 1] = 'a' else out[#out + 1] = 'l' end
  else
    out[#out + 1] = 'h'
  end
  a = a + 1
end
if #zadd > 0 then redis.call('ZADD', rec, unpack(zadd)) end
if #zrem > 0 then redis.call('ZREM', rec, unpack(zrem)) end
return out`

// Claim actions for a present key.
const (
	ClaimRecord = "r" // keep it; record its expiry anew
	ClaimRenew  = "x" // keep it with a renewed TTL (its value is current)
	ClaimLease  = "l" // lease it for a reload that overwrites it
)

// Claimed says what a claim did with one key.
type Claimed struct {
	Load    bool // the key is to be loaded and filled (overwritten when Present): its lease is ours, or it is watched
	Present bool // the key was there
	Held    bool // another fill holds the key's lease
	// TTL of a kept key (Present, not Load): -1 when it has none.
	TTL time.Duration
}

// ExecClaims starts a refresh of keys with action for present ones (see
// claim), BatchKeys keys a script call, in one pipeline. The expiry record
// is kept as record.go says; in a Redis Cluster, kept keys without a TTL
// leave it if recorded due by dueBy.
func (b *Binding) ExecClaims(ctx context.Context, c rueidis.Client, keys []string, action, token string, lease time.Duration, now, dueBy time.Time) ([]Claimed, error) {
	staleExtra := int64(0)
	if b.Stale > 0 {
		staleExtra = b.Stale.Milliseconds()
	}
	head := rueidis.LuaExec{Args: []string{"0", action, token, strconv.FormatInt(max(lease.Milliseconds(), 1), 10), strconv.FormatInt(staleExtra, 10), strconv.FormatInt(now.UnixMilli(), 10)}}
	if rec := b.inScript(c); rec != "" {
		head.Keys, head.Args[0] = []string{rec}, "1"
	}
	out := make([]Claimed, len(keys))
	err := claimScript.runBatches(ctx, c, head, keys, func(i int) ([]string, []string) {
		c := CompanionsOf(keys[i])
		return []string{keys[i], c.Lease, c.Stale}, []string{strconv.FormatInt(b.ttl().Milliseconds(), 10)}
	}, func(i int, r rueidis.RedisMessage) error {
		s, err := r.ToString()
		switch {
		case err != nil:
			return err
		case s == "a":
			out[i] = Claimed{Load: true}
		case s == "l":
			out[i] = Claimed{Load: true, Present: true}
		case s == "h":
			out[i] = Claimed{Held: true}
		default:
			ms, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return fmt.Errorf("claim: unexpected %q", s)
			}
			out[i] = Claimed{Present: true, TTL: time.Duration(ms) * time.Millisecond}
			if ms < 0 {
				out[i].TTL = -1
			}
		}
		return nil
	})
	if err != nil || !b.recordAside(c) {
		return out, err
	}
	var kept, untimed []string
	var at []int64
	for i, cl := range out {
		switch {
		case !cl.Present || cl.Load:
		case cl.TTL < 0:
			untimed = append(untimed, keys[i])
		default:
			kept, at = append(kept, keys[i]), append(at, now.Add(cl.TTL).UnixMilli())
		}
	}
	if err := b.record(ctx, c, kept, at, false); err != nil {
		return nil, err
	}
	return out, b.unrecord(ctx, c, untimed, dueBy)
}

// FillQueued is ExecFills' result for a key whose write-behind write is
// queued: the queue owns the key, and the fill wrote nothing.
const FillQueued = 2

// Scripts run by EVALSHA; BatchKeys keys a call: a script call per key
// would cost Redis more than the work inside it.
var (
	fillScript  = newScript(fill)
	claimScript = newScript(claim)
)

// BatchKeys is how many keys one script call of ExecClaims or ExecFills
// takes; the calls of a batch go in one pipeline.
const BatchKeys = 100

// script is a Lua script run by EVALSHA, and by EVAL when Redis does not
// have it yet (which also loads it).
type script struct{ body, sha string }

func newScript(body string) *script {
	sum := sha1.Sum([]byte(body))
	return &script{body: body, sha: hex.EncodeToString(sum[:])}
}

// do runs the script once, by EVALSHA (by EVAL when Redis lacks it).
func (s *script) do(ctx context.Context, c rueidis.Client, e rueidis.LuaExec) rueidis.RedisResult {
	r := c.Do(ctx, s.evalsha(c.B(), e))
	if err, ok := rueidis.IsRedisErr(r.Error()); ok && err.IsNoScript() {
		r = c.Do(ctx, evalCmd(c.B(), s.body, e))
	}
	return r
}

// runBatches runs the script over keys, BatchKeys keys a call (in a Redis
// Cluster, the keys of a call share a slot), in one pipeline. Each call's
// KEYS are head's, then each of its keys' KEYS; its ARGV head's, then each
// of its keys' arguments; perKey gives key i's KEYS and arguments, and
// result takes key i's reply.
func (s *script) runBatches(ctx context.Context, c rueidis.Client, head rueidis.LuaExec, keys []string,
	perKey func(i int) (keys, args []string), result func(i int, r rueidis.RedisMessage) error) error {
	groups := batches(c, keys)
	cmds := make(rueidis.Commands, len(groups))
	execs := make([]rueidis.LuaExec, len(groups))
	for g, idx := range groups {
		e := rueidis.LuaExec{Keys: slices.Clone(head.Keys), Args: slices.Clone(head.Args)}
		for _, i := range idx {
			k, a := perKey(i)
			e.Keys, e.Args = append(e.Keys, k...), append(e.Args, a...)
		}
		execs[g] = e
		cmds[g] = s.evalsha(c.B(), e)
	}
	res := c.DoMulti(ctx, cmds...)
	var again []int
	for g, r := range res {
		if e, ok := rueidis.IsRedisErr(r.Error()); ok && e.IsNoScript() {
			again = append(again, g)
		}
	}
	if len(again) > 0 {
		cmds = cmds[:0]
		for _, g := range again {
			cmds = append(cmds, evalCmd(c.B(), s.body, execs[g]))
		}
		for j, r := range c.DoMulti(ctx, cmds...) {
			res[again[j]] = r
		}
	}
	for g, r := range res {
		vals, err := r.ToArray()
		if err == nil && len(vals) != len(groups[g]) {
			err = fmt.Errorf("%d replies for %d keys", len(vals), len(groups[g]))
		}
		if err != nil {
			return err
		}
		for j, i := range groups[g] {
			if err := result(i, vals[j]); err != nil {
				return err
			}
		}
	}
	return nil
}

// batches splits the indexes of keys into script calls of at most
// BatchKeys keys; in a Redis Cluster the keys of a call share a hash slot,
// since Cluster refuses a script over keys of several slots.
func batches(c rueidis.Client, keys []string) [][]int {
	var out [][]int
	add := func(idx []int) {
		for lo := 0; lo < len(idx); lo += BatchKeys {
			out = append(out, idx[lo:min(lo+BatchKeys, len(idx))])
		}
	}
	if c.Mode() != rueidis.ClientModeCluster {
		idx := make([]int, len(keys))
		for i := range idx {
			idx[i] = i
		}
		add(idx)
		return out
	}
	bySlot := map[uint16][]int{}
	var slots []uint16
	for i, k := range keys {
		s := keySlot(k)
		if bySlot[s] == nil {
			slots = append(slots, s)
		}
		bySlot[s] = append(bySlot[s], i)
	}
	for _, s := range slots {
		add(bySlot[s])
	}
	return out
}

func (s *script) evalsha(rb rueidis.Builder, e rueidis.LuaExec) rueidis.Completed {
	return rb.Evalsha().Sha1(s.sha).Numkeys(int64(len(e.Keys))).Key(e.Keys...).Arg(e.Args...).Build()
}

func evalCmd(rb rueidis.Builder, script string, e rueidis.LuaExec) rueidis.Completed {
	return rb.Eval().Script(script).Numkeys(int64(len(e.Keys))).Key(e.Keys...).Arg(e.Args...).Build()
}

// writeArgs is how a value is written: mode (s string, h hash), TTL in ms
// (jittered; 0: none), when it expires (unix ms, for the expiry record; 0:
// never), the stale copy's TTL in ms (0: none) and content, and the value
// (the string, or field, value, ...).
type writeArgs struct {
	mode, stale              string
	ttl, staleTTL, expiresAt int64
	value                    []string
}

func (b *Binding) writeArgs(v *Value) writeArgs {
	t := b.ttl()
	w := writeArgs{mode: "s", ttl: t.Milliseconds()}
	if t > 0 {
		w.expiresAt = time.Now().Add(t).UnixMilli()
	}
	if b.Stale > 0 {
		w.staleTTL, w.stale = (t + b.Stale).Milliseconds(), rueidis.BinaryString(v.Result(b.Format))
	}
	if b.Format == FormatHash {
		w.mode, w.value = "h", v.Fields
		return w
	}
	w.value = []string{rueidis.BinaryString(v.Bytes)}
	return w
}

// appendValue appends the plain commands that store w (mode s or h) under
// key (whose companions are c) over whatever is there: its stale copy, then
// the value; a hash is replaced whole in one step (hashSet, which also ends
// the key's lease and "not found" marker).
func appendValue(cmds []rueidis.Completed, rb rueidis.Builder, key string, c Companions, w writeArgs) []rueidis.Completed {
	if w.staleTTL > 0 {
		cmds = append(cmds, rb.Set().Key(c.Stale).Value(w.stale).Px(time.Duration(w.staleTTL)*time.Millisecond).Build())
	}
	if w.mode == "h" {
		args := append([]string{strconv.FormatInt(w.ttl, 10)}, w.value...)
		return append(cmds, rb.Eval().Script(hashSet).Numkeys(3).Key(key, c.Lease, c.Neg).Arg(args...).Build())
	}
	set := rb.Set().Key(key).Value(w.value[0])
	if w.ttl > 0 {
		return append(cmds, set.Px(time.Duration(w.ttl)*time.Millisecond).Build())
	}
	return append(cmds, set.Build())
}
