package main

import (
	"context"
	_ "embed"
	"fmt"
	"slices"
	"time"
)

// takeover is item 13: how long after kill -9 of the daemon that streams a
// change is applied by the standby of the same config, beside the same
// with no standby, a new daemon started at once after the kill.
type takeover struct {
	about
	Rounds   int
	Standby  []time.Duration // kill -9 → the change visible, through the standby
	Restart  []time.Duration // kill -9 → the change visible, through a daemon started then
	Standbys time.Duration   // p50 of Standby
	Restarts time.Duration   // p50 of Restart
}

//go:embed step_takeover.md
var takeoverText string

func (s takeover) Text() string { return takeoverText }

func (s takeover) Results() []row {
	return []row{{ID: "13", What: fmt.Sprintf("Takeover: kill -9 of the daemon that streams → a change committed at once is visible through the standby, p50 of %d (each: %s)", s.Rounds, durs(s.Standby)),
		Got: ms(s.Standbys), Ceiling: fmt.Sprintf("no standby, a daemon started at the kill: %s (each: %s)", ms(s.Restarts), durs(s.Restart)),
		Ratio: ratioDur(s.Restarts, s.Standbys), Target: "< 10 s", Met: yes(s.Standbys < 10*time.Second)}}
}

func (s takeover) Run(ctx context.Context, e *env) (step, error) {
	s.Rounds = 5
	for i := range s.Rounds {
		active, err := e.startDaemon(fmt.Sprintf("takeover-%d", i+1))
		if err != nil {
			return nil, err
		}
		if err := e.caughtUp(ctx); err != nil {
			return nil, err
		}
		// With a standby waiting on the slot's lock.
		standby, err := e.spawn(fmt.Sprintf("takeover-%d-standby", i+1))
		if err != nil {
			return nil, err
		}
		if _, err := standby.waitLine(ctx, "waiting to take over", time.Minute); err != nil {
			return nil, err
		}
		took, err := e.killAndApply(ctx, active, func() {})
		if err != nil {
			return nil, err
		}
		s.Standby = append(s.Standby, took)
		// Without: kill -9 of the standby, now the streaming one, and a
		// new daemon at once.
		e.daemon = standby
		took, err = e.killAndApply(ctx, standby, func() {
			_, err = e.startDaemon(fmt.Sprintf("takeover-%d-restart", i+1))
		})
		if err != nil {
			return nil, err
		}
		s.Restart = append(s.Restart, took)
		if _, err := e.stopStreaming(); err != nil {
			return nil, err
		}
	}
	s.Standbys, s.Restarts = median(s.Standby), median(s.Restart)
	return s, nil
}

// killAndApply kills d (the env's daemon) with -9, runs then (which may
// start another), commits a change and returns the time from the kill to
// the change visible in Redis.
func (e *env) killAndApply(ctx context.Context, d *daemon, then func()) (time.Duration, error) {
	killed := time.Now()
	d.kill()
	e.daemon = nil
	then()
	mark, err := e.bump(ctx)
	if err != nil {
		return 0, err
	}
	seen, err := e.waitMark(ctx, mark, time.Minute)
	if err != nil {
		return 0, err
	}
	return seen.Sub(killed), nil
}

// median is the middle of ds (the upper one of an even count).
func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// durs lists ds in milliseconds.
func durs(ds []time.Duration) string {
	out := ""
	for i, d := range ds {
		if i > 0 {
			out += ", "
		}
		out += ms(d)
	}
	return out
}
