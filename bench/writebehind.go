package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/drain"
	"github.com/cachesync/cachesync/internal/engine"
)

// The write-behind path (8): PutBehind's ingest rate beside bare rueidis
// EVALs doing the same Redis work (SET + XADD), then the drainer's rate into
// PostgreSQL beside plain multi-row upserts of the same batches.

const (
	wbCache      = "wb"            // the cache over public.wb, keys wb:{id}
	wbWorkers    = 16              // goroutines writing
	wbKeys       = 10_000          // distinct keys
	wbWrites     = 200_000         // writes per timed run (-quick: a tenth)
	wbBatch      = 1000            // entries per drainer batch (XREADGROUP COUNT)
	wbChunk      = 500             // rows per upsert statement, as the drainer's
	wbBareStream = "bench:wb:bare" // the bare client's stream
	wbGroup      = "cachesync"     // the drainer's consumer group
)

// bareQueue is the bare client's script: the value and the queue entry in one step.
const bareQueue = `redis.call('SET', KEYS[1], ARGV[1])
return redis.call('XADD', KEYS[2], '*', 'key', KEYS[1], 'row', ARGV[2])`

// ingestRun is one timed run of writes.
type ingestRun struct {
	Writes   int
	Elapsed  time.Duration
	Rate     float64
	P50, P99 time.Duration
	CPU      time.Duration // this process
	Redis    redisStats
	Mallocs  uint64
	Bytes    uint64
}

// drainRun is one timed application of the queued entries to PostgreSQL.
type drainRun struct {
	Entries, Rows, Batches int // rows: upserted, the last write of each key per batch
	Elapsed                time.Duration
	Rate, RowRate          float64 // entries/s, rows/s
	CPU                    time.Duration
	Redis                  redisStats
}

type writeBehindResult struct {
	Writes, Keys int
	API, Bare    ingestRun
	Drain, Plain drainRun
	Check        string
}

// wbEntry is one queued write, in stream order.
type wbEntry struct{ id, v int64 }

func (b *bench) wbWrites() int {
	if b.quick {
		return wbWrites / 10
	}
	return wbWrites
}

// wbID and wbValue give the i-th write of worker w: each worker owns the
// keys w, w+16, ... and cycles through them, so the last value of every key
// is known whatever the interleaving.
func wbID(w, i int) int64 { return int64(w + wbWorkers*(i%(wbKeys/wbWorkers))) }

func wbValue(base, i int) int64 { return int64(base + i) }

// wbLast is the value the last write of id leaves, for writes per worker.
func wbLast(id int64, perWorker, base int) int64 {
	kpw := wbKeys / wbWorkers
	k := int(id) / wbWorkers
	i := ((perWorker-1-k)/kpw)*kpw + k
	return wbValue(base, i)
}

func (b *bench) wbConfig() (*config.Config, error) {
	return config.Load(strings.NewReader(`# the write-behind step of go run ./bench
name: ` + configName + `_wb
redis: {url: "` + b.rds.URL() + `"}
sources:
  db: {url: "` + b.dbURL + `"}
caches:
  ` + wbCache + `: {table: wb, key: "wb:{id}", value: {columns: [id, v]}, sync: none, writes: behind}
`))
}

// runWrites runs op(w, i) for i < perWorker from wbWorkers goroutines.
func (b *bench) runWrites(ctx context.Context, perWorker int, op func(ctx context.Context, w, i int) error) (ingestRun, error) {
	var (
		r    ingestRun
		wg   sync.WaitGroup
		gate = make(chan struct{})
		lats = make([][]time.Duration, wbWorkers)
		errs = make([]error, wbWorkers)
	)
	for w := range wbWorkers {
		lats[w] = make([]time.Duration, 0, perWorker)
		wg.Go(func() {
			<-gate
			for i := range perWorker {
				t0 := time.Now()
				if err := op(ctx, w, i); err != nil {
					errs[w] = err
					return
				}
				lats[w] = append(lats[w], time.Since(t0))
			}
		})
	}
	rs0, err := b.redisStats(ctx)
	if err != nil {
		return r, err
	}
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0 := processCPU()
	start := time.Now()
	close(gate)
	wg.Wait()
	r.Elapsed = time.Since(start)
	r.CPU = processCPU() - cpu0
	runtime.ReadMemStats(&m1)
	rs1, err := b.redisStats(ctx)
	if err != nil {
		return r, err
	}
	if err := errors.Join(errs...); err != nil {
		return r, err
	}
	r.Redis = rs1.sub(rs0)
	r.Mallocs, r.Bytes = m1.Mallocs-m0.Mallocs, m1.TotalAlloc-m0.TotalAlloc
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	sortDurations(all)
	r.Writes = len(all)
	r.Rate = float64(r.Writes) / r.Elapsed.Seconds()
	if n := len(all); n > 0 {
		r.P50, r.P99 = all[(n-1)*50/100], all[(n-1)*99/100]
	}
	return r, nil
}

