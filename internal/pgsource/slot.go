package pgsource

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// SlotInfo is what the server says of a replication slot.
type SlotInfo struct {
	Exists bool
	// Created is true when EnsureSlot made the slot just now: every change
	// before it is unknown to the slot, so caches must be rebuilt.
	Created   bool
	Confirmed pglogrepl.LSN // confirmed_flush_lsn: where streaming resumes
	ActivePID int           // a process streaming from it, 0 when idle
	// Lost is true when the server removed WAL the slot still needed
	// (max_slot_wal_keep_size): the slot can no longer stream.
	Lost bool
}

// EnsurePublication creates or updates publication name so it covers exactly tables.
func EnsurePublication(ctx context.Context, conn *pgx.Conn, name string, tables []*Table) error {
	want := make([]string, 0, len(tables))
	for _, t := range tables {
		want = append(want, t.Quoted)
	}
	slices.Sort(want)
	want = slices.Compact(want)

	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, name).Scan(&exists); err != nil {
		return fmt.Errorf("publication %s: %w", name, err)
	}
	list := strings.Join(want, ", ")
	if !exists {
		// Partitions publish under their root table, the one a cache names.
		sql := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish_via_partition_root = true)", pubIdent(name), list)
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("create publication %s: %w%s", name, err, runAsOwner(err, "the tables' owner", sql))
		}
		return nil
	}
	rows, err := conn.Query(ctx, `SELECT format('%I.%I', schemaname, tablename) FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1`, name)
	if err != nil {
		return fmt.Errorf("publication %s: %w", name, err)
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("publication %s: %w", name, err)
	}
	slices.Sort(have)
	var viaRoot bool
	if err := conn.QueryRow(ctx, `SELECT pubviaroot FROM pg_publication WHERE pubname = $1`, name).Scan(&viaRoot); err != nil {
		return fmt.Errorf("publication %s: %w", name, err)
	}
	if !viaRoot {
		sql := fmt.Sprintf("ALTER PUBLICATION %s SET (publish_via_partition_root = true)", pubIdent(name))
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("alter publication %s: %w%s", name, err, runAsOwner(err, "its owner", sql))
		}
	}
	if slices.Equal(have, want) {
		return nil
	}
	sql := fmt.Sprintf("ALTER PUBLICATION %s SET TABLE %s", pubIdent(name), list)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("alter publication %s: %w%s", name, err, runAsOwner(err, "its owner (and the tables')", sql))
	}
	return nil
}

// pubIdent is a publication's name as SQL: cachesync_NAME as it is (no
// keyword, and config names are lower-case letters, digits and _), so
// that the statement runAsOwner shows reads plainly in a log; another
// name quoted.
func pubIdent(name string) string {
	if plainIdent.MatchString(name) {
		return name
	}
	return pgx.Identifier{name}.Sanitize()
}

var plainIdent = regexp.MustCompile(`^cachesync_[a-z0-9_]+$`)

// runAsOwner is the way out of a publication statement refused for want
// of a privilege (only a table's owner may publish it, only a
// publication's owner change it): who should run sql instead.
func runAsOwner(err error, who, sql string) string {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		return ""
	}
	return fmt.Sprintf("; as %s run: %s", who, sql)
}

// ReadSlot returns the state of slot name in the connected database.
func ReadSlot(ctx context.Context, conn *pgx.Conn, name string) (SlotInfo, error) {
	var (
		info      SlotInfo
		db, plug  string
		confirmed *string
		walStatus *string
		pid       *int32
		sameDB    bool
	)
	err := conn.QueryRow(ctx, `SELECT database, database = current_database(), plugin, confirmed_flush_lsn::text, active_pid, wal_status
		FROM pg_replication_slots WHERE slot_name = $1`, name).Scan(&db, &sameDB, &plug, &confirmed, &pid, &walStatus)
	if errors.Is(err, pgx.ErrNoRows) {
		return info, nil
	}
	if err != nil {
		return info, fmt.Errorf("slot %s: %w", name, err)
	}
	if !sameDB || plug != "pgoutput" {
		return info, fmt.Errorf("slot %s already exists for database %q with plugin %q; choose another config name", name, db, plug)
	}
	info.Exists = true
	if confirmed != nil {
		if info.Confirmed, err = pglogrepl.ParseLSN(*confirmed); err != nil {
			return info, fmt.Errorf("slot %s: %w", name, err)
		}
	}
	if pid != nil {
		info.ActivePID = int(*pid)
	}
	info.Lost = walStatus != nil && *walStatus == "lost"
	return info, nil
}

