package status_test

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cachesync/cachesync/internal/status"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

func TestMain(m *testing.M) { world.Main(m) }

// schema is the table the caches of statusBed are of.
const schema = `CREATE TABLE t (id int PRIMARY KEY, v text)`

// TestWithin: a probe that ignores its context is not waited for past its
// deadline, and its error names the deadline; one that fails at once
// keeps its own error; a canceled caller gets its own cancellation.
func TestWithin(t *testing.T) {
	ctx := t.Context()
	release := make(chan struct{})
	defer close(release)
	// Blocks until the test ends: Within must return by itself.
	_, err := status.Within(ctx, 10*time.Millisecond, func(context.Context) (int, error) {
		<-release
		return 1, nil
	})
	if !errors.Is(err, status.ErrNoAnswer) || err.Error() != "no answer within the 10ms deadline" {
		t.Errorf("a probe that hangs: %v", err)
	}
	_, err = status.Within(ctx, 10*time.Millisecond, func(ctx context.Context) (int, error) {
		<-ctx.Done()
		return 0, errors.New("read: i/o timeout")
	})
	// (Its own error comes too when Within sees it first.)
	if !errors.Is(err, status.ErrNoAnswer) || !strings.HasPrefix(err.Error(), "no answer within the 10ms deadline") {
		t.Errorf("a probe that fails at its deadline: %v", err)
	}
	refused := errors.New("connection refused")
	if _, err := status.Within(ctx, time.Hour, func(context.Context) (int, error) { return 0, refused }); err != refused {
		t.Errorf("a probe that fails at once: %v", err)
	}
	if v, err := status.Within(ctx, time.Hour, func(context.Context) (int, error) { return 7, nil }); v != 7 || err != nil {
		t.Errorf("a probe that answers: %v, %v", v, err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := status.Within(canceled, time.Hour, func(ctx context.Context) (int, error) { <-ctx.Done(); return 0, ctx.Err() }); !errors.Is(err, context.Canceled) {
		t.Errorf("a canceled caller: %v", err)
	}
}

// TestDescribe: a server that answered with an error is quoted; any other
// failure makes it unreachable.
func TestDescribe(t *testing.T) {
	if got := status.Describe(errors.New("dial tcp: connection refused")); got != "unreachable: dial tcp: connection refused" {
		t.Errorf("refused: %q", got)
	}
	pgErr := &pgconn.PgError{Severity: "ERROR", Code: "42501", Message: "permission denied"}
	if got := status.Describe(pgErr); strings.HasPrefix(got, "unreachable") {
		t.Errorf("PostgreSQL's own error: %q", got)
	}
	shutdown := &pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"}
	if got := status.Describe(shutdown); !strings.HasPrefix(got, "unreachable: ") {
		t.Errorf("PostgreSQL shutting down: %q", got)
	}
}

// statusBed is a collector of a config over w (of schema), with a
// deadline of 200ms.
func statusBed(w *world.World) *status.Collector {
	cfg := w.Config(`  p: {table: t, key: "p:{id}", sync: none, fill: on-miss}
  w: {table: t, key: "w:{id}", sync: none, writes: behind}
`)
	// Like the daemon's: a client that retries, not the API's.
	c := status.NewCollector(status.Sources{Config: cfg, Redis: w.RC, API: w.Open(cfg)})
	c.Deadline = 200 * time.Millisecond
	return c
}

// collect collects a status until ok holds of it, 10 times at most (on a
// busy machine a server that runs may miss the deadline now and then);
// each must be complete.
func collect(t *testing.T, c *status.Collector, what string, ok func(r *status.Report) bool) *status.Report {
	t.Helper()
	var r *status.Report
	for range 10 {
		var err error
		r, err = c.Collect(t.Context())
		if err != nil || len(r.Caches) != 2 {
			t.Fatalf("%s: %+v, %v", what, r, err)
		}
		if ok(r) {
			return r
		}
	}
	t.Fatalf("%s: 10 times not so: %+v", what, r)
	return nil
}

// sourceUp: the source is up.
func sourceUp(r *status.Report) bool { return r.Sources["db"].Up && r.Sources["db"].Error == "" }

// TestCollectRedisDown: with Redis stopped, then hung (accepting
// connections, never answering), Collect reports it down within the
// collector's deadline and still reports the source up.
func TestCollectRedisDown(t *testing.T) {
	w := world.New(t, schema)
	c, rds := statusBed(w), w.Redis
	collect(t, c, "all up", func(r *status.Report) bool { return sourceUp(r) && r.Redis.Up && r.Caches[1].Queue != nil })

	if err := rds.Stop(); err != nil {
		t.Fatal(err)
	}
	r := collect(t, c, "redis stopped", sourceUp)
	if r.Redis.Up || !strings.HasPrefix(r.Redis.Error, "unreachable: ") || r.Caches[1].Queue != nil {
		t.Errorf("redis stopped: %+v, queue %v", r.Redis, r.Caches[1].Queue)
	}

	if err := rds.Start(); err != nil {
		t.Fatal(err)
	}
	collect(t, c, "redis restarted", func(r *status.Report) bool { return r.Redis.Up }) // the client reconnects
	pid := rds.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	r = collect(t, c, "redis hung", sourceUp)
	if want := "unreachable: no answer within the 200ms deadline"; r.Redis.Up || !strings.HasPrefix(r.Redis.Error, want) {
		t.Errorf("redis hung: %+v, want error %s...", r.Redis, want)
	}
}

// TestCollectSourceDown: with PostgreSQL stopped, Collect reports the
// source unreachable and Redis up.
func TestCollectSourceDown(t *testing.T) {
	w, pg := world.NewOwnPostgres(t, schema) // stopped below
	c := statusBed(w)
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	r := collect(t, c, "postgres stopped", func(r *status.Report) bool { return r.Redis.Up && r.Caches[1].Queue != nil })
	if s := r.Sources["db"]; s.Up || !strings.HasPrefix(s.Error, "unreachable: ") {
		t.Errorf("source db %+v, want unreachable", s)
	}
}
