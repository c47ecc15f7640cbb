package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/httpapi"
	"github.com/cachesync/cachesync/internal/status"
)

// The read path (5, 6, 7): hits through the Go API beside a bare rueidis
// client, HTTP hits through httpapi beside the Go API, and the database
// queries a storm of concurrent misses of one key costs.

const (
	readCache   = "b"                            // the read steps' cache over public.bench, keys b:{id}
	readAPIKey  = "bench-read-key-0123456789abc" // the HTTP API key (read scope)
	readWorkers = 16                             // goroutines issuing hits
	stormGets   = 10_000                         // concurrent Gets in one miss storm
	stormRounds = 3                              // storms per variant, each on its own key
	hitKeys     = 100_000                        // distinct keys the hit runs read, at random
)

// hitRun is one timed run of one read mode.
type hitRun struct {
	Ops      int
	Elapsed  time.Duration
	Rate     float64       // ops / Elapsed
	P50, P99 time.Duration // of this run's requests
	CPU      time.Duration // this process (load generator and, for HTTP, the server)
	RedisCPU time.Duration
	Mallocs  uint64 // heap allocations in this process during the run
	Bytes    uint64 // bytes allocated
	GCs      uint32
}

// hitSummary is a read mode over its runs: the mean rate, percentiles over
// every request of every run, costs per request over all runs.
type hitSummary struct {
	Runs                 []hitRun
	Rate                 float64 // mean of the runs' rates
	P50, P99, Max        time.Duration
	CPUPerOp, RedisPerOp float64 // µs per request
	AllocsPerOp, BPerOp  float64
	GCs                  uint32
	Ops                  int
	lat                  []time.Duration
	cpu, redisCPU        time.Duration
	mallocs, bytes       uint64
}

func (s *hitSummary) add(r hitRun, lat []time.Duration) {
	s.Runs = append(s.Runs, r)
	s.lat = append(s.lat, lat...)
	s.Ops += r.Ops
	s.cpu += r.CPU
	s.redisCPU += r.RedisCPU
	s.mallocs += r.Mallocs
	s.bytes += r.Bytes
	s.GCs += r.GCs
}

func (s *hitSummary) finish() {
	s.Rate = 0
	for _, r := range s.Runs {
		s.Rate += r.Rate / float64(len(s.Runs))
	}
	sortDurations(s.lat)
	if n := len(s.lat); n > 0 {
		s.P50, s.P99, s.Max = s.lat[(n-1)*50/100], s.lat[(n-1)*99/100], s.lat[n-1]
	}
	s.lat = nil // the percentiles are kept; the samples are not
	ops := float64(max(1, s.Ops))
	s.CPUPerOp = float64(s.cpu) / float64(time.Microsecond) / ops
	s.RedisPerOp = float64(s.redisCPU) / float64(time.Microsecond) / ops
	s.AllocsPerOp = float64(s.mallocs) / ops
	s.BPerOp = float64(s.bytes) / ops
}

type readResult struct {
	For             time.Duration // each timed run
	Keys            int
	API, Bare, HTTP hitSummary
	NoStats         hitSummary // the Go API with Options.DisableStats
	Order           []string   // the runs in the order they ran
}

// stormRound is one storm of concurrent Gets of one missing key.
type stormRound struct {
	Key       string
	Queries   int64         // statement calls pg_stat_statements counted for the fill's SELECT
	Took      time.Duration // release of the goroutines -> the last Get returned
	RedisCmds int64         // commands Redis processed meanwhile
}

type stormResult struct {
	Gets     int
	Query    string       // the fill's statement as pg_stat_statements shows it
	One, Two []stormRound // one client; two clients (half the Gets each)
}

func maxQueries(rs []stormRound) int64 {
	var m int64 = -1
	for _, r := range rs {
		m = max(m, r.Queries)
	}
	return m
}

