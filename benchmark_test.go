package cachesync_test

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/testenv"
)

// Quick numbers for the Go API, each beside its bare ceiling on the same
// servers:
//
//	go test -run '^$' -bench . -benchtime 2s .
//
// make bench (go run ./bench) measures the whole picture. Each benchmark
// starts a private Redis and a database of its own on the package's
// PostgreSQL (testPG), and stops the Redis when it ends.

// benchGoroutines is how many goroutines per CPU the parallel benchmarks
// run: 8, so 16 on two cores, as make bench's read and write-behind steps.
const benchGoroutines = 8

// benchKey is the key the Get benchmarks read.
const benchKey = "b:1"

// benchEnv starts a Redis and a PostgreSQL for benchmark b, stopped when it
// ends, with table bench(id, val, note) holding row 1 and an empty table
// wb(id, v). It returns a Client of cache b over bench (keys b:{id}, JSON
// values) and cache wb (write-behind), closed when b ends, and the Redis.
// benchDBs numbers the benchmarks' databases.
var benchDBs atomic.Int64

func benchEnv(b *testing.B) (*cachesync.Client, *testenv.Redis) {
	b.Helper()
	ctx := b.Context()
	testenv.NeedServers(b)
	rds := testenv.StartRedis(b)
	_, dbURL := testPG.Database(b, fmt.Sprintf("bench%d", benchDBs.Add(1)), `CREATE TABLE bench (id int PRIMARY KEY, val bigint NOT NULL, note text NOT NULL);
		INSERT INTO bench VALUES (1, 0, 'note ' || md5('1'));
		CREATE TABLE wb (id int PRIMARY KEY, v bigint NOT NULL)`)
	cfg, err := config.Load(strings.NewReader(fmt.Sprintf(`name: bench
redis: {url: %q}
sources:
  db: {url: %q}
caches:
  b: {table: bench, key: "b:{id}", value: {format: json, columns: {id: id, val: val, note: note}}, sync: none}
  wb: {table: wb, key: "wb:{id}", value: {columns: [id, v]}, sync: none, writes: behind}
`, rds.URL(), dbURL)))
	if err != nil {
		b.Fatal(err)
	}
	c, err := cachesync.Open(ctx, cfg, cachesync.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	return c, rds
}

// bareClient is a plain rueidis client of rds, closed when b ends.
func bareClient(b *testing.B, rds *testenv.Redis) rueidis.Client {
	b.Helper()
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{rds.Addr}, DisableCache: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(rc.Close)
	return rc
}

// runParallel measures op, called with 1, 2, ... from benchGoroutines
// goroutines per CPU, as the benchmark's one sub-benchmark (named for its
// goroutines): a benchmark function runs once per round of b.N, while its
// sub-benchmark runs its rounds within that one run, so the servers start
// once.
func runParallel(b *testing.B, op func(ctx context.Context, i int64) error) {
	b.Run(fmt.Sprintf("goroutines=%d", benchGoroutines*runtime.GOMAXPROCS(0)), func(b *testing.B) {
		ctx := b.Context()
		var n atomic.Int64
		b.SetParallelism(benchGoroutines)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := op(ctx, n.Add(1)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkGetHit measures Client.Get of a key in Redis: a hit.
func BenchmarkGetHit(b *testing.B) {
	c, _ := benchEnv(b)
	if _, err := c.Get(b.Context(), "b", benchKey); err != nil { // a miss: the fill puts the row in Redis
		b.Fatal(err)
	}
	runParallel(b, func(ctx context.Context, _ int64) error {
		_, err := c.Get(ctx, "b", benchKey)
		return err
	})
}

// BenchmarkGetHitBareRedis is BenchmarkGetHit's ceiling: a plain rueidis GET
// of the same key, filled the same way.
func BenchmarkGetHitBareRedis(b *testing.B) {
	c, rds := benchEnv(b)
	want, err := c.Get(b.Context(), "b", benchKey)
	if err != nil {
		b.Fatal(err)
	}
	rc := bareClient(b, rds)
	if got, err := rc.Do(b.Context(), rc.B().Get().Key(benchKey).Build()).ToString(); err != nil || got != string(want) {
		b.Fatalf("GET %s: %q, %v; Get returned %q", benchKey, got, err, want)
	}
	runParallel(b, func(ctx context.Context, _ int64) error {
		return rc.Do(ctx, rc.B().Get().Key(benchKey).Build()).Error()
	})
}

// BenchmarkPutBehind measures Client.PutBehind: the value written to Redis
// and the row queued for PostgreSQL, with no drainer running, over 10,000
// keys.
func BenchmarkPutBehind(b *testing.B) {
	c, _ := benchEnv(b)
	runParallel(b, func(ctx context.Context, i int64) error {
		_, err := c.PutBehind(ctx, "wb", map[string]any{"id": i % 10_000, "v": i})
		return err
	})
}

// bareQueue is what PutBehind does at bottom, bare: one script that sets
// the value and appends the row to a stream.
const bareQueue = `redis.call('SET', KEYS[1], ARGV[1])
return redis.call('XADD', KEYS[2], '*', 'key', KEYS[1], 'row', ARGV[2])`

// BenchmarkPutBehindBareXADD is BenchmarkPutBehind's ceiling: a plain
// rueidis EVAL of SET + XADD with the same JSON as value and row.
func BenchmarkPutBehindBareXADD(b *testing.B) {
	rc := bareClient(b, testenv.StartRedis(b))
	runParallel(b, func(ctx context.Context, i int64) error {
		id := strconv.FormatInt(i%10_000, 10)
		row := `{"id":` + id + `,"v":` + strconv.FormatInt(i, 10) + `}`
		return rc.Do(ctx, rc.B().Eval().Script(bareQueue).Numkeys(2).Key("wb:"+id, "bench:wb").Arg(row, row).Build()).Error()
	})
}
