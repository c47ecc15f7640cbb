package main

// Crash, shutdown and restart tests of the running daemon: invariant 1 of
// DESIGN.md (no lost change, even under kill -9) end to end.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
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

	updates atomic.Int64 // single-row UPDATE statements committed

	// Probe rows (ids 1..probeIDs) are never deleted or moved and their val
	// only grows. Each single-row update of one is recorded with the WAL
	// insert position read right after its commit: at or after the
	// transaction's end, and usually exactly there.
	mu     sync.Mutex
	probes []probe
	// counts of the other kinds of change, for the log
	multi, deletes, inserts, rekeys, rollbacks, bulks int
}

// probeIDs is the number of probe rows.
const probeIDs = 50

// probe is a committed update of a probe row: id had val once the WAL reached lsn.
type probe struct {
	id  int
	val int64
	lsn pglogrepl.LSN
}

func newItemWriter(conn *pgx.Conn, rng *rand.Rand, rows, maxID int) *itemWriter {
	w := &itemWriter{conn: conn, rng: rng, present: map[int]bool{}, maxID: maxID}
	for id := 1; id <= rows; id++ {
		w.present[id] = true
	}
	return w
}

func (w *itemWriter) note() *string {
	switch w.rng.IntN(10) {
	case 0:
		return nil
	case 1:
		s := specialNotes[w.rng.IntN(len(specialNotes))]
		return &s
	default:
		s := fmt.Sprintf("n%d", w.rng.IntN(1_000_000))
		return &s
	}
}

// pick returns a random id with (want true) or without a row, or 0 if none.
func (w *itemWriter) pick(want bool) int { return w.pickFrom(1, want) }

// pickFrom is pick among ids from..maxID.
func (w *itemWriter) pickFrom(from int, want bool) int {
	for range 50 {
		if id := from + w.rng.IntN(w.maxID-from+1); w.present[id] == want {
			return id
		}
	}
	for id := from; id <= w.maxID; id++ {
		if w.present[id] == want {
			return id
		}
	}
	return 0
}

// update, del, insert and rekey change one row and keep present in step.
// An update outside a transaction (q nil) of a probe row is a probe.
func (w *itemWriter) update(ctx context.Context, q pgx.Tx, id int) error {
	const sql = `UPDATE items SET val = val + 1, note = $2 WHERE id = $1 RETURNING val`
	var (
		val int64
		err error
	)
	if q == nil {
		err = w.conn.QueryRow(ctx, sql, id, w.note()).Scan(&val)
	} else {
		err = q.QueryRow(ctx, sql, id, w.note()).Scan(&val)
	}
	if err != nil {
		return fmt.Errorf("update of id %d: %w", id, err)
	}
	if q != nil || id > probeIDs {
		return nil
	}
	var text string
	if err := w.conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&text); err != nil {
		return err
	}
	lsn, err := pglogrepl.ParseLSN(text)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.probes = append(w.probes, probe{id, val, lsn})
	w.mu.Unlock()
	return nil
}

func (w *itemWriter) exec(ctx context.Context, q pgx.Tx, sql string, args ...any) error {
	var err error
	if q == nil {
		_, err = w.conn.Exec(ctx, sql, args...)
	} else {
		_, err = q.Exec(ctx, sql, args...)
	}
	return err
}

func (w *itemWriter) del(ctx context.Context, q pgx.Tx) error {
	id := w.pickFrom(probeIDs+1, true)
	if id == 0 {
		return nil
	}
	w.present[id] = false
	w.deletes++
	return w.exec(ctx, q, `DELETE FROM items WHERE id = $1`, id)
}

func (w *itemWriter) insert(ctx context.Context, q pgx.Tx) error {
	id := w.pick(false)
	if id == 0 {
		return nil
	}
	w.present[id] = true
	w.inserts++
	return w.exec(ctx, q, `INSERT INTO items (id, val, note) VALUES ($1, $2, $3)`, id, w.rng.Int64N(1_000_000), w.note())
}

// rekey moves a row to another id: its old key must disappear.
func (w *itemWriter) rekey(ctx context.Context, q pgx.Tx) error {
	from, to := w.pickFrom(probeIDs+1, true), w.pick(false)
	if from == 0 || to == 0 {
		return nil
	}
	w.present[from], w.present[to] = false, true
	w.rekeys++
	return w.exec(ctx, q, `UPDATE items SET id = $2, val = val + 1 WHERE id = $1`, from, to)
}