// readConfig is the Go API's config for the read steps: one cache b over
// public.bench as the daemon's, and an HTTP API key.
func (b *bench) readConfig() (*config.Config, error) {
	return config.Load(strings.NewReader(`# the read-path steps of go run ./bench
name: ` + configName + `
redis: {url: "` + b.rds.URL() + `"}
sources:
  db: {url: "` + b.dbURL + `"}
caches:
  ` + readCache + `:
    table: public.bench
    key: "b:{id}"
    value: {format: json, columns: {id: id, val: val, note: note}}
    sync: changefeed
http:
  keys:
    - {name: bench, key: "` + readAPIKey + `", scopes: [read]}
`))
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runHits runs op from readWorkers goroutines on random indexes of keys for d
// and returns the run and every request's latency. Any failed request fails
// the run.
func (b *bench) runHits(ctx context.Context, keys []string, d time.Duration, op func(context.Context, int) error) (hitRun, []time.Duration, error) {
	var (
		r       hitRun
		stop    atomic.Bool
		gate    = make(chan struct{})
		wg      sync.WaitGroup
		lats    = make([][]time.Duration, readWorkers)
		errOnce sync.Once
		firstEr error
	)
	for w := range readWorkers {
		lats[w] = make([]time.Duration, 0, 1<<16)
		wg.Go(func() {
			<-gate
			lat := lats[w]
			for !stop.Load() {
				i := rand.IntN(len(keys))
				t0 := time.Now()
				err := op(ctx, i)
				lat = append(lat, time.Since(t0))
				if err != nil {
					errOnce.Do(func() { firstEr = fmt.Errorf("%s: %w", keys[i], err) })
					stop.Store(true)
				}
			}
			lats[w] = lat
		})
	}
	rs0, err := b.redisStats(ctx)
	if err != nil {
		return r, nil, err
	}
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0 := processCPU()
	start := time.Now()
	close(gate)
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	wg.Wait()
	timer.Stop()
	r.Elapsed = time.Since(start)
	r.CPU = processCPU() - cpu0
	runtime.ReadMemStats(&m1)
	rs1, err := b.redisStats(ctx)
	if err != nil {
		return r, nil, err
	}
	if firstEr != nil {
		return r, nil, firstEr
	}
	r.RedisCPU = rs1.CPU - rs0.CPU
	r.Mallocs, r.Bytes, r.GCs = m1.Mallocs-m0.Mallocs, m1.TotalAlloc-m0.TotalAlloc, m1.NumGC-m0.NumGC
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	r.Ops = len(all)
	r.Rate = float64(r.Ops) / r.Elapsed.Seconds()
	lat := append([]time.Duration(nil), all...)
	sortDurations(lat)
	if n := len(lat); n > 0 {
		r.P50, r.P99 = lat[(n-1)*50/100], lat[(n-1)*99/100]
	}
	return r, all, nil
}

// hits measures item 5 (Go API vs bare rueidis GET) and item 6 (HTTP vs Go
// API) on keys that are in Redis, alternating the modes: API, bare, HTTP,
// twice.
func (b *bench) hits(ctx context.Context) error {
	r := &b.res.Read
	*r = readResult{For: 5 * time.Second}
	if b.quick {
		r.For = time.Second
	}
	cfg, err := b.readConfig()
	if err != nil {
		return err
	}
	api, err := engine.Open(ctx, cfg, engine.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer api.Close()
	plain, err := engine.Open(ctx, cfg, engine.Options{Logger: slog.New(slog.DiscardHandler), DisableStats: true})
	if err != nil {
		return err
	}
	defer plain.Close()
	bare, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{b.rds.Addr}, DisableCache: true})
	if err != nil {
		return err
	}
	defer bare.Close()

	// The HTTP API in this process, on a free port, with its own server setup.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	sctx, stopServer := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() {
		served <- httpapi.New(api, cfg.HTTP, slog.New(slog.DiscardHandler)).Serve(sctx, ln)
	}()
	defer func() { stopServer(); <-served }()
	tr := &http.Transport{MaxIdleConns: 2 * readWorkers, MaxIdleConnsPerHost: 2 * readWorkers, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	base := "http://" + ln.Addr().String() + "/v1/caches/" + readCache + "/"

	// Keys: distinct random ids, every one checked to be in Redis.
	n := min(hitKeys, b.sz.Rows)
	keys := make([]string, 0, n)
	seen := map[int]bool{}
	for len(keys) < n {
		id := 1 + rand.IntN(b.sz.Rows)
		if !seen[id] {
			seen[id] = true
			keys = append(keys, "b:"+strconv.Itoa(id))
		}
	}
	r.Keys = len(keys)
	var cmds []rueidis.Completed
	for lo := 0; lo < len(keys); lo += 1000 {
		cmds = append(cmds, b.redis.B().Exists().Key(keys[lo:min(lo+1000, len(keys))]...).Build())
	}
	var present int64
	for _, res := range b.redis.DoMulti(ctx, cmds...) {
		c, err := res.AsInt64()
		if err != nil {
			return err
		}
		present += c
	}
	if present != int64(len(keys)) {
		return fmt.Errorf("only %d of the %d keys read are in Redis: the hits would be fills", present, len(keys))
	}
	urls := make([]string, len(keys))
	for i, k := range keys {
		urls[i] = base + k
	}

	ops := map[string]func(context.Context, int) error{
		"api": func(ctx context.Context, i int) error {
			v, err := api.Get(ctx, readCache, keys[i])
			if err == nil && len(v) == 0 {
				err = errors.New("empty value")
			}
			return err
		},
		"nostats": func(ctx context.Context, i int) error {
			v, err := plain.Get(ctx, readCache, keys[i])
			if err == nil && len(v) == 0 {
				err = errors.New("empty value")
			}
			return err
		},
		"bare": func(ctx context.Context, i int) error {
			v, err := bare.Do(ctx, bare.B().Get().Key(keys[i]).Build()).AsBytes()
			if err == nil && len(v) == 0 {
				err = errors.New("empty value")
			}
			return err
		},
		"http": func(ctx context.Context, i int) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, urls[i], nil)
			if err != nil {
				return err
			}
			req.Header.Set("Authorization", "Bearer "+readAPIKey)
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil && (resp.StatusCode != http.StatusOK || n == 0) {
				err = fmt.Errorf("HTTP %s, %d bytes", resp.Status, n)
			}
			return err
		},
	}
	// The three answer the same bytes.
	k := keys[0]
	want, err := bare.Do(ctx, bare.B().Get().Key(k).Build()).AsBytes()
	if err != nil {
		return err
	}
	if got, err := api.Get(ctx, readCache, k); err != nil || !bytes.Equal(got, want) {
		return fmt.Errorf("the Go API's Get %s: %q, %v; Redis holds %q", k, got, err, want)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, urls[0], nil)
	if err != nil {
		return err
	}
	for _, auth := range []bool{false, true} {
		if auth {
			req.Header.Set("Authorization", "Bearer "+readAPIKey)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !auth && resp.StatusCode != http.StatusUnauthorized {
			return fmt.Errorf("HTTP GET %s without the API key: %s, want 401", k, resp.Status)
		}
		if auth && (resp.StatusCode != http.StatusOK || !bytes.Equal(got, want)) {
			return fmt.Errorf("HTTP GET %s: %s %q; Redis holds %q", k, resp.Status, got, want)
		}
	}
	return b.hitRuns(ctx, r, keys, ops)
}

