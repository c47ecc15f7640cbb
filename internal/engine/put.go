package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/pgsource"
	"github.com/cachesync/cachesync/internal/pgtext"
)

// ErrNotApplied reports a write that committed to PostgreSQL but that the
// change feed did not apply to Redis within Options.WriteWait (is the daemon
// running?). The database has the row; Redis will get it when the feed runs.
var ErrNotApplied = errors.New("committed, but not in Redis yet")

// ErrBadRow reports a row that does not fit the cache's table.
var ErrBadRow = errors.New("bad row")

// Put writes row (column name → value) to the cache's table, inserting or
// updating by the key's columns, and returns the row's key. Values are
// taken as JSON carries them, and as a Get returns them (input.go): a
// string as PostgreSQL's input reads it, numbers, booleans, nil; base64
// for bytea; any JSON value for json; a JSON array for an array; from Go
// also time.Time and []byte. Then Redis is
// made to agree: for a cache with a change feed, Put waits until the feed
// has applied the commit, so a Get after Put reads the new value; for a cache
// without one, Put invalidates the key. Either way no older value can be
// left in Redis by a racing fill (DESIGN invariant 2). A Put that fails with
// its statement's outcome unknown (the context ended or the connection
// broke once it was sent: it may commit all the same) still invalidates the
// key on a cache without a feed, and again once PostgreSQL has finished
// the statement, if that takes less than WriteWait; else it logs the key.
func (c *Engine) Put(ctx context.Context, name string, row map[string]any) (string, error) {
	ca, ok := c.caches[name]
	if !ok {
		return "", fmt.Errorf("cache %q: %w", name, ErrUnknownCache)
	}
	sql, args, err := ca.upsert(row)
	if err != nil {
		return "", fmt.Errorf("cache %q: %w", name, err)
	}
	var keyText []string
	var target pglogrepl.LSN
	var targetErr error
	var sent session // where the statement went, if it was sent
	err = ca.loader.Pool().AcquireFunc(ctx, func(conn *pgxpool.Conn) error {
		sent = sessionOf(conn.Conn().PgConn())
		if err := conn.QueryRow(ctx, sql, args...).Scan(anyPtrs(&keyText, len(ca.cfg.Template.Columns()))...); err != nil {
			return err
		}
		if ca.cfg.Sync == config.SyncChangefeed {
			// After the commit: the WAL position the feed must reach to have applied it.
			target, targetErr = pgsource.WALInsertPosition(ctx, conn)
		}
		return nil
	})
	if err != nil {
		if sent.pid != 0 && ca.cfg.Sync != config.SyncChangefeed && mayHaveCommitted(err) {
			c.invalidateRow(ctx, ca, row, sent)
		}
		return "", fmt.Errorf("cache %q: write %s: %w", name, ca.table.Name, classify(err))
	}
	key, err := ca.renderKey(keyText)
	if err != nil { // committed: the feed takes the row as unmappable
		return "", fmt.Errorf("cache %q: %w: its key cannot be rendered: %w", name, ErrNotApplied, err)
	}
	if ca.cfg.Sync != config.SyncChangefeed {
		// Committed: the invalidation must happen even if ctx ends now,
		// or Redis keeps the older value.
		ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.WriteWait)
		defer cancel()
		if err := c.Invalidate(ictx, name, key); err != nil {
			c.opts.Logger.Error("committed, but the key could not be invalidated: Redis may hold its older value until it expires", "cache", name, "key", key, "err", err)
			return key, fmt.Errorf("%w (the key was not invalidated): %w", ErrNotApplied, err)
		}
		return key, nil
	}
	if targetErr != nil { // committed: how far the feed must go is unknown
		return key, fmt.Errorf("cache %q: %w: read the WAL position: %w", name, ErrNotApplied, targetErr)
	}
	if err := c.WaitApplied(ctx, name, uint64(target), c.opts.WriteWait); err != nil {
		return key, err
	}
	if err := c.l1Sync(ctx, ca, key); err != nil {
		return key, fmt.Errorf("%w: %w", ErrNotApplied, err)
	}
	return key, nil
}

