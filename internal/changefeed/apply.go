package changefeed

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/pgsource"
	"github.com/cachesync/cachesync/internal/schema"
	"github.com/cachesync/cachesync/internal/state"
)

// maxBatchChanges bounds the changes gathered into one Redis round trip.
const maxBatchChanges = 4096

// applier turns transactions into one target's Redis writes, one pipelined
// round trip per batch of transactions that were waiting, and reports
// applied positions.
type applier struct {
	f        *Feed
	t        *Target
	w        *state.Writer // this session's claim on the source in t: every flush goes through it
	conf     *confirmer
	tables   map[uint32]*pgsource.Table
	caches   map[uint32][]*config.Cache // by table OID
	since    map[string]pglogrepl.LSN   // skip a cache's transactions with CommitLSN < since: its snapshot has them
	layouts  map[uint32]layout          // by table OID, for the latest relation layout
	expected pglogrepl.LSN              // the applied LSN recorded in Redis
	fetch    *pgconn.PgConn
	cmds     []rueidis.Completed
	errLog   rateLimiter
}

// layout holds the bindings of a table's caches for one relation layout.
type layout struct {
	rel *pgsource.Relation
	rbs []relBinding
}

// relBinding is a cache's binding resolved against one relation layout.
type relBinding struct {
	cache *config.Cache
	b     *binding.Binding
	err   error
}

func newApplier(f *Feed, t *Target, w *state.Writer, conf *confirmer, tables map[string]*pgsource.Table, since map[string]pglogrepl.LSN, applied pglogrepl.LSN) *applier {
	a := &applier{f: f, t: t, w: w, conf: conf, tables: map[uint32]*pgsource.Table{}, caches: map[uint32][]*config.Cache{},
		since: since, layouts: map[uint32]layout{}, expected: applied}
	for _, c := range t.Caches {
		t := tables[c.Table]
		a.tables[t.OID] = t
		a.caches[t.OID] = append(a.caches[t.OID], c)
	}
	return a
}

func (a *applier) close(ctx context.Context) {
	if a.fetch != nil {
		a.fetch.Close(context.WithoutCancel(ctx))
	}
}

// run applies the transactions of q, a batch of whatever is waiting at a
// time, until q is closed and empty, a write fails or ctx ends. A batch
// leaves q only once applied: after a failure q still holds it.
func (a *applier) run(ctx context.Context, q *queue) error {
	tick := time.NewTicker(a.f.CheckEvery)
	defer tick.Stop()
	for {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		batch, closed := q.peek(maxBatchChanges)
		if len(batch) > 0 {
			if err := a.apply(ctx, batch); err != nil {
				return err
			}
			q.drop(len(batch))
			continue
		}
		if closed {
			return nil
		}
		select {
		case <-q.wake:
		case <-ctx.Done():
		case <-tick.C:
			if err := a.flush(ctx, 0); err != nil {
				return err
			}
		}
	}
}

func (a *applier) apply(ctx context.Context, batch []*pgsource.Txn) error {
	var end pglogrepl.LSN
	var last *pgsource.Txn
	for _, t := range batch {
		if t.CommitLSN != 0 && t.CommitLSN < a.expected {
			// Applied before (the record says so): a session that
			// started at the slot's position, behind this target's.
			continue
		}
		for i := range t.Changes {
			if err := a.change(ctx, t, &t.Changes[i]); err != nil {
				return err
			}
		}
		if t.EndLSN != 0 {
			end = t.EndLSN
		}
		if t.EndLSN != 0 && !t.Heartbeat {
			last = t
			a.t.Stats.Txns.Add(1)
		}
	}
	if err := a.flush(ctx, end); err != nil {
		return err
	}
	if end != 0 {
		a.conf.applied(a.t, a.expected)
		a.t.Stats.AppliedLSN.Store(uint64(a.expected))
		a.t.Stats.Progress.Store(time.Now().UnixNano())
	}
	if last != nil {
		lag := time.Since(last.CommitTime)
		a.t.Stats.Lag.Observe(lag)
		a.t.Stats.LastLag.Store(int64(lag))
	}
	return nil
}

// flush sends the pending commands and moves the applied position recorded
// in Redis to end (when set) once they are acknowledged (State.Advance).
func (a *applier) flush(ctx context.Context, end pglogrepl.LSN) error {
	to := max(a.expected, end)
	n := len(a.cmds)
	err := a.w.Advance(ctx, a.cmds, a.expected, to)
	a.cmds = a.cmds[:0]
	if err != nil {
		return err
	}
	a.t.Stats.Writes.Add(int64(n))
	a.expected = to
	return nil
}