func (b *bench) hitRuns(ctx context.Context, r *readResult, keys []string, ops map[string]func(context.Context, int) error) error {
	// Warm up every path (connections, keep-alive pool, code) briefly.
	for _, mode := range []string{"api", "nostats", "bare", "http"} {
		if _, _, err := b.runHits(ctx, keys, r.For/10, ops[mode]); err != nil {
			return fmt.Errorf("warm-up %s: %w", mode, err)
		}
	}
	sums := map[string]*hitSummary{"api": &r.API, "nostats": &r.NoStats, "bare": &r.Bare, "http": &r.HTTP}
	names := map[string]string{"api": "Go API Get", "nostats": "Go API, no stats", "bare": "bare rueidis GET", "http": "HTTP GET (httpapi)"}
	for round := range 2 {
		for _, mode := range []string{"api", "nostats", "bare", "http"} {
			stopProfile := b.profileReads(mode, round)
			run, lat, err := b.runHits(ctx, keys, r.For, ops[mode])
			stopProfile()
			if err != nil {
				return fmt.Errorf("%s: %w", names[mode], err)
			}
			sums[mode].add(run, lat)
			r.Order = append(r.Order, mode)
			fmt.Printf("   %-19s %d goroutines, %s: %s/s, p50 %s, p99 %s; this process %.1f µs CPU/op, Redis %.1f µs/op, %.1f allocs/op (%.0f B/op)\n",
				names[mode], readWorkers, run.Elapsed.Round(time.Millisecond), num(run.Rate), us(run.P50), us(run.P99),
				perRow(run.CPU, run.Ops), perRow(run.RedisCPU, run.Ops), float64(run.Mallocs)/float64(max(1, run.Ops)), float64(run.Bytes)/float64(max(1, run.Ops)))
		}
	}
	for _, s := range sums {
		s.finish()
	}
	fmt.Printf("   5. Go API / bare rueidis (mean of 2 runs each): %.2f (target ≥ 0.85); p99 %s vs %s\n", r.API.Rate/r.Bare.Rate, us(r.API.P99), us(r.Bare.P99))
	fmt.Printf("   6. HTTP / Go API: %.2f; p99 %s vs %s\n", r.HTTP.Rate/r.API.Rate, us(r.HTTP.P99), us(r.API.P99))
	fmt.Printf("   10. Go API with stats / without: %.2f (target ≥ 0.95); p99 %s vs %s\n", r.API.Rate/r.NoStats.Rate, us(r.API.P99), us(r.NoStats.P99))
	return nil
}

