package main

import (
	"context"
	_ "embed"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/refresh"
)

// refreshStep is item 9: a mass expiry of keys refreshed by the refresher,
// beside the same rows read by one SELECT ... = ANY per batch plus a
// pipelined SET; then readers' misses with on-expiry and ahead.
type refreshStep struct {
	about
	Keys             int
	Elapsed, Ceiling time.Duration
	Rate, CeilRate   float64
	P50, P99         time.Duration
	ExpiryReads      int64
	ExpiryMisses     int64
	AheadReads       int64
	AheadMisses      int64
	CPU, RedisCPU    time.Duration // during the mass expiry: this process, Redis
	CeilRedisCPU     time.Duration // Redis during the ceiling
	Floor            time.Duration // the ceiling's work on expired keys, with a record
	FloorRate        float64
	FloorRedisCPU    time.Duration
	Commands         string // Redis commands during the mass expiry
}

const (
	rfKeys    = 100_000 // keys expiring at once (-quick: a tenth)
	rfReadKey = 1000    // keys the readers hammer
	rfReaders = 8
	rfReadFor = 5 * time.Second
)

//go:embed step_refresh.md
var refreshText string

func (s refreshStep) Text() string { return refreshText }

func (s refreshStep) Results() []row {
	return []row{
		{ID: "9", What: fmt.Sprintf("Refresh on expiry: %s recorded keys expire at the same moment; the refresher (%d workers, %d keys a batch) reloads them all",
			count(s.Keys), refresh.Workers, refresh.BatchSize),
			Got:     fmt.Sprintf("%s keys/s (%s)", num(s.Rate), secs(s.Elapsed)),
			Ceiling: fmt.Sprintf("`SELECT id, v FROM rf WHERE id = ANY($1)` per %d ids + pipelined `SET PX`, %d goroutines: %s keys/s (%s)", refresh.BatchSize, refresh.Workers, num(s.CeilRate), secs(s.Ceiling)),
			Ratio:   ratio(s.Rate, s.CeilRate), Target: "≥ 0.7", Met: yes(s.Rate/s.CeilRate >= 0.7)},
		{ID: "9", What: "Floor: the ceiling's reads and SETs on expired keys, plus one `ZADD` a batch into an expiry record: what the issue asks of any refresher, with no race protection",
			Got: fmt.Sprintf("%s keys/s (%s)", num(s.FloorRate), secs(s.Floor)), Ceiling: "the ceiling above",
			Ratio: ratio(s.FloorRate, s.CeilRate), Target: "report", Met: "—"},
		{ID: "9", What: "The same mass expiry against the floor", Got: num(s.Rate) + " keys/s", Ceiling: num(s.FloorRate) + " keys/s",
			Ratio: ratio(s.Rate, s.FloorRate), Target: "report", Met: "—"},
		{ID: "9", What: "Redis CPU per key, same runs", Got: fmt.Sprintf("%.1f µs", s.PerKey(s.RedisCPU)),
			Ceiling: fmt.Sprintf("ceiling: %.1f µs; floor: %.1f µs", s.PerKey(s.CeilRedisCPU), s.PerKey(s.FloorRedisCPU)), Ratio: "—", Target: "report", Met: "—"},
		{ID: "9", What: "Delay from the recorded expiry to the key refreshed, same mass expiry",
			Got: fmt.Sprintf("p50 ≤ %s, p99 ≤ %s (histogram bucket bounds)", ms(s.P50), ms(s.P99)), Ceiling: "—", Ratio: "—", Target: "report", Met: "—"},
		{ID: "9", What: fmt.Sprintf("Reader misses, %d readers GETting %s keys with 1 s TTLs for %s: on-expiry against ahead (refresh_ahead 0.8)", rfReaders, count(rfReadKey), secs(rfReadFor)),
			Got: fmt.Sprintf("on-expiry: %s misses in %s reads (%.3f%%); ahead: %s misses in %s reads",
				count(int(s.ExpiryMisses)), count(int(s.ExpiryReads)), 100*float64(s.ExpiryMisses)/float64(max(s.ExpiryReads, 1)),
				count(int(s.AheadMisses)), count(int(s.AheadReads))),
			Ceiling: "—", Ratio: "—", Target: "0 misses with ahead", Met: yes(s.AheadMisses == 0 && s.AheadReads > 0)},
	}
}

