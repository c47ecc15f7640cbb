package main

import (
	"context"
	_ "embed"
	"fmt"
	"time"

	"github.com/cachesync/cachesync/internal/check"
	"github.com/cachesync/cachesync/internal/engine"
)

// checkRate is item 11: the consistency checker's full-scan rate over the
// bench cache, once Redis equals the table, beside a bare SCAN + MGET of
// the same keys.
type checkRate struct {
	about
	Keys, Rows      int
	Elapsed, Bare   time.Duration
	Rate, BareRate  float64
	CPU, RedisCPU   time.Duration
	BareRedisCPU    time.Duration
	BareKeysScanned int
}

//go:embed step_checkrate.md
var checkRateText string

func (s checkRate) Text() string { return checkRateText }

func (s checkRate) Results() []row {
	return []row{{ID: "11",
		What: fmt.Sprintf("`cachesync check` full scan of the bench cache: every key in Redis (SCAN + MGET per page) and, at the same time, every row of the table (one streamed SELECT), hashed and compared, %s keys and %s rows",
			count(s.Keys), count(s.Rows)),
		Got:     fmt.Sprintf("%s keys/s (%s)", num(s.Rate), secs(s.Elapsed)),
		Ceiling: fmt.Sprintf("bare SCAN MATCH + MGET of the same keys: %s keys/s (%s)", num(s.BareRate), secs(s.Bare)),
		Ratio:   ratio(s.Rate, s.BareRate), Target: "≥ 0.5", Met: yes(s.Rate/s.BareRate >= 0.5)}}
}

func (s checkRate) Run(ctx context.Context, e *env) (step, error) {
	// Ceiling: SCAN MATCH b:* COUNT 1000 and one MGET per page.
	rs0 := e.mustRedisStats(ctx)
	start := time.Now()
	var cursor uint64
	for {
		page, err := e.redis.Do(ctx, e.redis.B().Scan().Cursor(cursor).Match("b:*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			return nil, err
		}
		if len(page.Elements) > 0 {
			vals, err := e.redis.Do(ctx, e.redis.B().Mget().Key(page.Elements...).Build()).ToArray()
			if err != nil {
				return nil, err
			}
			s.BareKeysScanned += len(vals)
		}
		if cursor = page.Cursor; cursor == 0 {
			break
		}
	}
	s.Bare = time.Since(start)
	s.BareRedisCPU = e.mustRedisStats(ctx).sub(rs0).CPU
	s.BareRate = float64(s.BareKeysScanned) / s.Bare.Seconds()

	cfg, err := e.benchConfig()
	if err != nil {
		return nil, err
	}
	api, err := engine.Open(ctx, cfg, engine.Options{Logger: quiet})
	if err != nil {
		return nil, err
	}
	defer api.Close()
	rs0, cpu0 := e.mustRedisStats(ctx), processCPU()
	start = time.Now()
	rep, err := check.Run(ctx, cfg, api, e.redis, benchCache, check.Options{})
	if err != nil {
		return nil, err
	}
	s.Elapsed = time.Since(start)
	s.CPU, s.RedisCPU = processCPU()-cpu0, e.mustRedisStats(ctx).sub(rs0).CPU
	s.Keys, s.Rows = rep.Keys, rep.Rows
	s.Rate = float64(s.Keys) / s.Elapsed.Seconds()
	if !rep.Consistent() {
		return nil, fmt.Errorf("check found differences in a quiet cache: %+v", rep)
	}
	return s, nil
}
