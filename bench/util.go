package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/redis/rueidis"
)

type rueidisMessage = rueidis.PubSubMessage

// doAll sends cmds in one pipeline and returns the first error.
func (b *bench) doAll(ctx context.Context, cmds []rueidis.Completed) error {
	for _, res := range b.redis.DoMulti(ctx, cmds...) {
		if err := res.Error(); err != nil {
			return err
		}
	}
	return nil
}

// connectReplication opens a replication=database connection.
func connectReplication(ctx context.Context, url string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["replication"] = "database"
	return pgconn.ConnectConfig(ctx, cfg)
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

func sortDurations(d []time.Duration) { slices.Sort(d) }

// num formats a rate with thousands separators: 123,456.
func num(f float64) string {
	s := strconv.FormatInt(int64(f+0.5), 10)
	out := []byte{}
	for i, c := range []byte(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, c)
	}
	return string(out)
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func perRow(cpu time.Duration, rows int) float64 {
	if rows == 0 {
		return 0
	}
	return float64(cpu) / float64(time.Microsecond) / float64(rows)
}
