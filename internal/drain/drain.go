// Package drain applies write-behind queues to their tables: per cache a
// drainer, a fenced single writer that one process of a config holds at a
// time (DESIGN invariant 8), applying the queue in stream order, a batch a
// transaction, acknowledging only what committed, and dead-lettering rows
// the database refuses.
package drain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/engine"
)

// Run applies the write-behind queue of every cache of e with writes:
// behind to its table until ctx is done: one drainer a cache, each a
// single-writer role that one process of the config holds at a time (the
// others wait to take it over).
func Run(ctx context.Context, e *engine.Engine) error {
	var wg sync.WaitGroup
	for _, w := range e.WriteBehinds() {
		d := &drainer{w: w, cc: w.Cache(), b: w.Binding(), rc: w.Redis(), stats: w.Stats(),
			log: w.Logger().With("cache", w.Cache().Name, "component", "writebehind")}
		wg.Go(func() { d.run(ctx) })
	}
	wg.Wait()
	return nil
}

// A drainer applies one cache's queue to its table in stream order, a
// batch at a time, and acknowledges only what committed. Its role is
// fenced (DESIGN invariant 8): it holds the cache's drain lock, a session
// advisory lock, and commits every batch on that same session, so once the
// session ends it commits nothing more; and its reads, acknowledgements
// and dead letters check the token it wrote when it took the lock (the
// reads under WATCH, the others in their scripts), so once another drainer
// took over it changes nothing in Redis either. Then it waits to take the
// lock again.
type drainer struct {
	w     engine.WriteBehind
	cc    *config.Cache
	b     *binding.Binding
	rc    rueidis.Client
	stats *engine.CacheStats
	log   *slog.Logger

	// Set for each session.
	conn  *pgconn.PgConn    // holds the drain lock; every batch commits on it
	token string            // the owner key's value while this drainer holds the role
	stmts map[string]string // the upserts prepared on conn, by set of columns
}

// MaxAttempts is how often a refused row is tried before it is dead-lettered.
const MaxAttempts = 3

// maxBatch bounds the entries of one batch.
const maxBatch = 1000

// consumer names the drainers in the consumer group; a new drainer takes
// over whatever any other left pending.
const consumer = "drainer"

// errBadEntry is a queue entry without a row to apply: dead-lettered.
var errBadEntry = errors.New("queue entry without a row")

// run holds the role whenever it can until ctx is done.
func (d *drainer) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		progressed, err := d.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if progressed {
			backoff = 100 * time.Millisecond
		}
		switch {
		case fenced(err):
			d.log.Warn("write-behind: another drainer took over the queue; waiting for the drain lock")
			backoff = 100 * time.Millisecond
		case errors.Is(err, errLockLost):
			d.log.Warn("write-behind: the drain lock's session ended; taking the lock again", "err", err)
		default:
			d.log.Error("write-behind: retrying", "err", err, "retry_in", backoff)
		}
		sleep(ctx, backoff)
		backoff = min(backoff*2, 10*time.Second)
	}
}

// errLockLost wraps the error of a session whose connection, and with it
// the drain lock, is gone.
var errLockLost = errors.New("the drain lock's session ended")

// errFenced is a drainer's read refused because another drainer took over.
var errFenced = errors.New(binding.ErrFenced + " another drainer took over the queue")

