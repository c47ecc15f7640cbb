package main

import (
	"context"
	_ "embed"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"
)

// lag is item 2: the lag from commit to Redis visible at a steady rate of
// single-row commits, beside the lag of a bare logical replication receiver
// on the same load.
type lag struct {
	about
	Rate, Conns int           // commits per second, from connections
	For         time.Duration // of paced commits
	Daemon      lagStats      // commit returned -> key set in Redis (keyspace notification)
	Floor       lagStats      // commit returned -> commit message received by a bare pgoutput receiver
	Process     procStats
	CPU         time.Duration // daemon CPU during the paced window
	Redis       redisStats
}

type lagStats struct {
	N, Missing    int
	P50, P99, Max time.Duration
	Rate          float64 // achieved commits/s
}

//go:embed step_lag.md
var lagText string

func (s lag) Text() string { return lagText }

func (s lag) Results() []row {
	what := fmt.Sprintf("Lag commit → visible at %d commits/s for %s (%s commits), ", s.Rate, s.For, count(s.Daemon.N))
	d, f := s.Daemon, s.Floor
	return []row{
		{ID: "2", What: what + "p50", Got: ms(d.P50), Ceiling: "bare pgoutput receiver: " + ms(f.P50), Ratio: ratioDur(f.P50, d.P50)},
		{ID: "2", What: what + "p99", Got: ms(d.P99), Ceiling: "bare pgoutput receiver: " + ms(f.P99), Ratio: ratioDur(f.P99, d.P99),
			Target: "< 20 ms", Met: yes(d.P99 < 20*time.Millisecond && d.Missing == 0)},
		{ID: "2", What: what + "max", Got: ms(d.Max), Ceiling: "bare pgoutput receiver: " + ms(f.Max), Ratio: ratioDur(f.Max, d.Max)},
		rssRow("2 lag", s.Process),
	}
}

// CoreShare is the share of one core the daemon used during the paced commits.
func (s lag) CoreShare() float64 { return s.CPU.Seconds() / s.For.Seconds() }

