package leaderboard_test

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/leaderboard"
)

const prefix = "test:lb:"

// TestPeriods: a period board is named by its UTC day or ISO week and
// expires a period after it ends (Options.Keep otherwise).
func TestPeriods(t *testing.T) {
	l, err := leaderboard.New(nil, prefix, leaderboard.Options{})
	if err != nil {
		t.Fatal(err)
	}
	kept, err := leaderboard.New(nil, prefix, leaderboard.Options{Keep: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ny := time.FixedZone("UTC-5", -5*3600)
	utc := func(s string) time.Time {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			panic(err)
		}
		return t
	}
	tests := []struct {
		name    string
		board   *leaderboard.Board
		key     string
		expires string // RFC 3339, "" never
	}{
		{"all time", l.Board("chess", leaderboard.AllTime, utc("2026-12-06T10:00:00Z")), prefix + "{all:chess}", ""},
		{"daily", l.Board("chess", leaderboard.Daily, utc("2026-12-06T10:00:00Z")), prefix + "{day:2026-12-06:chess}", "2026-12-08T00:00:00Z"},
		{"daily, the last instant", l.Board("chess", leaderboard.Daily, utc("2026-12-06T23:59:59.999Z")), prefix + "{day:2026-12-06:chess}", "2026-12-08T00:00:00Z"},
		{"daily by the UTC day, not the zone's", l.Board("chess", leaderboard.Daily, time.Date(2026, 12, 6, 20, 0, 0, 0, ny)), prefix + "{day:2026-12-07:chess}", "2026-12-09T00:00:00Z"},
		{"daily kept an hour", kept.Board("chess", leaderboard.Daily, utc("2026-12-06T10:00:00Z")), prefix + "{day:2026-12-06:chess}", "2026-12-07T01:00:00Z"},
		{"weekly", l.Board("chess", leaderboard.Weekly, utc("2026-12-06T10:00:00Z")), prefix + "{week:2026-W49:chess}", "2026-12-14T00:00:00Z"},
		{"weekly, Monday", l.Board("chess", leaderboard.Weekly, utc("2026-11-30T00:00:00Z")), prefix + "{week:2026-W49:chess}", "2026-12-14T00:00:00Z"},
		{"weekly, a January Sunday in the last year's week 53", l.Board("chess", leaderboard.Weekly, utc("2021-01-03T12:00:00Z")), prefix + "{week:2020-W53:chess}", "2021-01-11T00:00:00Z"},
		{"weekly, a December Monday in the next year's week 1", l.Board("chess", leaderboard.Weekly, utc("2024-12-30T12:00:00Z")), prefix + "{week:2025-W01:chess}", "2025-01-13T00:00:00Z"},
		{"a name that looks like a period", l.Board("day:2026-12-06:chess", leaderboard.AllTime, time.Time{}), prefix + "{all:day:2026-12-06:chess}", ""},
	}
	for _, tt := range tests {
		keys := tt.board.Keys()
		if want := []string{tt.key, tt.key + ":m", tt.key + ":n"}; !reflect.DeepEqual(keys, want) {
			t.Errorf("%s: keys %q, want %q", tt.name, keys, want)
		}
		exp := ""
		if e := tt.board.Expires(); !e.IsZero() {
			exp = e.UTC().Format(time.RFC3339)
		}
		if exp != tt.expires {
			t.Errorf("%s: expires %q, want %q", tt.name, exp, tt.expires)
		}
	}
	if _, err := leaderboard.New(nil, "a{b}:", leaderboard.Options{}); err == nil {
		t.Error("New took a prefix with {")
	}
}

// TestLeaderboard runs every case on one Redis and on a Cluster of three,
// each case on a board of its own.
func TestLeaderboard(t *testing.T) {
	for _, topology := range []string{"single", "cluster"} {
		t.Run(topology, func(t *testing.T) {
			rc := testenv.StartTopology(t, topology)
			l, err := leaderboard.New(rc, prefix, leaderboard.Options{})
			if err != nil {
				t.Fatal(err)
			}
			for _, tt := range cases {
				t.Run(tt.name, func(t *testing.T) {
					tt.test(t, &bed{rc: rc, l: l, b: l.Board(tt.name+"}{", leaderboard.AllTime, time.Time{})})
				})
			}
		})
	}
}

type bed struct {
	rc rueidis.Client
	l  *leaderboard.Leaderboards
	b  *leaderboard.Board // the case's all-time board; its name has braces
}

var cases = []struct {
	name string
	test func(t *testing.T, b *bed)
}{
	{"highest first", func(t *testing.T, b *bed) {
		b.set(t, b.b, "a", 10, "b", 30, "c", 20, "d", -5, "e", 20.5)
		b.top(t, 0, 10, "b 30", "e 20.5", "c 20", "a 10", "d -5")
		for rank, m := range []string{"b", "e", "c", "a", "d"} {
			e, err := b.b.Rank(t.Context(), m)
			if err != nil || e.Rank != int64(rank+1) || e.Member != m {
				t.Fatalf("rank of %s: %+v, %v; want %d", m, e, err, rank+1)
			}
		}
		if _, err := b.b.Rank(t.Context(), "nobody"); !errors.Is(err, leaderboard.ErrNotFound) {
			t.Fatalf("rank of nobody: %v, want ErrNotFound", err)
		}
	}},
	{"add", func(t *testing.T, b *bed) {
		for _, step := range []struct{ delta, want float64 }{{5, 5}, {7, 12}, {-20, -8}, {0.25, -7.75}} {
			if got, err := b.b.Add(t.Context(), "x", step.delta); err != nil || got != step.want {
				t.Fatalf("add %v: %v, %v; want %v", step.delta, got, err, step.want)
			}
		}
		b.top(t, 0, 10, "x -7.75")
	}},
	{"ties: who reached the score first ranks higher", func(t *testing.T, b *bed) {
		// Names whose byte order is not the order they arrive in.
		b.set(t, b.b, "zed", 100, "amy", 100, "mo", 100, "bo", 50)
		b.top(t, 0, 10, "zed 100", "amy 100", "mo 100", "bo 50")
		b.add(t, "bo", 50) // reaches 100 last
		b.top(t, 0, 10, "zed 100", "amy 100", "mo 100", "bo 100")
		b.set(t, b.b, "zed", 100) // the score it has: it keeps its place
		b.add(t, "amy", 0)
		b.top(t, 0, 10, "zed 100", "amy 100", "mo 100", "bo 100")
		b.add(t, "zed", 1)
		b.add(t, "zed", -1) // back to 100, after the others
		b.top(t, 0, 10, "amy 100", "mo 100", "bo 100", "zed 100")
		for rank, m := range []string{"amy", "mo", "bo", "zed"} {
			if e, err := b.b.Rank(t.Context(), m); err != nil || e.Rank != int64(rank+1) {
				t.Fatalf("rank of %s: %+v, %v; want %d", m, e, err, rank+1)
			}
		}
		if err := b.b.Remove(t.Context(), "mo"); err != nil {
			t.Fatal(err)
		}
		if err := b.b.Remove(t.Context(), "mo"); !errors.Is(err, leaderboard.ErrNotFound) {
			t.Fatalf("remove twice: %v, want ErrNotFound", err)
		}
		b.top(t, 0, 10, "amy 100", "bo 100", "zed 100")
		keys := b.b.Keys()
		zc := b.do(t, b.rc.B().Zcard().Key(keys[0]).Build())
		hc := b.do(t, b.rc.B().Hlen().Key(keys[1]).Build())
		if zc != 3 || hc != 3 {
			t.Fatalf("%d in the sorted set, %d in the hash; want 3 each", zc, hc)
		}
	}},
	{"around", func(t *testing.T, b *bed) {
		for i := range 10 { // m0 has 100, m9 10: m0 ranks 1
			b.set(t, b.b, fmt.Sprint("m", i), float64(100-10*i))
		}
		for _, tt := range []struct {
			member   string
			n        int64
			from, to int64 // ranks
		}{
			{"m0", 2, 1, 3}, // the top: nothing above
			{"m1", 2, 1, 4},
			{"m4", 2, 3, 7},
			{"m8", 2, 7, 10},
			{"m9", 2, 8, 10}, // the bottom: nothing below
			{"m4", 0, 5, 5},
			{"m4", 50, 1, 10},
		} {
			es, err := b.b.Around(t.Context(), tt.member, tt.n)
			if err != nil {
				t.Fatal(err)
			}
			var want []leaderboard.Entry
			for r := tt.from; r <= tt.to; r++ {
				want = append(want, leaderboard.Entry{Rank: r, Member: fmt.Sprint("m", r-1), Score: float64(100 - 10*(r-1))})
			}
			if !reflect.DeepEqual(es, want) {
				t.Errorf("around %s, %d: %+v, want %+v", tt.member, tt.n, es, want)
			}
		}
		if _, err := b.b.Around(t.Context(), "nobody", 2); !errors.Is(err, leaderboard.ErrNotFound) {
			t.Fatalf("around nobody: %v, want ErrNotFound", err)
		}
	}},
	{"pages", func(t *testing.T, b *bed) {
		for i := range 25 {
			b.set(t, b.b, fmt.Sprint("p", i), float64(i%7)) // ties across page edges
		}
		all, err := b.b.Top(t.Context(), 0, 100)
		if err != nil || len(all) != 25 {
			t.Fatalf("top 100: %d, %v; want 25", len(all), err)
		}
		var paged []leaderboard.Entry
		for _, off := range []int64{0, 10, 20, 30} {
			page, err := b.b.Top(t.Context(), off, 10)
			if err != nil {
				t.Fatal(err)
			}
			if want := min(10, max(0, 25-off)); int64(len(page)) != want {
				t.Fatalf("page at %d: %d entries, want %d", off, len(page), want)
			}
			paged = append(paged, page...)
		}
		if !reflect.DeepEqual(paged, all) {
			t.Fatalf("the pages %+v, want %+v", paged, all)
		}
		for i, e := range all {
			if e.Rank != int64(i+1) || i > 0 && e.Score > all[i-1].Score {
				t.Fatalf("entry %d: %+v after %+v", i, e, all[max(0, i-1)])
			}
		}
	}},
	{"period boards expire after every write", func(t *testing.T, b *bed) {
		day := b.l.Board(t.Name(), leaderboard.Daily, time.Now())
		week := b.l.Board(t.Name(), leaderboard.Weekly, time.Now())
		for _, board := range []*leaderboard.Board{day, week} {
			for _, write := range []struct {
				name string
				do   func() error
			}{
				{"set", func() error { return board.Set(t.Context(), "a", 1) }},
				{"set the same", func() error { return board.Set(t.Context(), "a", 1) }},
				{"add", func() error { _, err := board.Add(t.Context(), "a", 2); return err }},
				{"add 0", func() error { _, err := board.Add(t.Context(), "a", 0); return err }},
				{"add another", func() error { _, err := board.Add(t.Context(), "b", 1); return err }},
				{"remove", func() error { return board.Remove(t.Context(), "b") }},
				{"remove the last", func() error { return board.Remove(t.Context(), "a") }},
			} {
				for _, k := range board.Keys() { // each write sets the expiry itself
					b.do(t, b.rc.B().Persist().Key(k).Build())
				}
				if err := write.do(); err != nil {
					t.Fatalf("%s: %v", write.name, err)
				}
				for _, k := range board.Keys() {
					at := b.do(t, b.rc.B().Pexpiretime().Key(k).Build())
					if at != -2 && at != board.Expires().UnixMilli() { // -2: no key, as after the last remove
						t.Errorf("%s: %s expires at %d, want %d (%v)", write.name, k, at, board.Expires().UnixMilli(), board.Expires())
					}
				}
			}
		}
		// A board of all time does not expire.
		b.set(t, b.b, "a", 1)
		for _, k := range b.b.Keys() {
			if at := b.do(t, b.rc.B().Pexpiretime().Key(k).Build()); at != -1 {
				t.Errorf("%s expires at %d, want never (-1)", k, at)
			}
		}
	}},
	{"a write to an expired period is refused", func(t *testing.T, b *bed) {
		old := b.l.Board(t.Name(), leaderboard.Daily, time.Now().AddDate(0, 0, -3)) // kept a day after its day
		if err := old.Set(t.Context(), "a", 1); !errors.Is(err, leaderboard.ErrExpired) {
			t.Fatalf("set on a board expired: %v, want ErrExpired", err)
		}
		if _, err := old.Add(t.Context(), "a", 1); !errors.Is(err, leaderboard.ErrExpired) {
			t.Fatalf("add on a board expired: %v, want ErrExpired", err)
		}
		for _, k := range old.Keys() {
			if n := b.do(t, b.rc.B().Exists().Key(k).Build()); n != 0 {
				t.Errorf("%s exists", k)
			}
		}
	}},
	{"bad numbers and names", func(t *testing.T, b *bed) {
		for _, bad := range []struct {
			member string
			n      float64
		}{{"", 1}, {"a", posInf}, {"a", negInf}, {"a", nan}} {
			if err := b.b.Set(t.Context(), bad.member, bad.n); err == nil {
				t.Errorf("set %q %v: no error", bad.member, bad.n)
			}
		}
		b.set(t, b.b, "big", 1.7e308)
		if _, err := b.b.Add(t.Context(), "big", 1.7e308); !errors.Is(err, leaderboard.ErrOverflow) {
			t.Errorf("an add that overflows: %v, want ErrOverflow", err)
		}
		b.top(t, 0, 10, "big 1.7e+308")
	}},
}

var zero = 0.0
var posInf, negInf, nan = 1 / zero, -1 / zero, zero / zero

func (b *bed) set(t *testing.T, board *leaderboard.Board, kv ...any) {
	t.Helper()
	for i := 0; i < len(kv); i += 2 {
		n, _ := kv[i+1].(float64)
		if in, ok := kv[i+1].(int); ok {
			n = float64(in)
		}
		if err := board.Set(t.Context(), kv[i].(string), n); err != nil {
			t.Fatal(err)
		}
	}
}

func (b *bed) add(t *testing.T, member string, delta float64) {
	t.Helper()
	if _, err := b.b.Add(t.Context(), member, delta); err != nil {
		t.Fatal(err)
	}
}

// top checks the board's entries from offset on, as "member score".
func (b *bed) top(t *testing.T, offset, n int64, want ...string) {
	t.Helper()
	es, err := b.b.Top(t.Context(), offset, n)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i, e := range es {
		got = append(got, fmt.Sprint(e.Member, " ", e.Score))
		if e.Rank != offset+int64(i)+1 {
			t.Errorf("entry %d: %+v, want rank %d", i, e, offset+int64(i)+1)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("top: %q, want %q", got, want)
	}
}

func (b *bed) do(t *testing.T, cmd rueidis.Completed) int64 {
	t.Helper()
	n, err := b.rc.Do(t.Context(), cmd).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n
}