// PerKey is Redis CPU time d per key, in µs.
func (s refreshStep) PerKey(d time.Duration) float64 {
	return float64(d.Microseconds()) / float64(max(s.Keys, 1))
}

// The refresher's settings and the readers', for the step's text.
func (refreshStep) BatchSize() int         { return refresh.BatchSize }
func (refreshStep) BatchKeys() int         { return binding.BatchKeys }
func (refreshStep) Readers() int           { return rfReaders }
func (refreshStep) ReadKeys() int          { return rfReadKey }
func (refreshStep) ReadFor() time.Duration { return rfReadFor }

func (s refreshStep) Run(ctx context.Context, e *env) (step, error) {
	n := rfKeys
	if e.quick {
		n /= 10
	}
	s.Keys = n
	if _, err := e.db.Exec(ctx, fmt.Sprintf(`DROP TABLE IF EXISTS rf; CREATE TABLE rf (id int PRIMARY KEY, v bigint NOT NULL);
		INSERT INTO rf SELECT g, g FROM generate_series(1, %d) g`, n)); err != nil {
		return nil, err
	}
	if _, err := e.db.Exec(ctx, `VACUUM ANALYZE rf`); err != nil {
		return nil, err
	}
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "rf:" + strconv.Itoa(i+1)
	}
	openRF := func(ttl, mode string) (*engine.Engine, *refresh.Refresher, error) {
		cfg, err := e.apiConfig(configName+"_rf", `caches:
  rf: {table: rf, key: "rf:{id}", value: {format: string, column: v}, ttl: `+ttl+`, sync: none, refresh: `+mode+`}
`)
		if err != nil {
			return nil, nil, err
		}
		api, err := engine.Open(ctx, cfg, engine.Options{Logger: quiet})
		if err != nil {
			return nil, nil, err
		}
		rf, err := refresh.New(cfg, api, e.redis, quiet)
		if err != nil {
			api.Close()
			return nil, nil, err
		}
		return api, rf, nil
	}

	// Ceiling first: the same rows, SELECT ... = ANY per batch and a
	// pipelined SET, from as many goroutines as the refresher's workers.
	pool, err := pgxpool.New(ctx, e.dbURL)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	// Warm up first: open the pool's connections, read the table once, and
	// create the keys, so the timed pass overwrites them. Creating 100,000
	// keys in a Redis that holds the earlier steps' million may grow its
	// key table on the way, which the refresher (filling keys that expired)
	// does not pay: it made the ceiling 0.41 s in full runs against 0.23 s
	// alone.
	if err := reloadRaw(ctx, e, pool, n, ""); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	if s.Ceiling, s.CeilRedisCPU, err = timeRaw(ctx, e, pool, n, ""); err != nil {
		return nil, fmt.Errorf("ceiling: %w", err)
	}
	s.CeilRate = float64(n) / s.Ceiling.Seconds()

	// Floor: what the issue asks of every refresher beyond the ceiling's
	// work, and no more: the keys have expired (Redis removes each and
	// publishes its event) and each write records the key's expiry in a
	// sorted set. No lease, no claim, no script.
	if err := e.redis.Do(ctx, e.redis.B().ConfigSet().ParameterValue().ParameterValue("notify-keyspace-events", "Ex").Build()).Error(); err != nil {
		return nil, err
	}
	floorAt := time.Now().Add(2 * time.Second).Truncate(time.Millisecond)
	var expire []rueidis.Completed
	for id := 1; id <= n; id++ {
		expire = append(expire, e.redis.B().Pexpireat().Key("rfc:"+strconv.Itoa(id)).MillisecondsTimestamp(floorAt.UnixMilli()).Build())
	}
	if err := e.doAll(ctx, expire); err != nil {
		return nil, err
	}
	time.Sleep(time.Until(floorAt.Add(10 * time.Millisecond)))
	if s.Floor, s.FloorRedisCPU, err = timeRaw(ctx, e, pool, n, "rfc:record"); err != nil {
		return nil, fmt.Errorf("floor: %w", err)
	}
	s.FloorRate = float64(n) / s.Floor.Seconds()

	// Mass expiry: every key (recorded) expires at the same moment T.
	api, rf, err := openRF("1h", "on-expiry")
	if err != nil {
		return nil, err
	}
	defer api.Close()
	for lo := 0; lo < n; lo += refresh.BatchSize {
		if _, err := api.Reload(ctx, "rf", keys[lo:min(lo+refresh.BatchSize, n)], false); err != nil {
			return nil, fmt.Errorf("fill: %w", err)
		}
	}
	at := time.Now().Add(10 * time.Second).Truncate(time.Millisecond)
	var cmds []rueidis.Completed
	for _, k := range keys {
		cmds = append(cmds, e.redis.B().Pexpireat().Key(k).MillisecondsTimestamp(at.UnixMilli()).Build(),
			e.redis.B().Zadd().Key(binding.RecordKey("rf")).ScoreMember().ScoreMember(float64(at.UnixMilli()), k).Build())
	}
	if err := e.doAll(ctx, cmds); err != nil {
		return nil, err
	}
	if time.Now().After(at.Add(-time.Second)) {
		return nil, fmt.Errorf("mass expiry: setting the expiries took too long")
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rf.Run(rctx) }()
	cpu0, rs0 := processCPU(), e.mustRedisStats(ctx) // (before T: the INFO is not timed)
	time.Sleep(time.Until(at))
	deadline := at.Add(2 * time.Minute)
	for rf.Stats.Refreshed.Load() < int64(n) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	s.Elapsed = time.Since(at)
	rs1 := e.mustRedisStats(ctx)
	s.CPU, s.RedisCPU = processCPU()-cpu0, rs1.sub(rs0).CPU
	s.Commands = commandsSince(rs0.Commands, rs1.Commands)
	stop()
	if err := <-done; err != nil {
		return nil, err
	}
	if got := rf.Stats.Refreshed.Load(); got < int64(n) {
		return nil, fmt.Errorf("mass expiry: %d of %d keys refreshed in 2 minutes", got, n)
	}
	if missing, err := mgetMissing(ctx, e, keys); err != nil || missing != 0 {
		return nil, fmt.Errorf("mass expiry: %d keys missing after it (%v)", missing, err)
	}
	s.Rate = float64(n) / s.Elapsed.Seconds()
	s.P50, s.P99 = rf.Stats.Delays.Quantile(0.5), rf.Stats.Delays.Quantile(0.99)

	// Readers: on-expiry against ahead, 1 s TTLs.
	for _, mode := range []string{"on-expiry", "ahead"} {
		api, rf, err := openRF("1s", mode)
		if err != nil {
			return nil, err
		}
		reads, misses, err := readMisses(ctx, e, api, rf, keys[:rfReadKey])
		api.Close()
		if err != nil {
			return nil, err
		}
		if mode == "ahead" {
			s.AheadReads, s.AheadMisses = reads, misses
		} else {
			s.ExpiryReads, s.ExpiryMisses = reads, misses
		}
	}
	return s, nil
}

