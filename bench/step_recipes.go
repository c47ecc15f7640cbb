package main

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/lock"
	"github.com/cachesync/cachesync/ratelimit"
)

// recipes is item 15 (issue 16's recipes): rate-limit decisions (GCRA and
// the sliding window) and lock acquire+release, each from recipeWorkers
// goroutines, beside the ceiling: a bare EVALSHA per Redis round trip the
// recipe makes (one per decision, two per acquire+release) of the shortest
// script that does the same work (bareGCRA, bareSliding, bareAcquire,
// bareRelease), from the same goroutines and client, in the same run; and
// beside an EVALSHA of "return 1", what a script call costs at least.
type recipes struct {
	about
	Workers, IDs        int
	For                 time.Duration
	Bare, GCRA, Sliding opRun // one EVALSHA of "return 1" a call; one decision a call
	BareGCRA, BareSlide opRun // one EVALSHA of the bare script a call
	BarePair, Lock      opRun // two EVALSHAs of "return 1" a call; one acquire+release a call
	BareLock            opRun // the bare acquire and release scripts
	LimitPerWindow      int
	Window              time.Duration
}

const (
	recipeWorkers = 16
	recipeIDs     = 10_000 // ids the limiters decide for, at random
)

//go:embed step_recipes.md
var recipesText string

func (s recipes) Text() string { return recipesText }

func (s recipes) Results() []row {
	per := fmt.Sprintf("(%d/%v per id, %s ids), %d goroutines", s.LimitPerWindow, s.Window, count(s.IDs), s.Workers)
	return []row{
		{ID: "15a", What: "rate-limit decisions, GCRA " + per,
			Got: num(s.GCRA.Rate) + " decisions/s", Ceiling: "bare `EVALSHA` of the shortest GCRA script (`TIME`, `GET`, `SET PX`): " + num(s.BareGCRA.Rate) + "/s",
			Ratio: ratio(s.GCRA.Rate, s.BareGCRA.Rate), Target: "≥ 0.8", Met: yes(s.GCRA.Rate/s.BareGCRA.Rate >= 0.8)},
		{ID: "15a", What: "Same, beside a script call that does nothing",
			Got: num(s.GCRA.Rate) + " decisions/s", Ceiling: "bare `EVALSHA` of `return 1`: " + num(s.Bare.Rate) + "/s", Ratio: ratio(s.GCRA.Rate, s.Bare.Rate)},
		{ID: "15b", What: "rate-limit decisions, sliding window log " + per,
			Got: num(s.Sliding.Rate) + " decisions/s", Ceiling: "bare `EVALSHA` of the shortest sliding-log script (`TIME`, `ZREMRANGEBYSCORE`, `ZCARD`, `ZADD`, `PEXPIRE`): " + num(s.BareSlide.Rate) + "/s",
			Ratio: ratio(s.Sliding.Rate, s.BareSlide.Rate), Target: "≥ 0.8", Met: yes(s.Sliding.Rate/s.BareSlide.Rate >= 0.8)},
		{ID: "15b", What: "Same, beside a script call that does nothing",
			Got: num(s.Sliding.Rate) + " decisions/s", Ceiling: "bare `EVALSHA` of `return 1`: " + num(s.Bare.Rate) + "/s", Ratio: ratio(s.Sliding.Rate, s.Bare.Rate)},
		{ID: "15c", What: fmt.Sprintf("lock acquire + release (`TryAcquire`, `Release`), a lock per goroutine, %d goroutines", s.Workers),
			Got: num(s.Lock.Rate) + " pairs/s", Ceiling: "bare `EVALSHA`s of the shortest acquire (`SET NX PX`, `INCR` of the fence) and release (`GET`, `DEL`) scripts: " + num(s.BareLock.Rate) + " pairs/s",
			Ratio: ratio(s.Lock.Rate, s.BareLock.Rate), Target: "≥ 0.8", Met: yes(s.Lock.Rate/s.BareLock.Rate >= 0.8)},
		{ID: "15c", What: "Same, beside two script calls that do nothing",
			Got: num(s.Lock.Rate) + " pairs/s", Ceiling: "two bare `EVALSHA`s of `return 1`: " + num(s.BarePair.Rate) + " pairs/s", Ratio: ratio(s.Lock.Rate, s.BarePair.Rate)},
	}
}

// Ratio is a's rate over b's, as the report prints it.
func (recipes) Ratio(a, b opRun) string { return ratio(a.Rate, b.Rate) }

// Costs says what a call of r cost: CPU of this process and of Redis, µs.
func (recipes) Costs(r opRun) string {
	return fmt.Sprintf("%.1f µs here + %.1f µs in Redis", perRow(r.CPU, r.Ops), perRow(r.Redis.CPU, r.Ops))
}

// trivial is a round trip of EVALSHA and nothing else.
var trivial = rueidis.NewLuaScript("return 1")

