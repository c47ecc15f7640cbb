package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/drain"
	"github.com/cachesync/cachesync/internal/engine"
)

// writeBehind is item 8: PutBehind's ingest rate beside bare rueidis EVALs
// doing the same Redis work (SET + XADD), then the drainer's rate into
// PostgreSQL beside plain multi-row upserts of the same batches.
type writeBehind struct {
	about
	Writes, Keys int
	API, Bare    opRun
	Drain, Plain drainRun
}

const (
	wbCache      = "wb"            // the cache over public.wb, keys wb:{id}
	wbWorkers    = 16              // goroutines writing
	wbKeys       = 10_000          // distinct keys
	wbWrites     = 200_000         // writes per timed run (-quick: a tenth)
	wbWarmUp     = 200             // writes per goroutine before the timed runs
	wbBatch      = 1000            // entries per drainer batch (XREADGROUP COUNT)
	wbChunk      = 500             // rows per upsert statement, as the drainer's
	wbBareStream = "bench:wb:bare" // the bare client's stream
	wbGroup      = "cachesync"     // the drainer's consumer group
)

// bareQueue is the bare client's script: the value and the queue entry in one step.
const bareQueue = `redis.call('SET', KEYS[1], ARGV[1])
return redis.call('XADD', KEYS[2], '*', 'key', KEYS[1], 'row', ARGV[2])`

// drainRun is one timed application of the queued entries to PostgreSQL.
type drainRun struct {
	Entries, Rows, Batches int // rows: upserted, the last write of each key per batch
	Elapsed                time.Duration
	Rate, RowRate          float64 // entries/s, rows/s
	CPU                    time.Duration
	Redis                  redisStats
}

// BatchTime and BatchCPU are the time and this process's CPU time per
// batch, in ms.
func (d drainRun) BatchTime() float64 {
	return float64(d.Elapsed.Microseconds()) / 1000 / float64(d.Batches)
}
func (d drainRun) BatchCPU() float64 {
	return float64(d.CPU.Microseconds()) / 1000 / float64(d.Batches)
}

// RowsPerBatch is the distinct keys a batch touched, on average.
func (d drainRun) RowsPerBatch() float64 { return float64(d.Rows) / float64(d.Batches) }

// wbEntry is one queued write, in stream order.
type wbEntry struct{ id, v int64 }

//go:embed step_writebehind.md
var writeBehindText string

func (s writeBehind) Text() string { return writeBehindText }

func (s writeBehind) Results() []row {
	a, bare, d, c := s.API, s.Bare, s.Drain, s.Plain
	return []row{
		{ID: "8", What: fmt.Sprintf("Write-behind ingest: `Client.PutBehind` from %d goroutines, %s writes over %s keys, no drainer running", wbWorkers, count(a.Ops), count(s.Keys)),
			Got:     fmt.Sprintf("%s writes/s (%s)", num(a.Rate), secs(a.Elapsed)),
			Ceiling: fmt.Sprintf("bare rueidis `EVAL` of SET + XADD: %s writes/s (%s)", num(bare.Rate), secs(bare.Elapsed)),
			Ratio:   ratio(a.Rate, bare.Rate), Target: "≥ 50,000 writes/s", Met: yes(a.Rate >= 50_000)},
		{ID: "8", What: "Same, p99 latency", Got: us(a.P99), Ceiling: "bare rueidis `EVAL`: " + us(bare.P99), Ratio: ratioDur(bare.P99, a.P99)},
		{ID: "8", What: fmt.Sprintf("Write-behind drain into PostgreSQL: `drain.Run` start → stream empty and nothing pending, %s entries (%s rows upserted in %d batches; table: %s keys, each with its last value)",
			count(d.Entries), count(d.Rows), d.Batches, count(s.Keys)),
			Got:     fmt.Sprintf("%s entries/s, %s rows/s (%s)", num(d.Rate), num(d.RowRate), secs(d.Elapsed)),
			Ceiling: fmt.Sprintf("plain multi-row upserts of the same batches: %s entries/s, %s rows/s (%s)", num(c.Rate), num(c.RowRate), secs(c.Elapsed)),
			Ratio:   ratio(d.Rate, c.Rate), Target: "≥ 0.7", Met: yes(d.Rate/c.Rate >= 0.7)},
	}
}

