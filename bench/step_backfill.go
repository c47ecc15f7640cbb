package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// backfill is item 3: the daemon rebuilds the cache into an empty Redis,
// beside COPY of the same rows and a bare client writing the same SETs.
type backfill struct {
	about
	Rows       int
	ToLine     time.Duration // process start -> "cache rebuilt" logged
	Took       time.Duration // the daemon's own figure (took=)
	Rate       float64       // rows / ToLine
	CopyTime   time.Duration // COPY ... TO STDOUT into io.Discard, best of two
	CopyRate   float64
	Daemon     procStats
	DaemonUsed time.Duration // CPU time of the daemon up to the log line
	Redis      redisStats    // up to the log line
	SetTime    time.Duration // the same SETs from a bare client: what Redis absorbs
	SetRate    float64
	SetCPU     time.Duration // Redis CPU during them
}

//go:embed step_backfill.md
var backfillText string

func (s backfill) Text() string { return backfillText }

func (s backfill) Results() []row {
	return []row{{
		ID:      "3",
		What:    "Backfill of " + count(s.Rows) + " rows into an empty Redis, process start → `cache rebuilt` logged",
		Got:     fmt.Sprintf("%s rows/s (%s; `took=%s`)", num(s.Rate), secs(s.ToLine), s.Took),
		Ceiling: fmt.Sprintf("COPY TO STDOUT → io.Discard: %s rows/s (%s)", num(s.CopyRate), secs(s.CopyTime)),
		Ratio:   ratio(s.Rate, s.CopyRate), Target: "≥ 0.5", Met: yes(s.Rate/s.CopyRate >= 0.5),
	}, rssRow("backfill", s.Daemon)}
}

// RedisBound tells whether one Redis absorbs the rows slower than half the
// rate COPY reads them: then the target against COPY is out of reach.
func (s backfill) RedisBound() bool { return s.SetRate < 0.5*s.CopyRate }

func (s backfill) Run(ctx context.Context, e *env) (step, error) {
	if err := e.redis.Do(ctx, e.redis.B().Flushall().Build()).Error(); err != nil {
		return nil, err
	}
	if _, _, err := copyCeiling(ctx, e); err != nil { // warm the caches for both sides
		return nil, err
	}
	rs0, err := e.redisStats(ctx)
	if err != nil {
		return nil, err
	}
	d, err := e.startDaemon(e.node, "backfill")
	if err != nil {
		return nil, err
	}
	line, err := d.waitLine(ctx, `msg="cache rebuilt"`, 10*time.Minute)
	if err != nil {
		return nil, err
	}
	s.DaemonUsed = e.daemonCPU()
	if s.Redis, err = e.redisStats(ctx); err != nil {
		return nil, err
	}
	s.Redis = s.Redis.sub(rs0)
	s.ToLine = line.at.Sub(d.started)
	for _, f := range strings.Fields(line.text) {
		if v, ok := strings.CutPrefix(f, "took="); ok {
			s.Took, _ = time.ParseDuration(v)
		}
		if v, ok := strings.CutPrefix(f, "rows="); ok {
			fmt.Sscan(v, &s.Rows)
		}
	}
	if err := e.caughtUp(ctx); err != nil {
		return nil, err
	}
	if s.Daemon, err = e.stopDaemon(); err != nil {
		return nil, err
	}
	n, err := e.redis.Do(ctx, e.redis.B().Dbsize().Build()).AsInt64()
	if err != nil {
		return nil, err
	}
	if want := int64(e.sz.Rows) + 4; n != want { // the rows, the sentinel, the daemon's state hash and its feed's token, the cache's removal count (bumped by the rebuild's clear)
		return nil, fmt.Errorf("after the backfill Redis holds %d keys, want %d", n, want)
	}
	for range 2 {
		t, rows, err := copyCeiling(ctx, e)
		if err != nil {
			return nil, err
		}
		if s.CopyTime == 0 || t < s.CopyTime {
			s.CopyTime = t
		}
		if rows != int64(s.Rows) {
			return nil, fmt.Errorf("COPY read %d rows, the daemon rebuilt %d", rows, s.Rows)
		}
	}
	s.Rate = float64(s.Rows) / s.ToLine.Seconds()
	s.CopyRate = float64(s.Rows) / s.CopyTime.Seconds()
	if s.SetTime, s.SetCPU, err = redisCeiling(ctx, e); err != nil {
		return nil, err
	}
	s.SetRate = float64(s.Rows) / s.SetTime.Seconds()
	return s, e.settle(ctx)
}

func copyCeiling(ctx context.Context, e *env) (time.Duration, int64, error) {
	start := time.Now()
	tag, err := e.db.PgConn().CopyTo(ctx, io.Discard, "COPY (SELECT id, val, note FROM public.bench) TO STDOUT")
	return time.Since(start), tag.RowsAffected(), err
}

// redisCeiling writes the rows' keys and JSON values into database 1 of the
// same Redis the way the daemon's rebuild does (batches of 1,000 SETs, 4
// round trips in flight) but with the values prepared beforehand, and times
// it; it returns the time and Redis's CPU time.
func redisCeiling(ctx context.Context, e *env) (time.Duration, time.Duration, error) {
	var buf strings.Builder
	if _, err := e.db.PgConn().CopyTo(ctx, &buf, "COPY (SELECT id, val, note FROM public.bench) TO STDOUT"); err != nil {
		return 0, 0, err
	}
	var keys, vals []string
	for _, line := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
		f := strings.Split(line, "\t")
		note, _ := json.Marshal(f[2])
		keys = append(keys, "b:"+f[0])
		vals = append(vals, `{"id":`+f[0]+`,"val":`+f[1]+`,"note":`+string(note)+`}`)
	}
	buf = strings.Builder{}
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{e.rds.Addr}, DisableCache: true, SelectDB: 1})
	if err != nil {
		return 0, 0, err
	}
	defer client.Close()
	rs0, err := e.redisStats(ctx)
	if err != nil {
		return 0, 0, err
	}
	const batch, writers = 1000, 4
	batches := make(chan int, writers)
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	start := time.Now()
	for range writers {
		wg.Go(func() {
			for lo := range batches {
				cmds := make([]rueidis.Completed, 0, batch)
				for i := lo; i < min(lo+batch, len(keys)); i++ {
					cmds = append(cmds, client.B().Set().Key(keys[i]).Value(vals[i]).Build())
				}
				for _, r := range client.DoMulti(ctx, cmds...) {
					if err := r.Error(); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	for lo := 0; lo < len(keys); lo += batch {
		batches <- lo
	}
	close(batches)
	wg.Wait()
	elapsed := time.Since(start)
	rs1, err := e.redisStats(ctx)
	if err != nil {
		return 0, 0, err
	}
	close(errs)
	if err := <-errs; err != nil {
		return 0, 0, err
	}
	return elapsed, rs1.CPU - rs0.CPU, client.Do(ctx, client.B().Flushdb().Build()).Error()
}