// The ceilings' scripts: each recipe's work in Redis written as shortly as
// it can be, as one would by hand, with the answers the recipe gives.
var (
	// bareGCRA: ARGV interval (µs), burst (µs), the key's TAT.
	bareGCRA = rueidis.NewLuaScript(`local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new = tat + ARGV[1]
if new - ARGV[2] > now then return {0, new - ARGV[2] - now} end
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.ceil((new - now) / 1000))
return {1, 0}`)
	// bareSliding: ARGV window (µs), limit, a member unique to the call.
	bareSliding = rueidis.NewLuaScript(`local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(ARGV[1] / 1000))
return 1`)
	// bareAcquire: KEYS the lock and its fence; ARGV token, TTL (ms).
	bareAcquire = rueidis.NewLuaScript(`if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return redis.call('INCR', KEYS[2]) end
return 0`)
	// bareRelease: KEYS the lock; ARGV the token.
	bareRelease = rueidis.NewLuaScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)
)

func (s recipes) Run(ctx context.Context, e *env) (step, error) {
	s.Workers, s.IDs, s.For = recipeWorkers, recipeIDs, 5*time.Second
	if e.quick {
		s.For = time.Second
	}
	s.LimitPerWindow, s.Window = 100, time.Second
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{e.rds.Addr}, DisableCache: true})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	policy := ratelimit.Policy{Limit: s.LimitPerWindow, Window: s.Window}
	policy.Algorithm = ratelimit.GCRA
	gcra, err := ratelimit.New(c, "bench:rl:gcra:", policy)
	if err != nil {
		return nil, err
	}
	policy.Algorithm = ratelimit.Sliding
	sliding, err := ratelimit.New(c, "bench:rl:sliding:", policy)
	if err != nil {
		return nil, err
	}
	locks := lock.New(c, "bench:lock:")
	id := func(w, i int) string { return strconv.Itoa((w*7919 + i*104729) % s.IDs) }
	bare := func(ctx context.Context, w, i int) error {
		return trivial.Exec(ctx, c, []string{"bench:rl:gcra:" + id(w, i)}, nil).Error()
	}
	decide := func(l *ratelimit.Limiter) func(ctx context.Context, w, i int) error {
		return func(ctx context.Context, w, i int) error {
			_, err := l.Allow(ctx, id(w, i))
			return err
		}
	}
	name := func(w int) string { return "w" + strconv.Itoa(w) }
	interval := s.Window.Microseconds() / int64(s.LimitPerWindow)
	gcraArgs := []string{strconv.FormatInt(interval, 10), strconv.FormatInt(interval*int64(s.LimitPerWindow), 10)}
	slideArgs := func(w, i int) []string {
		return []string{strconv.FormatInt(s.Window.Microseconds(), 10), strconv.Itoa(s.LimitPerWindow), strconv.Itoa(w) + ":" + strconv.Itoa(i)}
	}
	modes := []struct {
		run *opRun
		op  func(ctx context.Context, w, i int) error
	}{
		{&s.Bare, bare},
		{&s.BareGCRA, func(ctx context.Context, w, i int) error {
			return bareGCRA.Exec(ctx, c, []string{"bench:rl:baregcra:" + id(w, i)}, gcraArgs).Error()
		}},
		{&s.GCRA, decide(gcra)},
		{&s.BareSlide, func(ctx context.Context, w, i int) error {
			return bareSliding.Exec(ctx, c, []string{"bench:rl:bareslide:" + id(w, i)}, slideArgs(w, i)).Error()
		}},
		{&s.Sliding, decide(sliding)},
		{&s.BareLock, func(ctx context.Context, w, i int) error {
			k := "bench:barelock:{" + name(w) + "}"
			token := strconv.Itoa(i)
			if err := bareAcquire.Exec(ctx, c, []string{k, k + ":fence"}, []string{token, "10000"}).Error(); err != nil {
				return err
			}
			return bareRelease.Exec(ctx, c, []string{k}, []string{token}).Error()
		}},
		{&s.BarePair, func(ctx context.Context, w, i int) error {
			if err := bare(ctx, w, i); err != nil {
				return err
			}
			return bare(ctx, w, i)
		}},
		{&s.Lock, func(ctx context.Context, w, i int) error {
			l, err := locks.TryAcquire(ctx, name(w), 10*time.Second)
			if err != nil {
				return err
			}
			return locks.Release(ctx, l.Name, l.Token)
		}},
	}
	for _, m := range modes {
		if _, _, err := e.runOps(ctx, s.Workers, 0, s.For/10, m.op); err != nil { // warm-up: scripts loaded, connections up
			return nil, err
		}
		r, _, err := e.runOps(ctx, s.Workers, 0, s.For, m.op)
		if err != nil {
			return nil, err
		}
		*m.run = r
	}
	return s, nil
}