// Workers and the rest are the step's constants, for its text.
func (writeBehind) Workers() int       { return wbWorkers }
func (writeBehind) Cache() string      { return wbCache }
func (writeBehind) Batch() int         { return wbBatch }
func (writeBehind) Chunk() int         { return wbChunk }
func (writeBehind) Group() string      { return wbGroup }
func (writeBehind) Stream() string     { return binding.StreamKey(wbCache) }
func (writeBehind) KeysPerWorker() int { return wbKeys / wbWorkers }
func (writeBehind) WarmUp() int        { return wbWorkers * wbWarmUp }
func (s writeBehind) PerWorker() int   { return s.Writes / wbWorkers }
func (s writeBehind) PerKey() int      { return s.Writes / wbKeys }

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

func (s writeBehind) Run(ctx context.Context, e *env) (step, error) {
	s.Writes, s.Keys = wbWrites, wbKeys
	if e.quick {
		s.Writes /= 10
	}
	perWorker := s.Writes / wbWorkers
	stream := binding.StreamKey(wbCache)
	for _, sql := range []string{
		"DROP TABLE IF EXISTS wb, wb_plain",
		"CREATE TABLE wb (id int PRIMARY KEY, v bigint NOT NULL)",
		"CREATE TABLE wb_plain (id int PRIMARY KEY, v bigint NOT NULL)",
	} {
		if _, err := e.db.Exec(ctx, sql); err != nil {
			return nil, err
		}
	}
	if err := e.redis.Do(ctx, e.redis.B().Del().Key(stream, wbBareStream, binding.DeadLetterKey(wbCache)).Build()).Error(); err != nil {
		return nil, err
	}
	cfg, err := e.apiConfig(configName+"_wb", `caches:
  `+wbCache+`: {table: wb, key: "wb:{id}", value: {columns: [id, v]}, sync: none, writes: behind}
`)
	if err != nil {
		return nil, err
	}
	api, err := cachesync.Open(ctx, cfg, cachesync.Options{Logger: quiet})
	if err != nil {
		return nil, err
	}
	defer api.Close()
	bare, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{e.rds.Addr}, DisableCache: true})
	if err != nil {
		return nil, err
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
	writes := func(n int, op func(context.Context, int, int) error) (opRun, error) {
		r, _, err := e.runOps(ctx, wbWorkers, n, 0, op)
		return r, err
	}
	// Warm up both paths, then empty the streams.
	if _, err := writes(wbWarmUp, put(1_000_000)); err != nil {
		return nil, fmt.Errorf("warm-up PutBehind: %w", err)
	}
	if _, err := writes(wbWarmUp, bareOp); err != nil {
		return nil, fmt.Errorf("warm-up bare EVAL: %w", err)
	}
	if err := e.redis.Do(ctx, e.redis.B().Del().Key(stream, wbBareStream).Build()).Error(); err != nil {
		return nil, err
	}
	if s.Bare, err = writes(perWorker, bareOp); err != nil {
		return nil, fmt.Errorf("bare EVAL: %w", err)
	}
	if err := e.redis.Do(ctx, e.redis.B().Del().Key(wbBareStream).Build()).Error(); err != nil {
		return nil, err
	}
	stopProfile := e.profile("writebehind-putbehind")
	s.API, err = writes(perWorker, put(0))
	stopProfile()
	if err != nil {
		return nil, fmt.Errorf("PutBehind: %w", err)
	}

	// The queued entries in stream order: the drainer's batches.
	entries, err := readStream(ctx, e, stream)
	if err != nil {
		return nil, err
	}
	if len(entries) != s.Writes {
		return nil, fmt.Errorf("the stream holds %d entries after %d PutBehind calls", len(entries), s.Writes)
	}
	batches := wbBatches(entries)

	// Drain: a second Client drains in this process.
	if _, err := e.db.Exec(ctx, "CHECKPOINT"); err != nil {
		return nil, err
	}
	if s.Drain, err = drainWB(ctx, e, cfg, stream, len(entries), batches); err != nil {
		return nil, err
	}
	if err := checkWB(ctx, e, "wb", perWorker); err != nil {
		return nil, fmt.Errorf("after the drain: %w", err)
	}

	// Ceiling: the same batches as plain multi-row upserts.
	if _, err := e.db.Exec(ctx, "CHECKPOINT"); err != nil {
		return nil, err
	}
	if s.Plain, err = plainUpserts(ctx, e, batches); err != nil {
		return nil, err
	}
	s.Plain.Entries = len(entries)
	s.Plain.Rate = float64(s.Plain.Entries) / s.Plain.Elapsed.Seconds()
	s.Plain.RowRate = float64(s.Plain.Rows) / s.Plain.Elapsed.Seconds()
	if err := checkWB(ctx, e, "wb_plain", perWorker); err != nil {
		return nil, fmt.Errorf("after the plain upserts: %w", err)
	}
	return s, nil
}

