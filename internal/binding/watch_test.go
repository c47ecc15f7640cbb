package binding

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
)

// TestWatchRefused: a watched reload of a cache the change feed keeps
// writes nothing for a key that changed between Watch and Exec, whatever
// changed it, and writes a key nobody touched; a transaction refused leaves
// the others of the reload written.
func TestWatchRefused(t *testing.T) {
	rc := testenv.StartRedis(t, testenv.WithRedisArgs("--enable-debug-command", "local")).Client(t)
	ctx := context.Background()
	record := RecordKey("p")
	b := testBinding(t, FormatString, time.Hour, record)
	b.Feed = true // (every key watched: TestWatchLight has a cache without a feed)
	rb := rc.B()
	get := func(key string) string { return valueOf(t, rc, key) }
	// Expired keys stay until read, so a key can be expired when watched.
	mustDo(t, rc, rb.Arbitrary("DEBUG", "SET-ACTIVE-EXPIRE").Args("0").Build())
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
		// Expired but not yet removed when watched: its removal by Redis,
		// when Watch looks it up, is no change.
		{name: "expired before watched", before: func() {
			mustDo(t, rc, rb.Set().Key("p:1").Value("old").Px(10*time.Millisecond).Build())
			time.Sleep(30 * time.Millisecond) // lets it expire with no read to remove it, on purpose
		}, after: "read"},
		{name: "another's lease taken", change: func() { mustDo(t, rc, CompanionsOf("p:1").LeaseCmd(rb, "other", time.Minute)) }, after: "read"},
		{name: "written (change feed)", change: func() { mustDo(t, rc, rb.Set().Key("p:1").Value("new").Build()) }, after: "new", refused: true},
		{name: "written, then expired", change: func() {
			mustDo(t, rc, rb.Set().Key("p:1").Value("new").Px(20*time.Millisecond).Build())
			for get("p:1") != "" {
				time.Sleep(5 * time.Millisecond)
			}
		}, after: "", refused: true},
		// The key is missing: removing it changes nothing in Redis, but the
		// removal count does.
		{name: "removed while missing (row deleted)", change: func() { mustDo(t, rc, b.AppendInvalidate(nil, rb, "p:1")...) }, after: "", refused: true},
		{name: "removed, present", present: true, change: func() { mustDo(t, rc, b.AppendInvalidate(nil, rb, "p:1")...) }, after: "", refused: true},
		{name: "cache cleared", change: func() {
			if _, err := b.Clear(ctx, rc); err != nil {
				t.Fatal(err)
			}
		}, after: "", refused: true},
		// Present when watched, expired since, untouched.
		{name: "present, expired meanwhile", present: true, before: func() {
			mustDo(t, rc, rb.Pexpire().Key("p:1").Milliseconds(300).Build())
		}, change: func() {
			for pttl(t, rc, "p:1") != -2 { // (a read that finds it expired removes it: an expiry)
				time.Sleep(10 * time.Millisecond)
			}
		}, after: "", refused: true},
		// A row whose value columns all became NULL empties a hash: the
		// feed removes the key.
		{name: "emptied (hash of NULLs)", change: func() {
			h := testBinding(t, FormatHash, time.Hour, RecordKey("p"))
			cmds, err := h.AppendSet(nil, rb, "p:1", [][]byte{[]byte("1"), nil}, false)
			if err != nil {
				t.Fatal(err)
			}
			mustDo(t, rc, cmds...)
		}, after: "", refused: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			mustDo(t, rc, rb.Del().Key("p:1", CompanionsOf("p:1").Lease, record).Build())
			action := ClaimRecord
			if c.present {
				mustDo(t, rc, rb.Set().Key("p:1").Value("old").Build())
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
			execRaced(t, w, b.Fill("p:1", &Value{Bytes: []byte("read")}, c.present, false, 0), c.change, c.refused)
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
		keys, changed, refused := severalTransactions(t, rc, b)
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

// TestWatchedWritesAsLeased: each kind of reload write, done by a watched
// reload and under a lease, leaves Redis the same: the value (string or
// hash) with its TTL, stale copy and expiry record entry, the "not found"
// marker removed; a marker for a missing row; a present key deleted; a
// kept key's TTL renewed, or its record entry moved to its real expiry
// when off, kept when right, removed without a TTL.
func TestWatchedWritesAsLeased(t *testing.T) {
	rc := testenv.StartRedis(t).Client(t)
	ctx := context.Background()
	rb := rc.B()
	record := RecordKey("p")
	str := testBinding(t, FormatString, time.Hour, record)
	str.Stale = time.Minute
	hash := testBinding(t, FormatHash, time.Hour, RecordKey("p"))
	val := &Value{Bytes: []byte("v")}
	hval := &Value{Fields: []string{"v", "v"}}
	// fixed is the score a setup gave p:1 in the record: the state tells
	// whether the reload kept it.
	var fixed float64
	at := func() float64 { fixed = float64(time.Now().Add(-time.Second).UnixMilli()); return fixed }
	for _, c := range []struct {
		name   string
		b      *Binding
		action string
		setup  func() // p:1 before the reload
		value  *Value // the row read; nil: none
		neg    bool   // not_found: negative
	}{
		{name: "value", b: str, action: ClaimRecord, setup: func() { mustDo(t, rc, rb.Set().Key(CompanionsOf("p:1").Neg).Value("1").Build()) }, value: val},
		{name: "hash", b: hash, action: ClaimRecord, value: hval},
		{name: "not found marker", b: str, action: ClaimRecord, setup: func() {
			mustDo(t, rc, rb.Zadd().Key(record).ScoreMember().ScoreMember(at(), "p:1").Build())
		}, neg: true},
		{name: "present key deleted", b: str, action: ClaimLease, setup: func() {
			mustDo(t, rc, rb.Set().Key("p:1").Value("old").Build(), rb.Set().Key(CompanionsOf("p:1").Stale).Value("old").Build(),
				rb.Zadd().Key(record).ScoreMember().ScoreMember(at(), "p:1").Build())
		}},
		{name: "present key overwritten", b: str, action: ClaimLease, setup: func() { mustDo(t, rc, rb.Set().Key("p:1").Value("old").Build()) }, value: val},
		{name: "TTL renewed", b: str, action: ClaimRenew, setup: func() {
			mustDo(t, rc, rb.Set().Key("p:1").Value("old").Px(10*time.Second).Build(), rb.Set().Key(CompanionsOf("p:1").Stale).Value("old").Px(10*time.Second).Build())
		}},
		{name: "kept, recorded off", b: str, action: ClaimRecord, setup: func() {
			mustDo(t, rc, rb.Set().Key("p:1").Value("old").Px(10*time.Minute).Build(), rb.Zadd().Key(record).ScoreMember().ScoreMember(at(), "p:1").Build())
		}},
		{name: "kept, recorded right", b: str, action: ClaimRecord, setup: func() {
			mustDo(t, rc, rb.Set().Key("p:1").Value("old").Px(10*time.Minute).Build(),
				rb.Zadd().Key(record).ScoreMember().ScoreMember(at()+float64((10*time.Minute+1300*time.Millisecond).Milliseconds()), "p:1").Build())
			fixed += float64((10*time.Minute + 1300*time.Millisecond).Milliseconds())
		}},
		{name: "kept without a TTL", b: str, action: ClaimRecord, setup: func() {
			mustDo(t, rc, rb.Set().Key("p:1").Value("old").Build(), rb.Zadd().Key(record).ScoreMember().ScoreMember(at(), "p:1").Build())
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var states [2]string
			for n, watched := range []bool{false, true} {
				mustDo(t, rc, rb.Flushall().Build())
				fixed = 0
				if c.setup != nil {
					c.setup()
				}
				var claimed []Claimed
				var err error
				var w *Watched
				if watched {
					claimed, w, err = c.b.Watch(ctx, rc, []string{"p:1"}, c.action, time.Now())
				} else {
					claimed, err = c.b.ExecClaims(ctx, rc, []string{"p:1"}, c.action, "tok", time.Minute, time.Now(), time.Now())
				}
				if err != nil {
					t.Fatal(err)
				}
				var fills []Fill
				if claimed[0].Load {
					fills = append(fills, c.b.Fill("p:1", c.value, claimed[0].Present, c.neg, time.Hour))
				}
				if watched {
					refused, err := w.Exec(ctx, fills, []int{0}[:len(fills)])
					w.Close(ctx)
					if err != nil || len(refused) != 0 {
						t.Fatalf("watched: refused %v, %v", refused, err)
					}
				} else if n, err := c.b.ExecFills(ctx, rc, "tok", fills, time.Now()); err != nil || slices.Contains(n, 0) {
					t.Fatalf("leased: wrote %v, %v", n, err)
				}
				cl := claimed[0]
				cl.TTL = cl.TTL.Round(time.Minute)
				states[n] = redisState(t, rc, fmt.Sprintf("%+v", cl), fixed)
			}
			if states[0] != states[1] {
				t.Fatalf("under a lease:\n%s\nwatched:\n%s", states[0], states[1])
			}
		})
	}
}

// redisState describes every key in Redis, with its value and TTL (to the
// minute) and sorted sets' entries (when from now, to the minute; "set"
// for an entry scored fixed), after head.
func redisState(t *testing.T, rc rueidis.Client, head string, fixed float64) string {
	t.Helper()
	ctx := context.Background()
	rb := rc.B()
	keys, err := rc.Do(ctx, rb.Keys().Pattern("*").Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	lines := []string{head}
	minutes := func(ms int64) int64 { return (ms + 30_000) / 60_000 }
	for _, k := range keys {
		typ, _ := rc.Do(ctx, rb.Type().Key(k).Build()).ToString()
		pttl, _ := rc.Do(ctx, rb.Pttl().Key(k).Build()).AsInt64()
		var v string
		switch typ {
		case "string":
			v, _ = rc.Do(ctx, rb.Get().Key(k).Build()).ToString()
		case "hash":
			m, _ := rc.Do(ctx, rb.Hgetall().Key(k).Build()).AsStrMap()
			v = fmt.Sprint(m)
		case "zset":
			zs, _ := rc.Do(ctx, rb.Zrange().Key(k).Min("0").Max("-1").Withscores().Build()).AsZScores()
			for _, z := range zs {
				if z.Score == fixed {
					v += z.Member + "@set "
				} else {
					v += fmt.Sprintf("%s@%dmin ", z.Member, minutes(int64(z.Score)-time.Now().UnixMilli()))
				}
			}
		}
		if pttl > 0 {
			pttl = minutes(pttl)
		}
		lines = append(lines, fmt.Sprintf("%s %s = %s (ttl %d)", typ, k, v, pttl))
	}
	return strings.Join(lines, "\n")
}

// TestWatchAbandoned: a watched reload closed without Exec unwatches its
// connection, so the next transaction on it is not refused for a change to
// a key it no longer cares about.
func TestWatchAbandoned(t *testing.T) {
	rc := testenv.StartRedis(t).Client(t)
	ctx := context.Background()
	b := testBinding(t, FormatString, time.Hour, "")
	clientID := func() int64 {
		dc, release := rc.Dedicate()
		defer release()
		id, err := dc.Do(ctx, dc.B().ClientId().Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	first := clientID() // the one dedicated connection, back in its pool
	_, w, err := b.Watch(ctx, rc, []string{"p:1"}, ClaimRecord, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	w.Close(ctx)
	if err := rc.Do(ctx, rc.B().Set().Key("p:1").Value("x").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	dc, release := rc.Dedicate()
	defer release()
	if id, _ := dc.Do(ctx, dc.B().ClientId().Build()).AsInt64(); id != first {
		t.Fatalf("connection %d, want the reload's %d again", id, first)
	}
	res := dc.DoMulti(ctx, dc.B().Multi().Build(), dc.B().Set().Key("q").Value("1").Build(), dc.B().Exec().Build())
	if _, err := res[2].ToArray(); err != nil {
		t.Fatalf("a transaction after the abandoned reload: %v", err)
	}
}

// pttl is key's PTTL: -2 once it is gone.
func pttl(t *testing.T, rc rueidis.Client, key string) int64 {
	t.Helper()
	n, err := rc.Do(context.Background(), rc.B().Pttl().Key(key).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestWatchLight: a watched reload of missing keys in a cache without a
// change feed watches only the removal count and looks at no key first: a
// removal refuses its transaction; a key written meanwhile keeps its value
// and is told refused, alone of its transaction; a row found gone removes
// nothing that is there; a key nobody touched is written.
func TestWatchLight(t *testing.T) {
	rc := testenv.StartRedis(t).Client(t)
	ctx := context.Background()
	record := RecordKey("p")
	b := testBinding(t, FormatString, time.Hour, record)
	rb := rc.B()
	get := func(key string) string { return valueOf(t, rc, key) }
	for _, c := range []struct {
		name    string
		row     bool   // the reload read a row (else none: a "not found" marker)
		change  func() // between Watch and Exec
		after   string // the key afterwards: "read" is the reload's value
		refused bool
	}{
		{name: "untouched", row: true, after: "read"},
		{name: "untouched, no row", after: ""},
		{name: "written (another fill)", row: true, change: func() { mustDo(t, rc, rb.Set().Key("p:1").Value("new").Build()) }, after: "new", refused: true},
		{name: "written, no row", change: func() { mustDo(t, rc, rb.Set().Key("p:1").Value("new").Build()) }, after: "new", refused: true},
		{name: "removed while missing (row deleted)", row: true, change: func() { mustDo(t, rc, b.AppendInvalidate(nil, rb, "p:1")...) }, after: "", refused: true},
		{name: "another key removed", row: true, change: func() { mustDo(t, rc, b.AppendDrop(nil, rb, "p:2")...) }, after: "", refused: true},
		{name: "cache cleared", row: true, change: func() {
			if _, err := b.Clear(ctx, rc); err != nil {
				t.Fatal(err)
			}
		}, after: "", refused: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			neg := CompanionsOf("p:1").Neg
			mustDo(t, rc, rb.Del().Key("p:1", neg, record).Build(), rb.ConfigResetstat().Build())
			claimed, w, err := b.Watch(ctx, rc, []string{"p:1"}, ClaimRecord, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close(ctx)
			if want := (Claimed{Load: true}); claimed[0] != want {
				t.Fatalf("watch: %+v, want %+v", claimed[0], want)
			}
			if info, _ := rc.Do(ctx, rb.Info().Section("commandstats").Build()).ToString(); strings.Contains(info, "cmdstat_object") || strings.Contains(info, "cmdstat_pttl") {
				t.Fatalf("the watch looked at the key:\n%s", info)
			}
			var v *Value
			if c.row {
				v = &Value{Bytes: []byte("read")}
			}
			execRaced(t, w, b.Fill("p:1", v, false, true, time.Hour), c.change, c.refused)
			if v := get("p:1"); v != c.after {
				t.Fatalf("p:1 = %q, want %q", v, c.after)
			}
			if marked := get(neg) != ""; marked != (!c.row && !c.refused) {
				t.Fatalf("p:1 marked not found: %v, want %v", marked, !c.row && !c.refused)
			}
			_, err = rc.Do(ctx, rb.Zscore().Key(record).Member("p:1").Build()).AsFloat64()
			if recorded := err == nil; c.after == "read" && !recorded {
				t.Fatal("p:1 not recorded")
			}
		})
	}

	t.Run("one of several transactions", func(t *testing.T) {
		keys, changed, refused := severalTransactions(t, rc, b)
		if !slices.Equal(refused, []int{changed}) {
			t.Fatalf("refused %v, want [%d]", refused, changed)
		}
		for i, k := range keys {
			want := "read"
			if i == changed {
				want = "new"
			}
			if v := get(k); v != want {
				t.Fatalf("%s = %q, want %q", k, v, want)
			}
		}
	})
}

// severalTransactions reloads the missing keys q:0 ... of b (three
// transactions' worth) with a watched reload that reads "read" for each,
// while another writer sets the one of index changed, in the second
// transaction, to "new"; it returns the keys and what Exec refused.
func severalTransactions(t *testing.T, rc rueidis.Client, b *Binding) (keys []string, changed int, refused []int) {
	t.Helper()
	ctx := context.Background()
	keys = make([]string, 2*BatchKeys+50)
	var fills []Fill
	var of []int
	for i := range keys {
		keys[i] = "q:" + strconv.Itoa(i)
		fills = append(fills, b.Fill(keys[i], &Value{Bytes: []byte("read")}, false, false, 0))
		of = append(of, i)
	}
	mustDo(t, rc, rc.B().Del().Key(keys...).Build())
	claimed, w, err := b.Watch(ctx, rc, keys, ClaimRecord, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(ctx)
	if len(claimed) != len(keys) {
		t.Fatalf("%d claims for %d keys", len(claimed), len(keys))
	}
	changed = BatchKeys + 7
	mustDo(t, rc, rc.B().Set().Key(keys[changed]).Value("new").Build())
	if refused, err = w.Exec(ctx, fills, of); err != nil {
		t.Fatal(err)
	}
	return keys, changed, refused
}

// execRaced runs change (if any), then w's Exec of fill, its one key, and
// fails unless Exec refused the key exactly when refused.
func execRaced(t *testing.T, w *Watched, fill Fill, change func(), refused bool) {
	t.Helper()
	if change != nil {
		change()
	}
	got, err := w.Exec(context.Background(), []Fill{fill}, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	if (len(got) == 1) != refused {
		t.Fatalf("refused %v, want %v", got, refused)
	}
}

// valueOf returns the string under key, "" when it is missing.
func valueOf(t *testing.T, rc rueidis.Client, key string) string {
	t.Helper()
	v, err := rc.Do(context.Background(), rc.B().Get().Key(key).Build()).ToString()
	if err != nil && !rueidis.IsRedisNil(err) {
		t.Fatal(err)
	}
	return v
}
