// Command bench measures cachesync against ceilings taken in the same run and
// writes the results to docs/BENCHMARKS.md.
//
// It starts a private Redis and PostgreSQL (for 14, a Redis Cluster too) in
// a temporary directory, runs the daemon (bin/cachesync run) as a subprocess
// for each case, and measures, one step each (steps in runner.go, one file
// each: step_*.go, with the report text beside it in step_*.md):
//
//  1. change throughput from commit to Redis visible, for 1,000-row and
//     single-row transactions, written while the daemon runs (1a, 1b) and as
//     a backlog read after the writes (1a-backlog, 1b-backlog), beside the
//     rate at which pg_recvlogical (PostgreSQL's own pgoutput decoding) and a
//     bare Go receiver read the same WAL;
//  2. lag from commit to Redis visible at a steady 2,000 commits/s, beside the
//     lag of a bare logical replication receiver on the same load;
//  3. backfill of a cache from an empty Redis, beside COPY of the same rows
//     and beside a bare client writing the same SETs into Redis;
//  4. the daemon's peak RSS in each case;
//  5. hit-path Get throughput and p99 through the Go API (cachesync.Open,
//     Client.Get), beside a bare rueidis GET of the same keys; with 6, HTTP
//     GET hits through httpapi beside the Go API, and 10, the Go API without
//     its stats;
//  7. the database queries a storm of 10,000 concurrent Gets of one missing
//     key costs, from one client and from two (pg_stat_statements);
//  8. write-behind: Client.PutBehind's ingest rate from 16 goroutines beside
//     bare rueidis EVALs of SET + XADD, then drain.Run's rate into
//     PostgreSQL beside plain multi-row upserts of the same batches;
//  9. refresh on expiry beside a bare reload of the same rows;
//  11. cachesync check's full scan beside a bare SCAN + MGET;
//  12. with 5, the Go API's hits while the continuous consistency check runs;
//  13. takeover: kill -9 of the streaming daemon to a change visible through
//     a standby, beside a daemon started at the kill;
//  14. 1a-backlog's catch-up into a Redis Cluster of three primaries beside
//     the same into one node, on one backlog in the same run.
//
// It also accounts for CPU (daemon, its walsender, Redis, and other processes
// on the machine), waits for other load to pass before each step and repeats
// a disturbed step once. Traffic goes to 127.0.0.1 only; everything it starts
// is stopped and its directory removed at the end.
//
// Usage (from the repository root; make bench builds bin/cachesync and runs it):
//
//	go run ./bench [-quick] [-out docs/BENCHMARKS.md] [-keep] [-perf] [-steps 8] [-bin bin/cachesync]
//
// -perf records the daemon with perf(1) during the streaming cases, and this
// program with runtime/pprof during the Go API and HTTP runs of 5 and during
// 8's PutBehind run and drain, and keeps the profiles in the work directory
// (perf report -i FILE, go tool pprof FILE); it distorts the figures, so do
// not publish a -perf run.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// sizes are the workload sizes; -quick divides them by ten.
type sizes struct {
	Rows        int           // rows in the bench table (backfill size)
	BatchedRows int           // single-row updates in 1,000-row transactions
	TxnSize     int           // rows per transaction in the batched case
	SingleTxns  int           // single-row transactions
	SingleConns int           // connections generating them
	LagRate     int           // commits per second in the lag test
	LagFor      time.Duration // duration of the lag test
	LagConns    int           // connections of the paced writer
}

func fullSizes() sizes {
	return sizes{Rows: 1_000_000, BatchedRows: 1_000_000, TxnSize: 1000, SingleTxns: 100_000, SingleConns: 8,
		LagRate: 2000, LagFor: 20 * time.Second, LagConns: 4}
}

func (s sizes) quick() sizes {
	s.Rows /= 10
	s.BatchedRows /= 10
	s.SingleTxns /= 10
	s.LagFor /= 10
	return s
}

func main() {
	quick := flag.Bool("quick", false, "10x smaller sizes, for trying the benchmark out")
	out := flag.String("out", "docs/BENCHMARKS.md", "write the results table to this `file` (empty: do not write)")
	bin := flag.String("bin", defaultBin, "the cachesync `binary` the daemon steps run (make build), or another one for an A/B comparison")
	keep := flag.Bool("keep", false, "keep the work directory (databases, daemon logs) for inspection")
	perf := flag.Bool("perf", false, "record the daemon with perf during the throughput cases (implies -keep; distorts the figures)")
	only := flag.String("steps", "", stepsUsage)
	flag.Parse()

	r, err := newRunner(*only)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	// A run of some steps writes no report, but where -out names a file:
	// a partial report must not replace docs/BENCHMARKS.md unasked.
	outSet := false
	flag.Visit(func(f *flag.Flag) { outSet = outSet || f.Name == "out" })
	if *only != "" && !outSet {
		*out = ""
	}
	sz := fullSizes()
	if *quick {
		sz = sz.quick()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Bound the whole run: the full run takes a few minutes on two cores.
	ctx, cancel := context.WithTimeout(ctx, 25*time.Minute)
	defer cancel()

	e := &env{sz: sz, quick: *quick, bin: *bin, keep: *keep || *perf, perf: *perf}
	err = r.run(ctx, e)
	e.cleanup()
	if err == nil && *out != "" {
		if err = os.MkdirAll(filepath.Dir(*out), 0o755); err == nil {
			var text string
			if text, err = r.report(e); err == nil {
				err = os.WriteFile(*out, []byte(text), 0o644)
			}
		}
		if err == nil {
			fmt.Println("\nwrote", *out)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
