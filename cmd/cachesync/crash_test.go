package main

// Crash, shutdown and restart tests of the running daemon: invariant 1 of
// DESIGN.md (no lost change, even under kill -9) end to end.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/testenv/world"
)

// specialNotes exercise the JSON encoding of text.
var specialNotes = []string{
	`he said "hi"`, `back\slash`, "tab\there", "line\nbreak\r\n", "ünïcødé ✓ 🚀",
	`<a href="x">&amp;</a>`, "", " ", "null", `{"not":"json"}`,
}

// itemWriter changes the items table from one connection, from one goroutine.
type itemWriter struct {
	conn    *pgx.Conn
	rng     *rand.Rand
	present map[int]bool // ids that have a row
	maxID   int          // ids are 1..maxID
	rate    float64      // single-row updates per second at most; 0 means no limit

	updates  atomic.Int64 // single-row UPDATE statements committed
	stopping atomic.Bool  // run ends early, as if it had made its total (stop)

	// Probe rows (ids 1..probeIDs) are never deleted or moved and their val
	// only grows. Each single-row update of one is recorded with the WAL
	// insert position read right after its commit: at or after the
	// transaction's end, and usually exactly there.
	mu     sync.Mutex
	probes []probe
	// counts of the other kinds of change, for the log
	multi, deletes, inserts, rekeys, rollbacks, bulks int

	done chan struct{} // closed when run, started by start, has returned:
	lsn  string        // the LSN its last transaction ends after
	err  error
}

// probeIDs is the number of probe rows.
const probeIDs = 50

// probe is a committed update of a probe row: id had val once the WAL reached lsn.
type probe struct {
	id  int
	val int64
	lsn pglogrepl.LSN
}

// newItemWriter is a writer of the world's items on a connection of its
// own, closed when the test ends (after the writer started has stopped).
func newItemWriter(w *world.World, rng *rand.Rand, rows, maxID int) *itemWriter {
	conn, err := pgx.Connect(context.Background(), w.DBURL)
	if err != nil {
		w.T.Fatal(err)
	}
	w.T.Cleanup(func() { conn.Close(context.Background()) })
	iw := &itemWriter{conn: conn, rng: rng, present: map[int]bool{}, maxID: maxID}
	for id := 1; id <= rows; id++ {
		iw.present[id] = true
	}
	return iw
}

func (iw *itemWriter) note() *string {
	switch iw.rng.IntN(10) {
	case 0:
		return nil
	case 1:
		s := specialNotes[iw.rng.IntN(len(specialNotes))]
		return &s
	default:
		s := fmt.Sprintf("n%d", iw.rng.IntN(1_000_000))
		return &s
	}
}

// pick returns a random id with (want true) or without a row, or 0 if none.
func (iw *itemWriter) pick(want bool) int { return iw.pickFrom(1, want) }

// pickFrom is pick among ids from..maxID.
func (iw *itemWriter) pickFrom(from int, want bool) int {
	for range 50 {
		if id := from + iw.rng.IntN(iw.maxID-from+1); iw.present[id] == want {
			return id
		}
	}
	for id := from; id <= iw.maxID; id++ {
		if iw.present[id] == want {
			return id
		}
	}
	return 0
}

// update, del, insert and rekey change one row and keep present in step.
// An update outside a transaction (q nil) of a probe row is a probe.
func (iw *itemWriter) update(ctx context.Context, q pgx.Tx, id int) error {
	const sql = `UPDATE items SET val = val + 1, note = $2 WHERE id = $1 RETURNING val`
	var (
		val int64
		err error
	)
	if q == nil {
		err = iw.conn.QueryRow(ctx, sql, id, iw.note()).Scan(&val)
	} else {
		err = q.QueryRow(ctx, sql, id, iw.note()).Scan(&val)
	}
	if err != nil {
		return fmt.Errorf("update of id %d: %w", id, err)
	}
	if q != nil || id > probeIDs {
		return nil
	}
	var text string
	if err := iw.conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&text); err != nil {
		return err
	}
	lsn, err := pglogrepl.ParseLSN(text)
	if err != nil {
		return err
	}
	iw.mu.Lock()
	iw.probes = append(iw.probes, probe{id, val, lsn})
	iw.mu.Unlock()
	return nil
}