// multiRow commits one transaction of several changes, some to the same row.
func (w *itemWriter) multiRow(ctx context.Context) error {
	tx, err := w.conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var updates int64
	for range 2 + w.rng.IntN(20) {
		switch r := w.rng.IntN(20); {
		case r == 0:
			err = w.del(ctx, tx)
		case r == 1:
			err = w.insert(ctx, tx)
		case r == 2:
			err = w.rekey(ctx, tx)
		default:
			if id := w.pick(true); id != 0 {
				err = w.update(ctx, tx, id)
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
	w.multi++
	w.updates.Add(updates)
	return nil
}

// rollback changes rows in a transaction that is rolled back: nothing of it
// may reach Redis.
func (w *itemWriter) rollback(ctx context.Context) error {
	tx, err := w.conn.Begin(ctx)
	if err != nil {
		return err
	}
	for range 1 + w.rng.IntN(5) {
		if _, err := tx.Exec(ctx, `UPDATE items SET val = -999, note = 'rolled back' WHERE id = $1`, 1+w.rng.IntN(w.maxID)); err != nil {
			tx.Rollback(context.WithoutCancel(ctx))
			return err
		}
	}
	w.rollbacks++
	return tx.Rollback(ctx)
}

// bulk commits one transaction of more than pgsource.MaxChangesPerTxn
// changes, which the stream delivers in several parts.
func (w *itemWriter) bulk(ctx context.Context) error {
	tx, err := w.conn.Begin(ctx)
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
	w.bulks++
	return tx.Commit(ctx)
}

// checkConfirmed checks, while no daemon runs, that every probe the slot
// confirmed is in Redis: item:ID holds a val at least the probe's.
func (w *itemWriter) checkConfirmed(ctx context.Context, b *bed, slot string) (checked int, err error) {
	var text *string
	err = b.db.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&text)
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
	w.mu.Lock()
	for _, p := range w.probes {
		if p.lsn <= confirmed && p.val > want[p.id].val {
			want[p.id] = p
		}
	}
	w.mu.Unlock()
	for id, p := range want {
		v, err := b.rc.Do(ctx, b.rc.B().Get().Key("item:"+strconv.Itoa(id)).Build()).ToString()
		if err != nil {
			return checked, fmt.Errorf("slot confirmed %s, past the update of id %d to val %d (WAL at %s), but item:%d: %w", confirmed, id, p.val, p.lsn, id, err)
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
func (w *itemWriter) run(ctx context.Context, total int64) (string, error) {
	nextBulk := total / 4
	start := time.Now()
	for w.updates.Load() < total {
		if w.rate > 0 {
			due := start.Add(time.Duration(float64(w.updates.Load()) / w.rate * float64(time.Second)))
			if wait := time.Until(due); wait > 0 {
				time.Sleep(wait)
			}
		}
		var err error
		switch r := w.rng.IntN(1000); {
		case w.updates.Load() >= nextBulk:
			nextBulk += total / 4
			err = w.bulk(ctx)
		case r < 20:
			err = w.multiRow(ctx)
		case r < 25:
			err = w.del(ctx, nil)
		case r < 30:
			err = w.insert(ctx, nil)
		case r < 32:
			err = w.rekey(ctx, nil)
		case r < 35:
			err = w.rollback(ctx)
		case r < 285:
			err = w.update(ctx, nil, 1+w.rng.IntN(probeIDs))
			w.updates.Add(1)
		default:
			if id := w.pick(true); id != 0 {
				err = w.update(ctx, nil, id)
				w.updates.Add(1)
			}
		}
		if err != nil {
			return "", err
		}
	}
	return lastCommitLSN(ctx, w.conn, func(tx pgx.Tx) error { return w.update(ctx, tx, w.pick(true)) })
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

	b := newBed(t, "killnine")
	b.createItems(rows)
	cfg := b.itemsConfig("killnine")
	ctx := t.Context()

	d := b.run(cfg)
	// The first kill may land anywhere in the first session: slot creation,
	// the initial rebuild, the start of streaming.
	time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
	d.kill(t)
	d = b.run(cfg)
	d.waitLog(t, "streaming changes", 30*time.Second)

	conn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	w := newItemWriter(conn, rand.New(rand.NewPCG(seed, 2)), rows, maxID)
	// Paced so that the kills, stalls included, fall inside the writes.
	w.rate = 3000
	type result struct {
		lsn string
		err error
	}
	results := make(chan result, 1)
	wctx, stopWriter := context.WithCancel(ctx)
	started := time.Now()
	go func() {
		lsn, err := w.run(wctx, total)
		results <- result{lsn, err}
	}()
	var res result
	finished := false
	defer func() { // the writer never outlives the test
		stopWriter()
		if !finished {
			<-results
		}
	}()

	// Kill at points spread over the writes, each at a random moment.
	killed, killedDuring, stalled := 1, 0, 0
	probesChecked := 0
	killAt := func(unpause func()) {
		if w.updates.Load() < total {
			killedDuring++
		}
		d.kill(t)
		killed++
		if unpause != nil {
			unpause()
		}
		n, err := w.checkConfirmed(ctx, b, "cachesync_killnine")
		if err != nil {
			t.Fatalf("after kill %d: %v", killed, err)
		}
		probesChecked += n
		d = b.run(cfg)
	}
	for i := range kills {
		point := int64(i)*total/kills + rng.Int64N(total/kills)
		for !finished && w.updates.Load() < point {
			select {
			case res = <-results:
				finished = true
			case <-time.After(time.Millisecond):
			}
		}
		if finished {
			break
		}
		if i%4 != 0 {
			// Redis stalls (CLIENT PAUSE WRITE) for more than the stream's
			// status interval (1 s) while the stream goes on and reports
			// status: nothing unacknowledged may be confirmed.
			pause := 1100 + rng.IntN(500)
			if err := b.rc.Do(ctx, b.rc.B().ClientPause().Timeout(int64(pause)+2000).Write().Build()).Error(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Duration(pause) * time.Millisecond)
			killAt(func() {
				if err := b.rc.Do(ctx, b.rc.B().ClientUnpause().Build()).Error(); err != nil {
					t.Fatal(err)
				}
			})
			stalled++
			continue
		}
		time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
		killAt(nil)
		if rng.IntN(3) == 0 { // and again while it starts up
			time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
			killAt(nil)
		}
	}
	if !finished {
		select {
		case res = <-results:
			finished = true
		case <-time.After(90 * time.Second):
			t.Fatalf("writer still running after 90s (%d updates)", w.updates.Load())
		}
	}
	if res.err != nil {
		t.Fatalf("writer: %v", res.err)
	}
	t.Logf("wrote %d updates in %v (%d multi-row txns, %d deletes, %d inserts, %d rekeys, %d rollbacks, %d bulk txns); last commit after %s",
		w.updates.Load(), time.Since(started).Round(time.Millisecond), w.multi, w.deletes, w.inserts, w.rekeys, w.rollbacks, w.bulks, res.lsn)
	t.Logf("%d kills, %d of them during the updates, %d while Redis stalled; %d confirmed probe updates found in Redis after kills",
		killed, killedDuring, stalled, probesChecked)
	if killedDuring < minKill {
		t.Fatalf("only %d kills happened during the updates, want at least %d", killedDuring, minKill)
	}

	// A last kill, then the final daemon must bring Redis to the table.
	killAt(nil)
	b.waitSynced(d, 60*time.Second)
	time.Sleep(time.Second) // nothing older may land once it matched
	b.requireSynced()
	d.stopOK(t)
	b.requireConfirmed("cachesync_killnine", res.lsn)
	for _, p := range b.daemons {
		if s := p.stderr.String(); strings.Contains(s, "row skipped") {
			t.Errorf("%s skipped rows:\n%s", p.name, tail(s, 20))
		}
	}
}

// TestGracefulShutdown stops the daemon with SIGTERM when idle and in the
// middle of a stream of writes: it exits 0 at once, having confirmed what it
// applied, and a later daemon picks up every change.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	b := newBed(t, "graceful")
	b.createItems(1000)
	cfg := b.itemsConfig("graceful")
	ctx := t.Context()

	d := b.run(cfg)
	d.waitLog(t, "streaming changes", 20*time.Second)
	for i := range 200 {
		b.exec(`UPDATE items SET val = val + 1, note = $2 WHERE id = $1`, 1+i*5, fmt.Sprint("graceful ", i))
	}
	lsn, err := lastCommitLSN(ctx, b.db, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE items SET val = val + 1, note = 'last' WHERE id = 7`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	b.waitSynced(d, 20*time.Second)
	d.stopOK(t)
	b.requireConfirmed("cachesync_graceful", lsn)

	// SIGTERM while writes stream in: still exit 0, and nothing is lost.
	d = b.run(cfg)
	d.waitLog(t, "streaming changes", 20*time.Second)
	conn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	w := newItemWriter(conn, rand.New(rand.NewPCG(1, 2)), 1000, 1000)
	results := make(chan error, 1)
	wctx, stopWriter := context.WithCancel(ctx)
	go func() {
		_, err := w.run(wctx, 5000)
		results <- err
	}()
	finished := false
	defer func() { // the writer is done with conn before it is closed
		stopWriter()
		if !finished {
			<-results
		}
	}()
	for deadline := time.Now().Add(30 * time.Second); w.updates.Load() < 1000; {
		if time.Now().After(deadline) {
			t.Fatalf("writer made only %d updates in 30s", w.updates.Load())
		}
		time.Sleep(time.Millisecond)
	}
	d.stopOK(t)
	select {
	case err := <-results:
		finished = true
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("writer still running after 60s")
	}
	d = b.run(cfg)
	b.waitSynced(d, 30*time.Second)
	d.stopOK(t)
}

// TestRestartResumesWithoutRebuild stops a daemon whose caches are up to date
// (while the database goes on writing other tables) and starts it again with
// Redis intact: the new daemon must resume the stream, not throw the
// cache away and rebuild it (a rebuild clears every key first, so readers
// miss the whole cache while it runs).
func TestRestartResumesWithoutRebuild(t *testing.T) {
	t.Parallel()
	b := newBed(t, "restart")
	b.createItems(1000)
	cfg := b.itemsConfig("restarttest")

	d := b.run(cfg)
	d.waitLog(t, "streaming changes", 20*time.Second)
	b.exec(`UPDATE items SET val = val + 1 WHERE id = 1`)
	b.waitSynced(d, 20*time.Second)
	// Writes to a table no cache reads, and to another database, move the
	// WAL on past the last change of the caches.
	b.exec(`CREATE TABLE audit (id serial PRIMARY KEY, what text)`)
	for i := range 20 {
		b.exec(`INSERT INTO audit (what) VALUES ($1)`, fmt.Sprint("event ", i))
	}
	other, err := pgx.Connect(t.Context(), b.pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	if _, err := other.Exec(t.Context(), `CREATE TABLE other_db_log (id serial PRIMARY KEY, what text); INSERT INTO other_db_log (what) SELECT 'x' FROM generate_series(1, 100)`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // a status update or two
	d.stopOK(t)

	d = b.run(cfg)
	d.waitLog(t, "streaming changes", 20*time.Second)
	if strings.Contains(d.stderr.String(), "cache rebuilt") {
		t.Errorf("a restart with Redis intact rebuilt the cache:\n%s", d.stderr.String())
	}
	b.exec(`UPDATE items SET val = val + 1 WHERE id = 2`)
	b.waitSynced(d, 20*time.Second)
	d.stopOK(t)
}

// TestRedisRestartUnderDaemon restarts Redis (no persistence: it comes back
// empty) under a running daemon, with writes committed while it is down.
func TestRedisRestartUnderDaemon(t *testing.T) {
	t.Parallel()
	b := newBed(t, "redisrestart")
	b.createItems(1000)
	cfg := b.itemsConfig("redisrestart")

	d := b.run(cfg)
	d.waitLog(t, "streaming changes", 20*time.Second)
	b.waitSynced(d, 20*time.Second)

	if err := b.redis.Stop(); err != nil {
		t.Fatal(err)
	}
	b.exec(`UPDATE items SET val = val + 100, note = 'while redis was down' WHERE id <= 50`)
	b.exec(`DELETE FROM items WHERE id BETWEEN 51 AND 60`)
	b.exec(`INSERT INTO items VALUES (5001, 1, 'new while redis was down')`)
	time.Sleep(500 * time.Millisecond)
	if err := b.redis.Start(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	b.waitSynced(d, 30*time.Second)
	t.Logf("cache rebuilt %v after Redis came back", time.Since(start).Round(time.Millisecond))

	// Restarted while idle: it comes back empty and must be refilled too.
	if err := b.redis.Restart(); err != nil {
		t.Fatal(err)
	}
	b.waitSynced(d, 30*time.Second)

	b.exec(`UPDATE items SET val = val + 1, note = 'after' WHERE id BETWEEN 100 AND 120`)
	b.exec(`DELETE FROM items WHERE id = 200`)
	b.waitSynced(d, 20*time.Second)
	d.stopOK(t)
}

// TestPostgresCrashUnderDaemon crashes PostgreSQL (immediate shutdown, so it
// runs crash recovery and the slot may come back at an older confirmed
// position) under a running daemon right after a burst of commits.
func TestPostgresCrashUnderDaemon(t *testing.T) {
	t.Parallel()
	b := newBed(t, "pgcrash")
	b.createItems(1000)
	cfg := b.itemsConfig("pgcrash")

	d := b.run(cfg)
	d.waitLog(t, "streaming changes", 20*time.Second)
	b.waitSynced(d, 20*time.Second)

	for i := range 300 {
		b.exec(`UPDATE items SET val = val + 1, note = $2 WHERE id = $1`, 1+i%100, fmt.Sprint("before crash ", i))
	}
	b.exec(`DELETE FROM items WHERE id BETWEEN 901 AND 910`)
	b.db.Close(context.Background())
	if err := b.pg.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := b.pg.Start(); err != nil {
		t.Fatal(err)
	}
	db, err := pgx.Connect(t.Context(), b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	b.db = db
	b.exec(`UPDATE items SET val = val + 1, note = 'after crash' WHERE id BETWEEN 200 AND 220`)
	b.exec(`INSERT INTO items VALUES (5000, 5, 'after crash')`)
	b.waitSynced(d, 30*time.Second)
	d.stopOK(t)
}