// readMisses fills keys through api and runs rf while rfReaders goroutines
// GET the keys round-robin for rfReadFor with a plain rueidis client; it
// returns their reads and misses (nil replies).
func readMisses(ctx context.Context, e *env, api *engine.Engine, rf *refresh.Refresher, keys []string) (reads, misses int64, err error) {
	// Start from nothing: the keys are written with this mode's TTL.
	if err := e.redis.Do(ctx, e.redis.B().Del().Key(append([]string{binding.RecordKey("rf")}, keys...)...).Build()).Error(); err != nil {
		return 0, 0, err
	}
	if _, err := api.Reload(ctx, "rf", keys, false); err != nil {
		return 0, 0, err
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rf.Run(rctx) }()
	var nReads, nMisses atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(rfReadFor)
	for g := range rfReaders {
		wg.Go(func() {
			for i := g; time.Now().Before(end); i += 7 {
				v, err := e.redis.Do(ctx, e.redis.B().Get().Key(keys[i%len(keys)]).Build()).ToString()
				nReads.Add(1)
				if err != nil || v == "" {
					nMisses.Add(1)
				}
			}
		})
	}
	wg.Wait()
	stop()
	if err := <-done; err != nil {
		return 0, 0, err
	}
	return nReads.Load(), nMisses.Load(), nil
}

