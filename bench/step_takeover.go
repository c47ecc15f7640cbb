package main

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"time"
)

// takeover is item 13: how long after kill -9 of the daemon that streams a
// change is applied by the standby of the same config, beside the same
// with no standby, a new daemon started at once after the kill.
type takeover struct {
	about
	Rounds  int
	Standby []time.Duration // kill -9 → the change visible, through the standby, by round
	Restart []time.Duration // kill -9 → the change visible, through a daemon started then, by round
}

// Standbys is the p50 of Standby (a copy sorted: the report lists the
// rounds in order).
func (s takeover) Standbys() time.Duration {
	p50, _, _ := percentiles(slices.Clone(s.Standby))
	return p50
}

// Restarts is the p50 of Restart.
func (s takeover) Restarts() time.Duration {
	p50, _, _ := percentiles(slices.Clone(s.Restart))
	return p50
}

//go:embed step_takeover.md
var takeoverText string

func (s takeover) Text() string { return takeoverText }

func (s takeover) Results() []row {
	return []row{{ID: "13", What: fmt.Sprintf("Takeover: kill -9 of the daemon that streams → a change committed at once is visible through the standby, p50 of %d (each: %s)", s.Rounds, durs(s.Standby)),
		Got: ms(s.Standbys()), Ceiling: fmt.Sprintf("no standby, a daemon started at the kill: %s (each: %s)", ms(s.Restarts()), durs(s.Restart)),
		Ratio: ratioDur(s.Restarts(), s.Standbys()), Target: "< 10 s", Met: yes(s.Standbys() < 10*time.Second)}}
}

func (s takeover) Run(ctx context.Context, e *env) (step, error) {
	s.Rounds = 5
	for i := range s.Rounds {
		if _, err := e.startDaemon(e.node, fmt.Sprintf("takeover-%d", i+1)); err != nil {
			return nil, err
		}
		if err := e.caughtUp(ctx); err != nil {
			return nil, err
		}
		// With a standby waiting on the slot's lock.
		standby, err := e.spawn(e.node, fmt.Sprintf("takeover-%d-standby", i+1))
		if err != nil {
			return nil, err
		}
		if _, err := standby.waitLine(ctx, "waiting to take over", time.Minute); err != nil {
			standby.kill()
			return nil, err
		}
		// Once the active one is killed, the standby is the env's daemon
		// (watched while the change is awaited, stopped if the step fails).
		took, err := e.killAndApply(ctx, func() error {
			e.daemon = standby
			return nil
		})
		if err != nil {
			return nil, err
		}
		s.Standby = append(s.Standby, took)
		// Without: kill -9 of the standby, now the streaming one, and a
		// new daemon at once.
		took, err = e.killAndApply(ctx, func() error {
			_, err := e.startDaemon(e.node, fmt.Sprintf("takeover-%d-restart", i+1))
			return err
		})
		if err != nil {
			return nil, err
		}
		s.Restart = append(s.Restart, took)
		if _, err := e.stopStreaming(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// killAndApply kills the env's daemon with -9, runs then (which may start
// another or adopt a standby as the env's daemon), commits a change and
// returns the time from the kill to the change visible in Redis.
func (e *env) killAndApply(ctx context.Context, then func() error) (time.Duration, error) {
	if e.daemon == nil {
		return 0, errors.New("no daemon running")
	}
	killed := time.Now()
	e.daemon.kill()
	e.daemon = nil
	if err := then(); err != nil {
		return 0, err
	}
	mark, err := e.bump(ctx)
	if err != nil {
		return 0, err
	}
	seen, err := e.waitMark(ctx, e.node, mark, time.Minute)
	if err != nil {
		return 0, err
	}
	return seen.Sub(killed), nil
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
