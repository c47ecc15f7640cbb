// Package changefeed keeps Redis in step with PostgreSQL: it rebuilds caches
// from a consistent snapshot when they are new or lost, then applies every
// committed change from the replication slot, in commit order, and confirms
// a position to PostgreSQL only after Redis acknowledged the writes before it.
//
// Where a change becomes a Redis write: applier.change in apply.go, which asks
// the cache's binding for the commands.
package changefeed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/latency"
	"github.com/cachesync/cachesync/internal/pgsource"
	"github.com/cachesync/cachesync/internal/schema"
	"github.com/cachesync/cachesync/internal/state"
)

// Stats counts what a feed did; safe for concurrent reads.
type Stats struct {
	Writes     atomic.Int64  // keys written or deleted in Redis
	Txns       atomic.Int64  // transactions applied
	MapErrors  atomic.Int64  // rows that could not be mapped to a key or value
	Rebuilds   atomic.Int64  // caches rebuilt from a snapshot
	AppliedLSN atomic.Uint64 // end LSN of the last transaction applied
	// Lag times commit → visible in Redis, for the last transaction of
	// each applied batch.
	Lag         *latency.Histogram
	LastLag     atomic.Int64 // commit → visible (ns) of the last transaction applied
	Progress    atomic.Int64 // when AppliedLSN last moved (unix ns); heartbeats move it when idle
	Reconnects  atomic.Int64 // sessions that ended in an error and were restarted (a session is the feed's: counted in the first target's)
	BackfillRow atomic.Int64 // rows written by rebuilds
}

// Feed keeps the caches of one PostgreSQL source in step with its change
// stream, in one Redis target or several: one replication slot feeds them
// all, and each target keeps its own claim, state and applied position.
type Feed struct {
	Source string
	URL    string
	Slot   string          // names the replication slot and the publication
	Caches []*config.Cache // every cache of the source, all targets together
	// Targets are the Redis targets that hold some of Caches, in the
	// config's order, and the config's first target always (its client is
	// the one the feed is given).
	Targets []*Target
	// Redis, State and Stats are the first target's: with one target, the
	// feed's.
	Redis rueidis.Client
	State *state.State
	Stats *Stats
	Log   *slog.Logger
	// Rebuild names caches to rebuild in the first session (cachesync resync).
	Rebuild []string
	// Progress, when set, is told how a rebuild advances (of a cache in
	// one of several targets: "CACHE in TARGET").
	Progress func(cache string, done, total int64)
	// CheckEvery is how often an idle feed checks that Redis kept its data.
	CheckEvery time.Duration
	// TargetTimeout bounds how long a session waits, with several
	// targets, for one to answer (claim, state) before it goes on without
	// it.
	TargetTimeout time.Duration

	config          string // the config's name, which names cachesync's keys
	standby         bool   // waiting for another process's hold of the slot (Run's goroutine only)
	keepaliveWarned bool   // said once that the lock's session keeps the server's keepalives
}

// Target is one Redis a feed keeps in step: the caches of the feed's
// source that list it, with its own claim, state and applied position.
type Target struct {
	Name   string // "" for a config's only target
	Caches []*config.Cache
	Stats  *Stats
	// Buffer bounds the changes held for the target while it cannot be
	// written (config.Redis.Buffer): past it, the target is left behind
	// and rebuilt once it answers, and the other targets go on.
	Buffer int
	away   atomic.Bool

	mu   sync.Mutex
	rc   rueidis.Client // nil until the target first answered (open)
	st   *state.State
	open func() (rueidis.Client, error) // opens rc, when New was given none
}

// Away tells whether the target was left behind: it is rebuilt once its
// Redis answers.
func (t *Target) Away() bool { return t.away.Load() }

// Redis returns the target's client and state record; nil until the
// target first answered, when the feed opened its client itself.
func (t *Target) Redis() (rueidis.Client, *state.State) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rc, t.st
}

// connect opens the target's client if the feed has none yet.
func (t *Target) connect(config string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.rc != nil {
		return nil
	}
	rc, err := t.open()
	if err != nil {
		return err
	}
	t.rc, t.st = rc, state.New(rc, config)
	return nil
}

// closeOpened closes the client the feed opened itself.
func (t *Target) closeOpened() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open != nil && t.rc != nil {
		t.rc.Close()
		t.rc, t.st = nil, nil
	}
}

