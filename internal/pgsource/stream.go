// Package pgsource reads PostgreSQL: table shapes, the logical replication
// change feed (pgoutput) and consistent snapshots for backfills.
//
// Every value leaves this package in PostgreSQL's text form ([]byte, nil for
// NULL), produced under the same session settings whether it came from the
// replication stream or from COPY, so one encoder serves both.
package pgsource

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Op is the kind of a change.
type Op byte

// The kinds of change the stream delivers.
const (
	Insert   Op = 'I'
	Update   Op = 'U'
	Delete   Op = 'D'
	Truncate Op = 'T'
)

// Relation is a table as the stream describes it: the layout of its tuples.
type Relation struct {
	OID     uint32
	Name    string // schema.table
	Columns []Column
}

// Change is one row change (or a truncate) of a committed transaction.
type Change struct {
	Op  Op
	Rel *Relation
	// New is the new row for Insert and Update, in Rel.Columns order; a nil
	// value is NULL. Unchanged[i] marks a TOASTed value PostgreSQL did not send.
	New       [][]byte
	Unchanged []bool
	// Old is the old row of Update and Delete when PostgreSQL sends it: the
	// replica identity columns (others nil), or every column with REPLICA
	// IDENTITY FULL. An Update whose identity did not change has no Old.
	Old [][]byte
}

// Txn is a committed transaction, or a part of one: a large transaction
// arrives in several parts so memory stays bounded; only the last has EndLSN.
type Txn struct {
	Changes []Change
	// CommitLSN is the LSN of the commit record. A snapshot taken at LSN S
	// contains exactly the transactions with CommitLSN < S.
	CommitLSN  pglogrepl.LSN
	CommitTime time.Time
	// EndLSN, set on the last part, is the position to confirm once applied.
	EndLSN pglogrepl.LSN
	// Heartbeat marks an empty Txn that only moves the position: the server
	// has sent everything before EndLSN (the rest of its WAL concerned other
	// tables). Confirming it keeps a quiet publication from holding WAL back.
	Heartbeat bool
}

// beatInterval is the least time between two heartbeats.
const beatInterval = 10 * time.Millisecond

// MaxChangesPerTxn bounds the changes in one Txn part.
const MaxChangesPerTxn = 1024

// SessionParams are set on every connection that reads values, so the text
// form of timestamps, floats and bytea is the same from COPY and from the WAL.
var SessionParams = map[string]string{
	"DateStyle":          "ISO, YMD",
	"TimeZone":           "UTC",
	"IntervalStyle":      "postgres",
	"extra_float_digits": "3",
	"bytea_output":       "hex",
	"application_name":   "cachesync",
}

// ParseConfig parses a connection URL and applies SessionParams.
func ParseConfig(url string) (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	for k, v := range SessionParams {
		if _, set := cfg.RuntimeParams[k]; !set || k != "application_name" {
			cfg.RuntimeParams[k] = v
		}
	}
	return cfg, nil
}

// ConnectReplication opens a replication connection (replication=database).
func ConnectReplication(ctx context.Context, url string) (*pgconn.PgConn, error) {
	cfg, err := ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("replication connection: %w", err)
	}
	return conn, nil
}

// Stream reads committed transactions from a replication slot.
type Stream struct {
	conn    *pgconn.PgConn
	slot    string
	log     *slog.Logger
	rels    map[uint32]*Relation
	applied atomic.Uint64

	// StatusInterval is how often the applied position is reported.
	StatusInterval time.Duration

	inTxn    bool
	beat     pglogrepl.LSN // EndLSN of the last heartbeat handed off
	beatTime time.Time
}

// StartStream starts streaming slot from its confirmed position with the
// pgoutput plugin and publication.
func StartStream(ctx context.Context, url, slot, publication string, log *slog.Logger) (*Stream, error) {
	conn, err := ConnectReplication(ctx, url)
	if err != nil {
		return nil, err
	}
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", fmt.Sprintf("publication_names '%s'", publication)},
	})
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("start replication from slot %s: %w", slot, err)
	}
	return &Stream{conn: conn, slot: slot, log: log, rels: map[uint32]*Relation{}, StatusInterval: time.Second}, nil
}

// Applied tells the stream that every transaction ending at or before lsn is
// durable in Redis; only such positions are ever confirmed to PostgreSQL.
func (s *Stream) Applied(lsn pglogrepl.LSN) {
	for {
		old := s.applied.Load()
		if uint64(lsn) <= old || s.applied.CompareAndSwap(old, uint64(lsn)) {
			return
		}
	}
}

func (s *Stream) sendStatus(ctx context.Context) error {
	pos := pglogrepl.LSN(s.applied.Load())
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos,
	})
	if err != nil {
		return fmt.Errorf("slot %s: send status: %w", s.slot, err)
	}
	return nil
}

