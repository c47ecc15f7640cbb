package binding

import "testing"

// TestCompanionNames pins the bytes of a key's companions, and that they
// share the key's Redis Cluster slot. A changed name strands the leases,
// markers and stale copies older processes and older data hold.
func TestCompanionNames(t *testing.T) {
	for _, c := range []struct {
		key  string
		want Companions
	}{
		{"p:1", Companions{"cachesync:lease:{p:1}", "cachesync:neg:{p:1}", "cachesync:stale:{p:1}", "cachesync:exists:{p:1}"}},
		{"price:apple", Companions{"cachesync:lease:{price:apple}", "cachesync:neg:{price:apple}", "cachesync:stale:{price:apple}", "cachesync:exists:{price:apple}"}},
		// A tag of its own is reused, so "{price:apple}" shares "price:apple"'s.
		{"{price:apple}", Companions{"cachesync:lease:{price:apple}", "cachesync:neg:{price:apple}", "cachesync:stale:{price:apple}", "cachesync:exists:{price:apple}"}},
		{"{shop}:p:1", Companions{"cachesync:lease:{shop}:p:1", "cachesync:neg:{shop}:p:1", "cachesync:stale:{shop}:p:1", "cachesync:exists:{shop}:p:1"}},
		{"p:{shop}", Companions{"cachesync:lease:p:{shop}", "cachesync:neg:p:{shop}", "cachesync:stale:p:{shop}", "cachesync:exists:p:{shop}"}},
		// A '}' but no tag: a short tag of the key's slot in front.
		{"a}b", Companions{"cachesync:lease:{4w2}a}b", "cachesync:neg:{4w2}a}b", "cachesync:stale:{4w2}a}b", "cachesync:exists:{4w2}a}b"}},
		{"p:a}b", Companions{"cachesync:lease:{cov}p:a}b", "cachesync:neg:{cov}p:a}b", "cachesync:stale:{cov}p:a}b", "cachesync:exists:{cov}p:a}b"}},
		{"}", Companions{"cachesync:lease:{exv}}", "cachesync:neg:{exv}}", "cachesync:stale:{exv}}", "cachesync:exists:{exv}}"}},
		{"p:{}x", Companions{"cachesync:lease:{5n4}p:{}x", "cachesync:neg:{5n4}p:{}x", "cachesync:stale:{5n4}p:{}x", "cachesync:exists:{5n4}p:{}x"}},
		// The empty key: a tag of slot 0, then an empty pair of braces.
		{"", Companions{"cachesync:lease:{1bz}{}", "cachesync:neg:{1bz}{}", "cachesync:stale:{1bz}{}", "cachesync:exists:{1bz}{}"}},
	} {
		got := CompanionsOf(c.key)
		if got != c.want {
			t.Errorf("CompanionsOf(%q) = %q, want %q", c.key, got, c.want)
		}
		for _, name := range []string{got.Lease, got.Neg, got.Stale, got.Exists} {
			if keySlot(name) != keySlot(c.key) {
				t.Errorf("%s: slot %d, its key %q: slot %d", name, keySlot(name), c.key, keySlot(c.key))
			}
		}
	}
}

// TestCacheNames pins the bytes of each cache's keys, and that they share
// the cache's slot (a write-behind cache's keys are tagged with its name,
// and a queue's scripts take its keys with these in one slot).
func TestCacheNames(t *testing.T) {
	for _, c := range []struct {
		fn         string
		name       func(string) string
		cache, key string
	}{
		{"StreamKey", StreamKey, "p", "cachesync:wb:{p}"},
		{"DeadLetterKey", DeadLetterKey, "p", "cachesync:wb:dead:{p}"},
		{"OwnerKey", OwnerKey, "p", "cachesync:wb:owner:{p}"},
		{"PendingKey", PendingKey, "p", "cachesync:wb:pending:{p}"},
		{"QueuedKey", QueuedKey, "p", "cachesync:wb:queued:{p}"},
		{"RemovalsKey", RemovalsKey, "p", "cachesync:removals:{p}"},
		{"RecordKey", RecordKey, "p", "cachesync:expiry:{p}"},
		{"StreamKey", StreamKey, "order_lines2", "cachesync:wb:{order_lines2}"},
		{"DeadLetterKey", DeadLetterKey, "order_lines2", "cachesync:wb:dead:{order_lines2}"},
		{"OwnerKey", OwnerKey, "order_lines2", "cachesync:wb:owner:{order_lines2}"},
		{"PendingKey", PendingKey, "order_lines2", "cachesync:wb:pending:{order_lines2}"},
		{"QueuedKey", QueuedKey, "order_lines2", "cachesync:wb:queued:{order_lines2}"},
		{"RemovalsKey", RemovalsKey, "order_lines2", "cachesync:removals:{order_lines2}"},
		{"RecordKey", RecordKey, "order_lines2", "cachesync:expiry:{order_lines2}"},
	} {
		got := c.name(c.cache)
		if got != c.key {
			t.Errorf("%s(%q) = %q, want %q", c.fn, c.cache, got, c.key)
		}
		if keySlot(got) != keySlot(c.cache) || keySlot(got) != keySlot("{"+c.cache+"}:x") {
			t.Errorf("%s: slot %d, its cache %q: slot %d", got, keySlot(got), c.cache, keySlot(c.cache))
		}
	}
}

// TestOtherNames pins the names that are neither a key's nor a cache's.
func TestOtherNames(t *testing.T) {
	for _, c := range [][2]string{
		{Reserved, "cachesync:"},
		{StateKey("shop"), "cachesync:state:shop"},
		{StateKey("a_1"), "cachesync:state:a_1"},
		{FeedOwnerKey("shop", "db"), "cachesync:feed:shop:db"},
		{DrainGroup, "cachesync"},
		{SessionPrefix, "cachesync:session:"},
		{LeaderboardPrefix, "cachesync:leaderboard:"},
		{RateLimitPrefix, "cachesync:ratelimit:"},
		{LockPrefix, "cachesync:lock:"},
		{TopicPrefix, "cachesync:topic:"},
	} {
		if c[0] != c[1] {
			t.Errorf("%q, want %q", c[0], c[1])
		}
	}
}