// KeyOf returns the key of the row whose key columns hold values (column
// → value, as Put takes them), each spelled as PostgreSQL prints it ("01"
// is 1, true is t, an RFC 3339 timestamptz is in UTC): what the HTTP API
// compares with the key a PUT names when its body repeats key columns.
func (c *Engine) KeyOf(name string, values map[string]any) (string, error) {
	ca, ok := c.caches[name]
	if !ok {
		return "", fmt.Errorf("cache %q: %w", name, ErrUnknownCache)
	}
	cols := ca.cfg.Template.Columns()
	text := make([][]byte, len(cols))
	for i, n := range cols {
		col, _ := ca.table.Column(n) // Open checked the key's columns
		t, err := inputText(ca.cfg.Format, col, values[n])
		if err == nil && t == nil {
			err = errors.New("NULL or missing")
		}
		if err != nil {
			return "", fmt.Errorf("cache %q: %w: key column %q: %w", name, ErrBadRow, n, err)
		}
		canon, err := pgtext.Canonical(col.TypeOID, col.Typmod, string(t))
		if err != nil {
			return "", fmt.Errorf("cache %q: %w: key column %q: %q: %w", name, ErrBadRow, n, t, err)
		}
		text[i] = []byte(canon)
	}
	k, err := ca.cfg.Template.Render(nil, text)
	if err != nil {
		return "", fmt.Errorf("cache %q: %w: %w", name, ErrBadRow, err)
	}
	return string(k), nil
}

// renderKey renders the key of the key columns' values, as PostgreSQL
// prints them.
func (ca *cache) renderKey(text []string) (string, error) {
	values := make([][]byte, len(text))
	for i, v := range text {
		values[i] = []byte(v)
	}
	k, err := ca.cfg.Template.Render(nil, values)
	return string(k), err
}

// printed is SQL for expr as its type prints it (its output function, as
// the change feed and the loads see values; a cast to text would trim a
// character(n) and spell a boolean true), NULL for NULL.
func printed(expr string) string {
	return "CASE WHEN " + expr + " IS NULL THEN NULL ELSE format('%s', " + expr + ") END"
}

// mayHaveCommitted tells an error after which a statement's outcome is
// unknown: it may have been sent, and PostgreSQL's answer never came (the
// context ended, the connection broke), or PostgreSQL ended the session
// (FATAL: terminated while waiting for a synchronous standby, its commit is
// local already). Any other error PostgreSQL reported means the statement
// failed.
func mayHaveCommitted(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Severity == "FATAL" || pgErr.Severity == "PANIC"
	}
	return !pgconn.SafeToRetry(err)
}

// invalidateRow invalidates the key of row after a write of it whose
// outcome is unknown (mayHaveCommitted): it may have committed, or may
// still, in server session s, for PostgreSQL runs a statement it had
// received even once the client has gone. So the key is invalidated at
// once and again when s has finished (finished), all within WriteWait: or
// Redis could keep the older value. PostgreSQL renders the key's values as
// the write's RETURNING would have; whatever fails is logged, with the key.
func (c *Engine) invalidateRow(ctx context.Context, ca *cache, row map[string]any, s session) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.WriteWait)
	defer cancel()
	pool := ca.loader.Pool()
	cols := ca.cfg.Template.Columns()
	sel, args := make([]string, len(cols)), make([]any, len(cols))
	for i, name := range cols {
		col, _ := ca.table.Column(name) // upsert checked it
		sel[i] = printed(fmt.Sprintf("$%d::text::%s", i+1, col.Declared))
		if t, err := inputText(ca.cfg.Format, col, row[name]); err == nil && t != nil {
			args[i] = string(t)
		}
	}
	var text []string
	err := pool.QueryRow(ctx, "SELECT "+strings.Join(sel, ", "), args...).Scan(anyPtrs(&text, len(cols))...)
	key := ""
	if err == nil {
		key, err = ca.renderKey(text)
	}
	if err == nil {
		err = c.Invalidate(ctx, ca.cfg.Name, key)
	}
	if err == nil {
		err = finished(ctx, pool, s)
	}
	if err == nil {
		err = c.Invalidate(ctx, ca.cfg.Name, key)
	}
	if err != nil {
		keyValues := make(map[string]any, len(cols))
		for _, name := range cols {
			keyValues[name] = row[name]
		}
		c.opts.Logger.Error("a write that may have committed was not followed by its invalidation: its key may keep the older value until it expires",
			"cache", ca.cfg.Name, "key", key, "key_columns", keyValues, "err", err)
	}
}