// writeBehind measures item 8.
func (b *bench) writeBehind(ctx context.Context) error {
	r := &b.res.WB
	*r = writeBehindResult{Writes: b.wbWrites(), Keys: wbKeys}
	perWorker := r.Writes / wbWorkers
	stream := binding.StreamKey(wbCache)
	for _, sql := range []string{
		"DROP TABLE IF EXISTS wb, wb_plain",
		"CREATE TABLE wb (id int PRIMARY KEY, v bigint NOT NULL)",
		"CREATE TABLE wb_plain (id int PRIMARY KEY, v bigint NOT NULL)",
	} {
		if _, err := b.db.Exec(ctx, sql); err != nil {
			return err
		}
	}
	if err := b.redis.Do(ctx, b.redis.B().Del().Key(stream, wbBareStream, binding.DeadLetterKey(wbCache)).Build()).Error(); err != nil {
		return err
	}
	cfg, err := b.wbConfig()
	if err != nil {
		return err
	}
	api, err := engine.Open(ctx, cfg, engine.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer api.Close()
	bare, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{b.rds.Addr}, DisableCache: true})
	if err != nil {
		return err
	}
	defer bare.Close()

	// base offsets the values of each run, so the timed run's values are its own.
	put := func(base int) func(context.Context, int, int) error {
		return func(ctx context.Context, w, i int) error {
			_, err := api.PutBehind(ctx, wbCache, map[string]any{"id": wbID(w, i), "v": wbValue(base, i)})
			return err
		}
	}
	bareOp := func(ctx context.Context, w, i int) error {
		id := strconv.FormatInt(wbID(w, i), 10)
		row := `{"id":` + id + `,"v":` + strconv.FormatInt(wbValue(0, i), 10) + `}`
		return bare.Do(ctx, bare.B().Eval().Script(bareQueue).Numkeys(2).Key("wbb:"+id, wbBareStream).Arg(row, row).Build()).Error()
	}
	// Warm up both paths, then empty the streams.
	if _, err := b.runWrites(ctx, 200, put(1_000_000)); err != nil {
		return fmt.Errorf("warm-up PutBehind: %w", err)
	}
	if _, err := b.runWrites(ctx, 200, bareOp); err != nil {
		return fmt.Errorf("warm-up bare EVAL: %w", err)
	}
	if err := b.redis.Do(ctx, b.redis.B().Del().Key(stream, wbBareStream).Build()).Error(); err != nil {
		return err
	}
	if r.Bare, err = b.runWrites(ctx, perWorker, bareOp); err != nil {
		return fmt.Errorf("bare EVAL: %w", err)
	}
	b.printIngest("bare rueidis EVAL", r.Bare)
	if err := b.redis.Do(ctx, b.redis.B().Del().Key(wbBareStream).Build()).Error(); err != nil {
		return err
	}
	stopProfile := b.profileWB("putbehind")
	r.API, err = b.runWrites(ctx, perWorker, put(0))
	stopProfile()
	if err != nil {
		return fmt.Errorf("PutBehind: %w", err)
	}
	b.printIngest("PutBehind", r.API)
	fmt.Printf("   8. PutBehind: %s writes/s (target ≥ 50,000); / bare EVAL: %.2f\n", num(r.API.Rate), r.API.Rate/r.Bare.Rate)

	// The queued entries in stream order: the drainer's batches.
	entries, err := b.readStream(ctx, stream)
	if err != nil {
		return err
	}
	if len(entries) != r.Writes {
		return fmt.Errorf("the stream holds %d entries after %d PutBehind calls", len(entries), r.Writes)
	}
	batches := wbBatches(entries)

	// Drain: a second Client drains in this process.
	if _, err := b.db.Exec(ctx, "CHECKPOINT"); err != nil {
		return err
	}
	if r.Drain, err = b.drainWB(ctx, cfg, stream, len(entries), batches); err != nil {
		return err
	}
	fmt.Printf("   drainer: %s entries (%s rows upserted in %d batches) in %s: %s entries/s, %s rows/s; this process %.1f µs CPU/entry\n",
		count(r.Drain.Entries), count(r.Drain.Rows), r.Drain.Batches, secs(r.Drain.Elapsed), num(r.Drain.Rate), num(r.Drain.RowRate), perRow(r.Drain.CPU, r.Drain.Entries))
	if err := b.checkWB(ctx, "wb", perWorker); err != nil {
		return fmt.Errorf("after the drain: %w", err)
	}

	// Ceiling: the same batches as plain multi-row upserts.
	if _, err := b.db.Exec(ctx, "CHECKPOINT"); err != nil {
		return err
	}
	if r.Plain, err = b.plainUpserts(ctx, batches); err != nil {
		return err
	}
	r.Plain.Entries = len(entries)
	r.Plain.Rate = float64(r.Plain.Entries) / r.Plain.Elapsed.Seconds()
	r.Plain.RowRate = float64(r.Plain.Rows) / r.Plain.Elapsed.Seconds()
	fmt.Printf("   plain upsert: %s entries (%s rows) in %s: %s entries/s, %s rows/s\n",
		count(r.Plain.Entries), count(r.Plain.Rows), secs(r.Plain.Elapsed), num(r.Plain.Rate), num(r.Plain.RowRate))
	if err := b.checkWB(ctx, "wb_plain", perWorker); err != nil {
		return fmt.Errorf("after the plain upserts: %w", err)
	}
	fmt.Printf("   8. drain / plain upsert: %.2f (target ≥ 0.7)\n", r.Drain.Rate/r.Plain.Rate)
	r.Check = fmt.Sprintf("all %s rows of wb hold their key's last value", count(wbKeys))
	return nil
}

