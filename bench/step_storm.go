package main

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cachesync/cachesync"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/status"
)

// storm is item 7: the database queries a storm of concurrent Gets of one
// missing key costs, from one client and from two (as two processes would
// be).
type storm struct {
	about
	Gets, Rounds int          // concurrent Gets in a storm; storms per variant, each on its own key
	Statement    string       // the pattern of the fill's statement
	Query        string       // the fill's statement as pg_stat_statements shows it
	One, Two     []stormRound // one client; two clients (half the Gets each)
}

// stormRound is one storm of concurrent Gets of one missing key.
type stormRound struct {
	Key       string
	Queries   int64         // statement calls pg_stat_statements counted for the fill's SELECT
	Took      time.Duration // release of the goroutines -> the last Get returned
	RedisCmds int64         // commands Redis processed meanwhile
}

// stormStatement matches the fill's query, SELECT "id", ... FROM public.bench t WHERE "id" = $1 FOR SHARE OF t.
const stormStatement = `^SELECT .* FROM "?public"?\."?bench"? t WHERE `

//go:embed step_storm.md
var stormText string

func (s storm) Text() string { return stormText }

func (s storm) Results() []row {
	variant := func(what string, rs []stormRound, target string, limit int64) row {
		var each []string
		worst := int64(-1)
		for _, x := range rs {
			each = append(each, strconv.FormatInt(x.Queries, 10))
			worst = max(worst, x.Queries)
		}
		return row{ID: "7",
			What: "Database queries for " + count(s.Gets) + " concurrent Gets of one missing key (row exists, key unlinked), " + what,
			Got:  fmt.Sprintf("%d (worst of %d storms: %s)", worst, len(rs), strings.Join(each, ", ")), Ceiling: "—", Ratio: "—",
			Target: target, Met: yes(worst >= 0 && worst <= limit)}
	}
	return []row{
		variant("one client", s.One, "1", 1),
		variant("two clients (two processes' worth: separate Redis clients, pools and singleflight), half the Gets each", s.Two, "≤ 2", 2),
	}
}

// Slowest is the longest storm of rs.
func (s storm) Slowest(rs []stormRound) time.Duration {
	var t time.Duration
	for _, r := range rs {
		t = max(t, r.Took)
	}
	return t
}

// Extra is the commands Redis processed per storm of rs beyond the Gets'
// own first GET.
func (s storm) Extra(rs []stormRound) float64 {
	var c int64
	for _, r := range rs {
		c += r.RedisCmds
	}
	return float64(c)/float64(len(rs)) - float64(s.Gets)
}

// Run counts the queries. pg_stat_statements is loaded with track=none, so
// the earlier steps do not pay for it; here the database's sessions opened
// from now on track top-level statements.
func (s storm) Run(ctx context.Context, e *env) (step, error) {
	s.Gets, s.Rounds, s.Statement = 10_000, 3, stormStatement
	if _, err := e.db.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		return nil, err
	}
	if _, err := e.db.Exec(ctx, "ALTER DATABASE bench SET pg_stat_statements.track = 'top'"); err != nil {
		return nil, err
	}
	defer e.db.Exec(context.WithoutCancel(ctx), "ALTER DATABASE bench RESET pg_stat_statements.track")
	cfg, err := e.benchConfig()
	if err != nil {
		return nil, err
	}
	var clients []*cachesync.Client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range 2 {
		c, err := cachesync.Open(ctx, cfg, cachesync.Options{Logger: quiet})
		if err != nil {
			return nil, err
		}
		clients = append(clients, c)
	}
	// Calibrate: one Get of a missing key from each client is one query.
	for i, c := range clients {
		key := "b:" + strconv.Itoa(e.sz.Rows/2+i)
		if err := unlink(ctx, e, key); err != nil {
			return nil, err
		}
		q0, err := fillQueries(ctx, e)
		if err != nil {
			return nil, err
		}
		if _, err := c.Get(ctx, benchCache, key); err != nil {
			return nil, err
		}
		q1, err := fillQueries(ctx, e)
		if err != nil {
			return nil, err
		}
		if q1-q0 != 1 {
			return nil, fmt.Errorf("pg_stat_statements counted %d calls of %q for one Get of a missing key, want 1: the count does not work", q1-q0, stormStatement)
		}
	}
	if err := e.db.QueryRow(ctx, "SELECT string_agg(DISTINCT query, ' | ') FROM pg_stat_statements WHERE query ~ $1", stormStatement).Scan(&s.Query); err != nil {
		return nil, err
	}
	for round := range s.Rounds {
		for _, two := range []bool{false, true} {
			key := "b:" + strconv.Itoa(e.sz.Rows/2+10+2*round)
			cs, into, what := clients[:1], &s.One, "one client"
			if two {
				key = "b:" + strconv.Itoa(e.sz.Rows/2+11+2*round)
				cs, into, what = clients, &s.Two, "two clients, half the Gets each"
			}
			sr, err := s.round(ctx, e, cs, key)
			if err != nil {
				return nil, fmt.Errorf("storm (%s): %w", what, err)
			}
			*into = append(*into, sr)
		}
	}
	return s, nil
}

