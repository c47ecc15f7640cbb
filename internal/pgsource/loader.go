package pgsource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Loader reads rows by key from a source, in the same text form as the
// stream and snapshots: the one place a cache's rows are loaded on demand
// (read-through fills, refreshes).
type Loader struct {
	pool *pgxpool.Pool // writes (Put, the drainer) and other work
	// reads serves the loads. Its sessions do not wait for the WAL flush
	// or a synchronous standby at commit (a FOR SHARE read takes row locks,
	// so it commits like a write; it changes no data) and give up on a row
	// lock after ReadLockTimeout, so a row held by a slow writer costs a
	// fill an error, not a stuck connection.
	reads *pgxpool.Pool
	// noShare is set once PostgreSQL refused a FOR SHARE read (the role
	// lacks the UPDATE privilege): reads are plain from then on.
	noShare atomic.Bool
	log     *slog.Logger
	url     string // the source's connection string
}

// ReadLockTimeout bounds how long a load waits for a row lock.
const ReadLockTimeout = time.Second

// share adds FOR SHARE to sql when asked and allowed.
func (l *Loader) share(sql string, share bool) string {
	if share && !l.noShare.Load() {
		return sql + " FOR SHARE OF t"
	}
	return sql
}

// retry tells a FOR SHARE read worth making again: refused for want of the
// UPDATE privilege (reads turn plain, with one warning), or the row moved
// to another partition while being locked.
func (l *Loader) retry(err error, attempt int) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || attempt > 3 {
		return false
	}
	switch pgErr.Code {
	case "42501":
		if !l.noShare.Swap(true) {
			l.log.Warn("the source role may not read FOR SHARE (it needs the UPDATE privilege): fills read plainly, and a fill racing a commit that is not yet visible may write the older row", "err", err)
		}
		return true
	case "40001": // tuple to be locked was already moved to another partition
		return true
	}
	return false
}

// NewLoader opens the connection pools to url with SessionParams; log
// gets its warnings.
func NewLoader(ctx context.Context, url string, log *slog.Logger) (*Loader, error) {
	if log == nil {
		log = slog.Default()
	}
	open := func(extra map[string]string, maxConns int32) (*pgxpool.Pool, error) {
		cfg, err := pgxpool.ParseConfig(url)
		if err != nil {
			return nil, err
		}
		for k, v := range SessionParams {
			cfg.ConnConfig.RuntimeParams[k] = v
		}
		for k, v := range extra {
			cfg.ConnConfig.RuntimeParams[k] = v
		}
		if maxConns > 0 {
			cfg.MaxConns = maxConns
		}
		cfg.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error { return freshPassword(url, &cc.Config) }
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("connect: %w", err)
		}
		return pool, nil
	}
	pool, err := open(nil, 0)
	if err != nil {
		return nil, err
	}
	reads, err := open(map[string]string{"synchronous_commit": "off",
		"lock_timeout": strconv.FormatInt(ReadLockTimeout.Milliseconds(), 10)}, int32(max(8, 2*runtime.NumCPU())))
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &Loader{pool: pool, reads: reads, log: log, url: url}, nil
}

// freshPassword sets cfg's password to the one url gives now. pgconn reads
// a password file (passfile=, PGPASSFILE) when it parses a connection
// string, so the pools, parsed once, would keep a rotated password for
// ever: each of their new connections, and each Session, parses url again.
// (The change feed's and snapshots' connections parse it each time.)
func freshPassword(url string, cfg *pgconn.Config) error {
	fresh, err := pgconn.ParseConfig(url)
	if err != nil {
		return err
	}
	cfg.Password = fresh.Password
	return nil
}

// Session opens a connection of its own to the loader's source, with
// SessionParams, for a session that holds a lock and writes under it: no
// idle_session_timeout (it would end the session, and the lock with it),
// and a context that ends cancels the statement at hand (a wait for a
// lock, say) with a cancel request rather than by breaking the connection.
func (l *Loader) Session(ctx context.Context) (*pgconn.PgConn, error) {
	cfg := l.pool.Config().ConnConfig.Config.Copy()
	if err := freshPassword(l.url, cfg); err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	cfg.RuntimeParams["idle_session_timeout"] = "0"
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 5 * time.Second}
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

// Close closes the pools.
func (l *Loader) Close() {
	l.pool.Close()
	l.reads.Close()
}

// Reads is the pool loads use, for streaming reads of a cache's rows.
func (l *Loader) Reads() *pgxpool.Pool { return l.reads }

// Pool is the loader's connection pool, for writes that go with loads.
func (l *Loader) Pool() *pgxpool.Pool { return l.pool }