// New returns the feed of source in cfg: every cache of that source with
// sync: changefeed, in the targets that hold one. clients[i] is the client
// of cfg.Targets[i]; the first is needed, and the feed opens (and closes)
// one missing or nil for another target when it first needs it: a target
// may be down when the feed starts.
func New(cfg *config.Config, source string, log *slog.Logger, clients ...rueidis.Client) *Feed {
	f := &Feed{
		Source: source, URL: cfg.Sources[source].URL, Slot: cfg.SlotName(source),
		Log: log.With("source", source), CheckEvery: time.Second, TargetTimeout: DefaultTargetTimeout, config: cfg.Name,
	}
	for _, name := range cfg.CacheNames() {
		if c := cfg.Caches[name]; c.Source == source && c.Sync == config.SyncChangefeed {
			f.Caches = append(f.Caches, c)
		}
	}
	targets := cfg.Targets
	if len(targets) == 0 { // a config not validated
		targets = config.Targets{cfg.Redis}
	}
	for i, tc := range targets {
		t := &Target{Name: tc.Name, Stats: &Stats{Lag: latency.New(latency.Fast)}, Buffer: tc.Buffer}
		if t.Buffer <= 0 { // a config not validated
			t.Buffer = config.DefaultBuffer
		}
		if i < len(clients) && clients[i] != nil {
			t.rc, t.st = clients[i], state.New(clients[i], cfg.Name)
		} else {
			t.open = tc.Client
		}
		for _, c := range f.Caches {
			if slices.Contains(c.Targets, tc.Name) || len(c.Targets) == 0 {
				t.Caches = append(t.Caches, c)
			}
		}
		if len(t.Caches) > 0 || i == 0 { // (the first, whose client the feed has, always)
			f.Targets = append(f.Targets, t)
		}
	}
	f.Redis, f.State, f.Stats = f.Targets[0].rc, f.Targets[0].st, f.Targets[0].Stats
	return f
}

// errSlotBusy reports that another process streams from the slot.
var errSlotBusy = errors.New("replication slot is in use by another process")

