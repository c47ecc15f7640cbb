package main

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync"
	"github.com/cachesync/cachesync/config"
	continuous "github.com/cachesync/cachesync/internal/consistency"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/httpapi"
)

// hits measures items 5, 6, 10, 12 and 16 on keys that are in Redis: Gets
// through the Go API beside a bare rueidis GET (5), HTTP GETs through
// httpapi beside the Go API and beside a bare net/http server doing one
// rueidis GET a request (6), the Go API without its stats (10), with the
// continuous consistency check running (12), and on a cache with l1 beside
// a bare rueidis DoCache, and over HTTP beside the bare server (16).
type hits struct {
	about
	Workers         int           // goroutines issuing requests
	For             time.Duration // each timed run
	Keys            int
	API, Bare, HTTP hitSummary
	BareHTTP        hitSummary // a bare net/http server, one rueidis GET a request
	L1, BareL1      hitSummary // the Go API on a cache with l1; bare rueidis DoCache
	HTTPL1          hitSummary // httpapi over an engine whose cache has l1
	NoStats         hitSummary // the engine with Options.DisableStats
	Sampled         hitSummary // the Go API while the continuous consistency check runs
	SampleRate      int        // its keys a second (the default)
	SampledKeys     int64      // keys it checked during those runs
	Order           []string   // the runs in the order they ran
}

const (
	benchAPIKey = "bench-read-key-0123456789abc" // the HTTP API key (read scope)
	hitWorkers  = 16                             // goroutines issuing hits
	hitKeys     = 100_000                        // distinct keys the hit runs read, at random
)

// hitSummary is a read mode over its runs: the mean rate, percentiles over
// every request of every run, costs per request over all runs.
type hitSummary struct {
	Runs                 []opRun
	Rate                 float64 // mean of the runs' rates
	P50, P99, Max        time.Duration
	CPUPerOp, RedisPerOp float64 // µs per request
	AllocsPerOp, BPerOp  float64
	GCs                  uint32
}

func summarize(runs []opRun, lat []time.Duration) hitSummary {
	s := hitSummary{Runs: runs}
	s.P50, s.P99, s.Max = percentiles(lat)
	var ops int
	var cpu, redisCPU time.Duration
	var mallocs, bytes uint64
	for _, r := range runs {
		s.Rate += r.Rate / float64(len(runs))
		ops, cpu, redisCPU = ops+r.Ops, cpu+r.CPU, redisCPU+r.Redis.CPU
		mallocs, bytes, s.GCs = mallocs+r.Mallocs, bytes+r.Bytes, s.GCs+r.GCs
	}
	n := float64(max(1, ops))
	s.CPUPerOp, s.RedisPerOp = perRow(cpu, ops), perRow(redisCPU, ops)
	s.AllocsPerOp, s.BPerOp = float64(mallocs)/n, float64(bytes)/n
	return s
}

// Busy is how many cores this process and Redis together kept busy.
func (s hitSummary) Busy() float64 { return (s.CPUPerOp + s.RedisPerOp) * s.Rate / 1e6 }

// row is the mode's line of the table of "Where the time goes".
func (s hitSummary) row(name string) string {
	var runs []string
	for _, r := range s.Runs {
		runs = append(runs, num(r.Rate))
	}
	return cells(name, strings.Join(runs, ", "), num(s.Rate), us(s.P50), us(s.P99), us(s.Max),
		fmt.Sprintf("%.1f µs", s.CPUPerOp), fmt.Sprintf("%.1f µs", s.RedisPerOp),
		fmt.Sprintf("%.1f (%.0f B)", s.AllocsPerOp, s.BPerOp), strconv.Itoa(int(s.GCs)))
}

//go:embed step_hits.md
var hitsText string

func (s hits) Text() string { return hitsText }