func (iw *itemWriter) exec(ctx context.Context, q pgx.Tx, sql string, args ...any) error {
	var err error
	if q == nil {
		_, err = iw.conn.Exec(ctx, sql, args...)
	} else {
		_, err = q.Exec(ctx, sql, args...)
	}
	return err
}

func (iw *itemWriter) del(ctx context.Context, q pgx.Tx) error {
	id := iw.pickFrom(probeIDs+1, true)
	if id == 0 {
		return nil
	}
	iw.present[id] = false
	iw.deletes++
	return iw.exec(ctx, q, `DELETE FROM items WHERE id = $1`, id)
}

func (iw *itemWriter) insert(ctx context.Context, q pgx.Tx) error {
	id := iw.pick(false)
	if id == 0 {
		return nil
	}
	iw.present[id] = true
	iw.inserts++
	return iw.exec(ctx, q, `INSERT INTO items (id, val, note) VALUES ($1, $2, $3)`, id, iw.rng.Int64N(1_000_000), iw.note())
}

// rekey moves a row to another id: its old key must disappear.
func (iw *itemWriter) rekey(ctx context.Context, q pgx.Tx) error {
	from, to := iw.pickFrom(probeIDs+1, true), iw.pick(false)
	if from == 0 || to == 0 {
		return nil
	}
	iw.present[from], iw.present[to] = false, true
	iw.rekeys++
	return iw.exec(ctx, q, `UPDATE items SET id = $2, val = val + 1 WHERE id = $1`, from, to)
}

