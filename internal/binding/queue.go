package binding

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/redis/rueidis"
)

// Write-behind in Redis: a cache's queue is a stream with a consumer group;
// PutBehind's value and its queue entry are written in one step, and the
// key's pending mark (its field in PendingKey) names its newest queued
// entry (QueuedKey keeps its value). While the mark is there, the queue
// owns the key: no fill, refresh or dead letter puts an older row (or
// nothing) in place of the queued value (DESIGN invariant 7). The
// drainer's own steps are fenced by its token (OwnerKey): its
// acknowledgements and dead letters are scripts that check it, and its
// reads check it under WATCH and read in MULTI/EXEC, so a drainer that lost
// its role changes nothing more (invariant 8). On a Redis Cluster the
// queue's keys (names.go) and the cache's keys share the stream's slot.

// ErrFenced starts the error of a drainer's step refused because another
// drainer took over.
const ErrFenced = "FENCED"

// queue sets a value like a fresh feed write (ending a fill's lease and a
// not-found marker), appends the row to a write-behind stream and marks the
// key pending with the entry, atomically. KEYS: key, lease, neg, stale,
// stream, pending, queued[, record]. ARGV: mode (s|h), ttl ms, expires at
// (unix ms), stale copy ttl ms (0: none), stale copy, row JSON, row's
// column names, the value as Get returns it, value...
const queue = `redis.call('DEL', KEYS[2], KEYS[3])
local ttl = tonumber(ARGV[2])
if tonumber(ARGV[4]) > 0 then redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[4]) end
if ARGV[1] == 's' then
  if ttl > 0 then redis.call('SET', KEYS[1], ARGV[9], 'PX', ttl) else redis.call('SET', KEYS[1], ARGV[9]) end
else
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(ARGV, 9))
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
if KEYS[8] and ttl > 0 then redis.call('ZADD', KEYS[8], ARGV[3], KEYS[1]) end
local id = redis.call('XADD', KEYS[5], '*', 'key', KEYS[1], 'row', ARGV[6], 'cols', ARGV[7], 'v', ARGV[8])
redis.call('HSET', KEYS[6], KEYS[1], id)
redis.call('HSET', KEYS[7], KEYS[1], ARGV[8])
return id`

// QueueCmd writes v under key, appends row (JSON, with its column names
// joined by NUL, so the drainer need not parse the row, and v as Get
// returns it) to the cache's write-behind stream and marks key pending, in
// one step: a value is in Redis exactly when its write is queued.
func (b *Binding) QueueCmd(rb rueidis.Builder, key string, v *Value, row, cols string) rueidis.Completed {
	w := b.writeArgs(v)
	c := CompanionsOf(key)
	keys := []string{key, c.Lease, c.Neg, c.Stale, StreamKey(b.Name), PendingKey(b.Name), QueuedKey(b.Name)}
	if b.Record != "" {
		keys = append(keys, b.Record)
	}
	return rb.Eval().Script(queue).Numkeys(int64(len(keys))).Key(keys...).
		Arg(append([]string{w.mode, strconv.FormatInt(w.ttl, 10), strconv.FormatInt(w.expiresAt, 10), strconv.FormatInt(w.staleTTL, 10), w.stale,
			row, cols, rueidis.BinaryString(v.Result(b.Format))}, w.value...)...).Build()
}

// fence is the opening of every drainer script: KEYS[1] is the owner key,
// ARGV[1] the drainer's token.
const fence = `if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('` + ErrFenced + ` another drainer took over the queue') end
`