// profileReads writes a CPU profile of this process during the timed Go API
// and HTTP runs into the work directory when -perf is given.
func (b *bench) profileReads(mode string, round int) func() {
	if !b.perf || mode == "bare" {
		return func() {}
	}
	path := filepath.Join(b.dir, fmt.Sprintf("read-%s-%d.pprof", mode, round+1))
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
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		fmt.Println("   CPU profile (go tool pprof):", path)
	}
}

// ---- 7. miss storm ----

// stormStatement matches the fill's query, SELECT "id", ... FROM public.bench t WHERE "id" = $1 FOR SHARE OF t.
const stormStatement = `^SELECT .* FROM "?public"?\."?bench"? t WHERE `

// fillQueries returns how often PostgreSQL has run the fill's statement.
func (b *bench) fillQueries(ctx context.Context) (int64, error) {
	var n int64
	err := b.db.QueryRow(ctx, `SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
		WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND query ~ $1`, stormStatement).Scan(&n)
	return n, err
}

// unlink removes key, its lease and its "not found" marker, and checks the
// key's row exists.
func (b *bench) unlink(ctx context.Context, key string) error {
	if err := b.redis.Do(ctx, binding.InvalidateCmd(b.redis.B(), key)).Error(); err != nil {
		return err
	}
	id, _ := strconv.Atoi(strings.TrimPrefix(key, "b:"))
	var ok bool
	if err := b.db.QueryRow(ctx, "SELECT EXISTS (SELECT FROM bench WHERE id = $1)", id).Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no row for %s", key)
	}
	return nil
}

