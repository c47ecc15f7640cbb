package status

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/engine"
)

// DefaultDeadline is how long a status or a metrics scrape waits for each
// server (Redis, each PostgreSQL source) by default: the dashboard polls
// every 2 s, and a server that has not answered by then is reported
// unreachable rather than holding up the report.
const DefaultDeadline = time.Second

// ErrNoAnswer is the error of a probe that ran out of its deadline.
var ErrNoAnswer = errors.New("no answer")

// Within runs fn with a deadline d from ctx and waits for it no longer
// than that, even when fn does: a Redis client does not always stop at its
// context's deadline (a command waits out a connection being established
// on a server that accepts but does not answer). fn is then left to end on
// its own, its result dropped: it must share nothing with the caller but
// its result (or under a lock).
// An fn that failed once the deadline had passed (ctx itself not done)
// gives an error wrapping ErrNoAnswer that names the deadline, and fn's
// error unless that was only the deadline.
func Within[T any](ctx context.Context, d time.Duration, fn func(context.Context) (T, error)) (T, error) {
	pctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := fn(pctx)
		done <- result{v, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-pctx.Done():
		select {
		case r = <-done: // its own error, when it has one already
		default:
			r.err = pctx.Err()
		}
	}
	// (The clock, not pctx.Err(): a connection's I/O deadline, set from
	// pctx's, may fire just before pctx's timer does.)
	if dl, _ := pctx.Deadline(); r.err != nil && ctx.Err() == nil && !time.Now().Before(dl) {
		if errors.Is(r.err, context.DeadlineExceeded) {
			r.err = fmt.Errorf("%w within the %v deadline", ErrNoAnswer, d)
		} else {
			r.err = fmt.Errorf("%w within the %v deadline: %w", ErrNoAnswer, d, r.err)
		}
	}
	return r.v, r.err
}

// Describe says why a server counts as down after a probe failed with
// err: "unreachable: ..." unless the server answered with an error of
// its own (a refused command, a failed query), which it quotes. A
// PostgreSQL that ends the connection (shutting down, SQLSTATE class 57)
// or cannot keep it (class 08) is unreachable.
func Describe(err error) string {
	var pgErr *pgconn.PgError
	answered := errors.As(err, &pgErr) && !strings.HasPrefix(pgErr.Code, "57") && !strings.HasPrefix(pgErr.Code, "08")
	if _, ok := rueidis.IsRedisErr(err); ok || answered {
		return err.Error()
	}
	return "unreachable: " + err.Error()
}

// SourceProbe is what a probe of a PostgreSQL source found: its current
// WAL position, or why it could not be read.
type SourceProbe struct {
	WAL    uint64
	Active string // the holder of the source's slot (engine.SlotHolder), when read
	Err    error
}

// ProbeSources reads the WAL position of each of sources through api,
// and with holders which process streams it, all sources at once, each
// read within deadline d.
func ProbeSources(ctx context.Context, api *engine.Engine, sources []string, d time.Duration, holders bool) map[string]SourceProbe {
	out := make(map[string]SourceProbe, len(sources))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, source := range sources {
		wg.Go(func() {
			wal, err := Within(ctx, d, func(ctx context.Context) (uint64, error) { return api.WALPosition(ctx, source) })
			var active string
			if err == nil && holders {
				active, _ = Within(ctx, d, func(ctx context.Context) (string, error) { return api.SlotHolder(ctx, source) })
			}
			mu.Lock()
			out[source] = SourceProbe{WAL: wal, Active: active, Err: err}
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}
