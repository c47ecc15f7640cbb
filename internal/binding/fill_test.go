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

// TestCompanionSlots: a key's lease, "not found" marker and stale copy
// hash to the key's Redis Cluster slot (a Cluster refuses a script over
// several slots), and each names the key back.
func TestCompanionSlots(t *testing.T) {
	for _, key := range keysWithBraces {
		cs := CompanionsOf(key)
		for prefix, c := range map[string]string{leasePrefix: cs.Lease, negPrefix: cs.Neg, stalePrefix: cs.Stale} {
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
	ttl, _ := rc.Do(ctx, rc.B().Pttl().Key(CompanionsOf("p:1").Lease).Build()).AsInt64()
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
	for _, at := range []string{"before", leasePrefix, "", negPrefix, stalePrefix} {
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