// ack acknowledges entries and ends the pending mark of each key whose
// newest queued entry is among them (with its queued value and the key's
// lease, so no fill that read the row before the commit writes after),
// doing for that key what its action says: k keep the key (the change feed
// writes the committed row), w write the committed row (given) over it
// unless the cache's removal count moved since ARGV[4] (then, as for d,
// remove the key: the next fill reads the row), d remove it; x only
// acknowledges (an entry a newer one of its key follows). Then the stream is
// trimmed below ARGV[3], or below the oldest entry still pending when that
// comes first. When ARGV[6] is 1 (a cache that holds every row), it
// returns the keys it kept (k) that are missing: an invalidation came while
// their write was queued, and they are to be loaded again. The marks of
// all the entries are read with one command, and ended with one. KEYS: owner, stream, removals, record (or the
// stream again), pending, queued, then per entry: for k key, lease; for w
// and d key, lease, neg, stale. ARGV: token, group, trim bound, removal
// count when the entries were read, has record (1|0), complete (1|0), then
// per entry: id, action, number of write arguments, then those: mode, ttl
// ms, expires at, stale ttl ms, stale copy, value...
const ack = fence + `local same = (redis.call('GET', KEYS[3]) or '0') == ARGV[4]
local rec = nil
if ARGV[5] == '1' then rec = KEYS[4] end
local ids, keyed, gone = {}, {}, {}
local a, k = 7, 7
while a <= #ARGV do
  local id, action, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  ids[#ids + 1] = id
  if action ~= 'x' then
    keyed[#keyed + 1] = {id, action, a, k}
    if action == 'k' then k = k + 2 else k = k + 4 end
  end
  a = a + 3 + n
end
local mine, fields, leases = {}, {}, {}
if #keyed > 0 then
  for i, e in ipairs(keyed) do fields[i] = KEYS[e[4]] end
  local marks = redis.call('HMGET', KEYS[5], unpack(fields))
  fields = {}
  for i, e in ipairs(keyed) do
    if marks[i] == e[1] then
      mine[#mine + 1] = e
      fields[#fields + 1] = KEYS[e[4]]
      leases[#leases + 1] = KEYS[e[4] + 1]
    end
  end
end
if #mine > 0 then
  redis.call('HDEL', KEYS[5], unpack(fields))
  redis.call('HDEL', KEYS[6], unpack(fields))
  redis.call('DEL', unpack(leases))
  for i, e in ipairs(mine) do
    local action, a, key, neg, stale = e[2], e[3], KEYS[e[4]], KEYS[e[4] + 2], KEYS[e[4] + 3]
    if action == 'w' and not same then action = 'd' end
    if action == 'w' then
      local n, mode, ttl, at, staleTTL, v = tonumber(ARGV[a + 2]), ARGV[a + 3], tonumber(ARGV[a + 4]), ARGV[a + 5], tonumber(ARGV[a + 6]), a + 8
      if mode == 's' then
        if ttl > 0 then redis.call('SET', key, ARGV[v], 'PX', ttl) else redis.call('SET', key, ARGV[v]) end
      else
        redis.call('DEL', key)
        redis.call('HSET', key, unpack(ARGV, v, a + 2 + n))
        if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
      end
      redis.call('DEL', neg)
      if staleTTL > 0 then redis.call('SET', stale, ARGV[a + 7], 'PX', staleTTL) end
      if rec and ttl > 0 then redis.call('ZADD', rec, at, key) end
    elseif action == 'd' then
      redis.call('DEL', key, stale)
      if rec then redis.call('ZREM', rec, key) end
    elseif ARGV[6] == '1' and redis.call('EXISTS', key) == 0 then
      gone[#gone + 1] = key
    end
  end
end
if #ids > 0 then redis.call('XACK', KEYS[2], ARGV[2], unpack(ids)) end
local bound = ARGV[3]
local p = redis.call('XPENDING', KEYS[2], ARGV[2])
if p[1] > 0 then
  local x, y = string.match(p[2], '(%d+)-(%d+)')
  local u, w = string.match(bound, '(%d+)-(%d+)')
  if #x < #u or (#x == #u and (x < u or (x == u and (#y < #w or (#y == #w and y < w))))) then bound = p[2] end
end
redis.call('XTRIM', KEYS[2], 'MINID', bound)
return gone`

// AckBatch is how many entries one acknowledging script call takes, so the
// script never unpacks more values than Lua can (a few thousand).
const AckBatch = 500

// Ack actions (see AckCmds).
const (
	AckKeep   = "k" // the key already holds the committed row, or the change feed writes it
	AckWrite  = "w" // write the committed row over the queued value
	AckDelete = "d" // remove the key: the next fill reads the row
	AckOnly   = "x" // only acknowledge: a newer entry of the key follows
)

// Acked is one entry to acknowledge: its stream ID, key and what to do
// with the key if the entry is its newest queued write; Row is the
// committed value, for (and only for) AckWrite.
type Acked struct {
	ID, Key string
	Action  string
	Row     *Value
}

