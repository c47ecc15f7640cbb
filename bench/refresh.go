package main

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/refresh"
)

// The refresh path (9): a mass expiry of rfKeys keys refreshed by the
// refresher, beside the same rows read by one SELECT ... = ANY per batch
// plus a pipelined SET; then readers' miss ratio with on-expiry and ahead.

const (
	rfKeys    = 100_000 // keys expiring at once (-quick: a tenth)
	rfReadKey = 1000    // keys the readers hammer
	rfReaders = 8
	rfReadFor = 5 * time.Second
)

type refreshResult struct {
	Keys              int
	Elapsed, Ceiling  time.Duration
	Rate, CeilRate    float64
	P50, P99          time.Duration
	Repaired          int64
	ExpiryReads       int64
	ExpiryMisses      int64
	AheadReads        int64
	AheadMisses       int64
	AheadRefreshes    int64
	ExpiryRefreshes   int64
	CeilingBatchQuery int
	CPU, RedisCPU     time.Duration // during the mass expiry: this process, Redis
	CeilRedisCPU      time.Duration // Redis during the ceiling
	Floor             time.Duration // the ceiling's work on expired keys, with a record
	FloorRate         float64
	FloorRedisCPU     time.Duration
	Commands          string // Redis commands during the mass expiry
}

// mustRedisStats is redisStats, or a panic: a figure from stats that could
// not be read would be wrong, not missing.
func (b *bench) mustRedisStats(ctx context.Context) redisStats {
	s, err := b.redisStats(ctx)
	if err != nil {
		panic(fmt.Sprintf("redis stats: %v", err))
	}
	return s
}

func (b *bench) rfConfig(caches string) (*config.Config, error) {
	return config.Load(strings.NewReader(`# the refresh step of go run ./bench
name: ` + configName + `_rf
redis: {url: "` + b.rds.URL() + `"}
sources:
  db: {url: "` + b.dbURL + `"}
caches:
` + caches))
}