// Run runs sessions until ctx is done, restarting after failures with capped
// exponential backoff. It returns nil on shutdown and an error only for a
// problem no retry can fix (the config does not fit the database).
func (f *Feed) Run(ctx context.Context) error {
	if len(f.Caches) == 0 {
		return nil
	}
	defer func() {
		for _, t := range f.Targets {
			t.closeOpened()
		}
	}()
	backoff := minBackoff
	for {
		started := time.Now()
		err := f.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var cerr *config.Error
		if errors.As(err, &cerr) {
			return err
		}
		f.Stats.Reconnects.Add(1)
		if time.Since(started) > time.Minute {
			backoff = minBackoff
		}
		wait := backoff
		switch {
		case errors.Is(err, state.ErrRedisLost):
			f.Log.Warn("redis lost cached data; rebuilding", "err", err)
			wait = 0
		case errors.Is(err, errSlotBusy):
			f.Log.Debug("waiting for the replication slot", "slot", f.Slot, "err", err)
		case errors.Is(err, errLockLost), errors.Is(err, state.ErrFenced):
			// The next session waits for the lock: a standby now.
			f.Log.Warn("this cachesync lost the replication slot; it stops writing and stands by", "slot", f.Slot, "err", err)
			wait = 0
		default:
			f.Log.Error("change feed interrupted; retrying", "err", err, "retry_in", wait)
			backoff = min(backoff*2, maxBackoff)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// session prepares the slot and caches, rebuilds what needs it, then streams
// until an error or shutdown.
func (f *Feed) session(ctx context.Context) error {
	pgcfg, err := pgx.ParseConfig(f.URL)
	if err != nil {
		return &config.Error{Field: "sources." + f.Source + ".url", Err: err}
	}
	lockcfg := pgcfg.Copy()
	lockcfg.RuntimeParams["application_name"] = pgsource.Holder // status names the holder of the slot's lock by it
	// This side notices a lost connection within seconds too: a standby
	// blocked on the lock sends nothing, and would otherwise wait on a
	// connection PostgreSQL has dropped.
	lockcfg.DialFunc = (&net.Dialer{Timeout: lockcfg.ConnectTimeout, KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 2 * time.Second, Interval: time.Second, Count: 3}}).DialContext
	lock, err := pgx.ConnectConfig(ctx, lockcfg)
	if err != nil {
		return fmt.Errorf("connect to source %s: %w", f.Source, err)
	}
	defer lock.Close(context.WithoutCancel(ctx))
	// PostgreSQL ends the lock's session, and so frees the lock for a
	// standby, within ~5 s of losing sight of this process (a network
	// cut) rather than after the system's TCP timeouts. (Set after
	// connecting: a pooler may refuse them as startup parameters.)
	if _, err := lock.Exec(ctx, `SET tcp_keepalives_idle = 2; SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3; SET tcp_user_timeout = 5000`); err != nil && !f.keepaliveWarned {
		f.keepaliveWarned = true
		f.Log.Warn("cannot shorten the TCP keepalives of the slot lock's session: a standby takes over only once PostgreSQL's own timeouts end a lost daemon's session", "err", err)
	}

	// One process at a time rebuilds and streams this slot's caches: a
	// standby waits here, blocked on the lock, before it touches Redis.
	locked, err := pgsource.LockSlot(ctx, lock, f.Slot)
	if err != nil {
		return err
	}
	if !locked {
		if !f.standby {
			f.Log.Info("another cachesync streams this source; waiting to take over", "slot", f.Slot)
			f.standby = true
		}
		if err := pgsource.WaitSlot(ctx, lock, f.Slot); err != nil {
			return err
		}
	}
	// Holding the lock, the session lasts only while the lock's
	// connection answers: losing it (PostgreSQL ended it, or cannot be
	// reached) ends the session before another process can have taken
	// the lock, and what is read but not yet applied is left to the next
	// holder.
	sctx, stop := watchLock(ctx, lock)
	defer stop()
	err = f.held(sctx, pgcfg)
	if cause := context.Cause(sctx); ctx.Err() == nil && errors.Is(cause, errLockLost) {
		return cause
	}
	return err
}

// held is the session once it holds the slot's lock.
func (f *Feed) held(ctx context.Context, pgcfg *pgx.ConnConfig) error {
	db, err := pgx.ConnectConfig(ctx, pgcfg)
	if err != nil {
		return fmt.Errorf("connect to source %s: %w", f.Source, err)
	}
	defer db.Close(context.WithoutCancel(ctx))
	tables, err := schema.LoadTables(ctx, db, f.Caches)
	if err != nil {
		return err
	}
	var all []*pgsource.Table
	for _, t := range tables {
		all = append(all, t)
	}
	if err := pgsource.EnsurePublication(ctx, db, f.Slot, all); err != nil {
		return err
	}
	slot, err := pgsource.EnsureSlot(ctx, db, f.Slot)
	if err != nil {
		return err
	}
	if slot.ActivePID != 0 {
		// The walsender of a process that no longer holds the lock: one
		// that stopped (on its way out) or lost its lock's session (a
		// network cut, which PostgreSQL may not see on the walsender's
		// connection until wal_sender_timeout). The lock says the slot is
		// this session's: end it.
		f.Log.Warn("ending the replication of a cachesync that lost the slot's lock", "slot", f.Slot, "pid", slot.ActivePID)
		if err := pgsource.EndHolder(ctx, db, f.Slot, slot.ActivePID); err != nil {
			f.standby = true
			return fmt.Errorf("%w: slot %s, pid %d: %w", errSlotBusy, f.Slot, slot.ActivePID, err)
		}
	}
	if f.standby {
		f.Log.Info("took over the replication slot", "slot", f.Slot)
		f.standby = false
	}
	// From here on this session writes to Redis; a writer before it
	// (which lost the lock) is fenced off in every target it claims. With
	// several targets, one that does not answer is left behind: the
	// others go on, and it is rebuilt once it answers.
	multi := len(f.Targets) > 1
	var runners []*runner
	defer func() {
		for _, r := range runners {
			r.close(ctx)
		}
	}()
	var unreachable error
	for _, t := range f.Targets {
		r := &runner{f: f, t: t, tables: tables, multi: multi}
		err := r.prepare(ctx, slot, runners)
		runners = append(runners, r)
		if err == nil {
			t.away.Store(false)
			continue
		}
		r.close(ctx) // (left behind: it has no claim)
		if !multi || ctx.Err() != nil || sessionError(err) {
			return err
		}
		t.log(f).Warn("target unreachable; the other targets go on, and it is rebuilt once it answers", "err", err)
		t.away.Store(true)
		unreachable = err
	}
	if !slices.ContainsFunc(runners, func(r *runner) bool { return r.w != nil }) {
		return fmt.Errorf("no target can be written: %w", unreachable)
	}
	// A target that needs a rebuild is rebuilt while the others stream
	// when one can stream without; else every one is rebuilt first, the
	// slot holding the changes meanwhile, as with one target.
	if !slices.ContainsFunc(runners, func(r *runner) bool { return r.w != nil && len(r.rebuild) == 0 }) {
		for _, r := range runners {
			if r.w == nil || len(r.rebuild) == 0 {
				continue
			}
			if err := r.rebuildNow(ctx); err != nil {
				return err
			}
		}
	}
	f.Rebuild = nil
	return f.stream(ctx, runners)
}

// watchPrimaries checks a Cluster's primaries every second until ctx ends,
// starting from primaries (state.PrimaryInfo), the ones the state records:
// it returns ErrRedisLost once one of them is gone (failed over, or lost
// its data; the next session rebuilds), and adopts as its own and the
// state's the primaries added since (resharding) and the new replication
// ID of one that renewed it in place (state.Renewed: its first replica
// attached). A check some node did not answer decides nothing.
func (f *Feed) watchPrimaries(ctx context.Context, t *Target, primaries []state.Primary) error {
	tick := time.NewTicker(f.CheckEvery)
	defer tick.Stop()
	ids, prev := state.IDs(primaries), primaries
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		now, err := state.PrimaryInfo(ctx, t.rc)
		if err != nil {
			continue
		}
		if id := state.Gone(state.Renewed(ids, prev, now), state.IDs(now)); id != "" {
			return fmt.Errorf("%w: a primary failed over or lost its data (replication ID %s is gone)", state.ErrRedisLost, id)
		}
		if nowIDs := state.IDs(now); !slices.Equal(nowIDs, ids) {
			if err := t.st.SetPrimaries(ctx, f.Source, now); err != nil {
				continue
			}
			ids = nowIDs
		}
		prev = now
	}
}

// lockPing is how often a session holding its slot's lock checks that the
// lock's connection answers, and lockTimeout how long one check may take:
// together under the ~5 s in which PostgreSQL ends a session it lost sight
// of (the keepalives in session), so a cut-off holder stops first.
const lockPing, lockTimeout = time.Second, 3 * time.Second

// errLockLost reports that the session holding the slot's lock ended or
// stopped answering: another process may take the lock.
var errLockLost = errors.New("lost the replication slot's lock")

// watchLock returns ctx, ended with cause errLockLost once lock, the
// connection holding the slot's lock, fails to answer; stop ends the watch
// (and the context). Only the watch uses lock until stop.
func watchLock(ctx context.Context, lock *pgx.Conn) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(lockPing)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			pctx, cancelPing := context.WithTimeout(ctx, lockTimeout)
			err := lock.Ping(pctx)
			cancelPing()
			if err != nil && ctx.Err() == nil {
				cancel(fmt.Errorf("%w: %w", errLockLost, err))
				return
			}
		}
	}()
	return ctx, func() { cancel(nil); <-done }
}

