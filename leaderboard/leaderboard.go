// Package leaderboard keeps game leaderboards in Redis sorted sets: scores
// set or added to, the top N and pages below it, a member's rank and the
// members around it, all-time boards and daily and weekly boards that
// expire.
//
// Highest score first. Ranks are 1-based: rank 1 is the top. Equal scores
// do not share a rank: among them, who reached the score first ranks
// higher, as a player expects (the first to 1000 points is ahead of the
// one who got there later, not behind one whose name sorts first).
//
// How ties are ordered: a sorted set orders equal scores by member, in
// byte order, which is stable but says nothing about who came first. So
// each member is stored in the sorted set under an element that begins
// with 16 decimal digits, 2^53-1 minus a per-board counter taken (INCR)
// each time the member's score changes, then the member's name; equal
// scores thus sort by when they were reached, in the order Redis applied
// the writes. A hash maps each member to its element. The score keeps its
// whole float64 precision (encoding the order into the score would cost
// precision). The limits: a score set again to the value it has keeps
// its place; a score that leaves a value and comes back to it has reached
// it anew, and ranks after those who held it meanwhile; each member costs
// its name twice and 16 bytes more; a write is a script of a few
// commands. The counter runs out after 2^53 score changes on one board.
package leaderboard

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// ErrNotFound is returned for a member that is not on the board.
var ErrNotFound = errors.New("member not on the board")

// ErrOverflow is returned for an Add whose sum is beyond a float64.
var ErrOverflow = errors.New("the score overflows")

// ErrExpired is returned for a write to a period board whose expiry has
// passed: Redis would drop what it wrote at once.
var ErrExpired = errors.New("the period's board has expired")

// Entry is a member's place on a board.
type Entry struct {
	Rank   int64 // 1 is the top
	Member string
	Score  float64
}

// Period is how long a board runs.
type Period int

// The periods: a board of all time never expires; a daily board is one
// UTC day's, a weekly board one ISO week's (Monday to Sunday, UTC).
const (
	AllTime Period = iota
	Daily
	Weekly
)

// Leaderboards are the boards under a key prefix.
type Leaderboards struct {
	rc     rueidis.Client
	prefix string
	keep   time.Duration
}

// Options are how long period boards are kept.
type Options struct {
	// Keep is how long a daily or weekly board is kept after its period
	// ends, so that it can still be read. Zero means one period: a day
	// for a daily board, a week for a weekly one.
	Keep time.Duration
}

// New returns the boards of rc whose keys begin with prefix, which must
// not contain "{" (a board's name and period are its keys' Cluster hash
// tag).
func New(rc rueidis.Client, prefix string, opts Options) (*Leaderboards, error) {
	if strings.Contains(prefix, "{") {
		return nil, fmt.Errorf("leaderboard: prefix %q contains {", prefix)
	}
	if opts.Keep < 0 {
		return nil, fmt.Errorf("leaderboard: keep %v is negative", opts.Keep)
	}
	return &Leaderboards{rc: rc, prefix: prefix, keep: opts.Keep}, nil
}

// Board is one board: a name and, for a period board, the period.
type Board struct {
	l   *Leaderboards
	id  string // the hash tag: kind, period and name
	exp int64  // when it expires, unix ms; 0 never
}

// Board returns the board name of period p that holds the instant at: the
// board of at's UTC day for Daily, of its ISO week for Weekly; at does
// not matter for AllTime. Names are any bytes.
func (l *Leaderboards) Board(name string, p Period, at time.Time) *Board {
	day := at.UTC().Truncate(24 * time.Hour)
	switch p {
	case Daily:
		return l.period("day:"+day.Format(time.DateOnly)+":"+name, day.AddDate(0, 0, 1), 24*time.Hour)
	case Weekly:
		y, w := day.ISOWeek()
		monday := day.AddDate(0, 0, -(int(day.Weekday())+6)%7)
		return l.period(fmt.Sprintf("week:%04d-W%02d:%s", y, w, name), monday.AddDate(0, 0, 7), 7*24*time.Hour)
	}
	return &Board{l: l, id: "all:" + name}
}