// profileWB writes a CPU profile of this process (PutBehind's callers, or
// the drainer) into the work directory when -perf is given.
func (b *bench) profileWB(name string) func() {
	if !b.perf {
		return func() {}
	}
	path := filepath.Join(b.dir, "writebehind-"+name+".pprof")
	f, err := os.Create(path)
	if err != nil {
		fmt.Println("   profile:", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		fmt.Println("   profile:", err)
		return func() {}
	}
	return sync.OnceFunc(func() {
		pprof.StopCPUProfile()
		f.Close()
		fmt.Println("   CPU profile (go tool pprof):", path)
	})
}

func (b *bench) printIngest(name string, r ingestRun) {
	fmt.Printf("   %-18s %d goroutines, %s writes in %s: %s/s, p50 %s, p99 %s; this process %.1f µs CPU/write, Redis %.1f µs/write (EVAL %.1f µs), %.1f allocs/write\n",
		name, wbWorkers, count(r.Writes), r.Elapsed.Round(time.Millisecond), num(r.Rate), us(r.P50), us(r.P99),
		perRow(r.CPU, r.Writes), perRow(r.Redis.CPU, r.Writes), perRow(r.Redis.EvalCPU, r.Writes), float64(r.Mallocs)/float64(max(1, r.Writes)))
}

// readStream reads every entry of stream (XRANGE, pages of 10,000).
func (b *bench) readStream(ctx context.Context, stream string) ([]wbEntry, error) {
	var out []wbEntry
	start := "-"
	for {
		msgs, err := b.redis.Do(ctx, b.redis.B().Xrange().Key(stream).Start(start).End("+").Count(10_000).Build()).AsXRange()
		if err != nil {
			return nil, fmt.Errorf("xrange: %w", err)
		}
		for _, m := range msgs {
			var row struct { // PutBehind queues each value as its column's input text
				ID int64 `json:"id,string"`
				V  int64 `json:"v,string"`
			}
			if err := json.Unmarshal([]byte(m.FieldValues["row"]), &row); err != nil {
				return nil, fmt.Errorf("entry %s: %w", m.ID, err)
			}
			out = append(out, wbEntry{id: row.ID, v: row.V})
		}
		if len(msgs) < 10_000 {
			return out, nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// wbBatches cuts entries into the drainer's batches and keeps the last write
// of each key in each, in the order the drainer upserts them.
func wbBatches(entries []wbEntry) [][]wbEntry {
	var out [][]wbEntry
	for i := 0; i < len(entries); i += wbBatch {
		batch := entries[i:min(i+wbBatch, len(entries))]
		last := map[int64]int{}
		for j, e := range batch {
			last[e.id] = j
		}
		var rows []wbEntry
		for j, e := range batch {
			if last[e.id] == j {
				rows = append(rows, e)
			}
		}
		out = append(out, rows)
	}
	return out
}

// drainWB starts Client.Drain on a second Client and times it until the
// stream is empty and nothing is pending.
func (b *bench) drainWB(ctx context.Context, cfg *config.Config, stream string, entries int, batches [][]wbEntry) (drainRun, error) {
	r := drainRun{Entries: entries, Batches: len(batches)}
	for _, rows := range batches {
		r.Rows += len(rows)
	}
	c, err := engine.Open(ctx, cfg, engine.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return r, err
	}
	defer c.Close()
	rs0, err := b.redisStats(ctx)
	if err != nil {
		return r, err
	}
	dctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	cpu0 := processCPU()
	start := time.Now()
	stopProfile := b.profileWB("drain")
	defer stopProfile()
	go func() { done <- drain.Run(dctx, c) }()
	defer func() { stop(); <-done }()
	deadline := start.Add(5 * time.Minute)
	for {
		res := b.redis.DoMulti(ctx, b.redis.B().Xlen().Key(stream).Build(), b.redis.B().Xpending().Key(stream).Group(wbGroup).Build())
		n, err := res[0].AsInt64()
		if err != nil {
			return r, fmt.Errorf("xlen: %w", err)
		}
		if n == 0 {
			if p, err := res[1].ToArray(); err == nil && len(p) > 0 {
				if pending, err := p[0].AsInt64(); err == nil && pending == 0 {
					break
				}
			}
		}
		select {
		case err := <-done:
			done <- err
			return r, fmt.Errorf("the drainer returned early: %v", err)
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("the stream still holds %d entries after %s", n, time.Since(start).Round(time.Second))
		}
	}
	r.Elapsed = time.Since(start)
	r.CPU = processCPU() - cpu0
	stopProfile()
	rs1, err := b.redisStats(ctx)
	if err != nil {
		return r, err
	}
	r.Redis = rs1.sub(rs0)
	r.Rate = float64(r.Entries) / r.Elapsed.Seconds()
	r.RowRate = float64(r.Rows) / r.Elapsed.Seconds()
	if n, err := b.redis.Do(ctx, b.redis.B().Xlen().Key(binding.DeadLetterKey(wbCache)).Build()).AsInt64(); err != nil || n != 0 {
		return r, fmt.Errorf("dead-letter stream: %d entries (%v)", n, err)
	}
	return r, nil
}

// plainUpserts applies batches the way the drainer does, without it: one
// transaction per batch, multi-row upserts of up to wbChunk rows, values
// prepared beforehand, on one connection.
func (b *bench) plainUpserts(ctx context.Context, batches [][]wbEntry) (drainRun, error) {
	var r drainRun
	conn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		return r, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	sqls := map[int]string{}
	stmt := func(n int) string {
		if s, ok := sqls[n]; ok {
			return s
		}
		var sb strings.Builder
		sb.WriteString("INSERT INTO wb_plain (id, v) VALUES ")
		for i := range n {
			if i > 0 {
				sb.WriteString(", ")
			}
			fmt.Fprintf(&sb, "($%d, $%d)", 2*i+1, 2*i+2)
		}
		sb.WriteString(" ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v")
		sqls[n] = sb.String()
		return sqls[n]
	}
	type chunk struct {
		sql  string
		args []any
	}
	var txs [][]chunk
	for _, rows := range batches {
		var tx []chunk
		for i := 0; i < len(rows); i += wbChunk {
			part := rows[i:min(i+wbChunk, len(rows))]
			args := make([]any, 0, 2*len(part))
			for _, e := range part {
				args = append(args, e.id, e.v)
			}
			tx = append(tx, chunk{stmt(len(part)), args})
		}
		txs = append(txs, tx)
		r.Rows += len(rows)
	}
	r.Batches = len(txs)
	cpu0 := processCPU()
	start := time.Now()
	for _, chunks := range txs {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return r, err
		}
		for _, c := range chunks {
			if _, err := tx.Exec(ctx, c.sql, c.args...); err != nil {
				tx.Rollback(ctx)
				return r, err
			}
		}
		if err := tx.Commit(ctx); err != nil {
			return r, err
		}
	}
	r.Elapsed = time.Since(start)
	r.CPU = processCPU() - cpu0
	return r, nil
}

// checkWB checks table holds every key with the value of its last write.
func (b *bench) checkWB(ctx context.Context, table string, perWorker int) error {
	rows, err := b.db.Query(ctx, "SELECT id, v FROM "+table)
	if err != nil {
		return err
	}
	got, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (wbEntry, error) {
		var e wbEntry
		err := row.Scan(&e.id, &e.v)
		return e, err
	})
	if err != nil {
		return err
	}
	if len(got) != wbKeys {
		return fmt.Errorf("%s holds %d rows, want %d", table, len(got), wbKeys)
	}
	for _, e := range got {
		if want := wbLast(e.id, perWorker, 0); e.v != want {
			return fmt.Errorf("%s: id %d holds v = %d, want %d (its last write)", table, e.id, e.v, want)
		}
	}
	return nil
}

// ---- report ----

func (b *bench) wbRows(p func(string, ...any)) {
	w := b.res.WB
	if w.API.Writes == 0 {
		return
	}
	p("| 8 | Write-behind ingest: `Client.PutBehind` from %d goroutines, %s writes over %s keys, no drainer running | %s writes/s (%s) | bare rueidis `EVAL` of SET + XADD: %s writes/s (%s) | %.2f | ≥ 50,000 writes/s | %s |\n",
		wbWorkers, count(w.API.Writes), count(w.Keys), num(w.API.Rate), secs(w.API.Elapsed), num(w.Bare.Rate), secs(w.Bare.Elapsed), w.API.Rate/w.Bare.Rate, yes(w.API.Rate >= 50_000))
	p("| 8 | Same, p99 latency | %s | bare rueidis `EVAL`: %s | %.2f | | |\n", us(w.API.P99), us(w.Bare.P99), ratioDur(w.Bare.P99, w.API.P99))
	d, c := w.Drain, w.Plain
	p("| 8 | Write-behind drain into PostgreSQL: `Client.Drain` start → stream empty and nothing pending, %s entries (%s rows upserted in %d batches; table: %s keys, each with its last value) | %s entries/s, %s rows/s (%s) | plain multi-row upserts of the same batches: %s entries/s, %s rows/s (%s) | %.2f | ≥ 0.7 | %s |\n",
		count(d.Entries), count(d.Rows), d.Batches, count(w.Keys), num(d.Rate), num(d.RowRate), secs(d.Elapsed), num(c.Rate), num(c.RowRate), secs(c.Elapsed), d.Rate/c.Rate, yes(d.Rate/c.Rate >= 0.7))
}

func (b *bench) wbReading(p func(string, ...any)) {
	w := b.res.WB
	if w.API.Writes == 0 || w.Plain.Elapsed == 0 {
		return
	}
	a, bare := w.API, w.Bare
	busy := func(r ingestRun) float64 { return (r.CPU + r.Redis.CPU).Seconds() / r.Elapsed.Seconds() }
	p("- **8, ingest**: `PutBehind` reached %.2f of the bare `EVAL`'s rate. Per write this process spent %.1f µs of CPU against %.1f µs (%.1f against %.1f allocations), and Redis %.1f µs against %.1f µs, of which the script itself (commandstats `usec` of EVAL) %.1f against %.1f µs: the queue script also deletes the key's lease and \"not found\" marker, and is sent as `EVAL` with its whole body on every call. Together they kept %.1f and %.1f of the %d cores busy.\n",
		a.Rate/bare.Rate, perRow(a.CPU, a.Writes), perRow(bare.CPU, bare.Writes), float64(a.Mallocs)/float64(a.Writes), float64(bare.Mallocs)/float64(bare.Writes),
		perRow(a.Redis.CPU, a.Writes), perRow(bare.Redis.CPU, bare.Writes), perRow(a.Redis.EvalCPU, a.Writes), perRow(bare.Redis.EvalCPU, bare.Writes),
		busy(a), busy(bare), b.machine.Cores)
	d, c := w.Drain, w.Plain
	p("- **8, drain**: the drainer applied %.2f of the plain upserts' rate over the same %d batches (%.1f ms a batch against %.1f ms). Per batch it sends one upsert statement (`INSERT ... SELECT FROM json_populate_recordset($1) ON CONFLICT ... DO UPDATE`, PostgreSQL converting the queued JSON rows itself) while one Redis round trip acknowledges the batch before (one script: XACK, then XTRIM MINID past its last entry, never past the oldest pending one) and reads the next %d entries, so Redis and PostgreSQL work at the same time. This process (the drainer) spent %.1f µs of CPU per entry, %.1f ms per batch, against %.1f µs for the plain upserts' client, and Redis %.1f µs per entry. Each batch's 1,000 entries touched %.0f distinct keys on average, so rows ≈ entries here: each goroutine cycles through its own 625 keys.\n",
		d.Rate/c.Rate, d.Batches, float64(d.Elapsed.Microseconds())/1000/float64(d.Batches), float64(c.Elapsed.Microseconds())/1000/float64(c.Batches), wbBatch,
		perRow(d.CPU, d.Entries), float64(d.CPU.Microseconds())/1000/float64(d.Batches), perRow(c.CPU, c.Entries), perRow(d.Redis.CPU, d.Entries), float64(d.Rows)/float64(d.Batches))
}

func (b *bench) wbMethod(p func(string, ...any)) {
	w := b.res.WB
	p("- **8**: table `wb(id int primary key, v bigint not null)`, empty, and a second config with one cache `{table: wb, key: \"wb:{id}\", value: {columns: [id, v]}, sync: none, writes: behind}`, opened in this process with `engine.Open`. Ingest: %d goroutines each call `PutBehind(ctx, \"%s\", map[string]any{\"id\": id, \"v\": v})` %s times back to back, each over its own %d keys in turn (so %s writes over %s keys, %d per key, and the last value of every key is known); no drainer runs. Ceiling: a bare `rueidis.NewClient` (`DisableCache`) sends the same number of `EVAL` of a two-line script (`SET KEYS[1] ARGV[1]`, `XADD KEYS[2] * key KEYS[1] row ARGV[2]`) with the same JSON as value and row, from the same goroutines, into its own keys and stream. Both ran a %s-write warm-up first (the streams are deleted after it); the bare run comes first, its stream is deleted, then PutBehind's. Rate = writes ÷ elapsed (release of the goroutines → the last returned); latency timed around each call. CPU of this process from `getrusage`, Redis CPU and EVAL `usec` from `INFO`.\n",
		wbWorkers, wbCache, count(w.Writes/wbWorkers), wbKeys/wbWorkers, count(w.Writes), count(wbKeys), w.Writes/wbKeys, count(wbWorkers*200))
	p("- **8, drain**: the stream's entries are read with `XRANGE` (untimed) to know the drainer's batches: on a full stream `XREADGROUP COUNT %d` returns the next %d entries in stream order, and the drainer upserts the last write of each key of a batch. Then `CHECKPOINT`, a second `engine.Open` of the same config and `go c.Drain(ctx)`; timed from that call until `XLEN` of `%s` is 0 and `XPENDING` of group `%s` counts 0 (polled every 2 ms; the drainer deletes entries only after their transaction committed), then every row of `wb` is checked to hold its key's last value and the dead-letter stream to be empty. Entries/s counts stream entries; rows/s counts rows upserted (the last write of each key in each batch). Ceiling: `CHECKPOINT`, then on a fresh table `wb_plain` of the same shape one pgx connection applies the same batches: per batch one transaction of `INSERT INTO wb_plain (id, v) VALUES ($1, $2), ... ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v` in chunks of %d rows, arguments as int64 prepared beforehand, timed from the first BEGIN to the last COMMIT, and checked the same way.\n",
		wbBatch, wbBatch, binding.StreamKey(wbCache), wbGroup, wbChunk)
}