// storm releases stormGets goroutines at once, spread over clients, each
// getting key after it was unlinked; it counts the fill queries PostgreSQL ran.
func (b *bench) storm(ctx context.Context, clients []*engine.Engine, key string) (stormRound, error) {
	r := stormRound{Key: key}
	if err := b.unlink(ctx, key); err != nil {
		return r, err
	}
	q0, err := b.fillQueries(ctx)
	if err != nil {
		return r, err
	}
	cmds0, err := b.redisCommands(ctx)
	if err != nil {
		return r, err
	}
	var (
		ready, done sync.WaitGroup
		gate        = make(chan struct{})
		vals        = make([][]byte, stormGets)
		errs        = make([]error, stormGets)
	)
	for i := range stormGets {
		c := clients[i%len(clients)]
		ready.Add(1)
		done.Go(func() {
			ready.Done()
			<-gate
			vals[i], errs[i] = c.Get(ctx, readCache, key)
		})
	}
	ready.Wait()
	start := time.Now()
	close(gate)
	done.Wait()
	r.Took = time.Since(start)
	q1, err := b.fillQueries(ctx)
	if err != nil {
		return r, err
	}
	cmds1, err := b.redisCommands(ctx)
	if err != nil {
		return r, err
	}
	r.Queries, r.RedisCmds = q1-q0, cmds1-cmds0-1 // less the INFO that read cmds0
	want, err := b.redis.Do(ctx, b.redis.B().Get().Key(key).Build()).AsBytes()
	if err != nil {
		return r, fmt.Errorf("%s after the storm: %w", key, err)
	}
	for i := range stormGets {
		if errs[i] != nil {
			return r, fmt.Errorf("a Get of %s: %w", key, errs[i])
		}
		if !bytes.Equal(vals[i], want) {
			return r, fmt.Errorf("a Get of %s returned %q, Redis holds %q", key, vals[i], want)
		}
	}
	return r, nil
}

func (b *bench) redisCommands(ctx context.Context) (int64, error) {
	info, err := status.Info(ctx, b.redis, "stats")
	if err != nil {
		return 0, err
	}
	v, ok := info["total_commands_processed"]
	if !ok {
		return 0, errors.New("no total_commands_processed in INFO")
	}
	return strconv.ParseInt(v, 10, 64)
}

// missStorm measures item 7: queries for stormGets concurrent Gets of one
// missing key, from one client and from two (as two processes would be).
//
// pg_stat_statements is loaded with track=none, so the earlier steps do not
// pay for it; here the database's sessions opened from now on track
// top-level statements.
func (b *bench) missStorm(ctx context.Context) error {
	r := &b.res.Storm
	*r = stormResult{Gets: stormGets}
	if _, err := b.db.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		return err
	}
	if _, err := b.db.Exec(ctx, "ALTER DATABASE bench SET pg_stat_statements.track = 'top'"); err != nil {
		return err
	}
	defer b.db.Exec(context.WithoutCancel(ctx), "ALTER DATABASE bench RESET pg_stat_statements.track")
	cfg, err := b.readConfig()
	if err != nil {
		return err
	}
	var clients []*engine.Engine
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range 2 {
		c, err := engine.Open(ctx, cfg, engine.Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return err
		}
		clients = append(clients, c)
	}
	// Calibrate: one Get of a missing key from each client is one query.
	for i, c := range clients {
		key := "b:" + strconv.Itoa(b.sz.Rows/2+i)
		if err := b.unlink(ctx, key); err != nil {
			return err
		}
		q0, err := b.fillQueries(ctx)
		if err != nil {
			return err
		}
		if _, err := c.Get(ctx, readCache, key); err != nil {
			return err
		}
		q1, err := b.fillQueries(ctx)
		if err != nil {
			return err
		}
		if q1-q0 != 1 {
			return fmt.Errorf("pg_stat_statements counted %d calls of %q for one Get of a missing key, want 1: the count does not work", q1-q0, stormStatement)
		}
	}
	if err := b.db.QueryRow(ctx, "SELECT string_agg(DISTINCT query, ' | ') FROM pg_stat_statements WHERE query ~ $1", stormStatement).Scan(&r.Query); err != nil {
		return err
	}
	fmt.Println("   counting calls of:", r.Query)
	for round := range stormRounds {
		for _, two := range []bool{false, true} {
			key := "b:" + strconv.Itoa(b.sz.Rows/2+10+2*round)
			cs, into, what := clients[:1], &r.One, "one client"
			if two {
				key = "b:" + strconv.Itoa(b.sz.Rows/2+11+2*round)
				cs, into, what = clients, &r.Two, "two clients, half the Gets each"
			}
			sr, err := b.storm(ctx, cs, key)
			if err != nil {
				return fmt.Errorf("storm (%s): %w", what, err)
			}
			*into = append(*into, sr)
			fmt.Printf("   %d concurrent Gets of missing %s (%s): %d database queries; all returned the row in %s; %d Redis commands\n",
				stormGets, key, what, sr.Queries, sr.Took.Round(time.Millisecond), sr.RedisCmds)
		}
	}
	return nil
}

