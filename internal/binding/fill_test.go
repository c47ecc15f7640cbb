package binding

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
)

// keysWithBraces are user keys whose companions must still hash to their
// slot: plain, with a tag of their own, and with braces that make no tag.
var keysWithBraces = []string{"p:1", "{shop}:p:1", "p:{shop}", "p:a}b", "p:{}x", "}", "{", "a{b", "p:{x}y}z", "{}{a}", "p:a}{b}", ""}

// TestCompanionSlots: a key's lease, "not found" marker, stale copy and
// exists marker hash to the key's Redis Cluster slot (a Cluster refuses a script over
// several slots), and each names the key back.
func TestCompanionSlots(t *testing.T) {
	for _, key := range keysWithBraces {
		cs := CompanionsOf(key)
		for prefix, c := range map[string]string{leasePrefix: cs.Lease, negPrefix: cs.Neg, stalePrefix: cs.Stale, existsPrefix: cs.Exists} {
			if keySlot(c) != keySlot(key) {
				t.Errorf("%s: slot %d, its key %q: slot %d", c, keySlot(c), key, keySlot(key))
			}
			if got := keysOfCompanion(prefix, c); !slices.Contains(got, key) {
				t.Errorf("keysOfCompanion(%q) = %q, want %q among them", c, got, key)
			}
		}
	}
	// Two keys that share their companions' names are both named back (a
	// rebuild's Clear removes the companions of either).
	for _, pair := range [][2]string{{"price:apple", "{price:apple}"}, {":a}29377", "{" + slotTags()[keySlot(":a}29377")] + "}:a}29377"}} {
		key, other := pair[0], pair[1]
		lease, otherLease := CompanionsOf(key).Lease, CompanionsOf(other).Lease
		if otherLease != lease {
			t.Fatalf("%q and %q: leases %q and %q, want one name", key, other, lease, otherLease)
		}
		if got := keysOfCompanion(leasePrefix, lease); !slices.Contains(got, key) || !slices.Contains(got, other) {
			t.Errorf("keysOfCompanion(%q) = %q, want %q and %q", lease, got, key, other)
		}
	}
}

// TestLostFillLeavesLease: a fill whose lease is now another's writes
// nothing and leaves that lease as it is: its TTL bounds how long the other
// fill may take, and a fill that outlived its lease must not extend it.
func TestLostFillLeavesLease(t *testing.T) {
	rc := testenv.StartRedis(t).Client(t)
	ctx := context.Background()
	b := testBinding(t, FormatString, time.Hour, "")
	if err := rc.Do(ctx, CompanionsOf("p:1").LeaseCmd(rc.B(), "other", 10*time.Second)).Error(); err != nil {
		t.Fatal(err)
	}
	n, err := b.ExecFills(ctx, rc, "late", []Fill{b.Fill("p:1", &Value{Bytes: []byte("old")}, false, false, 0)}, time.Now())
	if err != nil || n[0] != 0 {
		t.Fatalf("a fill without its lease: %v, %v; want [0]", n, err)
	}
	holder, _ := rc.Do(ctx, rc.B().Get().Key(CompanionsOf("p:1").Lease).Build()).ToString()
	ttl := pttl(t, rc, CompanionsOf("p:1").Lease)
	if holder != "other" || ttl > 10_000 || ttl < 9_000 {
		t.Fatalf("the other fill's lease is now %q with %d ms left, want \"other\" with its 10 s", holder, ttl)
	}
}

