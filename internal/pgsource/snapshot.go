package pgsource

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cachesync/cachesync/internal/pgtext"
)

// Snapshot is a consistent snapshot exported by a temporary replication slot.
// Rows read in it hold exactly the transactions with CommitLSN < LSN, so a
// backfill from it followed by the stream's transactions from LSN on loses and
// doubles nothing.
type Snapshot struct {
	LSN  pglogrepl.LSN
	Name string
	repl *pgconn.PgConn // must stay open and idle while the snapshot is used
}

// TakeSnapshot creates a temporary slot that exports a snapshot.
func TakeSnapshot(ctx context.Context, url string) (*Snapshot, error) {
	repl, err := ConnectReplication(ctx, url)
	if err != nil {
		return nil, err
	}
	var b [8]byte
	rand.Read(b[:])
	res, err := pglogrepl.CreateReplicationSlot(ctx, repl, "cachesync_snap_"+hex.EncodeToString(b[:]), "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true, SnapshotAction: "EXPORT_SNAPSHOT", Mode: pglogrepl.LogicalReplication})
	if err != nil {
		repl.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("snapshot: create temporary slot: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		repl.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	return &Snapshot{LSN: lsn, Name: res.SnapshotName, repl: repl}, nil
}

// Close releases the snapshot and its temporary slot.
func (s *Snapshot) Close(ctx context.Context) {
	s.repl.Close(context.WithoutCancel(ctx))
}

// Connect opens a regular connection with SessionParams, for snapshot reads.
func Connect(ctx context.Context, url string) (*pgconn.PgConn, error) {
	cfg, err := ParseConfig(url)
	if err != nil {
		return nil, err
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

// Count returns the number of rows of table in the snapshot: the planner's
// estimate when it has one (cheap on big tables), else an exact count.
func (s *Snapshot) Count(ctx context.Context, conn *pgconn.PgConn, table *Table) (int64, error) {
	return s.inSnapshot(ctx, conn, func() (int64, error) {
		var n int64
		res := conn.ExecParams(ctx, `SELECT reltuples::bigint FROM pg_class WHERE oid = $1`,
			[][]byte{[]byte(fmt.Sprint(table.OID))}, nil, nil, nil).Read()
		if res.Err != nil {
			return 0, res.Err
		}
		if len(res.Rows) == 1 {
			fmt.Sscan(string(res.Rows[0][0]), &n)
		}
		if n > 0 {
			return n, nil
		}
		res = conn.ExecParams(ctx, "SELECT count(*) FROM "+table.Quoted, nil, nil, nil, nil).Read()
		if res.Err != nil {
			return 0, res.Err
		}
		fmt.Sscan(string(res.Rows[0][0]), &n)
		return n, nil
	})
}

// Copy reads columns of every row of table in the snapshot and calls fn with
// each row's text values (nil for NULL). The row is only valid during the call.
func (s *Snapshot) Copy(ctx context.Context, conn *pgconn.PgConn, table *Table, columns []string, fn func(row [][]byte) error) (int64, error) {
	quoted := make([]string, len(columns))
	for i, c := range columns {
		quoted[i] = pgx.Identifier{c}.Sanitize()
	}
	sql := fmt.Sprintf("COPY (SELECT %s FROM %s) TO STDOUT", strings.Join(quoted, ", "), table.Quoted)
	return s.inSnapshot(ctx, conn, func() (int64, error) {
		w := &lineWriter{fn: fn}
		if _, err := conn.CopyTo(ctx, w, sql); err != nil {
			return w.rows, err
		}
		if len(w.partial) > 0 {
			return w.rows, fmt.Errorf("copy ended inside a row")
		}
		return w.rows, w.err
	})
}

func (s *Snapshot) inSnapshot(ctx context.Context, conn *pgconn.PgConn, fn func() (int64, error)) (int64, error) {
	begin := fmt.Sprintf("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '%s'", s.Name)
	if _, err := conn.Exec(ctx, begin).ReadAll(); err != nil {
		return 0, fmt.Errorf("snapshot %s: %w", s.Name, err)
	}
	n, err := fn()
	if err != nil {
		conn.Exec(context.WithoutCancel(ctx), "ROLLBACK").ReadAll()
		return n, fmt.Errorf("snapshot %s: %w", s.Name, err)
	}
	if _, err := conn.Exec(ctx, "COMMIT").ReadAll(); err != nil {
		return n, fmt.Errorf("snapshot %s: %w", s.Name, err)
	}
	return n, nil
}

// lineWriter splits COPY text output into rows and parses each.
type lineWriter struct {
	fn      func(row [][]byte) error
	partial []byte
	fields  [][]byte
	rows    int64
	err     error
}

func (w *lineWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.partial = append(w.partial, p...)
			break
		}
		// ParseCopyLine decodes in place, so the line is copied out of p,
		// which belongs to the connection.
		w.partial = append(w.partial, p[:i]...)
		p = p[i+1:]
		w.fields, w.err = pgtext.ParseCopyLine(w.partial, w.fields)
		if w.err == nil {
			w.err = w.fn(w.fields)
		}
		w.partial = w.partial[:0]
		if w.err != nil {
			return 0, w.err
		}
		w.rows++
	}
	return n, nil
}