// readStream reads every entry of stream (XRANGE, pages of 10,000).
func readStream(ctx context.Context, e *env, stream string) ([]wbEntry, error) {
	var out []wbEntry
	start := "-"
	for {
		msgs, err := e.redis.Do(ctx, e.redis.B().Xrange().Key(stream).Start(start).End("+").Count(10_000).Build()).AsXRange()
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

// drainWB starts drain.Run on an engine of its own and times it until the
// stream is empty and nothing is pending.
func drainWB(ctx context.Context, e *env, cfg *config.Config, stream string, entries int, batches [][]wbEntry) (drainRun, error) {
	r := drainRun{Entries: entries, Batches: len(batches)}
	for _, rows := range batches {
		r.Rows += len(rows)
	}
	c, err := engine.Open(ctx, cfg, engine.Options{Logger: quiet})
	if err != nil {
		return r, err
	}
	defer c.Close()
	rs0, err := e.redisStats(ctx)
	if err != nil {
		return r, err
	}
	dctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	cpu0 := processCPU()
	start := time.Now()
	stopProfile := e.profile("writebehind-drain")
	defer stopProfile()
	go func() { done <- drain.Run(dctx, c) }()
	defer func() { stop(); <-done }()
	deadline := start.Add(5 * time.Minute)
	for {
		res := e.redis.DoMulti(ctx, e.redis.B().Xlen().Key(stream).Build(), e.redis.B().Xpending().Key(stream).Group(wbGroup).Build())
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
	rs1, err := e.redisStats(ctx)
	if err != nil {
		return r, err
	}
	r.Redis = rs1.sub(rs0)
	r.Rate = float64(r.Entries) / r.Elapsed.Seconds()
	r.RowRate = float64(r.Rows) / r.Elapsed.Seconds()
	if n, err := e.redis.Do(ctx, e.redis.B().Xlen().Key(binding.DeadLetterKey(wbCache)).Build()).AsInt64(); err != nil || n != 0 {
		return r, fmt.Errorf("dead-letter stream: %d entries (%v)", n, err)
	}
	return r, nil
}

// plainUpserts applies batches the way the drainer does, without it: one
// transaction per batch, multi-row upserts of up to wbChunk rows, values
// prepared beforehand, on one connection.
func plainUpserts(ctx context.Context, e *env, batches [][]wbEntry) (drainRun, error) {
	var r drainRun
	conn, err := pgx.Connect(ctx, e.dbURL)
	if err != nil {
		return r, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	stmt := func(n int) string {
		values := make([]string, n)
		for i := range values {
			values[i] = fmt.Sprintf("($%d, $%d)", 2*i+1, 2*i+2)
		}
		return "INSERT INTO wb_plain (id, v) VALUES " + strings.Join(values, ", ") + " ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v"
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
			for _, x := range part {
				args = append(args, x.id, x.v)
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
func checkWB(ctx context.Context, e *env, table string, perWorker int) error {
	rows, err := e.db.Query(ctx, "SELECT id, v FROM "+table)
	if err != nil {
		return err
	}
	got, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (wbEntry, error) {
		var x wbEntry
		err := row.Scan(&x.id, &x.v)
		return x, err
	})
	if err != nil {
		return err
	}
	if len(got) != wbKeys {
		return fmt.Errorf("%s holds %d rows, want %d", table, len(got), wbKeys)
	}
	for _, x := range got {
		if want := wbLast(x.id, perWorker, 0); x.v != want {
			return fmt.Errorf("%s: id %d holds v = %d, want %d (its last write)", table, x.id, x.v, want)
		}
	}
	return nil
}
