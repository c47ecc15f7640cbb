package binding

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
)

// TestWatchRefused: a watched reload writes nothing for a key that changed
// between Watch and Exec, whatever changed it, and writes a key nobody
// touched; a transaction refused leaves the others of the reload written.
func TestWatchRefused(t *testing.T) {
	rc := testenv.StartRedis(t).Client(t)
	ctx := context.Background()
	record := RecordKey("p")
	b := testBinding(t, time.Hour, record)
	rb := rc.B()
	do := func(cmds ...rueidis.Completed) {
		t.Helper()
		for _, r := range rc.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil {
				t.Fatal(err)
			}
		}
	}
	get := func(key string) string {
		v, err := rc.Do(ctx, rb.Get().Key(key).Build()).ToString()
		if err != nil && !rueidis.IsRedisNil(err) {
			t.Fatal(err)
		}
		return v
	}
	for _, c := range []struct {
		name    string
		present bool   // the key is there when watched (reloaded to overwrite it)
		before  func() // before Watch
		change  func() // between Watch and Exec
		after   string // the key afterwards: "read" is the reload's value
		refused bool
	}{
		{name: "untouched", after: "read"},
		{name: "untouched, present", present: true, after: "read"},
		// Expired but maybe not yet removed when watched: its removal by
		// Redis, at the latest when Watch reads its TTL, is no change.
		{name: "expired before watched", before: func() {
			do(rb.Set().Key("p:1").Value("old").Px(10 * time.Millisecond).Build())
			time.Sleep(30 * time.Millisecond)
		}, after: "read"},
		{name: "another's lease taken", change: func() { do(LeaseCmd(rb, "p:1", "other", time.Minute)) }, after: "read"},
		{name: "written (change feed)", change: func() { do(rb.Set().Key("p:1").Value("new").Build()) }, after: "new", refused: true},
		{name: "written, then expired", change: func() {
			do(rb.Set().Key("p:1").Value("new").Px(20 * time.Millisecond).Build())
			for get("p:1") != "" {
				time.Sleep(5 * time.Millisecond)
			}
		}, after: "", refused: true},
		// The key is missing: removing it changes nothing in Redis, but the
		// removal count does.
		{name: "removed while missing (row deleted)", change: func() { do(b.AppendInvalidate(nil, rb, "p:1")...) }, after: "", refused: true},
		{name: "removed, present", present: true, change: func() { do(b.AppendInvalidate(nil, rb, "p:1")...) }, after: "", refused: true},
		{name: "cache cleared", change: func() {
			if _, err := b.Clear(ctx, rc); err != nil {
				t.Fatal(err)
			}
		}, after: "", refused: true},
		{name: "present, expired meanwhile", present: true, change: func() {
			do(rb.Pexpire().Key("p:1").Milliseconds(20).Build())
			time.Sleep(40 * time.Millisecond)
		}, after: "", refused: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			do(rb.Del().Key("p:1", LeaseKey("p:1"), record).Build())
			action := ClaimRecord
			if c.present {
				do(rb.Set().Key("p:1").Value("old").Build())
				action = ClaimLease
			}
			if c.before != nil {
				c.before()
			}
			claimed, w, err := b.Watch(ctx, rc, []string{"p:1"}, action, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close(ctx)
			if want := (Claimed{Load: true, Present: c.present}); claimed[0] != want {
				t.Fatalf("watch: %+v, want %+v", claimed[0], want)
			}
			if c.change != nil {
				c.change()
			}
			refused, err := w.Exec(ctx, []Fill{b.Fill("p:1", &Value{Bytes: []byte("read")}, c.present, false, 0)}, []int{0})
			if err != nil {
				t.Fatal(err)
			}
			if got := len(refused) == 1; got != c.refused {
				t.Fatalf("refused %v, want %v", refused, c.refused)
			}
			if v := get("p:1"); v != c.after {
				t.Fatalf("p:1 = %q, want %q", v, c.after)
			}
			_, err = rc.Do(ctx, rb.Zscore().Key(record).Member("p:1").Build()).AsFloat64()
			if recorded := err == nil; recorded != (c.after == "read") {
				t.Fatalf("p:1 recorded: %v, want %v", recorded, c.after == "read")
			}
		})
	}

	t.Run("one of several transactions", func(t *testing.T) {
		keys := make([]string, 2*BatchKeys+50)
		var fills []Fill
		var of []int
		for i := range keys {
			keys[i] = "q:" + strconv.Itoa(i)
			fills = append(fills, b.Fill(keys[i], &Value{Bytes: []byte("read")}, false, false, 0))
			of = append(of, i)
		}
		claimed, w, err := b.Watch(ctx, rc, keys, ClaimRecord, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close(ctx)
		if len(claimed) != len(keys) {
			t.Fatalf("%d claims for %d keys", len(claimed), len(keys))
		}
		changed := BatchKeys + 7 // in the second transaction
		do(rb.Set().Key(keys[changed]).Value("new").Build())
		refused, err := w.Exec(ctx, fills, of)
		if err != nil {
			t.Fatal(err)
		}
		for i, k := range keys {
			in := i >= BatchKeys && i < 2*BatchKeys
			if slices.Contains(refused, i) != in {
				t.Fatalf("%s refused: %v, want %v", k, !in, in)
			}
			want := "read"
			switch {
			case i == changed:
				want = "new"
			case in:
				want = ""
			}
			if v := get(k); v != want {
				t.Fatalf("%s = %q, want %q", k, v, want)
			}
		}
	})
}
