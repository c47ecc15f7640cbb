package main

import (
	"context"
	_ "embed"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
)

// throughput is item 1, change throughput from commit to Redis visible:
// 1,000-row (Batched) or single-row transactions, written while the daemon
// runs or, as a Backlog, while it is stopped and read when it starts; beside
// pg_recvlogical and a bare Go receiver reading the same WAL.
type throughput struct {
	about
	Batched bool // 1,000-row transactions from one connection, else single-row ones from several
	Backlog bool // written with the daemon stopped, timed from its start

	Rows, Txns, Conns int
	TxnSize           int           // rows per transaction
	Elapsed           time.Duration // first commit start (or daemon start, backlog) -> last change visible
	WriteTime         time.Duration // first commit start -> last commit returned
	Tail              time.Duration // last commit returned -> last change visible
	Rate              float64
	ceilings
	// At the last commit (daemon running): the fraction of the case's WAL
	// the daemon's walsender had decoded and sent, and the daemon had applied.
	DecodedAtEnd, AppliedAtEnd float64
	DaemonCPU                  time.Duration // daemon CPU time during Elapsed
	SenderCPU                  time.Duration // CPU time of the daemon's walsender (decoding) during Elapsed
	Daemon                     procStats     // at stop: peak RSS
	Redis                      redisStats    // during Elapsed
}

const (
	ceilingSlot = "bench_ceiling" // read by pg_recvlogical
	bareSlot    = "bench_bare"    // read by the bare Go receiver
)

//go:embed step_throughput.md
var throughputText string

func (s throughput) Text() string { return throughputText }

func (s throughput) Results() []row {
	r := row{ID: s.ID,
		What:    fmt.Sprintf("Change throughput, %s single-row transactions (%d connections), commit → visible", count(s.Rows), s.Conns),
		Got:     fmt.Sprintf("%s rows/s (%s)", num(s.Rate), secs(s.Elapsed)),
		Ceiling: fmt.Sprintf("pg_recvlogical: %s rows/s (%s)", num(s.CeilRate), secs(s.CeilTime)),
		Ratio:   ratio(s.Rate, s.CeilRate), Target: "(none set)", Met: "—"}
	rss := s.ID + " single-row"
	switch {
	case s.Backlog:
		r.What = "The " + s.Live() + " workload as a backlog: written with the daemon stopped, timed from daemon process start to the last change visible"
		r.Target, rss = "(information)", s.ID+" catch-up"
	case s.Batched:
		r.What = fmt.Sprintf("Change throughput, %s updates in %s-row transactions, commit → visible in Redis", count(s.Rows), count(s.TxnSize))
		r.Target, r.Met, rss = "≥ 0.8", yes(s.Rate/s.CeilRate >= 0.8), s.ID+" batched"
	}
	return []row{r, rssRow(rss, s.Daemon)}
}

// Live is the id of the step with the daemon running on the same workload,
// BacklogID that of the step with the workload as a backlog.
func (s throughput) Live() string      { return strings.TrimSuffix(s.ID, "-backlog") }
func (s throughput) BacklogID() string { return s.Live() + "-backlog" }

// KeptPace tells whether the last change was visible within a tenth of the
// writes' time after the last commit.
func (s throughput) KeptPace() bool { return s.Tail <= s.WriteTime/10 }

// Behind is how far the daemon's applying trailed its walsender's decoding
// at the last commit, as a fraction of the case's WAL; WithinReadAhead
// tells whether that is no more than the daemon buffers: it reads ahead up
// to 64 transaction parts of up to 1,024 changes, and applies batches of up
// to 4,096.
func (s throughput) Behind() float64 { return s.DecodedAtEnd - s.AppliedAtEnd }
func (s throughput) WithinReadAhead() bool {
	return s.Behind()*float64(s.Rows) <= 64*1024+4096
}

// Outran tells whether the daemon read faster than pg_recvlogical.
func (s throughput) Outran() bool { return s.Rate > s.CeilRate }

// CostsRow is the step's line of the table of "Where the time goes".
func (s throughput) CostsRow() string {
	writes, tail := "", "—"
	if s.WriteTime > 0 {
		writes = fmt.Sprintf("%s (%s)", secs(s.WriteTime), num(float64(s.Rows)/s.WriteTime.Seconds()))
	}
	if s.Backlog {
		writes += ", daemon stopped"
	} else {
		tail = fmt.Sprintf("%s (at the last commit: %.0f%% decoded, %.0f%% applied)", ms(s.Tail), 100*s.DecodedAtEnd, 100*s.AppliedAtEnd)
	}
	return cells(s.ID, writes, tail,
		fmt.Sprintf("%s (%.1f µs/row, %.0f%%)", secs(s.DaemonCPU), perRow(s.DaemonCPU, s.Rows), 100*s.DaemonCPU.Seconds()/s.Elapsed.Seconds()),
		secs(s.SenderCPU), secs(s.Redis.CPU),
		fmt.Sprintf("%s (%.0f)", count(int(s.Redis.Flushes)), float64(s.Redis.Sets)/max(1, float64(s.Redis.Flushes))),
		secs(s.CeilCPU), fmt.Sprintf("%s rows/s, %s (%.2f)", num(s.BareRate), secs(s.BareTime), s.Rate/s.BareRate))
}

// Publication is the daemon's publication, which the ceilings read too.
func (throughput) Publication() string { return publication }