func us(d time.Duration) string {
	if d >= 10*time.Millisecond {
		return ms(d)
	}
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

// ---- report ----

// readReading explains the read-path figures (under "Reading the results").
func (b *bench) readReading(p func(string, ...any)) {
	rd, st := b.res.Read, b.res.Storm
	a, bare, h := rd.API, rd.Bare, rd.HTTP
	if a.Ops == 0 || bare.Ops == 0 {
		return
	}
	busy := func(s hitSummary) float64 { return (s.CPUPerOp + s.RedisPerOp) * s.Rate / 1e6 }
	p("- **5**: the Go API served %.2f of the bare client's hits. Per request this process (the %d goroutines and the client) spent %.1f µs of CPU through the Go API against %.1f µs for the bare GET (%+.1f µs) and allocated %.1f times (%.0f B) against %.1f (%.0f B); Redis spent %.1f and %.1f µs. This process and Redis together kept %.1f and %.1f of the %d cores busy",
		a.Rate/bare.Rate, readWorkers, a.CPUPerOp, bare.CPUPerOp, a.CPUPerOp-bare.CPUPerOp, a.AllocsPerOp, a.BPerOp, bare.AllocsPerOp, bare.BPerOp,
		a.RedisPerOp, bare.RedisPerOp, busy(a), busy(bare), b.machine.Cores)
	if cores := float64(b.machine.Cores); busy(a) >= 0.8*cores && busy(bare) >= 0.8*cores {
		p(", so the machine's CPU is the bound here and the extra CPU of a `Get` over a bare GET (checking the key against the template, one more allocation) is what the ratio measures.\n")
	} else {
		p(" (other processes took %.0f%% of the machine during the step), so the rate was bound by the round trips and their scheduling more than by this process's CPU.\n", 100*b.res.Other["5"])
	}
	if h.Ops > 0 {
		p("- **6**: an HTTP hit cost this process %.1f µs of CPU (client and server: both run here) and %.0f allocations (%.0f B), %.1f× a Go API hit; the HTTP API served %.2f of the Go API's rate. Most of the difference is net/http on both ends of a loopback connection, not cachesync's handler.\n",
			h.CPUPerOp, h.AllocsPerOp, h.BPerOp, h.CPUPerOp/a.CPUPerOp, h.Rate/a.Rate)
	}
	if len(st.One) > 0 && len(st.Two) > 0 {
		took := func(rs []stormRound) (time.Duration, float64) {
			var t time.Duration
			var c int64
			for _, r := range rs {
				t = max(t, r.Took)
				c += r.RedisCmds
			}
			return t, float64(c)/float64(len(rs)) - float64(st.Gets)
		}
		t1, c1 := took(st.One)
		t2, c2 := took(st.Two)
		p("- **7**: every one of the %s Gets of each storm returned the row; the slowest storm took %s with one client and %s with two (release → last Get returned). Redis processed %.0f and %.0f commands per storm beyond the Gets' own first GET: the lease, the \"not found\" check, the re-read and the fill, and, with two clients, the waiting client's polls.\n",
			count(st.Gets), ms(t1), ms(t2), c1, c2)
	}
}

// readCosts is the read path's part of "Where the time goes".
func (b *bench) readCosts(p func(string, ...any)) {
	rd := b.res.Read
	if rd.API.Ops == 0 {
		return
	}
	p("Read path (5, 6): each mode ran twice for %s with %d goroutines over %s keys, in the order %s.\n\n", rd.For, readWorkers, count(rd.Keys), strings.Join(rd.Order, ", "))
	p("| Mode | Runs (requests/s) | Mean | p50 | p99 | max | This process CPU per request | Redis CPU per request | Allocations per request (bytes) | GC cycles |\n")
	p("|---|---|---|---|---|---|---|---|---|---|\n")
	row := func(name string, s hitSummary) {
		var runs []string
		for _, r := range s.Runs {
			runs = append(runs, num(r.Rate))
		}
		p("| %s | %s | %s | %s | %s | %s | %.1f µs | %.1f µs | %.1f (%.0f B) | %d |\n", name, strings.Join(runs, ", "), num(s.Rate),
			us(s.P50), us(s.P99), us(s.Max), s.CPUPerOp, s.RedisPerOp, s.AllocsPerOp, s.BPerOp, s.GCs)
	}
	row("Go API `Get`", rd.API)
	row("bare rueidis `GET`", rd.Bare)
	row("HTTP `GET` (client + server)", rd.HTTP)
	p("\n")
}

// readMethod is the read path's part of "Method".
func (b *bench) readMethod(p func(string, ...any)) {
	p("- **5**: the Go API opened as `engine.Open(ctx, cfg, engine.Options{})` (logger discarded) on a config with one cache `%s` over `public.bench` (`b:{id}`, the daemon's mapping), read with `Get(ctx, \"%s\", key)`; the bare client is `rueidis.NewClient(rueidis.ClientOption{InitAddress: ..., DisableCache: true})` reading with `GET` (`Do(...).AsBytes()`). Keys: %s distinct random ids, all checked to be in Redis beforehand (so every Get is a hit and no fill runs; no daemon runs and nothing writes); each request picks one at random. %d goroutines issue requests back to back for %s per run; each mode runs twice, alternating Go API, Go API without stats (step 10), bare, HTTP, then again, after a %s warm-up of each. Throughput = requests completed ÷ elapsed, the **mean** of the two runs; latency is timed around each call, percentiles over every request of both runs. Any error or empty value fails the step. CPU of this process from `getrusage` (the load generator, the client and, in 6, the server), Redis CPU from `INFO`, allocations from `runtime.MemStats` over the run (background goroutines of rueidis and net/http included).\n",
		readCache, readCache, count(hitKeys), readWorkers, b.res.Read.For, b.res.Read.For/10)
	p("- **6**: the HTTP API `httpapi.New(api, cfg.HTTP, logger)` served by its own `Serve` (net/http, `http.TimeoutHandler`) on a free 127.0.0.1 port, in this process and over the same Client as 5, with one API key of scope `read` sent as `Authorization: Bearer`. The client is an `http.Client` whose Transport keeps up to %d idle connections per host (compression off); each request is built with `http.NewRequestWithContext`, its body read to the end and its status checked. Client and server share this process, so its CPU per request counts both ends.\n", 2*readWorkers)
	p("- **7**: PostgreSQL preloads `pg_stat_statements` with `track=none` (the earlier steps do not pay for it); this step runs `CREATE EXTENSION pg_stat_statements` and `ALTER DATABASE bench SET pg_stat_statements.track = 'top'`, then opens its clients, whose sessions therefore track their statements. Queries = the increase of `sum(calls)` of the statements matching `%s` (the fill's statement, which pg_stat_statements shows as `%s`). A calibration Get of one missing key from each client must count exactly 1. A storm: `UNLINK` the key with its lease and \"not found\" marker (the row exists), start %s goroutines parked on a channel, release them at once by closing it; each calls `Get`, and each must return the value Redis holds afterwards. \"Two clients\" are two `engine.Open` in this process, each with its own Redis client, PostgreSQL pool and singleflight group — what two processes have — with the goroutines alternating between them, so they meet only through Redis (the lease). %d storms per variant, each on its own key; the worst is reported.\n",
		stormStatement, b.res.Storm.Query, count(stormGets), stormRounds)
}