// multiRow commits one transaction of several changes, some to the same row.
func (iw *itemWriter) multiRow(ctx context.Context) error {
	tx, err := iw.conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var updates int64
	for range 2 + iw.rng.IntN(20) {
		switch r := iw.rng.IntN(20); {
		case r == 0:
			err = iw.del(ctx, tx)
		case r == 1:
			err = iw.insert(ctx, tx)
		case r == 2:
			err = iw.rekey(ctx, tx)
		default:
			if id := iw.pick(true); id != 0 {
				err = iw.update(ctx, tx, id)
				updates++
			}
		}
		if err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	iw.multi++
	iw.updates.Add(updates)
	return nil
}

// rollback changes rows in a transaction that is rolled back: nothing of it
// may reach Redis.
func (iw *itemWriter) rollback(ctx context.Context) error {
	tx, err := iw.conn.Begin(ctx)
	if err != nil {
		return err
	}
	for range 1 + iw.rng.IntN(5) {
		if _, err := tx.Exec(ctx, `UPDATE items SET val = -999, note = 'rolled back' WHERE id = $1`, 1+iw.rng.IntN(iw.maxID)); err != nil {
			tx.Rollback(context.WithoutCancel(ctx))
			return err
		}
	}
	iw.rollbacks++
	return tx.Rollback(ctx)
}

// bulk commits one transaction of more than pgsource.MaxChangesPerTxn
// changes, which the stream delivers in several parts.
func (iw *itemWriter) bulk(ctx context.Context) error {
	tx, err := iw.conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `UPDATE items SET val = val + 1`); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE items SET note = 'bulk ' || val WHERE id % 2 = 0`); err != nil {
		return err
	}
	iw.bulks++
	return tx.Commit(ctx)
}

// checkConfirmed checks, while no daemon runs, that every probe the slot
// confirmed is in Redis: item:ID holds a val at least the probe's.
func (iw *itemWriter) checkConfirmed(ctx context.Context, w *world.World) (checked int, err error) {
	var text *string
	err = w.DB.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, "cachesync_"+w.Name).Scan(&text)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && text == nil) {
		return 0, nil // not created yet
	}
	if err != nil {
		return 0, err
	}
	confirmed, err := pglogrepl.ParseLSN(*text)
	if err != nil {
		return 0, err
	}
	want := map[int]probe{}
	iw.mu.Lock()
	for _, p := range iw.probes {
		if p.lsn <= confirmed && p.val > want[p.id].val {
			want[p.id] = p
		}
	}
	iw.mu.Unlock()
	for id, p := range want {
		v, ok := w.Get("item:" + strconv.Itoa(id))
		if !ok {
			return checked, fmt.Errorf("slot confirmed %s, past the update of id %d to val %d (WAL at %s), but item:%d is not in Redis", confirmed, id, p.val, p.lsn, id)
		}
		var got struct{ Val int64 }
		if err := json.Unmarshal([]byte(v), &got); err != nil {
			return checked, fmt.Errorf("item:%d = %q: %w", id, v, err)
		}
		if got.Val < p.val {
			return checked, fmt.Errorf("slot confirmed %s, past the update of id %d to val %d (WAL at %s), but Redis holds val %d: a confirmed change is not in Redis", confirmed, id, p.val, p.lsn, got.Val)
		}
		checked++
	}
	return checked, nil
}

// run makes total single-row updates, mixed with the other kinds of change,
// then one last update whose transaction ends after the returned LSN.
func (iw *itemWriter) run(ctx context.Context, total int64) (string, error) {
	nextBulk := total / 4
	start := time.Now()
	for iw.updates.Load() < total && !iw.stopping.Load() {
		if iw.rate > 0 {
			due := start.Add(time.Duration(float64(iw.updates.Load()) / iw.rate * float64(time.Second)))
			if wait := time.Until(due); wait > 0 {
				time.Sleep(wait) // the pace: lets time pass on purpose
			}
		}
		var err error
		switch r := iw.rng.IntN(1000); {
		case iw.updates.Load() >= nextBulk:
			nextBulk += total / 4
			err = iw.bulk(ctx)
		case r < 20:
			err = iw.multiRow(ctx)
		case r < 25:
			err = iw.del(ctx, nil)
		case r < 30:
			err = iw.insert(ctx, nil)
		case r < 32:
			err = iw.rekey(ctx, nil)
		case r < 35:
			err = iw.rollback(ctx)
		case r < 285:
			err = iw.update(ctx, nil, 1+iw.rng.IntN(probeIDs))
			iw.updates.Add(1)
		default:
			if id := iw.pick(true); id != 0 {
				err = iw.update(ctx, nil, id)
				iw.updates.Add(1)
			}
		}
		if err != nil {
			return "", err
		}
	}
	return lastCommitLSN(ctx, iw.conn, func(tx pgx.Tx) error { return iw.update(ctx, tx, iw.pick(true)) })
}

// start runs the writer (run, total) in a goroutine, stopped and waited
// for when the test ends.
func (iw *itemWriter) start(t *testing.T, total int64) {
	iw.done = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer close(iw.done)
		iw.lsn, iw.err = iw.run(ctx, total)
	}()
	t.Cleanup(func() { cancel(); <-iw.done })
}

func (iw *itemWriter) finished() bool {
	select {
	case <-iw.done:
		return true
	default:
		return false
	}
}

// reach waits until the writer has made n updates or finished, failing
// the test if it makes no update in world.Patience.
func (iw *itemWriter) reach(t *testing.T, n int64) {
	t.Helper()
	for last := iw.updates.Load(); !world.Within(world.Patience, func() bool { return iw.finished() || iw.updates.Load() >= n }); {
		if now := iw.updates.Load(); now == last {
			t.Fatalf("the writer is stuck at %d updates", now)
		} else {
			last = now
		}
	}
}

// stop ends the writer started with start (whatever its total) and
// returns as wait does.
func (iw *itemWriter) stop(t *testing.T) string {
	t.Helper()
	iw.stopping.Store(true)
	return iw.wait(t)
}

// wait waits until the writer has finished, failing the test if it fails
// or gets stuck, and returns the LSN its last transaction ends after.
func (iw *itemWriter) wait(t *testing.T) string {
	t.Helper()
	iw.reach(t, math.MaxInt64)
	if iw.err != nil {
		t.Fatalf("writer: %v", iw.err)
	}
	return iw.lsn
}

// TestKillNine streams 50,000 updates while the daemon is killed with
// SIGKILL and restarted at once, again and again (some kills while Redis
// stalls, so the stream runs ahead of what Redis acknowledged); afterwards
// Redis must equal the table exactly and the slot must have confirmed the
// last transaction.
func TestKillNine(t *testing.T) {
	t.Parallel()
	const (
		rows    = 1000
		maxID   = 1100 // ids above rows are room for inserts and rekeys
		total   = 50_000
		kills   = 8 // kills at chosen points of the writes, plus some quick ones after a restart
		minKill = 5
	)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))

	w := world.New(t, itemsSchema(rows))
	cfg := w.WriteConfig(itemsCaches)
	ctx := t.Context()
	var daemons []*world.Proc
	run := func() *world.Proc {
		daemons = append(daemons, w.Daemon(cfg))
		return daemons[len(daemons)-1]
	}

	d := run()
	// The first kill may land anywhere in the first session: slot creation,
	// the initial rebuild, the start of streaming (a random moment, on purpose).
	time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
	d.Kill()
	d = run()
	d.WaitLog("streaming changes")

	iw := newItemWriter(w, rand.New(rand.NewPCG(seed, 2)), rows, maxID)
	// Paced so that the kills, stalls included, fall inside the writes.
	iw.rate = 3000
	started := time.Now()
	iw.start(t, total)

	// Kill at points spread over the writes, each at a random moment.
	killed, killedDuring, stalled := 1, 0, 0
	probesChecked := 0
	killAt := func(unpause func()) {
		if iw.updates.Load() < total {
			killedDuring++
		}
		d.Kill()
		killed++
		if unpause != nil {
			unpause()
		}
		n, err := iw.checkConfirmed(ctx, w)
		if err != nil {
			t.Fatalf("after kill %d: %v", killed, err)
		}
		probesChecked += n
		d = run()
	}
	for i := range kills {
		point := int64(i)*total/kills + rng.Int64N(total/kills)
		iw.reach(t, point)
		if iw.finished() {
			break
		}
		if i%4 != 0 {
			// Redis stalls (CLIENT PAUSE WRITE) for more than the stream's
			// status interval (1 s) while the stream goes on and reports
			// status: nothing unacknowledged may be confirmed.
			pause := 1100 + rng.IntN(500)
			w.Do(w.RC.B().ClientPause().Timeout(int64(pause) + 2000).Write().Build())
			time.Sleep(time.Duration(pause) * time.Millisecond) // the stall: lets time pass on purpose
			killAt(func() { w.Do(w.RC.B().ClientUnpause().Build()) })
			stalled++
			continue
		}
		time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond) // a random moment, on purpose
		killAt(nil)
		if rng.IntN(3) == 0 { // and again while it starts up
			time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond) // a random moment, on purpose
			killAt(nil)
		}
	}
	lsn := iw.wait(t)
	t.Logf("wrote %d updates in %v (%d multi-row txns, %d deletes, %d inserts, %d rekeys, %d rollbacks, %d bulk txns); last commit after %s",
		iw.updates.Load(), time.Since(started).Round(time.Millisecond), iw.multi, iw.deletes, iw.inserts, iw.rekeys, iw.rollbacks, iw.bulks, lsn)
	t.Logf("%d kills, %d of them during the updates, %d while Redis stalled; %d confirmed probe updates found in Redis after kills",
		killed, killedDuring, stalled, probesChecked)
	if killedDuring < minKill {
		t.Fatalf("only %d kills happened during the updates, want at least %d", killedDuring, minKill)
	}

	// A last kill, then the final daemon must bring Redis to the table.
	killAt(nil)
	waitItems(w)
	time.Sleep(time.Second) // lets time pass on purpose: nothing older may land once it matched
	requireItems(w)
	d.Stop()
	requireConfirmed(w, lsn)
	for _, p := range daemons {
		if strings.Contains(p.Stderr.String(), "row skipped") {
			t.Errorf("%s skipped rows:\n%s", p.Name, p.Tail(20))
		}
	}
}

// TestGracefulShutdown stops the daemon with SIGTERM when idle and in the
// middle of a stream of writes: it exits 0 at once, having confirmed what it
// applied, and a later daemon picks up every change.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(1000))
	cfg := w.WriteConfig(itemsCaches)
	ctx := t.Context()

	d := w.Daemon(cfg)
	d.WaitLog("streaming changes")
	for i := range 200 {
		w.Exec(`UPDATE items SET val = val + 1, note = $2 WHERE id = $1`, 1+i*5, fmt.Sprint("graceful ", i))
	}
	lsn, err := lastCommitLSN(ctx, w.DB, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE items SET val = val + 1, note = 'last' WHERE id = 7`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	waitItems(w)
	d.Stop()
	requireConfirmed(w, lsn)

	// SIGTERM while writes stream in: still exit 0, and nothing is lost.
	d = w.Daemon(cfg)
	d.WaitLog("streaming changes")
	iw := newItemWriter(w, rand.New(rand.NewPCG(1, 2)), 1000, 1000)
	iw.start(t, 5000)
	iw.reach(t, 1000)
	d.Stop()
	iw.wait(t)
	d = w.Daemon(cfg)
	waitItems(w)
	d.Stop()
}