// fenced tells an error of a drainer that lost its role: its read, or a
// script that checked its token.
func fenced(err error) bool {
	var re *rueidis.RedisError
	return errors.Is(err, errFenced) || errors.As(err, &re) && strings.HasPrefix(re.Error(), binding.ErrFenced)
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// session takes the drain lock, then every entry left pending by an
// earlier drainer, oldest first (older than anything unread), then new
// entries until ctx is done or something fails; progressed tells that it
// applied a batch.
func (d *drainer) session(ctx context.Context) (progressed bool, err error) {
	conn, err := d.w.Session(ctx)
	if err != nil {
		return false, fmt.Errorf("write-behind lock: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx)) // and with the session, the lock
	defer func() {
		if err != nil && conn.IsClosed() && !fenced(err) {
			err = fmt.Errorf("%w: %w", errLockLost, err)
		}
	}()
	d.conn, d.stmts = conn, map[string]string{}
	if err := d.lock(ctx); err != nil {
		return false, err
	}
	rb := d.rc.B()
	stream := binding.StreamKey(d.cc.Name)
	d.token = binding.NewToken()
	res := d.rc.DoMulti(ctx,
		rb.Set().Key(binding.OwnerKey(d.cc.Name)).Value(d.token).Build(),
		rb.XgroupCreate().Key(stream).Group(binding.DrainGroup).Id("0").Mkstream().Build())
	if err := res[0].Error(); err != nil {
		return false, fmt.Errorf("write-behind: take the queue: %w", err)
	}
	if err := res[1].Error(); err != nil && !strings.Contains(err.Error(), "BUSYGROUP") {
		return false, fmt.Errorf("write-behind: create the consumer group: %w", err)
	}

	// First every entry an earlier drainer left pending, oldest first
	// (older than anything unread), then new entries. What committed
	// (done) is acknowledged with the read of the next batch, which runs
	// while PostgreSQL writes the current one.
	var done []binding.Acked
	var doneRemovals string
	defer func() {
		if len(done) > 0 { // else replayed by the next drainer
			d.ack(context.WithoutCancel(ctx), done, doneRemovals)
		}
	}()
	from := "0-0" // claiming the pending entries from there on; "" once all are taken
	b := d.takeMoving(ctx, nil, "", from)
	for {
		if b.err != nil {
			return progressed, b.err
		}
		next := "" // where the batch after this one comes from
		if from != "" && b.next != "0-0" {
			next = b.next
		}
		if len(b.entries) == 0 {
			if from == "" { // nothing new: acknowledge, then wait for a write
				if err := d.ack(ctx, done, doneRemovals); err != nil {
					return progressed, err
				}
				done = nil
				if err := d.wait(ctx, b.next); err != nil {
					return progressed, err
				}
			}
			from = next
			b = d.takeMoving(ctx, nil, "", from)
			continue
		}
		ahead := make(chan taken, 1)
		go func(done []binding.Acked, removals string) { ahead <- d.takeMoving(ctx, done, removals, next) }(done, doneRemovals)
		acked, err := d.apply(ctx, b.entries)
		r := <-ahead // waited for on every path: this function owns the goroutine
		if r.err == nil {
			done = nil // acknowledged with the read ahead
		} else if len(done) > 0 && d.ack(context.WithoutCancel(ctx), done, doneRemovals) == nil {
			done = nil // acknowledged now, since the read ahead failed
		}
		if err != nil {
			return progressed, err // what was read ahead stays pending: the next session claims it, in order
		}
		progressed = true
		if len(done) > 0 {
			// An earlier batch is still unacknowledged: acknowledging
			// this one would have the next session commit the earlier
			// one again after it. Both stay pending, committed again in
			// order.
			acked = nil
		}
		done, doneRemovals, b, from = acked, b.removals, r, next
	}
}

// lock takes the cache's drain lock on d.conn, waiting for it while
// another process holds it.
func (d *drainer) lock(ctx context.Context) error {
	name := []byte(d.w.LockName())
	res := d.conn.ExecParams(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, [][]byte{name}, nil, nil, nil).Read()
	if res.Err != nil {
		return fmt.Errorf("write-behind lock: %w", res.Err)
	}
	if string(res.Rows[0][0]) == "t" {
		return nil
	}
	d.log.Info("write-behind: another process drains the queue; waiting for its lock")
	if res = d.conn.ExecParams(ctx, `SELECT pg_advisory_lock(hashtext($1))`, [][]byte{name}, nil, nil, nil).Read(); res.Err != nil {
		return fmt.Errorf("write-behind lock: %w", res.Err)
	}
	d.log.Info("write-behind: took over the queue")
	return nil
}

// taken is what a fenced read gave: entries, the position to go on from
// ("0-0" when a claim is done; after a read that found nothing, the
// stream's last ID), and the cache's removal count at the read.
type taken struct {
	entries  []entry
	next     string
	removals string
	err      error
}

// entry is one queued write: the row as the JSON object PutBehind queued,
// its column names, sorted, and the value PutBehind wrote, as Get returns
// it (nil in an entry queued without it).
type entry struct {
	id, key, row string
	cols         []string
	given        []byte
}

// take acknowledges done (read with removals), then claims pending entries
// from the stream position from on, or, with from "", reads new entries.
// The read is fenced as the scripts are, by the owner key: on a connection
// of its own it WATCHes the key and checks it holds the drainer's token,
// then reads in MULTI/EXEC, which Redis refuses if another drainer took
// the key meanwhile. Two round trips; the acknowledgements go in the first.
func (d *drainer) take(ctx context.Context, done []binding.Acked, removals, from string) taken {
	dc, release := d.rc.Dedicate()
	defer release()
	rb := dc.B()
	name := d.cc.Name
	owner, stream := binding.OwnerKey(name), binding.StreamKey(name)
	cmds := append(d.ackCmds(done, removals), rb.Watch().Key(owner).Build(), rb.Get().Key(owner).Build())
	res := dc.DoMulti(ctx, cmds...)
	n := len(res) - 2
	if err := d.checkAcks(ctx, res[:n]); err != nil {
		return taken{err: err}
	}
	if err := moving(res[n:]); err != nil {
		return taken{err: err}
	}
	if err := res[n].Error(); err != nil {
		return taken{err: fmt.Errorf("write-behind: read the queue: %w", err)}
	}
	if holder, err := res[n+1].ToString(); err != nil || holder != d.token {
		dc.Do(ctx, rb.Unwatch().Build())
		return taken{err: fmt.Errorf("write-behind: read the queue: %w", errFenced)}
	}
	read := rb.Xreadgroup().Group(binding.DrainGroup, consumer).Count(maxBatch).Streams().Key(stream).Id(">").Build()
	if from != "" {
		read = rb.Xautoclaim().Key(stream).Group(binding.DrainGroup).Consumer(consumer).MinIdleTime("0").Start(from).Count(maxBatch).Build()
	}
	res = dc.DoMulti(ctx, rb.Multi().Build(), read, rb.Get().Key(binding.RemovalsKey(name)).Build(),
		rb.Xrevrange().Key(stream).End("+").Start("-").Count(1).Build(), rb.Exec().Build())
	if err := moving(res); err != nil {
		return taken{err: err} // refused as queued: the transaction read nothing
	}
	replies, err := res[len(res)-1].ToArray()
	if rueidis.IsRedisNil(err) {
		return taken{err: fmt.Errorf("write-behind: read the queue: %w", errFenced)} // the owner key changed
	}
	if err == nil && len(replies) != 3 {
		err = fmt.Errorf("%d replies", len(replies))
	}
	if err != nil {
		return taken{err: fmt.Errorf("write-behind: read the queue: %w", err)}
	}
	t := taken{next: "0-0", removals: "0"}
	if v, err := replies[1].ToString(); err == nil {
		t.removals = v
	}
	var msgs []rueidis.XRangeEntry
	if from != "" { // XAUTOCLAIM: next start, entries, deleted IDs
		claim, err := replies[0].ToArray()
		if err != nil || len(claim) < 2 {
			return taken{err: fmt.Errorf("write-behind: claim: %v", err)}
		}
		t.next, _ = claim[0].ToString()
		msgs, err = claim[1].AsXRange()
		if err != nil {
			return taken{err: fmt.Errorf("write-behind: claim: %w", err)}
		}
	} else {
		got, err := replies[0].AsXRead()
		if err != nil && !rueidis.IsRedisNil(err) {
			return taken{err: fmt.Errorf("write-behind: read the queue: %w", err)}
		}
		msgs = got[stream]
		if last, err := replies[2].AsXRange(); err == nil && len(last) > 0 {
			t.next = last[0].ID // to wait for a newer one
		}
	}
	t.entries = make([]entry, 0, len(msgs))
	for _, m := range msgs {
		e := entry{id: m.ID, key: m.FieldValues["key"], row: m.FieldValues["row"]}
		if v, ok := m.FieldValues["v"]; ok {
			e.given = []byte(v)
		}
		if cols := m.FieldValues["cols"]; cols != "" {
			e.cols = strings.Split(cols, "\x00") // sorted by PutBehind
		}
		t.entries = append(t.entries, e) // a damaged entry (no cols) is refused and dead-lettered
	}
	return t
}

// moving returns binding.ErrMoving when a reply of res says the queue's
// slot is moving between Redis Cluster nodes (MOVED, ASK or TRYAGAIN): the
// dedicated connection of take is not redirected, and what was refused did
// not run. The client learns the slot's new node meanwhile.
func moving(res []rueidis.RedisResult) error {
	for _, r := range res {
		var re *rueidis.RedisError
		if err := r.Error(); errors.As(err, &re) {
			_, moved := re.IsMoved()
			_, ask := re.IsAsk()
			if moved || ask || re.IsTryAgain() {
				return fmt.Errorf("write-behind: %w: %w", binding.ErrMoving, err)
			}
		}
	}
	return nil
}

// takeMoving is take, sent again while the queue's slot moves between
// Redis Cluster nodes (binding.UntilMoved): its acknowledgements may run
// twice, which changes nothing the second time, and its read ran or not as
// a whole.
func (d *drainer) takeMoving(ctx context.Context, done []binding.Acked, removals, from string) taken {
	var t taken
	binding.UntilMoved(ctx, func() error {
		t = d.take(ctx, done, removals, from)
		return t.err
	})
	return t
}

func (d *drainer) ackCmds(done []binding.Acked, removals string) rueidis.Commands {
	if len(done) == 0 {
		return nil
	}
	return d.b.AckCmds(d.rc.B(), d.token, removals, done, binding.AfterID(done[len(done)-1].ID), d.w.Complete())
}

// ack acknowledges done (read with removals), again while the queue's
// slot moves (an acknowledgement that ran changes nothing the second time).
func (d *drainer) ack(ctx context.Context, done []binding.Acked, removals string) error {
	return binding.UntilMoved(ctx, func() error {
		return d.checkAcks(ctx, d.rc.DoMulti(ctx, d.ackCmds(done, removals)...))
	})
}

// checkAcks checks the replies of acknowledgements. In a complete cache a key
// an invalidation removed while its write was queued (the invalidation's
// own fill found the write queued, and wrote nothing) is loaded again.
func (d *drainer) checkAcks(ctx context.Context, res []rueidis.RedisResult) error {
	var move error // a call refused while the slot moves: the others' keys are loaded first
	for _, r := range res {
		if err := moving([]rueidis.RedisResult{r}); err != nil {
			move = err
			continue
		}
		gone, err := r.AsStrSlice()
		if err != nil {
			return fmt.Errorf("write-behind: acknowledge: %w", err)
		}
		for _, key := range gone {
			if err := d.w.Refill(ctx, key); err != nil {
				d.log.Warn("write-behind: key not loaded again", "key", key, "err", err)
			}
		}
	}
	return move
}

// wait returns once the stream has an entry after last, or after a
// second, or when ctx is done.
func (d *drainer) wait(ctx context.Context, last string) error {
	err := d.rc.Do(ctx, d.rc.B().Xread().Count(1).Block(1000).Streams().
		Key(binding.StreamKey(d.cc.Name)).Id(last).Build()).Error()
	if err != nil && !rueidis.IsRedisNil(err) && ctx.Err() == nil {
		return fmt.Errorf("write-behind: wait for writes: %w", err)
	}
	return nil
}

// apply writes entries (in stream order) to the table as if each had been
// written alone, in order (see commit), in one transaction on the lock's
// session. If PostgreSQL refuses a row, the batch is written again with a
// savepoint for each row, leaving out the refused ones, which are
// dead-lettered once the rest committed. It returns what to acknowledge:
// every entry not dead-lettered, with what becomes of its key.
func (d *drainer) apply(ctx context.Context, entries []entry) ([]binding.Acked, error) {
	rows, refused, err := d.commit(ctx, entries, false)
	if isRefusal(err) {
		rows, refused, err = d.commit(ctx, entries, true)
	}
	if err != nil {
		return nil, err
	}
	for _, e := range entries { // in stream order
		if cause, ok := refused[e.id]; ok {
			d.log.Error("write-behind: row refused; moved to the dead-letter stream", "key", e.key, "err", cause)
			if err := d.deadLetter(ctx, e, cause); err != nil {
				return nil, err
			}
		}
	}
	d.stats.Drained.Add(int64(len(entries)))
	return d.acked(entries, refused, rows), nil
}

// runs splits each key's entries (in stream order) into runs: entries
// each of which writes no column the next one does not write too. Applied
// one by one, a run leaves the row its last applied entry makes, and
// whether an entry is refused does not depend on those before it in its
// run: its row is the same whether they were applied, refused or left
// out. So a run is written by trying its entries from the last one back
// until one is applied; the ones before it are superseded, never tried
// (so never dead-lettered). It returns the runs of the keys in rounds:
// each key's first run, then each key's second, and so on.
func runs(entries []entry) [][][]entry {
	var rounds [][][]entry
	last := map[string][]entry{} // key -> its run so far
	seen := map[string]int{}     // key -> its runs before the one so far
	flush := func(key string) {
		r := seen[key]
		seen[key]++
		if r == len(rounds) {
			rounds = append(rounds, nil)
		}
		rounds[r] = append(rounds[r], last[key])
	}
	var keys []string
	for _, e := range entries {
		run, ok := last[e.key]
		if !ok {
			keys = append(keys, e.key)
		}
		if ok && (len(run[len(run)-1].cols) == 0 || slices.ContainsFunc(run[len(run)-1].cols, func(c string) bool { return !slices.Contains(e.cols, c) })) {
			flush(e.key)
			run = nil
		}
		last[e.key] = append(run, e)
	}
	for _, k := range keys {
		flush(k)
	}
	return rounds
}

// commit writes entries' runs (see runs) in one transaction on the lock's
// session, round after round, and returns the rows as committed, by key.
// Without care it tries the last entry of each run, a statement per round
// and set of columns, and a refused row fails it all. With care each try
// is an entry alone in a savepoint of its own, and a run whose last entry
// is refused goes back to the one before; the refused entries are left
// out and returned, by stream ID, with why.
func (d *drainer) commit(ctx context.Context, entries []entry, care bool) (rows map[string][][]byte, refused map[string]error, err error) {
	rounds := runs(entries)
	var stmts [][]entry // without care: each one statement, of a round's runs' last entries of one set of columns
	if !care {
		for _, round := range rounds {
			bySig := map[string]int{}
			for _, run := range round {
				e := run[len(run)-1]
				sig := strings.Join(e.cols, "\x00")
				i, ok := bySig[sig]
				if !ok {
					i = len(stmts)
					bySig[sig] = i
					stmts = append(stmts, nil)
				}
				stmts[i] = append(stmts[i], e)
			}
		}
	}
	tx := care || len(stmts) > 1 // else the statement is a transaction of its own
	if tx {
		if err := d.exec(ctx, "BEGIN"); err != nil {
			return nil, nil, err
		}
	}
	rows, refused = map[string][][]byte{}, map[string]error{}
	err = func() error {
		for _, s := range stmts {
			if err := d.upsert(ctx, s, rows); err != nil {
				return err
			}
		}
		if !care {
			return nil
		}
		for _, round := range rounds {
			for _, run := range round {
				for i := len(run) - 1; i >= 0; i-- {
					err := d.alone(ctx, run[i], rows)
					if err == nil {
						break
					}
					if !isRefusal(err) {
						return err
					}
					refused[run[i].id] = err
				}
			}
		}
		return nil
	}()
	switch {
	case err != nil && tx:
		d.exec(context.WithoutCancel(ctx), "ROLLBACK")
		return nil, nil, err
	case err != nil:
		return nil, nil, err
	case tx:
		if err := d.exec(ctx, "COMMIT"); err != nil {
			return nil, nil, err
		}
	}
	return rows, refused, nil
}

// alone writes entry e in a savepoint of its own, trying again, up to
// MaxAttempts times, a refusal that another transaction may lift (a
// unique key or a referenced row held by another writer).
func (d *drainer) alone(ctx context.Context, e entry, rows map[string][][]byte) error {
	for attempt := 1; ; attempt++ {
		err := d.savepoint(ctx, func() error { return d.upsert(ctx, []entry{e}, rows) })
		var pgErr *pgconn.PgError
		if attempt == MaxAttempts || !errors.As(err, &pgErr) || (pgErr.Code != "23505" && pgErr.Code != "23503" && pgErr.Code != "23P01") {
			return err
		}
		sleep(ctx, time.Duration(attempt)*50*time.Millisecond)
	}
}

// savepoint runs fn in a savepoint: when fn fails, what it did is undone
// and the transaction goes on.
func (d *drainer) savepoint(ctx context.Context, fn func() error) error {
	if err := d.exec(ctx, "SAVEPOINT cachesync"); err != nil {
		return err
	}
	if err := fn(); err != nil {
		if rerr := d.exec(ctx, "ROLLBACK TO SAVEPOINT cachesync; RELEASE SAVEPOINT cachesync"); rerr != nil {
			return rerr
		}
		return err
	}
	return d.exec(ctx, "RELEASE SAVEPOINT cachesync")
}

// exec runs sql (no parameters, no rows) on the lock's session.
func (d *drainer) exec(ctx context.Context, sql string) error {
	_, err := d.conn.Exec(ctx, sql).ReadAll()
	return err
}

// upsert writes entries, all of one set of columns and each of another
// key, in one statement, and notes the rows it wrote in rows.
func (d *drainer) upsert(ctx context.Context, entries []entry, rows map[string][][]byte) error {
	if len(entries[0].cols) == 0 {
		return fmt.Errorf("%w: entry %s", errBadEntry, entries[0].id)
	}
	// A statement prepared once a session for each set of columns.
	sig := strings.Join(entries[0].cols, "\x00")
	name, ok := d.stmts[sig]
	if !ok {
		sql, err := d.w.UpsertSQL(entries[0].cols) // without a feed, the rows as stored replace the queued values
		if err != nil {
			return err
		}
		name = fmt.Sprintf("cachesync_upsert_%d", len(d.stmts))
		if _, err := d.conn.Prepare(ctx, name, sql, nil); err != nil {
			return err
		}
		d.stmts[sig] = name
	}
	objs := make([]string, len(entries))
	for i, e := range entries {
		objs[i] = e.row
	}
	res := d.conn.ExecPrepared(ctx, name, [][]byte{[]byte("[" + strings.Join(objs, ",") + "]")}, nil, nil).Read()
	if res.Err != nil {
		return res.Err
	}
	for _, row := range res.Rows {
		if k, err := d.b.Key(row); err == nil {
			rows[k] = row
		}
	}
	return nil
}

// isRefusal tells an error of PostgreSQL refusing a row (bad data, a
// constraint, an unknown column) from a failure worth retrying the batch
// for.
func isRefusal(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return strings.HasPrefix(pgErr.Code, "22") || strings.HasPrefix(pgErr.Code, "23") || strings.HasPrefix(pgErr.Code, "42")
	}
	return errors.Is(err, errBadEntry) || errors.Is(err, engine.ErrBadRow)
}

// deadLetter moves e to the dead-letter stream and out of the queue; when
// it was its key's newest queued write, the key is removed, so Redis never
// keeps a value the database refused (a newer queued value stays). It runs
// once the entries before e committed, so a fill that follows the removal
// reads them.
func (d *drainer) deadLetter(ctx context.Context, e entry, cause error) error {
	removed, err := d.rc.Do(ctx, d.b.DeadCmd(d.rc.B(), d.token, e.id, e.key, e.row, cause.Error())).AsInt64()
	if err != nil {
		return fmt.Errorf("write-behind: dead-letter: %w", err)
	}
	d.stats.DeadLettered.Add(1)
	if removed == 1 {
		if err := d.w.Refill(ctx, e.key); err != nil {
			d.log.Warn("write-behind: dead-lettered key not loaded again", "key", e.key, "err", err)
		}
	}
	return nil
}

// acked lists entries to acknowledge (all but the dead ones), each with
// what becomes of its key if it is the key's newest queued write: with a
// change feed the feed writes the committed row; without one the row as
// committed (rows) replaces the value PutBehind wrote, so the key holds
// what a fill would write.
func (d *drainer) acked(entries []entry, dead map[string]error, rows map[string][][]byte) []binding.Acked {
	last := map[string]int{}
	for i, e := range entries {
		if dead[e.id] == nil {
			last[e.key] = i
		}
	}
	out := make([]binding.Acked, 0, len(entries))
	for i, e := range entries {
		if dead[e.id] != nil {
			continue
		}
		a := binding.Acked{ID: e.id, Key: e.key, Action: binding.AckKeep}
		switch {
		case last[e.key] != i:
			a.Action = binding.AckOnly // a newer entry of the key follows
		case d.cc.Sync != config.SyncChangefeed:
			a.Action = binding.AckDelete
			if row, ok := rows[e.key]; ok {
				if v, err := d.b.Encode(row); err == nil {
					a.Action, a.Row = binding.AckWrite, &v
					if e.given != nil && bytes.Equal(e.given, v.Result(d.cc.Format)) {
						a.Action, a.Row = binding.AckKeep, nil // the key holds it already
					}
				}
			}
		}
		out = append(out, a)
	}
	return out
}