// EnsureSlot creates the permanent pgoutput slot name when it is missing,
// and recreates it when the server invalidated it.
func EnsureSlot(ctx context.Context, conn *pgx.Conn, name string) (SlotInfo, error) {
	info, err := ReadSlot(ctx, conn, name)
	if err != nil {
		return info, err
	}
	if info.Exists && info.Lost && info.ActivePID == 0 {
		if err := DropSlot(ctx, conn, name); err != nil {
			return info, err
		}
		info.Exists = false
	}
	if info.Exists {
		return info, nil
	}
	if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, name); err != nil {
		return info, fmt.Errorf("create replication slot %s: %w", name, err)
	}
	info, err = ReadSlot(ctx, conn, name)
	info.Created = true
	return info, err
}

// DropSlot removes slot name if it exists; tests and tools use it to start over.
func DropSlot(ctx context.Context, conn *pgx.Conn, name string) error {
	_, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, name)
	if err != nil {
		return fmt.Errorf("drop replication slot %s: %w", name, err)
	}
	return nil
}

// LockSlot takes a session-level advisory lock named after the slot on conn,
// so one process at a time rebuilds and streams a slot's caches; false
// means another holds it. The lock goes with the connection.
func LockSlot(ctx context.Context, conn *pgx.Conn, name string) (bool, error) {
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('cachesync slot ' || $1))`, name).Scan(&ok); err != nil {
		return false, fmt.Errorf("lock slot %s: %w", name, err)
	}
	return ok, nil
}

// Holder is the application_name of the session that holds a slot's lock
// (LockSlot): "cachesync HOST:PID", naming this process.
var Holder = func() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("cachesync %s:%d", host, os.Getpid())
}()

// SlotHolder returns the application_name of the session holding the lock
// of slot name (LockSlot), in the database db is connected to: which
// process streams the slot; "" when none does.
func SlotHolder(ctx context.Context, db *pgxpool.Pool, name string) (string, error) {
	var app string
	err := db.QueryRow(ctx, `SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
		AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND l.classid = ((hashtext('cachesync slot ' || $1)::bigint >> 32) & 4294967295)::oid
		AND l.objid = (hashtext('cachesync slot ' || $1)::bigint & 4294967295)::oid`, name).Scan(&app)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("who holds slot %s: %w", name, err)
	}
	return app, nil
}

// WaitSlot takes LockSlot's lock on conn, waiting as long as another
// session holds it, or until ctx ends.
func WaitSlot(ctx context.Context, conn *pgx.Conn, name string) error {
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtext('cachesync slot ' || $1))`, name); err != nil {
		return fmt.Errorf("wait for the lock of slot %s: %w", name, err)
	}
	return nil
}

// EndHolder ends the walsender pid that streams slot name (when it still
// does) and waits, up to 10 s, until the slot is free: what a new holder
// of the slot's lock does to a process that lost it.
func EndHolder(ctx context.Context, conn *pgx.Conn, name string, pid int) error {
	if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid = $2`, name, pid); err != nil {
		return fmt.Errorf("end the replication of slot %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		info, err := ReadSlot(ctx, conn, name)
		if err != nil {
			return err
		}
		if info.ActivePID == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// UnlockSlot releases LockSlot's lock.
func UnlockSlot(ctx context.Context, conn *pgx.Conn, name string) error {
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock(hashtext('cachesync slot ' || $1))`, name); err != nil {
		return fmt.Errorf("unlock slot %s: %w", name, err)
	}
	return nil
}
