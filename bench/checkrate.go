package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/cachesync/cachesync/internal/check"
	"github.com/cachesync/cachesync/internal/engine"
)

// The consistency checker's full-scan rate (11) over the bench cache, after
// the run's last step left Redis equal to the table, beside a bare SCAN +
// MGET of the same keys.

type checkRateResult struct {
	Keys            int
	Elapsed, Bare   time.Duration
	Rate, BareRate  float64
	Consistent      bool
	Rows            int
	CPU, RedisCPU   time.Duration
	BareRedisCPU    time.Duration
	BareKeysScanned int
}

func (b *bench) checkRate(ctx context.Context) error {
	r := &b.res.CheckRate
	*r = checkRateResult{}
	// Ceiling: SCAN MATCH b:* COUNT 1000 and one MGET per page.
	rs0 := b.mustRedisStats(ctx)
	start := time.Now()
	var cursor uint64
	for {
		e, err := b.redis.Do(ctx, b.redis.B().Scan().Cursor(cursor).Match("b:*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			return err
		}
		if len(e.Elements) > 0 {
			vals, err := b.redis.Do(ctx, b.redis.B().Mget().Key(e.Elements...).Build()).ToArray()
			if err != nil {
				return err
			}
			r.BareKeysScanned += len(vals)
		}
		if cursor = e.Cursor; cursor == 0 {
			break
		}
	}
	r.Bare = time.Since(start)
	r.BareRedisCPU = b.mustRedisStats(ctx).sub(rs0).CPU
	r.BareRate = float64(r.BareKeysScanned) / r.Bare.Seconds()
	fmt.Printf("   bare SCAN + MGET: %s keys in %s: %s keys/s\n", count(r.BareKeysScanned), secs(r.Bare), num(r.BareRate))

	cfg, err := b.readConfig()
	if err != nil {
		return err
	}
	api, err := engine.Open(ctx, cfg, engine.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer api.Close()
	rs0, cpu0 := b.mustRedisStats(ctx), processCPU()
	start = time.Now()
	rep, err := check.Run(ctx, cfg, api, b.redis, readCache, check.Options{})
	if err != nil {
		return err
	}
	r.Elapsed = time.Since(start)
	r.CPU, r.RedisCPU = processCPU()-cpu0, b.mustRedisStats(ctx).sub(rs0).CPU
	r.Keys, r.Rows, r.Consistent = rep.Keys, rep.Rows, rep.Consistent()
	r.Rate = float64(r.Keys) / r.Elapsed.Seconds()
	if !r.Consistent {
		return fmt.Errorf("check found differences in a quiet cache: %+v", rep)
	}
	fmt.Printf("   cachesync check: %s keys and %s rows in %s: %s keys/s (%.2f of the bare scan); this process %s CPU, Redis %s\n",
		count(r.Keys), count(r.Rows), secs(r.Elapsed), num(r.Rate), r.Rate/r.BareRate, secs(r.CPU), secs(r.RedisCPU))
	return nil
}

func (b *bench) checkRateRows(p func(string, ...any)) {
	r := b.res.CheckRate
	if r.Keys == 0 {
		return
	}
	p("| 11 | `cachesync check` full scan of the bench cache: every key in Redis (SCAN + MGET per page) and, at the same time, every row of the table (one streamed SELECT), hashed and compared, %s keys and %s rows | %s keys/s (%s) | bare SCAN MATCH + MGET of the same keys: %s keys/s (%s) | %.2f | ≥ 0.5 | %s |\n",
		count(r.Keys), count(r.Rows), num(r.Rate), secs(r.Elapsed), num(r.BareRate), secs(r.Bare), r.Rate/r.BareRate, yes(r.Rate/r.BareRate >= 0.5))
}

func (b *bench) checkRateMethod(p func(string, ...any)) {
	if b.res.CheckRate.Keys == 0 {
		return
	}
	p("- **11**: after the consistency check step (Redis equal to the table, the daemon stopped), the ceiling first: `SCAN 0 MATCH b:* COUNT 1000` to the end, one `MGET` of each page's keys, timed. Then `check.Run` (what `cachesync check --config ... b` runs) on a `engine.Open` of the read steps' config, full mode: it scans Redis the same way while it streams `SELECT id, val, note FROM public.bench`, hashes each key and value on both sides and compares; it must find the cache consistent. Keys/s = keys compared ÷ elapsed.\n")
	p("- **10**: in step 5's runs, a second `engine.Open` of the same config with `Options{DisableStats: true}` (no per-cache counters, no latency histogram) reads the same keys the same way.\n")
}