func (s hits) Results() []row {
	a, bare, h, plain := s.API, s.Bare, s.HTTP, s.NoStats
	return []row{
		{ID: "5", What: fmt.Sprintf("Hit-path Get through the Go API (`Client.Get`), %d goroutines, keys in Redis, throughput (mean of 2 × %s)", s.Workers, s.For),
			Got: num(a.Rate) + " gets/s", Ceiling: "bare rueidis GET: " + num(bare.Rate) + " gets/s",
			Ratio: ratio(a.Rate, bare.Rate), Target: "≥ 0.85", Met: yes(a.Rate/bare.Rate >= 0.85)},
		{ID: "5", What: "Same, p99 latency", Got: us(a.P99), Ceiling: "bare rueidis GET: " + us(bare.P99), Ratio: ratioDur(bare.P99, a.P99)},
		{ID: "6", What: fmt.Sprintf("HTTP GET hits through httpapi (net/http, keep-alive client), %d goroutines, throughput", s.Workers),
			Got: num(h.Rate) + " requests/s", Ceiling: "Go API: " + num(a.Rate) + " gets/s", Ratio: ratio(h.Rate, a.Rate), Target: "(none set)", Met: "—"},
		{ID: "6", What: "Same, p99 latency", Got: us(h.P99), Ceiling: "Go API: " + us(a.P99), Ratio: ratioDur(a.P99, h.P99)},
		{ID: "6", What: "HTTP GET hits through httpapi beside a bare net/http server doing one rueidis GET a request, same client, same keys",
			Got: num(h.Rate) + " requests/s", Ceiling: "bare net/http + rueidis GET: " + num(s.BareHTTP.Rate) + " requests/s",
			Ratio: ratio(h.Rate, s.BareHTTP.Rate), Target: "≥ 0.85", Met: yes(h.Rate/s.BareHTTP.Rate >= 0.85)},
		{ID: "16", What: fmt.Sprintf("L1: hit-path Get through the Go API on a cache with `l1`, %d goroutines, every key held", s.Workers),
			Got: num(s.L1.Rate) + " gets/s", Ceiling: "bare rueidis `DoCache` GET: " + num(s.BareL1.Rate) + " gets/s",
			Ratio: ratio(s.L1.Rate, s.BareL1.Rate), Target: "≥ 0.8", Met: yes(s.L1.Rate/s.BareL1.Rate >= 0.8)},
		{ID: "16", What: "Same, p99 latency", Got: us(s.L1.P99), Ceiling: "bare `DoCache`: " + us(s.BareL1.P99), Ratio: ratioDur(s.BareL1.P99, s.L1.P99)},
		{ID: "16", What: "L1 over HTTP: HTTP GET hits through httpapi on a cache with `l1`",
			Got: num(s.HTTPL1.Rate) + " requests/s", Ceiling: "bare net/http + rueidis GET: " + num(s.BareHTTP.Rate) + " requests/s",
			Ratio: ratio(s.HTTPL1.Rate, s.BareHTTP.Rate), Target: "> 1", Met: yes(s.HTTPL1.Rate > s.BareHTTP.Rate)},
		{ID: "10", What: "Metrics on the hit path: Go API Get counting and timing every Get (what /metrics exports), same runs as 5",
			Got:     fmt.Sprintf("%s gets/s, p99 %s", num(a.Rate), us(a.P99)),
			Ceiling: fmt.Sprintf("the engine with `DisableStats`: %s gets/s, p99 %s", num(plain.Rate), us(plain.P99)),
			Ratio:   ratio(a.Rate, plain.Rate), Target: "≥ 0.95", Met: yes(a.Rate/plain.Rate >= 0.95)},
		{ID: "12", What: fmt.Sprintf("The continuous consistency check on the hit path: Go API Get while the check runs in the same process (%d keys/s, the default)", s.SampleRate),
			Got:     fmt.Sprintf("%s gets/s, p99 %s", num(s.Sampled.Rate), us(s.Sampled.P99)),
			Ceiling: fmt.Sprintf("the Go API without it (5): %s gets/s, p99 %s", num(a.Rate), us(a.P99)),
			Ratio:   ratio(s.Sampled.Rate, a.Rate), Target: "≥ 0.95", Met: yes(s.Sampled.Rate/a.Rate >= 0.95)},
	}
}

// CPUBound tells whether this process and Redis kept most of the cores busy
// in both the Go API's runs and the bare client's.
func (s hits) CPUBound(cores int) bool {
	return s.API.Busy() >= 0.8*float64(cores) && s.Bare.Busy() >= 0.8*float64(cores)
}