// bindings returns the caches of rel's table, resolved against rel's layout.
// Column types and modifiers come from the table as loaded (domains
// resolved to their base type, as in a rebuild); the stream names a
// domain's own type, without the base's modifier.
func (a *applier) bindings(rel *pgsource.Relation) []relBinding {
	if l, ok := a.layouts[rel.OID]; ok && l.rel == rel {
		return l.rbs
	}
	cols := schema.BindingColumns(rel.Columns)
	if t := a.tables[rel.OID]; t != nil {
		for i := range cols {
			if c, ok := t.Column(cols[i].Name); ok {
				cols[i].TypeOID, cols[i].Typmod = c.TypeOID, c.Typmod
			}
		}
	}
	var rbs []relBinding
	for _, c := range a.caches[rel.OID] {
		b, err := binding.New(c.Spec(), cols)
		rbs = append(rbs, relBinding{cache: c, b: b, err: err})
	}
	a.layouts[rel.OID] = layout{rel: rel, rbs: rbs}
	return rbs
}

// change appends the Redis writes of one change to every cache of its table.
// A row that cannot be mapped leaves none of its keys behind (row); it is
// logged and counted, and the rest goes on.
func (a *applier) change(ctx context.Context, t *pgsource.Txn, ch *pgsource.Change) error {
	for _, rb := range a.bindings(ch.Rel) {
		if t.CommitLSN < a.since[rb.cache.Name] {
			continue
		}
		if rb.err != nil {
			// The table changed under the cache: skipping would confirm
			// changes never applied, so stop; the next session checks the
			// schema again and reports what is wrong.
			return fmt.Errorf("cache %q: %w: %s: %w", rb.cache.Name, errSchema, ch.Rel.Name, rb.err)
		}
		if ch.Op == pgsource.Truncate {
			if err := a.flush(ctx, 0); err != nil {
				return err
			}
			if _, err := rb.b.ClearThrough(ctx, a.t.rc, a.w.Write); err != nil {
				return fmt.Errorf("cache %q: truncate: %w", rb.cache.Name, err)
			}
			continue
		}
		if err := a.row(ctx, rb, ch); err != nil {
			var rerr *readError
			if errors.As(err, &rerr) {
				return err
			}
			a.mapError(rb.cache, t, keyHint(rb.b, ch), err)
		}
	}
	return nil
}

// row appends the Redis writes of one row change to one cache. A row that
// cannot be written (a key the template cannot render, a value that cannot
// be encoded) is a removal (DESIGN invariant 9): whatever was appended for
// it is dropped, and every key it could have held is invalidated instead,
// in the same batch; the error is returned, for the log.
func (a *applier) row(ctx context.Context, rb relBinding, ch *pgsource.Change) error {
	mark := len(a.cmds)
	row, err := a.write(ctx, rb, ch)
	if err == nil {
		return nil
	}
	var rerr *readError
	if errors.As(err, &rerr) {
		return err // the session ends, this batch unconfirmed
	}
	a.cmds = a.cmds[:mark]
	for _, key := range heldKeys(rb.b, ch, row) {
		a.cmds = rb.b.AppendInvalidate(a.cmds, a.t.rc.B(), key)
	}
	return err
}