// Run reads the stream and sends each transaction (in parts) to out, in
// commit order, until ctx is done or the stream fails.
func (s *Stream) Run(ctx context.Context, out chan<- *Txn) error {
	nextStatus := time.Now().Add(s.StatusInterval)
	var cur *Txn
	for {
		if !time.Now().Before(nextStatus) {
			if err := s.sendStatus(ctx); err != nil {
				return err
			}
			nextStatus = time.Now().Add(s.StatusInterval)
		}
		rctx, cancel := context.WithDeadline(ctx, nextStatus)
		msg, err := s.conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("slot %s: receive: %w", s.slot, err)
		}
		var data []byte
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			data = msg.Data
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("slot %s: %w", s.slot, pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return fmt.Errorf("slot %s: server ended the stream", s.slot)
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
				return fmt.Errorf("slot %s: keepalive: %w", s.slot, err)
			}
			if ka.ReplyRequested {
				nextStatus = time.Time{}
			}
			// Between transactions everything before the server's WAL end
			// has been handed off; pass the position on, in order behind the
			// transactions (at most every beatInterval: each costs a Redis
			// round trip), so writers waiting for the feed see it move.
			if !s.inTxn && ka.ServerWALEnd > s.beat && (ka.ReplyRequested || time.Since(s.beatTime) >= beatInterval) {
				if err := s.send(ctx, out, &Txn{EndLSN: ka.ServerWALEnd, Heartbeat: true}); err != nil {
					return err
				}
				s.beat, s.beatTime = ka.ServerWALEnd, time.Now()
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(data[1:])
			if err != nil {
				return fmt.Errorf("slot %s: xlog data: %w", s.slot, err)
			}
			if cur, err = s.decode(ctx, out, cur, xld); err != nil {
				return err
			}
		}
	}
}

// decode handles one pgoutput message; it returns the transaction being built.
func (s *Stream) decode(ctx context.Context, out chan<- *Txn, cur *Txn, xld pglogrepl.XLogData) (*Txn, error) {
	msg, err := pglogrepl.Parse(xld.WALData)
	if err != nil {
		return cur, fmt.Errorf("slot %s: decode at %s: %w", s.slot, xld.WALStart, err)
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		rel := &Relation{OID: m.RelationID, Name: m.Namespace + "." + m.RelationName}
		for _, c := range m.Columns {
			rel.Columns = append(rel.Columns, Column{Name: c.Name, TypeOID: c.DataType, Typmod: c.TypeModifier})
		}
		s.rels[m.RelationID] = rel
	case *pglogrepl.BeginMessage:
		s.inTxn = true
		return &Txn{CommitLSN: m.FinalLSN, CommitTime: m.CommitTime}, nil
	case *pglogrepl.CommitMessage:
		if cur == nil {
			return nil, fmt.Errorf("slot %s: commit at %s without begin", s.slot, m.CommitLSN)
		}
		cur.EndLSN = m.TransactionEndLSN
		s.inTxn = false
		if err := s.send(ctx, out, cur); err != nil {
			return nil, err
		}
		return nil, nil
	case *pglogrepl.InsertMessage:
		return s.add(ctx, out, cur, m.RelationID, Insert, m.Tuple, nil)
	case *pglogrepl.UpdateMessage:
		return s.add(ctx, out, cur, m.RelationID, Update, m.NewTuple, m.OldTuple)
	case *pglogrepl.DeleteMessage:
		return s.add(ctx, out, cur, m.RelationID, Delete, nil, m.OldTuple)
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			if cur, err = s.add(ctx, out, cur, id, Truncate, nil, nil); err != nil {
				return cur, err
			}
		}
	}
	return cur, nil
}

func (s *Stream) add(ctx context.Context, out chan<- *Txn, cur *Txn, relID uint32, op Op, newTuple, oldTuple *pglogrepl.TupleData) (*Txn, error) {
	if cur == nil {
		return nil, fmt.Errorf("slot %s: change outside a transaction", s.slot)
	}
	rel, ok := s.rels[relID]
	if !ok {
		return cur, fmt.Errorf("slot %s: change for unknown relation %d", s.slot, relID)
	}
	ch := Change{Op: op, Rel: rel}
	if newTuple != nil {
		ch.New, ch.Unchanged = tupleRow(newTuple)
	}
	if oldTuple != nil {
		ch.Old, _ = tupleRow(oldTuple)
	}
	cur.Changes = append(cur.Changes, ch)
	if len(cur.Changes) < MaxChangesPerTxn {
		return cur, nil
	}
	if err := s.send(ctx, out, cur); err != nil {
		return nil, err
	}
	return &Txn{CommitLSN: cur.CommitLSN, CommitTime: cur.CommitTime}, nil
}

// tupleRow turns a pgoutput tuple into text values (nil for NULL).
func tupleRow(t *pglogrepl.TupleData) (row [][]byte, unchanged []bool) {
	row = make([][]byte, len(t.Columns))
	for i, c := range t.Columns {
		switch c.DataType {
		case pglogrepl.TupleDataTypeText, pglogrepl.TupleDataTypeBinary:
			row[i] = c.Data
			if row[i] == nil {
				row[i] = []byte{}
			}
		case pglogrepl.TupleDataTypeToast:
			if unchanged == nil {
				unchanged = make([]bool, len(t.Columns))
			}
			unchanged[i] = true
		}
	}
	return row, unchanged
}

// send hands t to the consumer, reporting status while it waits so the
// server does not time the connection out when the consumer is slow.
func (s *Stream) send(ctx context.Context, out chan<- *Txn, t *Txn) error {
	select {
	case out <- t:
		return nil
	default:
	}
	tick := time.NewTicker(s.StatusInterval)
	defer tick.Stop()
	for {
		select {
		case out <- t:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if err := s.sendStatus(ctx); err != nil {
				return err
			}
		}
	}
}

// Close reports the final applied position and closes the connection.
// Call it once Run returned. A connection that failed is being closed by
// pgx already (in a goroutine of its own, which writes to it): nothing is
// sent on it then.
func (s *Stream) Close(ctx context.Context) error {
	if s.conn.IsClosed() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := s.sendStatus(ctx)
	s.conn.Close(ctx)
	return err
}