// TestRestartResumesWithoutRebuild stops a daemon whose caches are up to date
// (while the database goes on writing other tables) and starts it again with
// Redis intact: the new daemon must resume the stream, not throw the
// cache away and rebuild it (a rebuild clears every key first, so readers
// miss the whole cache while it runs).
func TestRestartResumesWithoutRebuild(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(1000))
	cfg := w.WriteConfig(itemsCaches)

	d := w.Daemon(cfg)
	d.WaitLog("streaming changes")
	w.Exec(`UPDATE items SET val = val + 1 WHERE id = 1`)
	waitItems(w)
	// Writes to a table no cache reads, and to another database, move the
	// WAL on past the last change of the caches.
	w.Exec(`CREATE TABLE audit (id serial PRIMARY KEY, what text)`)
	for i := range 20 {
		w.Exec(`INSERT INTO audit (what) VALUES ($1)`, fmt.Sprint("event ", i))
	}
	world.Postgres(t).Database(t, w.Name+"other", `CREATE TABLE other_db_log (id serial PRIMARY KEY, what text);
		INSERT INTO other_db_log (what) SELECT 'x' FROM generate_series(1, 100)`)
	time.Sleep(2 * time.Second) // lets time pass on purpose: a status update or two
	d.Stop()

	d = w.Daemon(cfg)
	d.WaitLog("streaming changes")
	if strings.Contains(d.Stderr.String(), "cache rebuilt") {
		t.Errorf("a restart with Redis intact rebuilt the cache:\n%s", d.Stderr.String())
	}
	w.Exec(`UPDATE items SET val = val + 1 WHERE id = 2`)
	waitItems(w)
	d.Stop()
}