// CostsRows are the modes' lines of the table of "Where the time goes".
func (s hits) CostsRows() []string {
	return []string{s.API.row("Go API `Get`"), s.NoStats.row("Go API `Get`, `DisableStats`"), s.Sampled.row("Go API `Get`, consistency check running"),
		s.Bare.row("bare rueidis `GET`"), s.HTTP.row("HTTP `GET` (client + server)"), s.BareHTTP.row("bare net/http + rueidis `GET` (client + server)"),
		s.L1.row("Go API `Get`, `l1`"), s.BareL1.row("bare rueidis `DoCache`"), s.HTTPL1.row("HTTP `GET`, `l1` (client + server)")}
}

// WarmUp is how long each mode runs before the timed runs.
func (s hits) WarmUp() time.Duration { return s.For / 10 }

// IdleConns is how many idle connections the HTTP client keeps to the server.
func (s hits) IdleConns() int { return 2 * s.Workers }

// Cache is the cache the steps read through the Go API.
func (hits) Cache() string { return benchCache }

func (s hits) Run(ctx context.Context, e *env) (step, error) {
	s.Workers, s.For = hitWorkers, 5*time.Second
	if e.quick {
		s.For = time.Second
	}
	cfg, err := e.benchConfig()
	if err != nil {
		return nil, err
	}
	user, err := cachesync.Open(ctx, cfg, cachesync.Options{Logger: quiet}) // the Go API a user calls
	if err != nil {
		return nil, err
	}
	defer user.Close()
	api, err := engine.Open(ctx, cfg, engine.Options{Logger: quiet}) // the engine the HTTP API serves
	if err != nil {
		return nil, err
	}
	defer api.Close()
	plain, err := engine.Open(ctx, cfg, engine.Options{Logger: quiet, DisableStats: true})
	if err != nil {
		return nil, err
	}
	defer plain.Close()
	bare, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{e.rds.Addr}, DisableCache: true})
	if err != nil {
		return nil, err
	}
	defer bare.Close()
	// 16: the cache with l1 through the Go API and HTTP, beside bare DoCache.
	cfgL1, err := e.benchConfig()
	if err != nil {
		return nil, err
	}
	cfgL1.Caches[benchCache].L1 = &config.L1{Max: l1Max, TTL: l1TTL}
	userL1, err := cachesync.Open(ctx, cfgL1, cachesync.Options{Logger: quiet})
	if err != nil {
		return nil, err
	}
	defer userL1.Close()
	apiL1, err := engine.Open(ctx, cfgL1, engine.Options{Logger: quiet})
	if err != nil {
		return nil, err
	}
	defer apiL1.Close()
	bareL1, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{e.rds.Addr}, CacheSizeEachConn: l1Max})
	if err != nil {
		return nil, err
	}
	defer bareL1.Close()

	// The HTTP API in this process, on a free port, with its own server setup.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	lnL1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	lnBare, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	sctx, stopServer := context.WithCancel(ctx)
	served := make(chan error, 3)
	go func() { served <- httpapi.New(api, cfg.HTTP, quiet).Serve(sctx, ln) }()
	go func() { served <- httpapi.New(apiL1, cfg.HTTP, quiet).Serve(sctx, lnL1) }()
	go func() { served <- serveBare(sctx, bare, lnBare) }()
	defer func() { stopServer(); <-served; <-served; <-served }()
	tr := &http.Transport{MaxIdleConns: s.IdleConns(), MaxIdleConnsPerHost: s.IdleConns(), DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	base := "http://" + ln.Addr().String() + "/v1/caches/" + benchCache + "/"

	// Keys: distinct random ids, every one checked to be in Redis.
	var keys []string
	for seen := map[int]bool{}; len(keys) < min(hitKeys, e.sz.Rows); {
		if id := 1 + rand.IntN(e.sz.Rows); !seen[id] {
			seen[id] = true
			keys = append(keys, "b:"+strconv.Itoa(id))
		}
	}
	s.Keys = len(keys)
	var cmds []rueidis.Completed
	for lo := 0; lo < len(keys); lo += 1000 {
		cmds = append(cmds, e.redis.B().Exists().Key(keys[lo:min(lo+1000, len(keys))]...).Build())
	}
	var present int64
	for _, res := range e.redis.DoMulti(ctx, cmds...) {
		c, err := res.AsInt64()
		if err != nil {
			return nil, err
		}
		present += c
	}
	if present != int64(len(keys)) {
		return nil, fmt.Errorf("only %d of the %d keys read are in Redis: the hits would be fills", present, len(keys))
	}
	baseL1 := "http://" + lnL1.Addr().String() + "/v1/caches/" + benchCache + "/"
	baseBare := "http://" + lnBare.Addr().String() + "/v1/caches/" + benchCache + "/"
	urls, urlsL1, urlsBare := make([]string, len(keys)), make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		urls[i], urlsL1[i], urlsBare[i] = base+k, baseL1+k, baseBare+k
	}

	// Each request reads a key; a failed one, or an empty value, fails the run.
	nonEmpty := func(v []byte, err error) error {
		if err == nil && len(v) == 0 {
			err = errors.New("empty value")
		}
		return err
	}
	ops := map[string]func(context.Context, int) error{
		"api":     func(ctx context.Context, i int) error { return nonEmpty(user.Get(ctx, benchCache, keys[i])) },
		"nostats": func(ctx context.Context, i int) error { return nonEmpty(plain.Get(ctx, benchCache, keys[i])) },
		"bare": func(ctx context.Context, i int) error {
			return nonEmpty(bare.Do(ctx, bare.B().Get().Key(keys[i]).Build()).AsBytes())
		},
		"http":     func(ctx context.Context, i int) error { return httpGet(ctx, hc, urls[i]) },
		"barehttp": func(ctx context.Context, i int) error { return httpGet(ctx, hc, urlsBare[i]) },
		"httpl1":   func(ctx context.Context, i int) error { return httpGet(ctx, hc, urlsL1[i]) },
		"l1":       func(ctx context.Context, i int) error { return nonEmpty(userL1.Get(ctx, benchCache, keys[i])) },
		"bareL1": func(ctx context.Context, i int) error {
			return nonEmpty(bareL1.DoCache(ctx, bareL1.B().Get().Key(keys[i]).Cache(), l1TTL).AsBytes())
		},
	}
	// Step 12's reads are 5's, its ceiling, to the letter: the two modes
	// differ only in the consistency check running beside them (on the
	// engine the HTTP API serves, as in the daemon). A hit shares only the
	// machine with it: this process's CPU, Redis, the cores PostgreSQL
	// answers its samples on.
	ops["sampled"] = ops["api"]
	// The three answer the same bytes.
	k := keys[0]
	want, err := bare.Do(ctx, bare.B().Get().Key(k).Build()).AsBytes()
	if err != nil {
		return nil, err
	}
	if got, err := api.Get(ctx, benchCache, k); err != nil || !bytes.Equal(got, want) {
		return nil, fmt.Errorf("the Go API's Get %s: %q, %v; Redis holds %q", k, got, err, want)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, urls[0], nil)
	if err != nil {
		return nil, err
	}
	for _, auth := range []bool{false, true} {
		if auth {
			req.Header.Set("Authorization", "Bearer "+benchAPIKey)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !auth && resp.StatusCode != http.StatusUnauthorized {
			return nil, fmt.Errorf("HTTP GET %s without the API key: %s, want 401", k, resp.Status)
		}
		if auth && (resp.StatusCode != http.StatusOK || !bytes.Equal(got, want)) {
			return nil, fmt.Errorf("HTTP GET %s: %s %q; Redis holds %q", k, resp.Status, got, want)
		}
	}

	// The continuous consistency check, as the daemon runs it, on the
	// engine of its own it would have.
	s.SampleRate = cfg.Consistency.Rate()
	sampler := continuous.New(cfg, api, e.redis, quiet)
	run := func(mode string, d time.Duration) (opRun, []time.Duration, error) {
		op := ops[mode]
		if mode == "sampled" {
			sctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- sampler.Run(sctx) }()
			defer func() { stop(); <-done }()
		}
		return e.runOps(ctx, s.Workers, 0, d, func(ctx context.Context, _, _ int) error {
			i := rand.IntN(len(keys)) // each request reads a key at random
			if err := op(ctx, i); err != nil {
				return fmt.Errorf("%s: %w", keys[i], err)
			}
			return nil
		})
	}
	// Warm up every path (connections, keep-alive pool, code) briefly.
	modes := []string{"api", "nostats", "sampled", "bare", "http", "barehttp", "l1", "bareL1", "httpl1"}
	for _, mode := range modes {
		if _, _, err := run(mode, s.WarmUp()); err != nil {
			return nil, fmt.Errorf("warm-up %s: %w", mode, err)
		}
	}
	// The L1s hold every key before they are timed: 16 measures hits.
	for _, mode := range []string{"l1", "bareL1", "httpl1"} {
		op := ops[mode]
		per := (len(keys) + s.Workers - 1) / s.Workers
		if _, _, err := e.runOps(ctx, s.Workers, per, 0, func(ctx context.Context, w, i int) error {
			if k := w*per + i; k < len(keys) {
				return op(ctx, k)
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("filling the l1 of %s: %w", mode, err)
		}
	}
	runs, lats := map[string][]opRun{}, map[string][]time.Duration{}
	names := map[string]string{"api": "Go API Get", "nostats": "Go API, no stats", "sampled": "Go API, check on", "bare": "bare rueidis GET", "http": "HTTP GET (httpapi)",
		"barehttp": "bare net/http GET", "l1": "Go API Get, l1", "bareL1": "bare DoCache GET", "httpl1": "HTTP GET, l1"}
	for round := range 2 {
		for _, mode := range modes {
			stopProfile := func() {}
			if mode != "bare" {
				stopProfile = e.profile(fmt.Sprintf("read-%s-%d", mode, round+1))
			}
			r, lat, err := run(mode, s.For)
			stopProfile()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", names[mode], err)
			}
			runs[mode], lats[mode] = append(runs[mode], r), append(lats[mode], lat...)
			s.Order = append(s.Order, mode)
			fmt.Printf("   %-19s %d goroutines, %s: %s/s, p50 %s, p99 %s; this process %.1f µs CPU/op, Redis %.1f µs/op, %.1f allocs/op (%.0f B/op)\n",
				names[mode], s.Workers, r.Elapsed.Round(time.Millisecond), num(r.Rate), us(r.P50), us(r.P99),
				perRow(r.CPU, r.Ops), perRow(r.Redis.CPU, r.Ops), float64(r.Mallocs)/float64(max(1, r.Ops)), float64(r.Bytes)/float64(max(1, r.Ops)))
		}
	}
	s.API, s.NoStats = summarize(runs["api"], lats["api"]), summarize(runs["nostats"], lats["nostats"])
	s.Sampled = summarize(runs["sampled"], lats["sampled"])
	s.SampledKeys = sampler.PerCache[benchCache].Checked.Load()
	if s.SampledKeys == 0 {
		return nil, errors.New("the consistency check compared no key while it ran: step 12 would measure an idle check")
	}
	s.Bare, s.HTTP = summarize(runs["bare"], lats["bare"]), summarize(runs["http"], lats["http"])
	s.BareHTTP, s.HTTPL1 = summarize(runs["barehttp"], lats["barehttp"]), summarize(runs["httpl1"], lats["httpl1"])
	s.L1, s.BareL1 = summarize(runs["l1"], lats["l1"]), summarize(runs["bareL1"], lats["bareL1"])
	return s, nil
}

// The L1s of 16: room for every key read, copies kept through both rounds
// of runs (about two minutes).
const (
	l1Max = 512 << 20
	l1TTL = 10 * time.Minute
)

// httpGet reads url with the API key through hc; a failed request, another
// status than 200 or an empty body is an error.
func httpGet(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+benchAPIKey)
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
}

// serveBare is 6's ceiling: a net/http server with the API's path and the
// server settings of httpapi.Server.Serve, whose handler is one rueidis GET
// of the key and its bytes (no API key, no checks), until ctx is done.
func serveBare(ctx context.Context, c rueidis.Client, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/caches/{cache}/{key...}", func(w http.ResponseWriter, r *http.Request) {
		v, err := c.Do(r.Context(), c.B().Get().Key(r.PathValue("key")).Build()).AsBytes()
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(v)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	<-ctx.Done()
	srv.Close()
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