// session is a server session a statement was sent on: its process id,
// and the local TCP port it was reached from (0 over a Unix socket), which
// pg_stat_activity shows as client_port.
type session struct {
	pid  uint32
	port int
}

func sessionOf(pc *pgconn.PgConn) session {
	s := session{pid: pc.PID()}
	if a, ok := pc.Conn().LocalAddr().(*net.TCPAddr); ok {
		s.port = a.Port
	}
	return s
}

// finished returns once session s runs no statement any more. When
// pg_stat_activity shows s as ours (its process id and our port; not so
// behind a connection pooler, which may hand out other ids), it ends s
// (pg_terminate_backend, which waits for the process to exit): a statement
// s had not yet read then never runs. Otherwise it waits while s runs one.
func finished(ctx context.Context, pool *pgxpool.Pool, s session) error {
	if deadline, ok := ctx.Deadline(); ok && s.port != 0 {
		var ended bool
		err := pool.QueryRow(ctx, `SELECT pg_terminate_backend(pid, $3) FROM pg_stat_activity WHERE pid = $1 AND client_port = $2`,
			int64(s.pid), s.port, max(time.Until(deadline).Milliseconds()-100, 1)).Scan(&ended)
		switch {
		case errors.Is(err, pgx.ErrNoRows): // gone already, or not shown as ours
		case err != nil:
			return fmt.Errorf("end server process %d: %w", s.pid, err)
		case ended:
			return nil
		default:
			return fmt.Errorf("server process %d did not end in time", s.pid)
		}
	}
	for {
		var state *string // nil: gone, or hidden from this role
		if err := pool.QueryRow(ctx, `SELECT (SELECT coalesce(state, '') FROM pg_stat_activity WHERE pid = $1)`, int64(s.pid)).Scan(&state); err != nil {
			return err
		}
		switch {
		case state == nil || *state == "idle":
			return nil
		case *state == "":
			return fmt.Errorf("server process %d: its state is hidden from this role", s.pid)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server process %d still runs the write: %w", s.pid, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// checkRow checks that row's columns exist and include the key's.
func (ca *cache) checkRow(row map[string]any) error {
	for col := range row {
		if _, ok := ca.table.Column(col); !ok {
			return fmt.Errorf("%w: table %s has no column %q", ErrBadRow, ca.table.Name, col)
		}
	}
	for _, k := range ca.cfg.Template.Columns() {
		if v, ok := row[k]; !ok || isNull(v) {
			return fmt.Errorf("%w: the row needs key column %q, not null", ErrBadRow, k)
		}
	}
	return nil
}

// upsert builds INSERT ... ON CONFLICT (unique key) DO UPDATE for row,
// returning the key columns as text.
func (ca *cache) upsert(row map[string]any) (string, []any, error) {
	if err := ca.checkRow(row); err != nil {
		return "", nil, err
	}
	cols := make([]string, 0, len(row))
	for col := range row {
		cols = append(cols, col)
	}
	slices.Sort(cols)
	args := make([]any, len(cols))
	params := make([]string, len(cols))
	for i, name := range cols {
		col, _ := ca.table.Column(name) // checkRow checked it
		t, err := inputText(ca.cfg.Format, col, row[name])
		if err != nil {
			return "", nil, fmt.Errorf("%w: column %q: %w", ErrBadRow, name, err)
		}
		if t != nil {
			args[i] = string(t) // sent as text: PostgreSQL's input function reads it
		}
		params[i] = fmt.Sprintf("$%d", i+1)
	}
	// The key columns as their type prints them, as the change feed and
	// the loads see them (a cast to text would trim a character(n)).
	returning := quoteAll(ca.cfg.Template.Columns())
	for i := range returning {
		returning[i] = printed(returning[i])
	}
	return fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s) %s RETURNING %s", ca.table.Quoted,
		strings.Join(quoteAll(cols), ", "), strings.Join(params, ", "), ca.onConflict(cols),
		strings.Join(returning, ", ")), args, nil
}

// upsertJSON builds the upsert of a JSON array of row objects ($1), all with
// exactly cols, read by PostgreSQL with json_populate_recordset (it parses plain json
// faster than jsonb, and the rows are read once).
func (ca *cache) upsertJSON(cols []string) (string, error) {
	for _, col := range cols {
		if _, ok := ca.table.Column(col); !ok {
			return "", fmt.Errorf("%w: table %s has no column %q", ErrBadRow, ca.table.Name, col)
		}
	}
	list := strings.Join(quoteAll(cols), ", ")
	return fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM json_populate_recordset(NULL::%s, $1::text::json) %s",
		ca.table.Quoted, list, list, ca.table.Quoted, ca.onConflict(cols)), nil
}

