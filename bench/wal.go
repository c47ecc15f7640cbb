package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/cachesync/cachesync/internal/state"
)

// The WAL side of steps 1 and 2: writers, replication slots, and the two
// readers the daemon is compared with, pg_recvlogical and a bare Go
// pgoutput receiver.

// writeRows runs conns connections that each take the next statement index
// from a shared counter until n are done; stmt(i) gives statement i's SQL
// and arguments. Each statement is its own (autocommit) transaction.
func (e *env) writeRows(ctx context.Context, conns, n int, stmt func(i int) (string, []any)) (first, last time.Time, err error) {
	cs := make([]*pgx.Conn, conns)
	for i := range cs {
		if cs[i], err = pgx.Connect(ctx, e.dbURL); err != nil {
			return
		}
		defer cs[i].Close(context.Background())
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	first = time.Now()
	for _, c := range cs {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				sql, args := stmt(i)
				if _, err := c.Exec(ctx, sql, args...); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	last = time.Now()
	close(errs)
	err = <-errs
	return
}

func (e *env) createSlot(ctx context.Context, name string) error {
	_, err := e.db.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", name)
	return err
}

// dropSlot drops slot name, waiting for a walsender that still holds it to exit.
func (e *env) dropSlot(ctx context.Context, name string) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := e.db.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", name)
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" || time.Now().After(deadline) {
			if err != nil {
				fmt.Printf("   drop slot %s: %v\n", name, err)
			}
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) insertLSN(ctx context.Context) (pglogrepl.LSN, error) {
	var s string
	if err := e.db.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		return 0, err
	}
	return pglogrepl.ParseLSN(s)
}

// endMark writes the final sentinel mark of a case and returns it with the
// WAL position just after its commit: the end position for pg_recvlogical.
// A second transaction follows, so pg_recvlogical sees data past the end
// position at once instead of waiting for a keepalive.
func (e *env) endMark(ctx context.Context) (mark int64, end pglogrepl.LSN, committed time.Time, err error) {
	if mark, err = e.bump(ctx); err != nil {
		return
	}
	committed = time.Now()
	if end, err = e.insertLSN(ctx); err != nil {
		return
	}
	_, err = e.db.Exec(ctx, "UPDATE bench SET val = val WHERE id = 0") // the stopper
	return
}

// progress tells how far, as a fraction of the WAL from start to end, the
// daemon's walsender has decoded and sent (sent_lsn) and the daemon has
// applied to Redis (the LSN it records in its state hash).
func (e *env) progress(ctx context.Context, start, end pglogrepl.LSN) (decoded, applied float64) {
	frac := func(l pglogrepl.LSN) float64 {
		if end <= start || l <= start {
			return 0
		}
		return min(1, float64(l-start)/float64(end-start))
	}
	var sent *string
	err := e.db.QueryRow(ctx, `SELECT r.sent_lsn::text FROM pg_stat_replication r
		JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1`, daemonSlot).Scan(&sent)
	if err == nil && sent != nil {
		if l, err := pglogrepl.ParseLSN(*sent); err == nil {
			decoded = frac(l)
		}
	}
	if l, ok, err := state.New(e.redis, configName).Applied(ctx, "db"); err == nil && ok {
		applied = frac(l)
	}
	return decoded, applied
}

// senderCPU returns the CPU time so far of the walsender serving slot.
func (e *env) senderCPU(ctx context.Context, slot string) time.Duration {
	var pid *int32
	if err := e.db.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&pid); err != nil || pid == nil {
		return 0
	}
	ps, _ := readProc(int(*pid))
	return ps.CPU
}

// recvlogical times pg_recvlogical reading slot up to end, into /dev/null,
// and returns its elapsed time and CPU time.
func (e *env) recvlogical(ctx context.Context, slot string, end pglogrepl.LSN) (time.Duration, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(e.pg.BinDir(), "pg_recvlogical"),
		"-d", e.dbURL, "-S", slot, "--start", "--no-loop", "-F", "0",
		"-o", "proto_version=1", "-o", "publication_names="+publication,
		"-f", "/dev/null", "--endpos", end.String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)
	if err != nil {
		return elapsed, 0, fmt.Errorf("pg_recvlogical: %w\n%s", err, out.String())
	}
	return elapsed, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
}

// bare times a minimal pglogrepl client reading slot up to end.
func (e *env) bare(ctx context.Context, slot string, end pglogrepl.LSN) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	err := e.receive(ctx, slot, func(_ []int, pos pglogrepl.LSN) bool { return pos >= end })
	elapsed := time.Since(start)
	if err == nil {
		err = ctx.Err()
	}
	return elapsed, err
}

// receive is a bare logical replication client: it reads slot's pgoutput
// stream until ctx is done, decoding it just enough to call commit with the
// ids (first column) changed by each transaction, and its end LSN, as its
// commit arrives; it returns when commit returns true.
func (e *env) receive(ctx context.Context, slot string, commit func(ids []int, end pglogrepl.LSN) bool) error {
	cfg, err := pgconn.ParseConfig(e.dbURL)
	if err != nil {
		return err
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + publication + "'"}})
	if err != nil {
		return err
	}
	return receiveLoop(ctx, conn, commit)
}

// receiveLoop reads a pgoutput stream until ctx is done and calls commit with
// the ids (first column) changed by each transaction, and its end LSN, as its
// commit arrives; it returns when commit returns true.
//
// Like the daemon, it receives each message with a context whose deadline is
// the next status report. (Receiving with a background context and one socket
// deadline per interval uses less CPU per message but was measured to read
// slower on two cores: the receiver drains the socket sooner and both sides
// then sleep and wake once per message.)
func receiveLoop(ctx context.Context, conn *pgconn.PgConn, commit func(ids []int, end pglogrepl.LSN) bool) error {
	var (
		ids     []int
		pos     pglogrepl.LSN
		nextAck = time.Now().Add(time.Second)
	)
	ack := func() error {
		nextAck = time.Now().Add(time.Second)
		return pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos})
	}
	for {
		rctx, cancel := context.WithDeadline(ctx, nextAck)
		msg, err := conn.ReceiveMessage(rctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if pgconn.Timeout(err) {
			if err := ack(); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		var data []byte
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			data = m.Data
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(m)
		default:
			continue
		}
		if len(data) == 0 {
			continue
		}
		switch data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
			if err != nil {
				return err
			}
			if ka.ReplyRequested {
				if err := ack(); err != nil {
					return err
				}
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(data[1:])
			if err != nil {
				return err
			}
			m, err := pglogrepl.Parse(xld.WALData)
			if err != nil {
				return err
			}
			switch m := m.(type) {
			case *pglogrepl.UpdateMessage:
				if m.NewTuple != nil && len(m.NewTuple.Columns) > 0 {
					if id, err := strconv.Atoi(string(m.NewTuple.Columns[0].Data)); err == nil {
						ids = append(ids, id)
					}
				}
			case *pglogrepl.CommitMessage:
				pos = m.TransactionEndLSN
				if commit(ids, pos) {
					return ack()
				}
				ids = ids[:0]
			}
		}
		if !time.Now().Before(nextAck) {
			if err := ack(); err != nil {
				return err
			}
		}
	}
}
