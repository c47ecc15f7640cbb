package binding

import (
	"slices"
	"strings"
	"sync"
)

// Every Redis key of cachesync's own is named in this file, and only here.
// All begin with Reserved ("cachesync:"), which no cache's key may begin
// with. KEY is a cache's key, CACHE a cache's name, CONFIG a config's name.
//
// Per key, its companions (Companions, from CompanionsOf), in KEY's Redis
// Cluster slot:
//
//	cachesync:lease:{KEY}          string  token of the fill that holds KEY's lease (PX: the lease)
//	cachesync:neg:{KEY}            string  "1": KEY's row was not found (PX: the negative TTL)
//	cachesync:stale:{KEY}          string  KEY's stale copy, as Get returns it (PX: TTL + Spec.Stale)
//	cachesync:exists:{KEY}         string  "1": an invalidation removed KEY's value in a cache a
//	                                       change feed keeps: no fill marks KEY not found while it
//	                                       stands (PX: what was left of the value's TTL)
//
// {KEY} is KEY in braces, or KEY itself when it has a hash tag of its own; a
// KEY with a '}' but no tag gets a short tag of its slot in front ({4w2}a}b
// for a}b), and the empty KEY is {TAG}{} with TAG a tag of slot 0 (see
// hashTagged). So "u" and "{u}" share their companions.
//
// A key's pending write-behind mark is not a key of its own: it is KEY's
// field in its cache's PendingKey, and KEY's queued value its field in
// QueuedKey.
//
// Per cache, in CACHE's slot (a write-behind cache's keys share it):
//
//	cachesync:wb:{CACHE}           stream  write-behind queue (StreamKey): entries key, row, cols, v,
//	                                       read by the consumer group "cachesync" (DrainGroup)
//	cachesync:wb:dead:{CACHE}      stream  dead letters (DeadLetterKey): entries key, row, id, error
//	cachesync:wb:owner:{CACHE}     string  token of the drainer that holds the queue (OwnerKey)
//	cachesync:wb:pending:{CACHE}   hash    pending marks (PendingKey): KEY → ID of its newest queued entry
//	cachesync:wb:queued:{CACHE}    hash    queued values (QueuedKey): KEY → its newest queued value
//	cachesync:removals:{CACHE}     string  count of removals of CACHE's keys (RemovalsKey), INCR'd
//	cachesync:expiry:{CACHE}       zset    expiry record (RecordKey): KEY scored by when it expires (unix ms)
//
// Per config:
//
//	cachesync:state:CONFIG         hash    what the caches hold (StateKey; state.State):
//	                                       lsn:SOURCE → LSN, cache:NAME → FINGERPRINT/SINCE
//	cachesync:feed:CONFIG:SOURCE   string  token of the feed session that holds SOURCE's slot
//	                                       (FeedOwnerKey; state.Claim): its writes are fenced on it
//	cachesync:fence:{TAG}:CONFIG:SOURCE
//	                               string  on a Redis Cluster, the same token in each hash slot,
//	                                       TAG a tag of the slot (FeedFenceKey; fence.go): the
//	                                       feed's writes to a node check one of its slots'
//
// The recipes the daemon's HTTP API serves beside the caches (the session,
// leaderboard, ratelimit, lock and pubsub packages), each under a prefix of
// its own, an ID after it in a hash tag so that one ID's keys share a slot:
//
//	cachesync:session:{ID}         hash    a session (SessionPrefix): data, idle, end
//	cachesync:leaderboard:{all:NAME}, {day:YYYY-MM-DD:NAME}, {week:YYYY-Www:NAME}
//	                               zset    a board (LeaderboardPrefix), with :m (hash) and :n beside it
//	cachesync:ratelimit:POLICY:ALGORITHM:ID
//	                               hash, zset, string  a limiter's state of one ID (RateLimitPrefix)
//	cachesync:lock:{NAME}          string  a lock's holder token (LockPrefix), with :fence (a counter) beside it
//	cachesync:topic:{TOPIC}        stream  a topic's retained messages (TopicPrefix)
//
// Renaming any of these strands what older processes and older data hold
// (docs/ARCHITECTURE.md, "Limits": Upgrading); names_test.go pins their
// bytes.

// Reserved is the prefix of cachesync's own keys (state, leases, markers,
// queues): no cache's key may have it. Parse refuses such a key and
// Render a row that would give one, whatever the template.
const Reserved = "cachesync:"

// The prefixes of the recipes' keys, which the recipe packages complete.
const (
	SessionPrefix     = Reserved + "session:"
	LeaderboardPrefix = Reserved + "leaderboard:"
	RateLimitPrefix   = Reserved + "ratelimit:"
	LockPrefix        = Reserved + "lock:"
	TopicPrefix       = Reserved + "topic:"
)

// The prefixes of a key's companions: what precedes hashTagged(KEY).
const (
	leasePrefix  = Reserved + "lease:"
	negPrefix    = Reserved + "neg:"
	stalePrefix  = Reserved + "stale:"
	existsPrefix = Reserved + "exists:"
)