func (b *bench) refresh(ctx context.Context) error {
	n := rfKeys
	if b.quick {
		n /= 10
	}
	r := &b.res.Refresh
	*r = refreshResult{Keys: n, CeilingBatchQuery: refresh.BatchSize}
	if _, err := b.db.Exec(ctx, fmt.Sprintf(`DROP TABLE IF EXISTS rf; CREATE TABLE rf (id int PRIMARY KEY, v bigint NOT NULL);
		INSERT INTO rf SELECT g, g FROM generate_series(1, %d) g`, n)); err != nil {
		return err
	}
	if _, err := b.db.Exec(ctx, `VACUUM ANALYZE rf`); err != nil {
		return err
	}
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "rf:" + strconv.Itoa(i+1)
	}
	log := slog.New(slog.DiscardHandler)

	// Ceiling first: the same rows, SELECT ... = ANY per batch and a
	// pipelined SET, from as many goroutines as the refresher's workers.
	pool, err := pgxpool.New(ctx, b.dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	// Warm up first: open the pool's connections, read the table once, and
	// create the keys, so the timed pass overwrites them. Creating 100,000
	// keys in a Redis that holds the earlier steps' million may grow its
	// key table on the way, which the refresher (filling keys that expired)
	// does not pay: it made the ceiling 0.41 s in full runs against 0.23 s
	// alone.
	if err := b.reloadRaw(ctx, pool, n, ""); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	if r.Ceiling, r.CeilRedisCPU, err = b.timeRaw(ctx, pool, n, ""); err != nil {
		return fmt.Errorf("ceiling: %w", err)
	}
	r.CeilRate = float64(n) / r.Ceiling.Seconds()
	fmt.Printf("   ceiling: %s rows by SELECT = ANY (%d a batch, %d goroutines) + pipelined SET in %s: %s keys/s\n",
		count(n), refresh.BatchSize, refresh.Workers, secs(r.Ceiling), num(r.CeilRate))

	// Floor: what the issue asks of every refresher beyond the ceiling's
	// work, and no more: the keys have expired (Redis removes each and
	// publishes its event) and each write records the key's expiry in a
	// sorted set. No lease, no claim, no script.
	if err := b.redis.Do(ctx, b.redis.B().ConfigSet().ParameterValue().ParameterValue("notify-keyspace-events", "Ex").Build()).Error(); err != nil {
		return err
	}
	floorAt := time.Now().Add(2 * time.Second).Truncate(time.Millisecond)
	var expire []rueidis.Completed
	for id := 1; id <= n; id++ {
		expire = append(expire, b.redis.B().Pexpireat().Key("rfc:"+strconv.Itoa(id)).MillisecondsTimestamp(floorAt.UnixMilli()).Build())
	}
	if err := b.doAll(ctx, expire); err != nil {
		return err
	}
	time.Sleep(time.Until(floorAt.Add(10 * time.Millisecond)))
	if r.Floor, r.FloorRedisCPU, err = b.timeRaw(ctx, pool, n, "rfc:record"); err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	r.FloorRate = float64(n) / r.Floor.Seconds()
	fmt.Printf("   floor: the same on expired keys, SETs beside one ZADD a batch into a record, in %s: %s keys/s (%.2f of the ceiling)\n",
		secs(r.Floor), num(r.FloorRate), r.FloorRate/r.CeilRate)

	// Mass expiry: every key (recorded) expires at the same moment T.
	cfg, err := b.rfConfig(`  rf: {table: rf, key: "rf:{id}", value: {format: string, column: v}, ttl: 1h, sync: none, refresh: on-expiry}` + "\n")
	if err != nil {
		return err
	}
	api, err := engine.Open(ctx, cfg, engine.Options{Logger: log})
	if err != nil {
		return err
	}
	defer api.Close()
	for lo := 0; lo < n; lo += refresh.BatchSize {
		if _, err := api.Reload(ctx, "rf", keys[lo:min(lo+refresh.BatchSize, n)], false); err != nil {
			return fmt.Errorf("fill: %w", err)
		}
	}
	at := time.Now().Add(10 * time.Second).Truncate(time.Millisecond)
	var cmds []rueidis.Completed
	for _, k := range keys {
		cmds = append(cmds, b.redis.B().Pexpireat().Key(k).MillisecondsTimestamp(at.UnixMilli()).Build(),
			b.redis.B().Zadd().Key(binding.RecordKey("rf")).ScoreMember().ScoreMember(float64(at.UnixMilli()), k).Build())
	}
	if err := b.doAll(ctx, cmds); err != nil {
		return err
	}
	if time.Now().After(at.Add(-time.Second)) {
		return fmt.Errorf("mass expiry: setting the expiries took too long")
	}
	rf, err := refresh.New(cfg, api, b.redis, log)
	if err != nil {
		return err
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rf.Run(rctx) }()
	cpu0, rs0 := processCPU(), b.mustRedisStats(ctx) // (before T: the INFO is not timed)
	time.Sleep(time.Until(at))
	deadline := at.Add(2 * time.Minute)
	for rf.Stats.Refreshed.Load() < int64(n) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	r.Elapsed = time.Since(at)
	rs1 := b.mustRedisStats(ctx)
	r.CPU, r.RedisCPU = processCPU()-cpu0, rs1.sub(rs0).CPU
	r.Commands = commandsSince(rs0.Commands, rs1.Commands)
	stop()
	if err := <-done; err != nil {
		return err
	}
	if got := rf.Stats.Refreshed.Load(); got < int64(n) {
		return fmt.Errorf("mass expiry: %d of %d keys refreshed in 2 minutes", got, n)
	}
	if _, missing, err := b.mgetMissing(ctx, keys); err != nil || missing != 0 {
		return fmt.Errorf("mass expiry: %d keys missing after it (%v)", missing, err)
	}
	r.Rate = float64(n) / r.Elapsed.Seconds()
	r.P50, r.P99 = rf.Stats.Delays.Quantile(0.5), rf.Stats.Delays.Quantile(0.99)
	fmt.Printf("   mass expiry: %s keys expired at once, refreshed in %s: %s keys/s (%.2f of the ceiling); delay expiry → refreshed p50 ≤ %s, p99 ≤ %s; CPU: this process %s, Redis %s; %s expired events\n",
		count(n), secs(r.Elapsed), num(r.Rate), r.Rate/r.CeilRate, ms(r.P50), ms(r.P99), secs(r.CPU), secs(r.RedisCPU), count(int(rf.Stats.Events.Load())))
	fmt.Printf("   Redis commands during it: %s\n", r.Commands)

	// Readers: on-expiry against ahead, 1 s TTLs.
	for _, mode := range []string{"on-expiry", "ahead"} {
		cfg, err := b.rfConfig(fmt.Sprintf(`  rf: {table: rf, key: "rf:{id}", value: {format: string, column: v}, ttl: 1s, sync: none, refresh: %s}`+"\n", mode))
		if err != nil {
			return err
		}
		api, err := engine.Open(ctx, cfg, engine.Options{Logger: log})
		if err != nil {
			return err
		}
		// Start from nothing: the keys are written with this mode's TTL.
		if err := b.redis.Do(ctx, b.redis.B().Del().Key(append([]string{binding.RecordKey("rf")}, keys[:rfReadKey]...)...).Build()).Error(); err != nil {
			api.Close()
			return err
		}
		if _, err := api.Reload(ctx, "rf", keys[:rfReadKey], false); err != nil {
			api.Close()
			return err
		}
		rf, err := refresh.New(cfg, api, b.redis, log)
		if err != nil {
			api.Close()
			return err
		}
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- rf.Run(rctx) }()
		var reads, misses atomic.Int64
		var wg sync.WaitGroup
		end := time.Now().Add(rfReadFor)
		for g := range rfReaders {
			wg.Go(func() {
				for i := g; time.Now().Before(end); i += 7 {
					v, err := b.redis.Do(ctx, b.redis.B().Get().Key(keys[i%rfReadKey]).Build()).ToString()
					reads.Add(1)
					if err != nil || v == "" {
						misses.Add(1)
					}
				}
			})
		}
		wg.Wait()
		stop()
		err = <-done
		api.Close()
		if err != nil {
			return err
		}
		if mode == "ahead" {
			r.AheadReads, r.AheadMisses, r.AheadRefreshes = reads.Load(), misses.Load(), rf.Stats.Refreshed.Load()
		} else {
			r.ExpiryReads, r.ExpiryMisses, r.ExpiryRefreshes = reads.Load(), misses.Load(), rf.Stats.Refreshed.Load()
		}
		fmt.Printf("   readers, %s: %s GETs over %d keys (1 s TTL) in %s, %s misses (%.4f%%); %s keys refreshed\n",
			mode, count(int(reads.Load())), rfReadKey, secs(rfReadFor), count(int(misses.Load())),
			100*float64(misses.Load())/float64(max(reads.Load(), 1)), count(int(rf.Stats.Refreshed.Load())))
	}
	return nil
}