// timeRaw times reloadRaw into keys rfc:{id}, with the Redis CPU it took.
func timeRaw(ctx context.Context, e *env, pool *pgxpool.Pool, n int, record string) (time.Duration, time.Duration, error) {
	rs0, start := e.mustRedisStats(ctx), time.Now()
	err := reloadRaw(ctx, e, pool, n, record)
	return time.Since(start), e.mustRedisStats(ctx).sub(rs0).CPU, err
}

// reloadRaw reads rows 1..n of rf by SELECT = ANY per batch and writes
// them to keys rfc:{id} by a pipelined SET, from as many goroutines as the
// refresher has workers; with record, one ZADD per batch records the keys
// beside the SETs.
func reloadRaw(ctx context.Context, e *env, pool *pgxpool.Pool, n int, record string) error {
	return parallelBatches(n, refresh.BatchSize, refresh.Workers, func(lo, hi int) error {
		ids := make([]int32, 0, hi-lo)
		for id := lo + 1; id <= hi; id++ {
			ids = append(ids, int32(id))
		}
		rows, err := pool.Query(ctx, `SELECT id, v FROM rf WHERE id = ANY($1)`, ids)
		if err != nil {
			return err
		}
		var cmds []rueidis.Completed
		var members []string // score, key, ... for the record
		at := strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)
		for rows.Next() {
			var id int32
			var v int64
			if err := rows.Scan(&id, &v); err != nil {
				rows.Close()
				return err
			}
			key := "rfc:" + strconv.Itoa(int(id))
			cmds = append(cmds, e.redis.B().Set().Key(key).Value(strconv.FormatInt(v, 10)).Px(time.Hour).Build())
			if record != "" {
				members = append(members, at, key)
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(members) > 0 {
			cmds = append(cmds, e.redis.B().Arbitrary("ZADD").Keys(record).Args(members...).Build())
		}
		return e.doAll(ctx, cmds)
	})
}

// parallelBatches runs fn over [lo, hi) batches of size up to n from workers goroutines.
func parallelBatches(n, size, workers int, fn func(lo, hi int) error) error {
	next := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for lo := range next {
				if err := fn(lo, min(lo+size, n)); err != nil {
					errs <- err
					for range next {
					}
					return
				}
			}
		})
	}
	for lo := 0; lo < n; lo += size {
		next <- lo
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// mgetMissing counts keys without a value.
func mgetMissing(ctx context.Context, e *env, keys []string) (int, error) {
	missing := 0
	for lo := 0; lo < len(keys); lo += 1000 {
		vals, err := e.redis.Do(ctx, e.redis.B().Mget().Key(keys[lo:min(lo+1000, len(keys))]...).Build()).ToArray()
		if err != nil {
			return 0, err
		}
		for _, v := range vals {
			if _, err := v.ToString(); err != nil {
				missing++
			}
		}
	}
	return missing, nil
}

// commandsSince lists the commands run since before (calls, and CPU ms),
// busiest first; commands run inside scripts count under their own names.
func commandsSince(before, after map[string][2]int64) string {
	type cmd struct {
		name        string
		calls, usec int64
	}
	var cmds []cmd
	for name, a := range after {
		if d := (cmd{name, a[0] - before[name][0], a[1] - before[name][1]}); d.calls > 0 {
			cmds = append(cmds, d)
		}
	}
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].usec > cmds[j].usec })
	var parts []string
	for _, c := range cmds {
		parts = append(parts, fmt.Sprintf("%s %s (%.0f ms)", c.name, count(int(c.calls)), float64(c.usec)/1000))
	}
	return strings.Join(parts, ", ")
}