// stream applies the slot's changes to every target until ctx is done or
// something fails.
func (f *Feed) stream(ctx context.Context, runners []*runner) error {
	st, err := pgsource.StartStream(ctx, f.URL, f.Slot, f.Slot, f.Log)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" { // object_in_use
			return fmt.Errorf("%w: %v", errSlotBusy, err)
		}
		return err
	}
	f.Log.Info("streaming changes", "slot", f.Slot, "caches", len(f.Caches))
	conf := &confirmer{st: st, at: map[*Target]pglogrepl.LSN{}}
	for _, r := range runners {
		r.start(conf)
	}

	// Writes are not cut off by shutdown: what was read is applied and
	// then confirmed, so a graceful stop replays nothing. They stop at
	// once when the stream fails or the lock is lost: what is left was
	// not confirmed, and the next holder of the slot streams it again.
	applyCtx, stopApplying := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopApplying(nil)
	stopOnLoss := context.AfterFunc(ctx, func() {
		if cause := context.Cause(ctx); errors.Is(cause, errLockLost) {
			stopApplying(cause)
		}
	})
	defer stopOnLoss()
	txns := make(chan *pgsource.Txn, 64)
	readCtx, stopReading := context.WithCancel(ctx)
	defer stopReading()
	readErr := make(chan error, 1)
	go func() {
		defer close(txns)
		err := st.Run(readCtx, txns)
		if err != nil && readCtx.Err() == nil {
			stopApplying(err)
		}
		readErr <- err
	}()
	// The fan: every transaction read goes to every target's queue.
	fanned := make(chan struct{})
	go func() {
		defer close(fanned)
		defer func() {
			for _, r := range runners {
				r.end()
			}
		}()
		for t := range txns {
			for _, r := range runners {
				if err := r.push(applyCtx, t); err != nil {
					return
				}
			}
		}
	}()
	// A runner waiting for its target stops waiting at shutdown, and when
	// the others stop applying.
	waitCtx, stopWaiting := context.WithCancel(ctx)
	defer stopWaiting()
	defer context.AfterFunc(applyCtx, stopWaiting)()
	var wg sync.WaitGroup
	errs := make([]error, len(runners))
	for i, r := range runners {
		wg.Go(func() {
			if errs[i] = r.run(waitCtx, applyCtx); errs[i] != nil {
				stopApplying(errs[i])
			}
		})
	}
	wg.Wait()
	stopReading()
	stopApplying(nil) // frees a fan waiting on a queue no runner takes from
	<-fanned
	for range txns {
	}
	rerr := <-readErr
	if cerr := st.Close(ctx); cerr != nil && ctx.Err() == nil {
		f.Log.Debug("final status", "err", cerr)
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	if cause := context.Cause(applyCtx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause // the stream failed, or the lock was lost
	}
	if ctx.Err() != nil {
		return nil
	}
	return rerr
}

// Applied returns the position of the last transaction f applied to Redis;
// 0 before any, or when f is nil (no feed of the source runs here).
func (f *Feed) Applied() uint64 {
	if f == nil {
		return 0
	}
	return f.Stats.AppliedLSN.Load()
}