// timeRaw times reloadRaw into keys rfc:{id}, with the Redis CPU it took.
func (b *bench) timeRaw(ctx context.Context, pool *pgxpool.Pool, n int, record string) (time.Duration, time.Duration, error) {
	rs0, start := b.mustRedisStats(ctx), time.Now()
	err := b.reloadRaw(ctx, pool, n, record)
	return time.Since(start), b.mustRedisStats(ctx).sub(rs0).CPU, err
}

// reloadRaw reads rows 1..n of rf by SELECT = ANY per batch and writes
// them to keys rfc:{id} by a pipelined SET, from as many goroutines as the
// refresher has workers; with record, one ZADD per batch records the keys
// beside the SETs.
func (b *bench) reloadRaw(ctx context.Context, pool *pgxpool.Pool, n int, record string) error {
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
			cmds = append(cmds, b.redis.B().Set().Key(key).Value(strconv.FormatInt(v, 10)).Px(time.Hour).Build())
			if record != "" {
				members = append(members, at, key)
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(members) > 0 {
			cmds = append(cmds, b.redis.B().Arbitrary("ZADD").Keys(record).Args(members...).Build())
		}
		return b.doAll(ctx, cmds)
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
func (b *bench) mgetMissing(ctx context.Context, keys []string) (int, int, error) {
	missing := 0
	for lo := 0; lo < len(keys); lo += 1000 {
		vals, err := b.redis.Do(ctx, b.redis.B().Mget().Key(keys[lo:min(lo+1000, len(keys))]...).Build()).ToArray()
		if err != nil {
			return 0, 0, err
		}
		for _, v := range vals {
			if _, err := v.ToString(); err != nil {
				missing++
			}
		}
	}
	return len(keys), missing, nil
}

func (b *bench) rfRows(p func(string, ...any)) {
	r := b.res.Refresh
	if r.Keys == 0 {
		return
	}
	p("| 9 | Refresh on expiry: %s recorded keys expire at the same moment; the refresher (4 workers, %d keys a batch) reloads them all | %s keys/s (%s) | `SELECT id, v FROM rf WHERE id = ANY($1)` per %d ids + pipelined `SET PX`, 4 goroutines: %s keys/s (%s) | %.2f | ≥ 0.7 | %s |\n",
		count(r.Keys), refresh.BatchSize, num(r.Rate), secs(r.Elapsed), refresh.BatchSize, num(r.CeilRate), secs(r.Ceiling), r.Rate/r.CeilRate, yes(r.Rate/r.CeilRate >= 0.7))
	p("| 9 | Floor: the ceiling's reads and SETs on expired keys, plus one `ZADD` a batch into an expiry record: what the issue asks of any refresher, with no race protection | %s keys/s (%s) | the ceiling above | %.2f | report | — |\n",
		num(r.FloorRate), secs(r.Floor), r.FloorRate/r.CeilRate)
	p("| 9 | The same mass expiry against the floor | %s keys/s | %s keys/s | %.2f | report | — |\n", num(r.Rate), num(r.FloorRate), r.Rate/r.FloorRate)
	p("| 9 | Redis CPU per key, same runs | %.1f µs | ceiling: %.1f µs; floor: %.1f µs | — | report | — |\n", perKey(r.RedisCPU, r.Keys), perKey(r.CeilRedisCPU, r.Keys), perKey(r.FloorRedisCPU, r.Keys))
	p("| 9 | Delay from the recorded expiry to the key refreshed, same mass expiry | p50 ≤ %s, p99 ≤ %s (histogram bucket bounds) | — | — | report | — |\n", ms(r.P50), ms(r.P99))
	p("| 9 | Reader misses, %d readers GETting %s keys with 1 s TTLs for %s: on-expiry against ahead (refresh_ahead 0.8) | on-expiry: %s misses in %s reads (%.3f%%); ahead: %s misses in %s reads | — | — | 0 misses with ahead | %s |\n",
		rfReaders, count(rfReadKey), secs(rfReadFor), count(int(r.ExpiryMisses)), count(int(r.ExpiryReads)), 100*float64(r.ExpiryMisses)/float64(max(r.ExpiryReads, 1)),
		count(int(r.AheadMisses)), count(int(r.AheadReads)), yes(r.AheadMisses == 0 && r.AheadReads > 0))
}

func (b *bench) rfMethod(p func(string, ...any)) {
	if b.res.Refresh.Keys == 0 {
		return
	}
	p("- **9**: table `rf(id int primary key, v bigint)` with %s rows; cache `{key: \"rf:{id}\", value: {format: string, column: v}, ttl: 1h, sync: none, refresh: on-expiry}`, opened in this process. The ceiling runs first (into keys `rfc:{id}`), after one untimed pass of its loop that opens its connections, reads the table once and creates the keys (the timed pass overwrites them, as the refresher's connections are warm and it adds no keys to Redis's table). The floor then sets every `rfc:` key to expire 2 s ahead, waits for that, and runs the ceiling's loop again with one `ZADD` of the batch's keys into a sorted set beside its SETs (keyspace events `Ex` on, as for the refresher, with nobody listening). Then every key is filled with `Client.Reload` (untimed), and a pipeline sets each key's `PEXPIREAT` and its expiry record entry to the same moment T, 10 s ahead; a refresher (`refresh.New(...).Run`) starts in this process; rate = keys ÷ (T → its refreshed count reaching all keys), and every key is checked present afterwards. Delays come from the refresher's histogram (bucket upper bounds). Readers: %d goroutines `GET` %s keys round-robin for %s with a plain rueidis client while a refresher runs, once with `refresh: on-expiry` and once with `refresh: ahead` (`refresh_ahead` default 0.8), TTL 1 s; a miss is a nil reply.\n",
		count(b.res.Refresh.Keys), rfReaders, count(rfReadKey), secs(rfReadFor))
}

func perKey(d time.Duration, n int) float64 { return float64(d.Microseconds()) / float64(max(n, 1)) }

func (b *bench) rfReading(p func(string, ...any)) {
	r := b.res.Refresh
	if r.Keys == 0 {
		return
	}
	p("- **9**: per refreshed key Redis spent %.1f µs of CPU (%s in all, over %s) against %.1f µs for the ceiling's SETs and %.1f µs for the floor's; this process spent %s. The floor is what the issue asks of every refresher beyond the ceiling's work, with no race protection and nobody listening for events: Redis expiring the keys and a sorted-set record of their expiries; it ran at %.2f of the ceiling. The rest is the race-safe protocol (DESIGN invariant 2), on one Redis node a watched reload: per transaction of %d keys a `WATCH` of them and of the cache's removal count with an `OBJECT ENCODING` each (it tells a missing key without publishing a keymiss event; `PTTL` follows for present ones), then, after the query (one `= ANY` per %d keys, `FOR SHARE`), `MULTI`, a `SET PX` each, one `DEL` of their \"not found\" markers, one `ZADD` into the expiry record, `EXEC`; and the expired events, which reach the refresher for every key (an `OBJECT ENCODING` each drops those a reload from the record has filled already). Redis commands during the mass expiry (calls, CPU): %s.\n",
		perKey(r.RedisCPU, r.Keys), secs(r.RedisCPU), secs(r.Elapsed), perKey(r.CeilRedisCPU, r.Keys), perKey(r.FloorRedisCPU, r.Keys), secs(r.CPU), r.FloorRate/r.CeilRate, binding.BatchKeys, refresh.BatchSize, r.Commands)
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
