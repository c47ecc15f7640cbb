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
// goroutines, beside a bare EVALSHA of a trivial script per Redis round
// trip the recipe makes (one per decision, two per acquire+release), from
// the same goroutines and client, in the same run.
type recipes struct {
	about
	Workers, IDs        int
	For                 time.Duration
	Bare, GCRA, Sliding opRun // one EVALSHA a call; one decision a call
	BarePair, Lock      opRun // two EVALSHAs a call; one acquire+release a call
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
	return []row{
		{ID: "15a", What: fmt.Sprintf("rate-limit decisions, GCRA (%d/%v per id, %s ids), %d goroutines", s.LimitPerWindow, s.Window, count(s.IDs), s.Workers),
			Got: num(s.GCRA.Rate) + " decisions/s", Ceiling: "bare `EVALSHA` of `return 1`: " + num(s.Bare.Rate) + "/s",
			Ratio: ratio(s.GCRA.Rate, s.Bare.Rate), Target: "≥ 0.8", Met: yes(s.GCRA.Rate/s.Bare.Rate >= 0.8)},
		{ID: "15b", What: fmt.Sprintf("rate-limit decisions, sliding window log (%d/%v per id, %s ids), %d goroutines", s.LimitPerWindow, s.Window, count(s.IDs), s.Workers),
			Got: num(s.Sliding.Rate) + " decisions/s", Ceiling: "bare `EVALSHA` of `return 1`: " + num(s.Bare.Rate) + "/s",
			Ratio: ratio(s.Sliding.Rate, s.Bare.Rate), Target: "≥ 0.8", Met: yes(s.Sliding.Rate/s.Bare.Rate >= 0.8)},
		{ID: "15c", What: fmt.Sprintf("lock acquire + release (`TryAcquire`, `Release`), a lock per goroutine, %d goroutines", s.Workers),
			Got: num(s.Lock.Rate) + " pairs/s", Ceiling: "two bare `EVALSHA`s of `return 1`: " + num(s.BarePair.Rate) + " pairs/s",
			Ratio: ratio(s.Lock.Rate, s.BarePair.Rate), Target: "≥ 0.8", Met: yes(s.Lock.Rate/s.BarePair.Rate >= 0.8)},
	}
}

// Ratio is a's rate over b's, as the report prints it.
func (recipes) Ratio(a, b opRun) string { return ratio(a.Rate, b.Rate) }

// Costs says what a call of r cost: CPU of this process and of Redis, µs.
func (recipes) Costs(r opRun) string {
	return fmt.Sprintf("%.1f µs here + %.1f µs in Redis", perRow(r.CPU, r.Ops), perRow(r.Redis.CPU, r.Ops))
}

// trivial is the ceiling's script: a round trip of EVALSHA and nothing else.
var trivial = rueidis.NewLuaScript("return 1")

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
	modes := []struct {
		run *opRun
		op  func(ctx context.Context, w, i int) error
	}{
		{&s.Bare, bare},
		{&s.GCRA, decide(gcra)},
		{&s.Sliding, decide(sliding)},
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