// WALInsertPosition returns the server's WAL insert position
// (pg_current_wal_insert_lsn), read through q: past every commit made so
// far, however synchronous_commit is set; how far a change feed has to go
// to have applied them. At the start of a WAL page PostgreSQL reports the
// insert position past the page's header, while a commit that ended at
// the boundary ends there (the change feed records that end): such a
// position is taken back to the boundary (PageStart).
func WALInsertPosition(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (pglogrepl.LSN, error) {
	var lsn string
	var page, segment int64
	err := q.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text, current_setting('wal_block_size')::bigint,
		pg_size_bytes(current_setting('wal_segment_size'))`).Scan(&lsn, &page, &segment)
	if err != nil {
		return 0, err
	}
	pos, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		return 0, err
	}
	return PageStart(pos, uint64(page), uint64(segment)), nil
}

// PageStart takes a WAL position just past a page's header back to the
// page's start, the end of the record before it: no record ends inside a
// header. A page's header is 24 bytes, a segment's first page's 40
// (XLogLongPageHeaderData); page and segment are the WAL's block and
// segment sizes.
func PageStart(pos pglogrepl.LSN, page, segment uint64) pglogrepl.LSN {
	p := uint64(pos)
	switch {
	case page == 0 || segment == 0:
	case p%segment == 40:
		return pglogrepl.LSN(p - 40)
	case p%page == 24 && p%segment != 24:
		return pglogrepl.LSN(p - 24)
	}
	return pos
}

// LoadRow returns columns of the row of t whose keyColumns equal values
// (text, converted by PostgreSQL to each column's type), or nil when there is
// no such row. With share the row is read FOR SHARE, as a fill needs (see
// LoadRows); a row a writer holds longer than ReadLockTimeout then fails
// with an error RowLocked tells.
func (l *Loader) LoadRow(ctx context.Context, t *Table, columns, keyColumns, values []string, share bool) ([][]byte, error) {
	params := make([][]byte, len(values))
	for i, v := range values {
		params[i] = []byte(v)
	}
	for attempt := 1; ; attempt++ {
		sql := l.share(selectByKey(t, columns, keyColumns), share)
		var row [][]byte
		err := l.reads.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
			res := c.Conn().PgConn().ExecParams(ctx, sql, params, nil, nil, nil).Read()
			if res.Err != nil {
				return res.Err
			}
			if len(res.Rows) > 0 {
				row = res.Rows[0]
			}
			return nil
		})
		if err != nil && l.retry(err, attempt) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", t.Name, err)
		}
		return row, nil
	}
}

// RowLocked tells a FOR SHARE read that gave up on a row a writer holds
// (lock_timeout): the database is up, the row is being written.
func RowLocked(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55P03"
}

// LoadRows returns columns of the rows of t whose keyColumns equal one of
// keys (each a list of text values, one per key column), in one query.
// Rows come in no particular order; keys without a row have none. With
// share the rows are read FOR SHARE: the read waits for a transaction that
// changed one of them and is still finishing its commit, and reads its
// version. A plain read could miss a commit already in the WAL, so already
// applied by the change feed, and a fill would then write the older row
// (DESIGN's visibility trap). Without the UPDATE privilege it reads plainly.
func (l *Loader) LoadRows(ctx context.Context, t *Table, columns, keyColumns []string, keys [][]string, share bool) ([][][]byte, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	query, err := selectByKeys(t, columns, keyColumns)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", t.Name, err)
	}
	// One text[] parameter per key column, in PostgreSQL's array syntax.
	params := make([][]byte, len(keyColumns))
	for i := range keyColumns {
		a := []byte{'{'}
		for j, k := range keys {
			if j > 0 {
				a = append(a, ',')
			}
			a = append(a, '"')
			for _, c := range []byte(k[i]) {
				if c == '"' || c == '\\' {
					a = append(a, '\\')
				}
				a = append(a, c)
			}
			a = append(a, '"')
		}
		params[i] = append(a, '}')
	}
	for attempt := 1; ; attempt++ {
		sql := l.share(query, share)
		var rows [][][]byte
		err = l.reads.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
			res := c.Conn().PgConn().ExecParams(ctx, sql, params, nil, nil, nil).Read()
			rows = res.Rows
			return res.Err
		})
		if err != nil && share && l.retry(err, attempt) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", t.Name, err)
		}
		return rows, nil
	}
}

// selectByKeys selects the rows whose key columns are in the unnested
// parameter arrays, cast to each column's type so its index serves.
func selectByKeys(t *Table, columns, keyColumns []string) (string, error) {
	cols := make([]string, len(columns))
	for i, c := range columns {
		cols[i] = "t." + pgx.Identifier{c}.Sanitize()
	}
	keys := make([]string, len(keyColumns))
	arrays := make([]string, len(keyColumns))
	for i, name := range keyColumns {
		c, ok := t.Column(name)
		if !ok {
			return "", fmt.Errorf("no column %q", name)
		}
		keys[i] = "t." + pgx.Identifier{name}.Sanitize()
		arrays[i] = fmt.Sprintf("$%d::text[]::%s[]", i+1, c.Type)
	}
	// Rows come (and are locked, FOR SHARE) in key order: two batches
	// never wait for each other's locks in a cycle.
	if len(keys) == 1 { // the common case, planned best as = ANY
		return fmt.Sprintf("SELECT %s FROM %s t WHERE %s = ANY(%s) ORDER BY %s", strings.Join(cols, ", "), t.Quoted, keys[0], arrays[0], keys[0]), nil
	}
	return fmt.Sprintf("SELECT %s FROM %s t WHERE (%s) IN (SELECT * FROM unnest(%s)) ORDER BY %s",
		strings.Join(cols, ", "), t.Quoted, strings.Join(keys, ", "), strings.Join(arrays, ", "), strings.Join(keys, ", ")), nil
}

func selectByKey(t *Table, columns, keyColumns []string) string {
	cols := make([]string, len(columns))
	for i, c := range columns {
		cols[i] = pgx.Identifier{c}.Sanitize()
	}
	where := make([]string, len(keyColumns))
	for i, c := range keyColumns {
		where[i] = fmt.Sprintf("%s = $%d", pgx.Identifier{c}.Sanitize(), i+1)
	}
	return fmt.Sprintf("SELECT %s FROM %s t WHERE %s", strings.Join(cols, ", "), t.Quoted, strings.Join(where, " AND "))
}