// period is the board id that ends at end, kept one period (length) after
// unless Options.Keep says otherwise.
func (l *Leaderboards) period(id string, end time.Time, length time.Duration) *Board {
	keep := l.keep
	if keep == 0 {
		keep = length
	}
	return &Board{l: l, id: id, exp: end.Add(keep).UnixMilli()}
}

// Keys returns the board's Redis keys: the sorted set, the hash of each
// member's element and the counter of score changes. A period board's
// keys carry its expiry after every write.
func (b *Board) Keys() []string {
	k := b.l.prefix + "{" + b.id + "}"
	return []string{k, k + ":m", k + ":n"}
}

// Expires returns when a period board expires (the zero Time for a board
// of all time).
func (b *Board) Expires() time.Time {
	if b.exp == 0 {
		return time.Time{}
	}
	return time.UnixMilli(b.exp)
}

// write: ARGV member, "add" or "set", the number, the expiry (unix ms, or
// 0). Returns the new score, 'overflow', or nil when the expiry has passed.
var write = rueidis.NewLuaScript(`
local exp = tonumber(ARGV[4])
if exp > 0 then
	local t = redis.call('TIME')
	if exp <= tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) then return nil end
end
local old = redis.call('HGET', KEYS[2], ARGV[1])
local cur
if old then cur = tonumber(redis.call('ZSCORE', KEYS[1], old)) end
local score = tonumber(ARGV[3])
if ARGV[2] == 'add' then score = (cur or 0) + score end
if score == math.huge or score == -math.huge then return 'overflow' end
if score ~= cur then
	local n = redis.call('INCR', KEYS[3])
	local el = string.format('%016.0f', 9007199254740991 - n) .. ARGV[1]
	if old then redis.call('ZREM', KEYS[1], old) end
	redis.call('ZADD', KEYS[1], score, el)
	redis.call('HSET', KEYS[2], ARGV[1], el)
end
if exp > 0 then
	for _, k in ipairs(KEYS) do redis.call('PEXPIREAT', k, exp) end
end
return string.format('%.17g', score)
`)

// remove: ARGV member, the expiry. Returns 1 when the member was there.
var remove = rueidis.NewLuaScript(`
local el = redis.call('HGET', KEYS[2], ARGV[1])
if not el then return 0 end
redis.call('ZREM', KEYS[1], el)
redis.call('HDEL', KEYS[2], ARGV[1])
if tonumber(ARGV[2]) > 0 then
	for _, k in ipairs(KEYS) do redis.call('PEXPIREAT', k, ARGV[2]) end
end
return 1
`)

// around: ARGV member, how many above and below. Returns the 0-based
// position of the first and a flat list of elements and scores, or nil.
var around = rueidis.NewLuaScriptReadOnly(`
local el = redis.call('HGET', KEYS[2], ARGV[1])
if not el then return nil end
local r = redis.call('ZREVRANK', KEYS[1], el)
local lo = math.max(0, r - tonumber(ARGV[2]))
return {lo, redis.call('ZREVRANGE', KEYS[1], lo, r + tonumber(ARGV[2]), 'WITHSCORES')}
`)

// elemPrefix is the length of the counter before the member's name.
const elemPrefix = 16

// Add adds delta to member's score (a member not on the board starts at
// 0) and returns the new score.
func (b *Board) Add(ctx context.Context, member string, delta float64) (float64, error) {
	return b.write(ctx, member, "add", delta)
}

// Set sets member's score.
func (b *Board) Set(ctx context.Context, member string, score float64) error {
	_, err := b.write(ctx, member, "set", score)
	return err
}

