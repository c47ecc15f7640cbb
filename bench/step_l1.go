package main

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/engine"
)

// l1Delay is 16's delay: from a commit to every process reading the new
// value through its l1 (its copy dropped on Redis's invalidation push, the
// key read again), beside the same commit becoming visible in Redis, with
// the daemon streaming.
type l1Delay struct {
	about
	Procs, Commits int
	L1, Redis      lagStats // commit returned → the last process read it; → a bare GET read it
}

//go:embed step_l1.md
var l1Text string

func (s l1Delay) Text() string { return l1Text }

func (s l1Delay) Results() []row {
	what := fmt.Sprintf("L1 invalidation delay: commit → every one of %d processes reads the new value through its `l1`, %d commits one at a time, ", s.Procs, s.Commits)
	return []row{
		{ID: "16", What: what + "p50", Got: ms(s.L1.P50), Ceiling: "commit → visible in Redis: " + ms(s.Redis.P50), Ratio: ratioDur(s.Redis.P50, s.L1.P50)},
		{ID: "16", What: what + "p99", Got: ms(s.L1.P99), Ceiling: "commit → visible in Redis: " + ms(s.Redis.P99), Ratio: ratioDur(s.Redis.P99, s.L1.P99),
			Target: "< 50 ms", Met: yes(s.L1.P99 < 50*time.Millisecond)},
	}
}

func (s l1Delay) Run(ctx context.Context, e *env) (step, error) {
	s.Procs, s.Commits = 3, 200
	if e.quick {
		s.Commits = 50
	}
	cfg, err := e.benchConfig()
	if err != nil {
		return nil, err
	}
	cfg.Caches[benchCache].L1 = &config.L1{Max: l1Max, TTL: l1TTL}
	var procs []*engine.Engine
	for range s.Procs {
		p, err := engine.Open(ctx, cfg, engine.Options{Logger: quiet})
		if err != nil {
			return nil, err
		}
		defer p.Close()
		procs = append(procs, p)
	}
	if _, err := e.startDaemon(e.node, "l1"); err != nil {
		return nil, err
	}
	if err := e.caughtUp(ctx); err != nil {
		return nil, err
	}
	var l1, redis []time.Duration
	base := time.Now().UnixMicro() // marks no earlier attempt wrote
	for i := range s.Commits {
		key := "b:" + strconv.Itoa(1+i)
		for _, p := range procs { // every process holds the key
			for range 2 {
				if _, err := p.Get(ctx, benchCache, key); err != nil {
					return nil, err
				}
			}
		}
		mark := base + int64(i)
		want := fmt.Sprintf(`"val":%d,`, mark)
		var committed time.Time
		var wg sync.WaitGroup
		seen := make([]time.Time, s.Procs+1)
		errs := make([]error, s.Procs+1)
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		for j := range seen {
			wg.Go(func() {
				for {
					var v []byte
					var err error
					if j < s.Procs {
						v, err = procs[j].Get(wctx, benchCache, key)
					} else {
						v, err = e.redis.Do(wctx, e.redis.B().Get().Key(key).Build()).AsBytes()
					}
					if err == nil && strings.Contains(string(v), want) {
						seen[j] = time.Now()
						return
					}
					if wctx.Err() != nil {
						errs[j] = fmt.Errorf("%s never read its new value: %v", key, err)
						return
					}
					time.Sleep(50 * time.Microsecond)
				}
			})
		}
		if _, err := e.db.Exec(ctx, "UPDATE bench SET val = $1 WHERE id = $2", mark, 1+i); err != nil {
			cancel()
			return nil, err
		}
		committed = time.Now()
		wg.Wait()
		cancel()
		for _, err := range errs {
			if err != nil {
				return nil, err
			}
		}
		last := seen[0]
		for _, t := range seen[1:s.Procs] {
			last = later(last, t)
		}
		l1 = append(l1, max(0, last.Sub(committed)))
		redis = append(redis, max(0, seen[s.Procs].Sub(committed)))
	}
	if _, err := e.stopStreaming(); err != nil {
		return nil, err
	}
	s.L1.N, s.Redis.N = len(l1), len(redis)
	s.L1.P50, s.L1.P99, s.L1.Max = percentiles(l1)
	s.Redis.P50, s.Redis.P99, s.Redis.Max = percentiles(redis)
	fmt.Printf("   commit → every l1: p50 %s, p99 %s, max %s; commit → Redis: p50 %s, p99 %s\n",
		ms(s.L1.P50), ms(s.L1.P99), ms(s.L1.Max), ms(s.Redis.P50), ms(s.Redis.P99))
	return s, nil
}

// later is the later of a and b.
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