// Companions are the names of the keys that hold cachesync's metadata about
// one key, all in that key's Redis Cluster slot. (Its pending write-behind
// mark is no key of its own: it is the key's field in PendingKey.)
type Companions struct {
	Lease string // the lease: a fill in progress
	Neg   string // the "row not found" marker
	Stale string // the stale copy (Spec.Stale)
	// Exists marks a key whose value an invalidation removed in a cache a
	// change feed keeps: the value may have been the feed's write of a
	// commit not visible yet, so a fill that finds no row marks nothing
	// "not found" (fill.go: AppendDrop, markExists).
	Exists string
}

// CompanionsOf names the companions of key.
func CompanionsOf(key string) Companions {
	t := hashTagged(key)
	return Companions{Lease: leasePrefix + t, Neg: negPrefix + t, Stale: stalePrefix + t, Exists: existsPrefix + t}
}

// StreamKey names the write-behind stream of cache.
func StreamKey(cache string) string { return Reserved + "wb:{" + cache + "}" }

// DeadLetterKey names the dead-letter stream of cache.
func DeadLetterKey(cache string) string { return Reserved + "wb:dead:{" + cache + "}" }

// OwnerKey names the token of the drainer that holds cache's drain lock.
func OwnerKey(cache string) string { return Reserved + "wb:owner:{" + cache + "}" }

// PendingKey names the pending marks of cache: a hash of each key with
// queued writes to the ID of its newest queued entry.
func PendingKey(cache string) string { return Reserved + "wb:pending:{" + cache + "}" }

// QueuedKey names the queued values of cache: a hash of each key with
// queued writes to its newest queued value, as Get returns it.
func QueuedKey(cache string) string { return Reserved + "wb:queued:{" + cache + "}" }

// DrainGroup is the consumer group the drainers read a stream with.
const DrainGroup = "cachesync"

// RemovalsKey names the count of removals of cache's keys, which a watched
// reload watches (watch.go).
func RemovalsKey(cache string) string { return Reserved + "removals:{" + cache + "}" }

// RecordKey names the expiry record of a cache that refreshes: a sorted set
// of its keys scored by when they expire (unix ms), kept as record.go says.
func RecordKey(cache string) string { return Reserved + "expiry:{" + cache + "}" }

// StateKey names the state record of the config named config (state.State).
func StateKey(config string) string { return Reserved + "state:" + config }

// FeedOwnerKey names the token of the change feed session that holds the
// replication slot of source in the config named config (state.Claim).
func FeedOwnerKey(config, source string) string {
	return Reserved + "feed:" + config + ":" + source
}

// keysOfCompanion returns the keys whose companion (of kind prefix) is
// named name: usually one, but "u" and "{u}" share their companions' names,
// and so can other odd pairs of keys (see hashTagged).
func keysOfCompanion(prefix, name string) []string {
	k := strings.TrimPrefix(name, prefix)
	var keys []string
	for _, u := range []string{k, strings.TrimSuffix(strings.TrimPrefix(k, "{"), "}"), k[min(strings.IndexByte(k, '}')+1, len(k)):], ""} {
		if hashTagged(u) == k && !slices.Contains(keys, u) {
			keys = append(keys, u)
		}
	}
	return keys
}

// hashTagged returns what follows a companion key's prefix, so that the
// companion hashes to the key's Redis Cluster slot: key itself when it
// has a tag of its own (Redis hashes only the first non-empty {...} part),
// else {key}, hashed whole as Redis hashes key. A key without a tag but with
// a '}', which would end those braces early, gets a short tag of its slot
// in front instead, and so does the empty key (an empty tag counts as none).
func hashTagged(key string) string {
	if _, ok := hashTag(key); ok {
		return key
	}
	if key == "" {
		return "{" + slotTags()[0] + "}{}"
	}
	if strings.IndexByte(key, '}') >= 0 {
		return "{" + slotTags()[keySlot(key)] + "}" + key
	}
	return "{" + key + "}"
}

// slotTags holds, for each hash slot, a short string that Redis hashes to it.
var slotTags = sync.OnceValue(func() []string {
	tags := make([]string, 16384)
	left := len(tags)
	const chars = "0123456789abcdefghijklmnopqrstuvwxyz"
	var try func(prefix string, n int)
	try = func(prefix string, n int) {
		for i := 0; i < len(chars) && left > 0; i++ {
			t := prefix + chars[i:i+1]
			if n > 1 {
				try(t, n-1)
			} else if s := keySlot(t); tags[s] == "" {
				tags[s], left = t, left-1
			}
		}
	}
	for n := 1; left > 0; n++ {
		try("", n)
	}
	return tags
})

// hashTag returns the part of key Redis Cluster hashes instead of the whole
// key: what lies between its first '{' and the next '}', when not empty.
func hashTag(key string) (string, bool) {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return "", false
	}
	j := strings.IndexByte(key[i+1:], '}')
	if j <= 0 {
		return "", false
	}
	return key[i+1 : i+1+j], true
}

// keySlot is the Redis Cluster hash slot of key: CRC16 of its hash tag (the
// first non-empty {...} part) or of the whole key, modulo 16384.
func keySlot(key string) uint16 {
	if tag, ok := hashTag(key); ok {
		key = tag
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc & 16383
}