func (b *Board) write(ctx context.Context, member, op string, n float64) (float64, error) {
	if member == "" || math.IsInf(n, 0) || math.IsNaN(n) {
		return 0, fmt.Errorf("leaderboard %q: member %q: a member needs a name and a finite number, not %v", b.id, member, n)
	}
	s, err := write.Exec(ctx, b.l.rc, b.Keys(), []string{member, op, strconv.FormatFloat(n, 'g', -1, 64), strconv.FormatInt(b.exp, 10)}).ToString()
	if rueidis.IsRedisNil(err) {
		return 0, fmt.Errorf("leaderboard %q: %w (at %v)", b.id, ErrExpired, b.Expires().UTC())
	}
	if err == nil && s == "overflow" {
		err = ErrOverflow
	}
	if err != nil {
		return 0, fmt.Errorf("leaderboard %q: %s %q: %w", b.id, op, member, err)
	}
	return strconv.ParseFloat(s, 64)
}

// Remove takes member off the board; ErrNotFound when it was not there.
func (b *Board) Remove(ctx context.Context, member string) error {
	n, err := remove.Exec(ctx, b.l.rc, b.Keys(), []string{member, strconv.FormatInt(b.exp, 10)}).AsInt64()
	if err != nil {
		return fmt.Errorf("leaderboard %q: remove %q: %w", b.id, member, err)
	}
	if n == 0 {
		return fmt.Errorf("leaderboard %q: %q: %w", b.id, member, ErrNotFound)
	}
	return nil
}

// Top returns up to n entries from the one ranked offset+1 down: Top(ctx,
// 0, 10) is the top ten, Top(ctx, 10, 10) the next page.
func (b *Board) Top(ctx context.Context, offset, n int64) ([]Entry, error) {
	if offset < 0 || n <= 0 {
		return nil, nil
	}
	stop := offset + n - 1
	if stop < offset { // overflowed
		stop = math.MaxInt64
	}
	zs, err := b.l.rc.Do(ctx, b.l.rc.B().Zrevrange().Key(b.Keys()[0]).Start(offset).Stop(stop).Withscores().Build()).AsZScores()
	if err != nil {
		return nil, fmt.Errorf("leaderboard %q: top: %w", b.id, err)
	}
	return entries(offset, zs), nil
}

// Rank returns member's entry; ErrNotFound when it is not on the board.
func (b *Board) Rank(ctx context.Context, member string) (Entry, error) {
	es, err := b.Around(ctx, member, 0)
	if err != nil {
		return Entry{}, err
	}
	return es[0], nil
}

// Around returns member's entry with up to n entries above it and n below
// (fewer at the top or the bottom of the board), best first; ErrNotFound
// when member is not on the board.
func (b *Board) Around(ctx context.Context, member string, n int64) ([]Entry, error) {
	arr, err := around.Exec(ctx, b.l.rc, b.Keys(), []string{member, strconv.FormatInt(max(n, 0), 10)}).ToArray()
	if rueidis.IsRedisNil(err) {
		return nil, fmt.Errorf("leaderboard %q: %q: %w", b.id, member, ErrNotFound)
	}
	var lo int64
	var zs []rueidis.ZScore
	if err == nil && len(arr) != 2 {
		err = fmt.Errorf("a reply of %d values", len(arr))
	}
	if err == nil {
		lo, err = arr[0].AsInt64()
	}
	if err == nil {
		zs, err = arr[1].AsZScores()
	}
	if err != nil {
		return nil, fmt.Errorf("leaderboard %q: around %q: %w", b.id, member, err)
	}
	return entries(lo, zs), nil
}

// entries are the entries of zs, the first at 0-based position first.
func entries(first int64, zs []rueidis.ZScore) []Entry {
	es := make([]Entry, len(zs))
	for i, z := range zs {
		es[i] = Entry{Rank: first + int64(i) + 1, Member: z.Member, Score: z.Score}
		if len(z.Member) >= elemPrefix { // else not written by this package
			es[i].Member = z.Member[elemPrefix:]
		}
	}
	return es
}