// TestRedisRestartUnderDaemon restarts Redis (no persistence: it comes back
// empty) under a running daemon, with writes committed while it is down.
func TestRedisRestartUnderDaemon(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(1000))
	d := w.Daemon(w.WriteConfig(itemsCaches))
	d.WaitLog("streaming changes")
	waitItems(w)

	if err := w.Redis.Stop(); err != nil {
		t.Fatal(err)
	}
	w.Exec(`UPDATE items SET val = val + 100, note = 'while redis was down' WHERE id <= 50`)
	w.Exec(`DELETE FROM items WHERE id BETWEEN 51 AND 60`)
	w.Exec(`INSERT INTO items VALUES (5001, 1, 'new while redis was down')`)
	time.Sleep(500 * time.Millisecond) // lets time pass on purpose: the daemon meets the changes with Redis down
	if err := w.Redis.Start(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitItems(w)
	t.Logf("cache rebuilt %v after Redis came back", time.Since(start).Round(time.Millisecond))

	// Restarted while idle: it comes back empty and must be refilled too.
	if err := w.Redis.Restart(); err != nil {
		t.Fatal(err)
	}
	waitItems(w)

	w.Exec(`UPDATE items SET val = val + 1, note = 'after' WHERE id BETWEEN 100 AND 120`)
	w.Exec(`DELETE FROM items WHERE id = 200`)
	waitItems(w)
	d.Stop()
}

// TestPostgresCrashUnderDaemon crashes PostgreSQL (immediate shutdown, so it
// runs crash recovery and the slot may come back at an older confirmed
// position) under a running daemon right after a burst of commits.
func TestPostgresCrashUnderDaemon(t *testing.T) {
	t.Parallel()
	w, pg := world.NewOwnPostgres(t, itemsSchema(1000))
	d := w.Daemon(w.WriteConfig(itemsCaches))
	d.WaitLog("streaming changes")
	waitItems(w)

	for i := range 300 {
		w.Exec(`UPDATE items SET val = val + 1, note = $2 WHERE id = $1`, 1+i%100, fmt.Sprint("before crash ", i))
	}
	w.Exec(`DELETE FROM items WHERE id BETWEEN 901 AND 910`)
	w.DB.Close(context.Background())
	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	db, err := pgx.Connect(t.Context(), w.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	w.DB = db
	w.Exec(`UPDATE items SET val = val + 1, note = 'after crash' WHERE id BETWEEN 200 AND 220`)
	w.Exec(`INSERT INTO items VALUES (5000, 5, 'after crash')`)
	waitItems(w)
	d.Stop()
}