func (s lag) Run(ctx context.Context, e *env) (step, error) {
	s.Rate, s.Conns, s.For = e.sz.LagRate, e.sz.LagConns, e.sz.LagFor
	n := int(float64(s.Rate) * s.For.Seconds())
	if n > e.sz.Rows {
		return nil, fmt.Errorf("lag test needs %d rows", n)
	}

	// The floor: a bare pgoutput receiver on its own slot, daemon stopped.
	const slot = "bench_floor"
	if err := e.createSlot(ctx, slot); err != nil {
		return nil, err
	}
	defer e.dropSlot(context.WithoutCancel(ctx), slot)
	base := time.Now()
	committed, seen := make([]atomic.Int64, n), make([]atomic.Int64, n)
	rctx, stopRecv := context.WithCancel(ctx)
	recvErr := make(chan error, 1)
	go func() {
		recvErr <- e.receive(rctx, slot, func(ids []int, _ pglogrepl.LSN) bool {
			at := int64(time.Since(base))
			for _, id := range ids {
				if id >= 1 && id <= len(seen) {
					seen[id-1].CompareAndSwap(0, at)
				}
			}
			return false
		})
	}()
	elapsed, err := s.paced(ctx, e, n, base, committed)
	if err != nil {
		stopRecv()
		<-recvErr
		return nil, err
	}
	waitAll(seen, 10*time.Second)
	stopRecv()
	if err := <-recvErr; err != nil && ctx.Err() == nil {
		return nil, fmt.Errorf("bare receiver: %w", err)
	}
	s.Floor = lagOf(committed, seen, elapsed)
	if err := e.dropSlot(ctx, slot); err != nil {
		return nil, err
	}
	if err := e.settle(ctx); err != nil {
		return nil, err
	}

	// cachesync: keyspace notifications tell when each key is set.
	if _, err := e.startDaemon(e.node, "lag"); err != nil {
		return nil, err
	}
	if err := e.caughtUp(ctx); err != nil {
		return nil, err
	}
	if err := e.redis.Do(ctx, e.redis.B().ConfigSet().ParameterValue().ParameterValue("notify-keyspace-events", "E$").Build()).Error(); err != nil {
		return nil, err
	}
	defer e.redis.Do(context.WithoutCancel(ctx), e.redis.B().ConfigSet().ParameterValue().ParameterValue("notify-keyspace-events", "").Build())
	base = time.Now()
	committed, seen = make([]atomic.Int64, n), make([]atomic.Int64, n)
	var probed atomic.Bool
	sctx, stopSub := context.WithCancel(ctx)
	subErr := make(chan error, 1)
	unsubscribe := sync.OnceFunc(func() { stopSub(); <-subErr })
	defer unsubscribe()
	go func() {
		subErr <- e.redis.Receive(sctx, e.redis.B().Subscribe().Channel("__keyevent@0__:set").Build(), func(msg rueidis.PubSubMessage) {
			at := int64(time.Since(base))
			if msg.Message == "bench:probe" {
				probed.Store(true)
				return
			}
			var id int
			if _, err := fmt.Sscanf(msg.Message, "b:%d", &id); err == nil && id >= 1 && id <= n {
				seen[id-1].CompareAndSwap(0, at)
			}
		})
	}()
	for deadline := time.Now().Add(10 * time.Second); !probed.Load(); {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no keyspace notification arrived")
		}
		e.redis.Do(ctx, e.redis.B().Set().Key("bench:probe").Value("x").Build())
		time.Sleep(20 * time.Millisecond)
	}
	stopPerf := e.startPerf("lag")
	rs0, err := e.redisStats(ctx)
	if err != nil {
		return nil, err
	}
	cpu0 := e.daemonCPU()
	elapsed, err = s.paced(ctx, e, n, base, committed)
	if err != nil {
		return nil, err
	}
	waitAll(seen, 10*time.Second)
	s.CPU = e.daemonCPU() - cpu0
	stopPerf()
	if s.Redis, err = e.redisStats(ctx); err != nil {
		return nil, err
	}
	s.Redis = s.Redis.sub(rs0)
	unsubscribe()
	s.Daemon = lagOf(committed, seen, elapsed)
	if s.Process, err = e.stopStreaming(); err != nil {
		return nil, err
	}
	return s, nil
}

// paced commits n single-row updates (ids 1..n, each once) at s.Rate per
// second from s.Conns connections, following a fixed schedule, and records
// in committed[i] the time (ns since base) the commit of id i+1 returned.
func (s lag) paced(ctx context.Context, e *env, n int, base time.Time, committed []atomic.Int64) (time.Duration, error) {
	cs := make([]*pgx.Conn, s.Conns)
	for i := range cs {
		var err error
		if cs[i], err = pgx.Connect(ctx, e.dbURL); err != nil {
			return 0, err
		}
		defer cs[i].Close(context.Background())
	}
	tasks := make(chan int, n)
	errs := make(chan error, s.Conns)
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() {
			for i := range tasks {
				if _, err := c.Exec(ctx, "UPDATE bench SET val = val + 1 WHERE id = $1", i+1); err != nil {
					errs <- err
					return
				}
				committed[i].Store(int64(time.Since(base)))
			}
		})
	}
	interval := time.Second / time.Duration(s.Rate)
	start := time.Now()
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		tasks <- i
	}
	close(tasks)
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	return elapsed, <-errs
}

// lagOf turns commit and visibility times into percentiles.
func lagOf(committed, seen []atomic.Int64, elapsed time.Duration) lagStats {
	var lags []time.Duration
	s := lagStats{N: len(committed), Rate: float64(len(committed)) / elapsed.Seconds()}
	for i := range committed {
		c, v := committed[i].Load(), seen[i].Load()
		if c == 0 || v == 0 {
			s.Missing++
			continue
		}
		lags = append(lags, time.Duration(max(0, v-c)))
	}
	s.P50, s.P99, s.Max = percentiles(lags)
	return s
}

// waitAll waits until every commit has been seen, for at most timeout.
func waitAll(seen []atomic.Int64, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for i := range seen {
		for seen[i].Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
}