// heldKeys lists the keys, those the template can render, that a changed
// row held or was to hold: by its old identity, its new values, and row,
// the new row as completed when PostgreSQL left values out (TOAST).
func heldKeys(b *binding.Binding, ch *pgsource.Change, row [][]byte) []string {
	var keys []string
	for _, r := range [][][]byte{ch.Old, ch.New, row} {
		if r == nil {
			continue
		}
		if k, err := b.Key(r); err == nil && !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// write appends the Redis writes of one row change to one cache and returns
// the new row as completed (nil for a delete).
func (a *applier) write(ctx context.Context, rb relBinding, ch *pgsource.Change) ([][]byte, error) {
	rbld := a.t.rc.B()
	if ch.Op == pgsource.Delete {
		if ch.Old == nil {
			return nil, errors.New("delete without the old row's identity")
		}
		key, err := rb.b.Key(ch.Old)
		if err != nil {
			return nil, err
		}
		a.cmds = rb.b.AppendInvalidate(a.cmds, rbld, key)
		return nil, nil
	}
	// The key the row held before, when PostgreSQL sends the old identity
	// (an update that changed it, or any update under REPLICA IDENTITY FULL).
	oldKey, hasOld := "", false
	if ch.Old != nil {
		if k, err := rb.b.Key(ch.Old); err == nil {
			oldKey, hasOld = k, true
		}
	}
	row := ch.New
	if ch.Unchanged != nil {
		var err error
		if row, err = a.withToasted(ctx, rb, ch); err != nil {
			return nil, err
		}
		if row == nil {
			// The row is gone from its new identity: a later change in the
			// stream deletes or moves it from there. It left its old key.
			if hasOld {
				a.cmds = rb.b.AppendInvalidate(a.cmds, rbld, oldKey)
			}
			return nil, nil
		}
	}
	key, err := rb.b.Key(row)
	if err != nil {
		return row, err
	}
	fresh := ch.Op == pgsource.Insert
	if hasOld && oldKey != key {
		// The identity changed: the row moved away from its old key.
		a.cmds = rb.b.AppendInvalidate(a.cmds, rbld, oldKey)
		fresh = true
	}
	a.cmds, err = rb.b.AppendSet(a.cmds, rbld, key, row, fresh)
	return row, err
}

// withToasted completes a row whose large (TOASTed) values PostgreSQL did not
// resend because they did not change: from the old row under REPLICA IDENTITY
// FULL, else by reading the row now. A row read now may be newer than this
// change; the changes after it in the stream bring the key to the same final
// state. A nil row means the row is gone (its delete follows in the stream).
func (a *applier) withToasted(ctx context.Context, rb relBinding, ch *pgsource.Change) ([][]byte, error) {
	needed := false
	for i, u := range ch.Unchanged {
		if u && rb.b.UsesColumn(i) {
			needed = true
		}
	}
	if !needed {
		return ch.New, nil
	}
	if t := a.tables[ch.Rel.OID]; t.FullIdentity && ch.Old != nil {
		row := append([][]byte(nil), ch.New...)
		for i, u := range ch.Unchanged {
			if u {
				row[i] = ch.Old[i]
			}
		}
		return row, nil
	}
	return a.readRow(ctx, ch)
}

// readError is a failure to read a row back: unlike a row that cannot be
// mapped it must not be skipped, so it ends the session unconfirmed.
type readError struct{ err error }

func (e *readError) Error() string { return "read row for an unchanged TOAST value: " + e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// readRow reads the current row with the identity values of ch.New. FOR
// SHARE waits for the transaction that made the change to finish and reads
// its version (or a newer one): a plain read could still see the old row,
// because a commit is decoded before it is visible to new snapshots.
func (a *applier) readRow(ctx context.Context, ch *pgsource.Change) ([][]byte, error) {
	t := a.tables[ch.Rel.OID]
	if a.fetch == nil {
		conn, err := pgsource.Connect(ctx, a.f.URL)
		if err != nil {
			return nil, &readError{err}
		}
		a.fetch = conn
	}
	cols := make([]string, len(ch.Rel.Columns))
	var where []string
	var args [][]byte
	for i, c := range ch.Rel.Columns {
		cols[i] = pgx.Identifier{c.Name}.Sanitize()
		if t.InIdentity(c.Name) && !ch.Unchanged[i] && !t.FullIdentity {
			args = append(args, ch.New[i])
			where = append(where, fmt.Sprintf("%s = $%d", cols[i], len(args)))
		}
	}
	if len(where) == 0 {
		return nil, fmt.Errorf("unchanged TOAST value and no identity columns to read the row by; set REPLICA IDENTITY FULL on %s", t.Name)
	}
	sql := fmt.Sprintf("SELECT %s FROM %s WHERE %s FOR SHARE", strings.Join(cols, ", "), t.Quoted, strings.Join(where, " AND "))
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res := a.fetch.ExecParams(ctx, sql, args, nil, nil, nil).Read()
	if res.Err != nil {
		a.fetch.Close(context.WithoutCancel(ctx))
		a.fetch = nil
		return nil, &readError{res.Err}
	}
	if len(res.Rows) == 0 {
		return nil, nil
	}
	return res.Rows[0], nil
}

// keyHint names the row in an error message as well as it can.
func keyHint(b *binding.Binding, ch *pgsource.Change) string {
	for _, row := range [][][]byte{ch.New, ch.Old} {
		if row != nil && b != nil {
			if k, err := b.Key(row); err == nil {
				return k
			}
		}
	}
	return ""
}

func (a *applier) mapError(c *config.Cache, t *pgsource.Txn, key string, err error) {
	a.t.Stats.MapErrors.Add(1)
	if a.errLog.allow() {
		a.t.log(a.f).Error("row skipped: cannot map it to the cache", "cache", c.Name, "table", c.Table,
			"key", key, "lsn", t.CommitLSN, "err", err, "suppressed", a.errLog.takeSuppressed())
	}
}

// rateLimiter lets one log line through per interval and counts the rest.
type rateLimiter struct {
	next       time.Time
	suppressed int
}

func (r *rateLimiter) allow() bool {
	now := time.Now()
	if now.Before(r.next) {
		r.suppressed++
		return false
	}
	r.next = now.Add(time.Second)
	return true
}

func (r *rateLimiter) takeSuppressed() int {
	n := r.suppressed
	r.suppressed = 0
	return n
}