// TestBraceKeysOnCluster: keys whose braces make no hash tag are claimed,
// filled and recorded on a Redis Cluster like any other.
func TestBraceKeysOnCluster(t *testing.T) {
	rc := testenv.StartCluster(t, 3).Client(t)
	ctx := context.Background()
	b := testBinding(t, FormatString, time.Hour, RecordKey("p"))
	claimed, err := b.ExecClaims(ctx, rc, keysWithBraces, ClaimRecord, "tok", time.Minute, time.Now(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var fills []Fill
	for i, key := range keysWithBraces {
		if !claimed[i].Load {
			t.Fatalf("claim of %q: %+v", key, claimed[i])
		}
		fills = append(fills, b.Fill(key, &Value{Bytes: []byte(key)}, false, false, 0))
	}
	n, err := b.ExecFills(ctx, rc, "tok", fills, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for i, key := range keysWithBraces {
		v, _ := rc.Do(ctx, rc.B().Get().Key(key).Build()).ToString()
		_, rerr := rc.Do(ctx, rc.B().Zscore().Key(RecordKey("p")).Member(key).Build()).AsFloat64()
		if n[i] != 1 || v != key || rerr != nil {
			t.Errorf("%q: fill %d, value %q, recorded: %v", key, n[i], v, rerr)
		}
	}
}

// testBinding binds cache p (key p:{id}, string values) to columns id, v.
func testBinding(t *testing.T, format Format, ttl time.Duration, record string) *Binding {
	t.Helper()
	tmpl, err := ParseTemplate("p:{id}")
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Spec{Name: "p", Table: "p", Key: tmpl, Format: format, TTL: ttl, Record: record,
		Fields: []FieldSpec{{Name: "v", Column: "v"}}}, []Column{{Name: "id", TypeOID: 25}, {Name: "v", TypeOID: 25}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mustDo runs cmds on rc and fails the test on the first error.
func mustDo(t *testing.T, rc rueidis.Client, cmds ...rueidis.Completed) {
	t.Helper()
	for _, r := range rc.DoMulti(context.Background(), cmds...) {
		if err := r.Error(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestClearEndsFills: a fill that took its lease and read its row before a
// Clear (a TRUNCATE, a rebuild) and writes at any moment during it, between
// any two of its passes, leaves no value behind.
func TestClearEndsFills(t *testing.T) {
	rc := testenv.StartRedis(t).Client(t)
	ctx := context.Background()
	b := testBinding(t, FormatString, time.Hour, "")
	for _, at := range []string{"before", leasePrefix, "", negPrefix, stalePrefix, existsPrefix} {
		t.Run("after "+at, func(t *testing.T) {
			mustDo(t, rc, rc.B().Flushall().Build(), CompanionsOf("p:1").LeaseCmd(rc.B(), "tok", time.Minute),
				rc.B().Set().Key("p:2").Value("other").Build())
			fill := func() {
				if _, err := b.ExecFills(ctx, rc, "tok", []Fill{b.Fill("p:1", &Value{Bytes: []byte("1.00")}, false, false, 0)}, time.Now()); err != nil {
					t.Error(err)
				}
			}
			if at == "before" {
				fill()
			}
			clearPassed = func(prefix string) {
				if prefix == at {
					fill()
				}
			}
			defer func() { clearPassed = nil }()
			if _, err := b.Clear(ctx, rc); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"p:1", "p:2", CompanionsOf("p:1").Lease} {
				if v, err := rc.Do(ctx, rc.B().Get().Key(k).Build()).ToString(); !rueidis.IsRedisNil(err) {
					t.Errorf("after the clear, %s = %q (%v)", k, v, err)
				}
			}
		})
	}
}

// TestExistsMarker: in a cache a change feed keeps, an invalidation that is
// not the feed's (AppendDrop, a dead letter) of a key that holds a value
// leaves the key's exists marker, for what was left of its TTL; with it
// there, a fill that finds no row (under a lease, or watched) writes no
// "not found" marker, and one that writes a value ends it, as does the
// feed's removal (AppendInvalidate) and a Clear. Without a feed, or for a
// key that held nothing, an invalidation leaves none.
func TestExistsMarker(t *testing.T) {
	rc := testenv.StartRedis(t).Client(t)
	ctx := context.Background()
	rb := rc.B()
	fed := testBinding(t, FormatString, time.Hour, "")
	fed.Feed = true
	plain := testBinding(t, FormatString, time.Hour, "")
	c := CompanionsOf("p:1")
	exists := func() int64 { return pttl(t, rc, c.Exists) } // -2: none
	negative := func() bool {
		t.Helper()
		n, err := rc.Do(ctx, rb.Exists().Key(c.Neg).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	// The feed's value of a row, dropped: the marker, for the value's TTL.
	dropped := func() {
		t.Helper()
		mustDo(t, rc, rb.Flushall().Build(), rb.Set().Key("p:1").Value("v").Px(time.Hour).Build())
		mustDo(t, rc, fed.AppendDrop(nil, rb, "p:1")...)
		if ttl := exists(); ttl < 59*60*1000 || ttl > 60*60*1000 {
			t.Fatalf("after dropping a value with an hour left, the exists marker has %d ms, want about an hour", ttl)
		}
	}

	for _, miss := range []struct {
		name string
		fill func()
	}{
		{"under a lease", func() {
			mustDo(t, rc, c.LeaseCmd(rb, "tok", time.Minute))
			if n, err := fed.ExecFills(ctx, rc, "tok", []Fill{fed.Fill("p:1", nil, false, true, time.Hour)}, time.Now()); err != nil || n[0] != 1 {
				t.Fatalf("the fill: %v, %v", n, err)
			}
		}},
		{"watched", func() {
			claimed, w, err := fed.Watch(ctx, rc, []string{"p:1"}, ClaimRecord, time.Now())
			if err != nil || !claimed[0].Load {
				t.Fatalf("watch: %+v, %v", claimed, err)
			}
			defer w.Close(ctx)
			if refused, err := w.Exec(ctx, []Fill{fed.Fill("p:1", nil, false, true, time.Hour)}, []int{0}); err != nil || len(refused) > 0 {
				t.Fatalf("the reload: refused %v, %v", refused, err)
			}
		}},
	} {
		dropped()
		miss.fill()
		if negative() || exists() == -2 {
			t.Errorf("%s: a fill that found no row after the drop: not-found marker %v, exists marker %d; want none, kept", miss.name, negative(), exists())
		}
	}
	dropped()
	mustDo(t, rc, c.LeaseCmd(rb, "tok", time.Minute))
	if n, err := fed.ExecFills(ctx, rc, "tok", []Fill{fed.Fill("p:1", &Value{Bytes: []byte("v")}, false, false, 0)}, time.Now()); err != nil || n[0] != 1 || exists() != -2 {
		t.Errorf("a fill that wrote the value: %v, %v, exists marker %d; want it gone", n, err, exists())
	}
	dropped()
	claimed, w, err := fed.Watch(ctx, rc, []string{"p:1"}, ClaimRecord, time.Now())
	if err != nil || !claimed[0].Load {
		t.Fatalf("watch: %+v, %v", claimed, err)
	}
	if refused, err := w.Exec(ctx, []Fill{fed.Fill("p:1", &Value{Bytes: []byte("v")}, false, false, 0)}, []int{0}); err != nil || len(refused) > 0 || exists() != -2 {
		t.Errorf("a watched reload that wrote the value: refused %v, %v, exists marker %d; want it gone", refused, err, exists())
	}
	w.Close(ctx)
	dropped()
	mustDo(t, rc, fed.AppendInvalidate(nil, rb, "p:1")...)
	if exists() != -2 {
		t.Error("the feed's removal left the exists marker")
	}
	dropped()
	if _, err := fed.Clear(ctx, rc); err != nil || exists() != -2 {
		t.Errorf("a clear (%v) left the exists marker", err)
	}

	// A dead letter of the key's newest queued write.
	mustDo(t, rc, rb.Flushall().Build(), rb.Set().Key(OwnerKey("p")).Value("tok").Build())
	id, err := rc.Do(ctx, fed.QueueCmd(rb, "p:1", &Value{Bytes: []byte("q")}, `{"id":"1"}`, "id")).ToString()
	if err != nil {
		t.Fatal(err)
	}
	if n, err := rc.Do(ctx, fed.DeadCmd(rb, "tok", id, "p:1", `{"id":"1"}`, "refused")).AsInt64(); err != nil || n != 1 || exists() < 59*60*1000 {
		t.Errorf("a dead letter removed the key: %d, %v; exists marker %d ms, want the hour its value had", n, err, exists())
	}

	// No marker for a key that held nothing, or in a cache without a feed.
	mustDo(t, rc, rb.Flushall().Build())
	mustDo(t, rc, fed.AppendDrop(nil, rb, "p:1")...)
	mustDo(t, rc, rb.Set().Key("p:2").Value("v").Build())
	mustDo(t, rc, plain.AppendDrop(nil, rb, "p:2")...)
	for _, k := range []string{"p:1", "p:2"} {
		if n, err := rc.Do(ctx, rb.Exists().Key(CompanionsOf(k).Exists, k).Build()).AsInt64(); err != nil || n != 0 {
			t.Errorf("%s: an exists marker or the value left (%d, %v)", k, n, err)
		}
	}
}