// AckCmds acknowledges entries (in stream order), AckBatch a script call,
// and trims the stream below the last one, never past an entry still
// pending; removals is the cache's removal count read with the entries,
// before their commit. With complete (a cache that holds every row) each
// call's reply lists the kept keys found missing.
func (b *Binding) AckCmds(rb rueidis.Builder, token, removals string, entries []Acked, trimBelow string, complete bool) rueidis.Commands {
	rec, hasRec := b.recordOr(StreamKey(b.Name))
	full := "0"
	if complete {
		full = "1"
	}
	var cmds rueidis.Commands
	for lo := 0; lo < len(entries); lo += AckBatch {
		chunk := entries[lo:min(lo+AckBatch, len(entries))]
		keys := []string{OwnerKey(b.Name), StreamKey(b.Name), RemovalsKey(b.Name), rec, PendingKey(b.Name), QueuedKey(b.Name)}
		args := []string{token, DrainGroup, trimBelow, removals, hasRec, full}
		if lo+AckBatch < len(entries) { // not the last call: trim below its own last entry
			args[2] = AfterID(chunk[len(chunk)-1].ID)
		}
		for _, e := range chunk {
			if e.Action == AckOnly {
				args = append(args, e.ID, AckOnly, "0")
				continue
			}
			c := CompanionsOf(e.Key)
			if e.Action == AckKeep {
				keys = append(keys, e.Key, c.Lease)
				args = append(args, e.ID, AckKeep, "0")
				continue
			}
			keys = append(keys, e.Key, c.Lease, c.Neg, c.Stale)
			if e.Action == AckDelete {
				args = append(args, e.ID, AckDelete, "0")
				continue
			}
			w := b.writeArgs(e.Row)
			args = append(args, e.ID, AckWrite, strconv.Itoa(5+len(w.value)), w.mode, strconv.FormatInt(w.ttl, 10),
				strconv.FormatInt(w.expiresAt, 10), strconv.FormatInt(w.staleTTL, 10), w.stale)
			args = append(args, w.value...)
		}
		cmds = append(cmds, rb.Eval().Script(ack).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build())
	}
	return cmds
}

// dead moves an entry to the dead-letter stream and out of the queue, and,
// when it is its key's newest queued write, removes the key (bumping the
// removal count first, as every removal does) and its pending mark: Redis
// never keeps a value the database refused, and keeps a newer queued one.
// With a change feed, a key that held a value leaves its exists marker, as
// an invalidation's does (AppendDrop). It returns 1 when it removed the
// key. KEYS: owner, dead, stream, removals, record (or the stream again),
// pending, queued, key, lease, neg, stale, exists. ARGV: token, group, id,
// row, error, has record (1|0), has a feed (1|0).
const dead = fence + markExists + `redis.call('XADD', KEYS[2], '*', 'key', KEYS[8], 'row', ARGV[4], 'id', ARGV[3], 'error', ARGV[5])
redis.call('XACK', KEYS[3], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[3], ARGV[3])
if redis.call('HGET', KEYS[6], KEYS[8]) ~= ARGV[3] then return 0 end
redis.call('INCR', KEYS[4])
redis.call('HDEL', KEYS[6], KEYS[8])
redis.call('HDEL', KEYS[7], KEYS[8])
if ARGV[7] == '1' then markExists(KEYS[8], KEYS[12]) end
redis.call('DEL', KEYS[8], KEYS[9], KEYS[10], KEYS[11])
if ARGV[6] == '1' then redis.call('ZREM', KEYS[5], KEYS[8]) end
return 1`

// DeadCmd dead-letters the entry id of key (row, refused with cause).
func (b *Binding) DeadCmd(rb rueidis.Builder, token, id, key, row, cause string) rueidis.Completed {
	rec, hasRec := b.recordOr(StreamKey(b.Name))
	c := CompanionsOf(key)
	feed := "0"
	if b.Feed {
		feed = "1"
	}
	return rb.Eval().Script(dead).Numkeys(12).
		Key(OwnerKey(b.Name), DeadLetterKey(b.Name), StreamKey(b.Name), RemovalsKey(b.Name), rec,
			PendingKey(b.Name), QueuedKey(b.Name), key, c.Lease, c.Neg, c.Stale, c.Exists).
		Arg(token, DrainGroup, id, row, cause, hasRec, feed).Build()
}

// recordOr returns, for a script's KEYS, the cache's expiry record and "1",
// or, when it keeps none, placeholder (a key of the script's slot) and "0".
func (b *Binding) recordOr(placeholder string) (string, string) {
	if b.Record != "" {
		return b.Record, "1"
	}
	return placeholder, "0"
}

// QueueSlotError tells why, on a Redis Cluster, a write-behind cache's keys
// would not share its queue's slot (the queue's scripts need one slot), or
// returns nil when they always do.
func QueueSlotError(cache string, t *Template) error {
	if tag, ok := t.HashTag(); ok && keySlot(tag) == keySlot(cache) {
		return nil
	}
	return fmt.Errorf("on a Redis Cluster a write-behind cache's keys must share its queue's slot: start the key template with the hash tag {{%s}} (e.g. \"{{%s}}:%s\")", cache, cache, t)
}

// AfterID gives the smallest stream ID greater than id ("ms-seq").
func AfterID(id string) string {
	ms, seq, _ := strings.Cut(id, "-")
	m, err1 := strconv.ParseUint(ms, 10, 64)
	n, err2 := strconv.ParseUint(seq, 10, 64)
	switch {
	case err1 != nil || err2 != nil:
		return id // not an ID Redis gave: trim nothing more than before it
	case n < math.MaxUint64:
		return ms + "-" + strconv.FormatUint(n+1, 10)
	case m < math.MaxUint64:
		return strconv.FormatUint(m+1, 10) + "-0"
	}
	return id
}