// round releases s.Gets goroutines at once, spread over clients, each
// getting key after it was unlinked; it counts the fill queries PostgreSQL ran.
func (s storm) round(ctx context.Context, e *env, clients []*cachesync.Client, key string) (stormRound, error) {
	r := stormRound{Key: key}
	if err := unlink(ctx, e, key); err != nil {
		return r, err
	}
	q0, err := fillQueries(ctx, e)
	if err != nil {
		return r, err
	}
	cmds0, err := redisCommands(ctx, e)
	if err != nil {
		return r, err
	}
	var (
		ready, done sync.WaitGroup
		gate        = make(chan struct{})
		vals        = make([][]byte, s.Gets)
		errs        = make([]error, s.Gets)
	)
	for i := range s.Gets {
		c := clients[i%len(clients)]
		ready.Add(1)
		done.Go(func() {
			ready.Done()
			<-gate
			vals[i], errs[i] = c.Get(ctx, benchCache, key)
		})
	}
	ready.Wait()
	start := time.Now()
	close(gate)
	done.Wait()
	r.Took = time.Since(start)
	q1, err := fillQueries(ctx, e)
	if err != nil {
		return r, err
	}
	cmds1, err := redisCommands(ctx, e)
	if err != nil {
		return r, err
	}
	r.Queries, r.RedisCmds = q1-q0, cmds1-cmds0-1 // less the INFO that read cmds0
	want, err := e.redis.Do(ctx, e.redis.B().Get().Key(key).Build()).AsBytes()
	if err != nil {
		return r, fmt.Errorf("%s after the storm: %w", key, err)
	}
	for i := range s.Gets {
		if errs[i] != nil {
			return r, fmt.Errorf("a Get of %s: %w", key, errs[i])
		}
		if !bytes.Equal(vals[i], want) {
			return r, fmt.Errorf("a Get of %s returned %q, Redis holds %q", key, vals[i], want)
		}
	}
	return r, nil
}

// fillQueries returns how often PostgreSQL has run the fill's statement.
func fillQueries(ctx context.Context, e *env) (int64, error) {
	var n int64
	err := e.db.QueryRow(ctx, `SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
		WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND query ~ $1`, stormStatement).Scan(&n)
	return n, err
}

// unlink removes key, its lease and its "not found" marker, and checks the
// key's row exists.
func unlink(ctx context.Context, e *env, key string) error {
	if err := e.redis.Do(ctx, binding.InvalidateCmd(e.redis.B(), key)).Error(); err != nil {
		return err
	}
	id, _ := strconv.Atoi(strings.TrimPrefix(key, "b:"))
	var ok bool
	if err := e.db.QueryRow(ctx, "SELECT EXISTS (SELECT FROM bench WHERE id = $1)", id).Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no row for %s", key)
	}
	return nil
}

func redisCommands(ctx context.Context, e *env) (int64, error) {
	info, err := status.Info(ctx, e.redis, "stats")
	if err != nil {
		return 0, err
	}
	v, ok := info["total_commands_processed"]
	if !ok {
		return 0, errors.New("no total_commands_processed in INFO")
	}
	return strconv.ParseInt(v, 10, 64)
}