// onConflict is the ON CONFLICT clause that makes an insert of cols an
// upsert by the unique key the cache's key covers.
func (ca *cache) onConflict(cols []string) string {
	var conflict []string
	for _, uk := range ca.table.UniqueKeys {
		if !slices.ContainsFunc(uk, func(c string) bool { return !slices.Contains(ca.cfg.Template.Columns(), c) }) {
			conflict = uk
			break
		}
	}
	var set []string
	for _, col := range quoteAll(cols) {
		if !slices.Contains(quoteAll(conflict), col) {
			set = append(set, col+" = EXCLUDED."+col)
		}
	}
	if len(set) == 0 { // only key columns: update one to itself, so RETURNING still returns the row
		q := quoteAll(conflict[:1])[0]
		set = append(set, q+" = EXCLUDED."+q)
	}
	return fmt.Sprintf("ON CONFLICT (%s) DO UPDATE SET %s", strings.Join(quoteAll(conflict), ", "), strings.Join(set, ", "))
}

func quoteAll(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = pgx.Identifier{n}.Sanitize()
	}
	return out
}

// WaitApplied waits until the change feed has recorded in Redis that cache
// name holds everything up to the WAL position target (as WALPosition
// gives it): the cache is built and its source applied that far. It
// returns ErrNotApplied after timeout, or when ctx ends (then wrapping
// ctx's error too): read-your-writes for Put, and what a consistency check
// waits for before it re-reads.
func (c *Engine) WaitApplied(ctx context.Context, name string, target uint64, timeout time.Duration) error {
	ca, ok := c.caches[name]
	if !ok {
		return fmt.Errorf("cache %q: %w", name, ErrUnknownCache)
	}
	source := ca.cfg.Source
	deadline := time.Now().Add(timeout)
	wait := 500 * time.Microsecond
	for {
		lsn, ok, err := c.state.AppliedTo(ctx, source, name)
		if err != nil && ctx.Err() != nil {
			return fmt.Errorf("source %s at %s: %w (%w)", source, pglogrepl.LSN(target), ErrNotApplied, ctx.Err())
		}
		if err != nil {
			return fmt.Errorf("source %s at %s: %w: %w", source, pglogrepl.LSN(target), ErrNotApplied, err)
		}
		if ok && uint64(lsn) >= target {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("source %s at %s: %w", source, pglogrepl.LSN(target), ErrNotApplied)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("source %s at %s: %w (%w)", source, pglogrepl.LSN(target), ErrNotApplied, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(wait*2, 20*time.Millisecond)
	}
}

// anyPtrs returns n scan targets that fill *dst.
func anyPtrs(dst *[]string, n int) []any {
	*dst = make([]string, n)
	out := make([]any, n)
	for i := range out {
		out[i] = &(*dst)[i]
	}
	return out
}

// classify marks connection failures and sessions PostgreSQL ended (FATAL)
// as ErrUnavailable; errors PostgreSQL raised about the row itself (a
// constraint, a bad value) stay as they are.
func classify(err error) error {
	var pgErr *pgconn.PgError
	if !pgUnreachable(err) && errors.As(err, &pgErr) {
		return &RowError{Err: pgErr}
	}
	return fmt.Errorf("postgres %w: %w", ErrUnavailable, err)
}

// RowError is PostgreSQL refusing a written row (a constraint, a bad value).
type RowError struct{ Err *pgconn.PgError }

// Error is PostgreSQL's message with its SQLSTATE.
func (e *RowError) Error() string { return e.Err.Message + " (SQLSTATE " + e.Err.Code + ")" }

// Unwrap returns the *pgconn.PgError.
func (e *RowError) Unwrap() error { return e.Err }