// Span is the ids a batched transaction updates after its first.
func (s throughput) Span() int { return s.TxnSize - 1 }

func (s throughput) Run(ctx context.Context, e *env) (step, error) {
	s.TxnSize = e.sz.TxnSize
	var stmt func(int) (string, []any)
	if s.Batched {
		s.Txns = e.sz.BatchedRows / s.TxnSize
		s.Rows, s.Conns = s.Txns*s.TxnSize, 1
		stmt = batchedUpdate(s.TxnSize)
	} else {
		s.Rows, s.Txns, s.Conns = e.sz.SingleTxns, e.sz.SingleTxns, e.sz.SingleConns
		stmt = func(i int) (string, []any) { return "UPDATE bench SET val = val + 1 WHERE id = $1", []any{1 + i} }
	}
	if err := s.measure(ctx, e, stmt); err != nil {
		return nil, err
	}
	return s, e.settle(ctx)
}

// batchedUpdate gives statement i of 1a's workload: size single-row
// updates in one transaction, of the ids after the previous statement's.
func batchedUpdate(size int) func(i int) (string, []any) {
	return func(i int) (string, []any) {
		lo := 1 + i*size
		return "UPDATE bench SET val = val + 1 WHERE id BETWEEN $1 AND $2", []any{lo, lo + size - 1}
	}
}

// measure writes the workload and times it to the last change visible in
// Redis, then reads the same WAL with pg_recvlogical and the bare receiver.
// With the daemon running, the time runs from the first commit's start;
// for a backlog, the workload is written while the daemon is stopped, and
// the time runs from the daemon's process start: the task pg_recvlogical's
// figure measures.
func (s *throughput) measure(ctx context.Context, e *env, stmt func(int) (string, []any)) error {
	if !s.Backlog {
		if _, err := e.startDaemon(e.node, s.ID); err != nil {
			return err
		}
		if err := e.caughtUp(ctx); err != nil {
			return err
		}
	}
	if err := e.createCeilingSlots(ctx); err != nil {
		return err
	}
	defer e.dropCeilingSlots(ctx)
	stopPerf := e.startPerf(s.ID)
	rs0, err := e.redisStats(ctx)
	if err != nil {
		return err
	}
	cpu0, sender0 := e.daemonCPU(), e.senderCPU(ctx, daemonSlot)
	lsn0, err := e.insertLSN(ctx)
	if err != nil {
		return err
	}
	first, _, err := e.writeRows(ctx, s.Conns, s.Txns, stmt)
	if err != nil {
		return err
	}
	mark, end, last, err := e.endMark(ctx)
	if err != nil {
		return err
	}
	start := first
	if s.Backlog {
		if rs0, err = e.redisStats(ctx); err != nil {
			return err
		}
		d, err := e.startDaemon(e.node, s.ID)
		if err != nil {
			return err
		}
		start, stopPerf = d.started, e.startPerf(s.ID)
	} else {
		s.DecodedAtEnd, s.AppliedAtEnd = e.progress(ctx, lsn0, end)
	}
	visible, err := e.waitMark(ctx, e.node, mark, 10*time.Minute)
	if err != nil {
		return err
	}
	s.DaemonCPU, s.SenderCPU = e.daemonCPU()-cpu0, e.senderCPU(ctx, daemonSlot)-sender0
	stopPerf()
	if s.Redis, err = e.redisStats(ctx); err != nil {
		return err
	}
	s.Redis = s.Redis.sub(rs0)
	s.Elapsed, s.WriteTime = visible.Sub(start), last.Sub(first)
	if !s.Backlog {
		s.Tail = visible.Sub(last)
	}
	s.Rate = float64(s.Rows) / s.Elapsed.Seconds()
	if s.Daemon, err = e.stopStreaming(); err != nil {
		return err
	}
	return s.ceilings.read(ctx, e, s.Rows, end)
}

// ceilings are the readers of a case's WAL the daemon is compared with.
type ceilings struct {
	CeilTime time.Duration // pg_recvlogical over the same WAL
	CeilRate float64
	CeilCPU  time.Duration // CPU time of the pg_recvlogical process
	BareTime time.Duration // a bare Go pgoutput receiver over the same WAL
	BareRate float64
}

// read reads the case's WAL of rows changes up to end with pg_recvlogical,
// then with the bare receiver, from the slots createCeilingSlots made
// before the case's writes.
func (c *ceilings) read(ctx context.Context, e *env, rows int, end pglogrepl.LSN) error {
	var err error
	if c.CeilTime, c.CeilCPU, err = e.recvlogical(ctx, ceilingSlot, end); err != nil {
		return err
	}
	c.CeilRate = float64(rows) / c.CeilTime.Seconds()
	if c.BareTime, err = e.bare(ctx, bareSlot, end); err != nil {
		return err
	}
	c.BareRate = float64(rows) / c.BareTime.Seconds()
	return nil
}

func (e *env) createCeilingSlots(ctx context.Context) error {
	if err := e.createSlot(ctx, ceilingSlot); err != nil {
		return err
	}
	return e.createSlot(ctx, bareSlot)
}

func (e *env) dropCeilingSlots(ctx context.Context) {
	e.dropSlot(context.WithoutCancel(ctx), ceilingSlot)
	e.dropSlot(context.WithoutCancel(ctx), bareSlot)
}
