package changefeed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/pgsource"
	"github.com/cachesync/cachesync/internal/state"
)

// One slot feeds every target: the stream's transactions go to a queue per
// target (fan), each target's runner applies its queue on its own, and the
// position confirmed to PostgreSQL is the least any target applied
// (confirmer). With several targets, one that fails is retried while its
// queue holds what it missed, up to its buffer; past it, the target is left
// behind, and rebuilt from a snapshot once it answers while the others go
// on. With one target, a failure ends the session, as it always did.

// DefaultTargetTimeout is a feed's TargetTimeout unless set.
const DefaultTargetTimeout = 10 * time.Second

// log returns f's logger, naming t when the feed has several targets.
func (t *Target) log(f *Feed) *slog.Logger {
	if t.Name == "" {
		return f.Log
	}
	return f.Log.With("target", t.Name)
}

// errSchema reports a table that changed under a cache during a session:
// every target stops, and the next session checks the schema again.
var errSchema = errors.New("the table changed")

// sessionError tells an error that ends the whole session, whatever the
// target, from one of a target's own Redis.
func sessionError(err error) bool {
	var cerr *config.Error
	var rerr *readError
	return errors.As(err, &cerr) || errors.As(err, &rerr) || errors.Is(err, errSchema) ||
		errors.Is(err, state.ErrFenced) || errors.Is(err, errLockLost)
}

// readAhead bounds the changes read for a target that applies but has not
// yet: the stream waits for it past that (a deeper read-ahead only holds
// memory; the applier takes maxBatchChanges at a time).
const readAhead = 4 * maxBatchChanges

// queue holds the transactions read for one target and not yet applied to
// it: up to readAhead changes while the target applies, up to limit (its
// buffer) while it fails (or one transaction part, whatever its size).
type queue struct {
	mu      sync.Mutex
	txns    []*pgsource.Txn
	changes int
	limit   int
	failing bool // the target applies nothing now: when full, the queue leaves it behind rather than wait
	left    bool // left behind: emptied, and takes nothing more
	closed  bool // the stream ended: nothing more comes
	wake    chan struct{}
	room    chan struct{}
}

func newQueue(limit int) *queue {
	return &queue{limit: limit, wake: make(chan struct{}, 1), room: make(chan struct{}, 1)}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// push adds t. While the target applies and the queue holds readAhead
// changes, it waits for the target; while the target fails, it adds up to
// the target's buffer, and past it leaves the target behind and reports
// that.
func (q *queue) push(ctx context.Context, t *pgsource.Txn) (left bool, err error) {
	q.mu.Lock()
	for !q.left && len(q.txns) > 0 {
		n := q.changes + len(t.Changes)
		if q.failing && n > q.limit {
			q.left, q.txns, q.changes = true, nil, 0
			break
		}
		if q.failing || n <= min(readAhead, q.limit) {
			break
		}
		q.mu.Unlock()
		select {
		case <-q.room:
		case <-ctx.Done():
			return false, context.Cause(ctx)
		}
		q.mu.Lock()
	}
	left = q.left
	if !left {
		q.txns = append(q.txns, t)
		q.changes += len(t.Changes)
	}
	q.mu.Unlock()
	signal(q.wake)
	return left, nil
}

// peek returns the transactions at the head, up to max changes (at least
// one), leaving them in the queue, and whether the stream has ended.
func (q *queue) peek(max int) ([]*pgsource.Txn, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	n, end := 0, 0
	for end < len(q.txns) && (end == 0 || n+len(q.txns[end].Changes) <= max) {
		n += len(q.txns[end].Changes)
		end++
	}
	return slices.Clone(q.txns[:end]), q.closed || q.left
}

// drop removes the n transactions at the head: they are applied.
func (q *queue) drop(n int) {
	q.mu.Lock()
	if !q.left {
		for _, t := range q.txns[:n] {
			q.changes -= len(t.Changes)
		}
		q.txns = slices.Delete(q.txns, 0, n)
	}
	q.mu.Unlock()
	signal(q.room)
}

// close tells the queue the stream ended.
func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	signal(q.wake)
}

// setFailing says whether the target fails to apply (a full queue then
// leaves it behind).
func (q *queue) setFailing(failing bool) {
	q.mu.Lock()
	q.failing = failing
	q.mu.Unlock()
	signal(q.room)
}

// applying says the target applies again, unless the queue left it behind
// already (false): in one step, so it is never left behind after.
func (q *queue) applying() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.left {
		return false
	}
	q.failing = false
	return true
}

// isLeft tells whether the queue left its target behind.
func (q *queue) isLeft() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.left
}

// confirmer confirms to PostgreSQL the least position every counted target
// applied, never moving it back: a target left behind is not counted, and
// is rebuilt when it returns.
type confirmer struct {
	mu   sync.Mutex
	st   *pgsource.Stream
	at   map[*Target]pglogrepl.LSN
	done pglogrepl.LSN
}

// applied records that t applied everything up to lsn.
func (c *confirmer) applied(t *Target, lsn pglogrepl.LSN) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.at[t]; ok {
		c.at[t] = lsn
		c.update()
	}
}

// join counts t, which applied everything up to lsn, from now on.
func (c *confirmer) join(t *Target, lsn pglogrepl.LSN) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at[t] = lsn
	c.update()
}

// count counts t, which applied everything up to lsn, from now on, and
// confirms nothing yet: the targets a session starts with are all counted
// before the first position is confirmed (a target counted first, ahead of
// another, would have the slot confirm past it).
func (c *confirmer) count(t *Target, lsn pglogrepl.LSN) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at[t] = lsn
}

// leave stops counting t and returns how many targets are still counted.
func (c *confirmer) leave(t *Target) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.at, t)
	c.update()
	return len(c.at)
}

func (c *confirmer) update() {
	if len(c.at) == 0 {
		return
	}
	low := pglogrepl.LSN(1<<64 - 1)
	for _, lsn := range c.at {
		low = min(low, lsn)
	}
	if low > c.done {
		c.done = low
		c.st.Applied(low)
	}
}

// runner keeps one target in step during a session: it applies the
// target's queue, retries a failing target in place, and rebuilds one left
// behind once it answers.
type runner struct {
	f      *Feed
	t      *Target
	tables map[string]*pgsource.Table
	multi  bool // the feed has several targets: a target's own failure does not end the session

	// From prepare or join.
	w         *state.Writer
	applied   pglogrepl.LSN
	since     map[string]pglogrepl.LSN
	rebuild   []*config.Cache // caches to rebuild before the target streams
	lost      bool            // Redis lost data: every cache is rebuilt, from the slot's position
	primaries []state.Primary // on a Cluster, the primaries the state records

	conf  *confirmer
	a     *applier
	acked pglogrepl.LSN // the applied position Redis acknowledged last, kept across a failure

	mu    sync.Mutex
	q     *queue // nil while left behind
	ended bool   // the stream ended: no queue is attached any more
}

// distinct fails with a config error when r's claim replaced the claim of
// a target in earlier: the same Redis under another URL, whose state the
// two would share.
func (r *runner) distinct(ctx context.Context, earlier []*runner) error {
	key := binding.FeedOwnerKey(r.f.config, r.f.Source)
	for _, o := range earlier {
		if o.w == nil {
			continue
		}
		v, err := o.t.rc.Do(ctx, o.t.rc.B().Get().Key(key).Build()).ToString()
		if err == nil && v == r.w.Token() {
			return &config.Error{Field: "redis." + r.t.Name + ".url", Err: fmt.Errorf("the same Redis as target %q: each target needs a Redis of its own", o.t.Name)}
		}
	}
	return nil
}

// claim connects to the target, claims the source in it (r.w) and loads
// its state: the applied position, whether it is known, and the caches'
// entries.
func (r *runner) claim(ctx context.Context) (pglogrepl.LSN, bool, map[string]state.CacheEntry, error) {
	f, t := r.f, r.t
	if err := t.connect(f.config); err != nil {
		return 0, false, nil, err
	}
	w, err := t.st.Claim(ctx, f.Source)
	if err != nil {
		return 0, false, nil, err
	}
	r.w = w
	names := make([]string, len(t.Caches))
	for i, c := range t.Caches {
		names[i] = c.Name
	}
	return t.st.Load(ctx, f.Source, names)
}

// prepare claims the target, loads its state, and rebuilds the caches that
// need it, before the stream starts.
func (r *runner) prepare(ctx context.Context, slot pgsource.SlotInfo, earlier []*runner) error {
	f, t := r.f, r.t
	// With several targets, one that does not answer within TargetTimeout
	// is left behind; its rebuild below may take as long as it takes.
	cctx, cancel := ctx, context.CancelFunc(func() {})
	if r.multi {
		cctx, cancel = context.WithTimeout(ctx, f.TargetTimeout)
	}
	defer cancel()
	applied, known, entries, err := r.claim(cctx)
	if err != nil {
		return err
	}
	if err := r.distinct(cctx, earlier); err != nil {
		return err
	}
	lost := slot.Created || !known || applied < slot.Confirmed
	// On a Cluster the state record lives on one node: a failover of
	// another (a replica promoted without writes it had not received yet)
	// shows in the primaries' replication IDs instead.
	if t.rc.Mode() == rueidis.ClientModeCluster {
		// (A primary that does not answer counts as gone: a failed one.)
		r.primaries, _ = state.PrimaryInfo(cctx, t.rc)
		gone, err := t.st.PrimaryGone(cctx, f.Source, r.primaries)
		if err != nil {
			return err
		}
		if gone && !lost {
			t.log(f).Warn("a Redis primary failed over or lost its data since the last session; rebuilding, as writes it acknowledged may be lost")
			lost = true
		}
	}
	r.since = map[string]pglogrepl.LSN{}
	r.rebuild = nil
	for _, c := range t.Caches {
		e, ok := entries[c.Name]
		if lost || !ok || e.Fingerprint != c.Fingerprint() || slices.Contains(f.Rebuild, c.Name) {
			r.rebuild = append(r.rebuild, c)
			continue
		}
		r.since[c.Name] = e.Since
	}
	r.applied, r.lost = applied, lost
	if lost {
		// Redis lost data: streaming resumes at the slot's position.
		r.applied = slot.Confirmed
	}
	if len(r.rebuild) > 0 {
		// Forgotten now, though rebuilt later (maybe while the others
		// stream): a session that ends before still leaves them to rebuild.
		return r.forget(ctx)
	}
	if r.primaries != nil {
		return t.st.SetPrimaries(ctx, f.Source, r.primaries)
	}
	return nil
}

// forget removes the state entries of the caches to rebuild (and, when
// Redis lost data, records the position streaming resumes at) in one step,
// before they are rebuilt: an interrupted rebuild is redone whole.
func (r *runner) forget(ctx context.Context) error {
	return r.t.st.Forget(ctx, r.f.Source, r.rebuild, r.lost, r.applied)
}

// rebuildNow rebuilds the caches forget forgot, and records the primaries
// read before (on a Cluster: a failover during the rebuild is then a loss
// the record shows).
func (r *runner) rebuildNow(ctx context.Context) error {
	f, t := r.f, r.t
	lsn, err := f.rebuild(ctx, t, r.w, r.tables, r.rebuild)
	if err != nil {
		return err
	}
	for _, c := range r.rebuild {
		r.since[c.Name] = lsn
	}
	r.rebuild, r.lost = nil, false
	if r.primaries != nil {
		return t.st.SetPrimaries(ctx, f.Source, r.primaries)
	}
	return nil
}

// rebuildStreaming runs rebuildNow while the other targets stream: the
// target's queue, attached before its snapshot is taken, holds what comes
// meanwhile, up to its buffer (past it, the target is left behind).
func (r *runner) rebuildStreaming(ctx context.Context) error {
	f, t := r.f, r.t
	q := r.queue()
	q.setFailing(true) // not applying while it rebuilds
	if err := r.rebuildNow(ctx); err != nil {
		return err
	}
	if !q.applying() {
		return fmt.Errorf("target %q missed more changes than its buffer (%d) holds while it was rebuilt", t.Name, t.Buffer)
	}
	r.a = newApplier(f, t, r.w, r.conf, r.tables, r.since, r.applied)
	return nil
}

// start readies a prepared runner to apply the stream: its queue and
// applier, counted by conf.
func (r *runner) start(conf *confirmer) {
	r.conf = conf
	if r.w == nil {
		return // left behind from the start
	}
	r.q = newQueue(r.t.Buffer)
	conf.count(r.t, r.applied)
	if len(r.rebuild) == 0 { // else run rebuilds it first
		r.a = newApplier(r.f, r.t, r.w, conf, r.tables, r.since, r.applied)
	}
}

// push hands t to the runner's queue, if it has one.
func (r *runner) push(ctx context.Context, t *pgsource.Txn) error {
	r.mu.Lock()
	q := r.q
	r.mu.Unlock()
	if q == nil {
		return nil
	}
	left, err := q.push(ctx, t)
	if left {
		r.mu.Lock()
		if r.q == q {
			r.q = nil
		}
		r.mu.Unlock()
	}
	return err
}

// end tells the runner the stream ended.
func (r *runner) end() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ended = true
	if r.q != nil {
		r.q.close()
	}
}

// attach gives the runner a new queue, which takes every transaction read
// from now on; false when the stream has ended.
func (r *runner) attach() (*queue, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ended {
		return nil, false
	}
	r.q = newQueue(r.t.Buffer)
	return r.q, true
}

// detach drops the runner's queue.
func (r *runner) detach() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.q = nil
}

func (r *runner) queue() *queue {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.q
}

// close releases the runner's writer and applier.
func (r *runner) close(ctx context.Context) {
	if r.a != nil {
		r.acked = r.a.expected
		r.a.close(ctx)
		r.a = nil
	}
	r.w.Close()
	r.w = nil
}

// run applies the target's queue until the stream ends (nil), or the session
// must end. Applying uses applyCtx, which shutdown does not end; waiting to
// retry uses ctx, which it does.
func (r *runner) run(ctx, applyCtx context.Context) error {
	defer r.close(ctx)
	f, t := r.f, r.t
	backoff := minBackoff
	if len(r.rebuild) > 0 && r.w != nil {
		t.log(f).Info("rebuilding this target while the others stream", "caches", len(r.rebuild))
		if err := r.rebuildStreaming(ctx); err != nil {
			switch {
			case ctx.Err() != nil:
				return nil
			case sessionError(err):
				return err
			}
			t.log(f).Warn("target left behind: its rebuild failed; it is rebuilt again once it can be, and the others go on", "err", err)
			r.close(ctx)
			if err := r.leave(err); err != nil {
				return err
			}
		}
	}
	for {
		if r.queue() == nil {
			err := r.join(ctx)
			switch {
			case err == nil:
				backoff = minBackoff
			case ctx.Err() != nil:
				return nil
			case sessionError(err):
				return err
			default:
				t.log(f).Debug("target left behind still cannot be rebuilt", "err", err, "retry_in", backoff)
				if !sleep(ctx, backoff) {
					return nil
				}
				backoff = min(backoff*2, maxBackoff)
				continue
			}
		}
		q := r.queue()
		err := r.apply(applyCtx, q)
		if err == nil || applyCtx.Err() != nil || !r.multi || sessionError(err) {
			return err
		}
		// A failure of this target alone: the others go on, and its queue
		// holds what it missed, up to its buffer.
		q.setFailing(true)
		r.close(ctx)
		if stop, err := r.recover(ctx, q, err, &backoff); stop || err != nil {
			return err
		}
	}
}

const minBackoff, maxBackoff = 100 * time.Millisecond, 10 * time.Second

// recover waits for a target that failed with cause to answer again, while
// its queue q holds what it misses. It returns with the runner applying
// again, or left behind (to be rebuilt), or stop when the session ends.
func (r *runner) recover(ctx context.Context, q *queue, cause error, backoff *time.Duration) (stop bool, err error) {
	f, t := r.f, r.t
	if !errors.Is(cause, state.ErrRedisLost) {
		t.log(f).Warn("cannot write to this target; retrying, holding its changes up to its buffer", "err", cause, "buffer", t.Buffer)
	}
	for {
		if errors.Is(cause, state.ErrRedisLost) {
			t.log(f).Warn("redis lost cached data; rebuilding this target while the others go on", "err", cause)
			return false, r.leave(cause)
		}
		if !sleep(ctx, *backoff) {
			return true, nil
		}
		*backoff = min(*backoff*2, maxBackoff)
		if q.isLeft() {
			t.log(f).Warn("target left behind: it missed more changes than its buffer holds; it is rebuilt once it answers, and the others go on", "buffer", t.Buffer)
			return false, r.leave(cause)
		}
		if cause = r.resume(ctx); cause == nil {
			if !q.applying() { // left behind while it was claimed again
				r.close(ctx)
				t.log(f).Warn("target left behind: it missed more changes than its buffer holds; it is rebuilt once it answers, and the others go on", "buffer", t.Buffer)
				return false, r.leave(errors.New("left behind"))
			}
			*backoff = minBackoff
			t.log(f).Info("target answers again; applying its held changes")
			return false, nil
		}
		r.close(ctx)
		if sessionError(cause) {
			return true, cause
		}
	}
}

// leave stops counting the target, which is rebuilt once it answers (its
// applied position falls behind the one confirmed); it ends the session
// when no target is left to stream, so the slot keeps their changes.
func (r *runner) leave(cause error) error {
	r.detach()
	r.t.away.Store(true)
	if r.conf.leave(r.t) == 0 {
		return fmt.Errorf("no target can be written: %w", cause)
	}
	return nil
}

// resume claims the target again after a failure and reads where it
// stands: its queue still holds every transaction after that. A target
// whose Redis lost the state, or on a Cluster a primary, is ErrRedisLost.
func (r *runner) resume(ctx context.Context) error {
	f, t := r.f, r.t
	ctx, cancel := context.WithTimeout(ctx, f.TargetTimeout)
	defer cancel()
	applied, known, entries, err := r.claim(ctx)
	if err != nil {
		return err
	}
	if !known || len(entries) < len(t.Caches) {
		return fmt.Errorf("%w: the state record of target %q is gone", state.ErrRedisLost, t.Name)
	}
	if applied < r.acked {
		// Back from an older dump: its queue no longer holds what it lost.
		return fmt.Errorf("%w: the state record of target %q went back from %s to %s", state.ErrRedisLost, t.Name, r.acked, applied)
	}
	if r.primaries != nil {
		// The primaries now, against those recorded: one may have failed
		// over while the target could not be reached.
		now, err := state.PrimaryInfo(ctx, t.rc)
		if err != nil {
			return err
		}
		gone, err := t.st.PrimaryGone(ctx, f.Source, now)
		if err != nil {
			return err
		}
		if gone {
			return fmt.Errorf("%w: a primary failed over or lost its data", state.ErrRedisLost)
		}
		if err := t.st.SetPrimaries(ctx, f.Source, now); err != nil {
			return err
		}
		r.primaries = now
	}
	since := map[string]pglogrepl.LSN{}
	for name, e := range entries {
		since[name] = e.Since
	}
	r.a = newApplier(f, t, r.w, r.conf, r.tables, since, applied)
	return nil
}

// join rebuilds a target left behind, once it answers, and counts it again.
// Its new queue is attached before the snapshot is taken: every transaction
// the snapshot lacks reaches the queue, and those it has are skipped.
func (r *runner) join(ctx context.Context) error {
	f, t := r.f, r.t
	if err := t.connect(f.config); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, f.TargetTimeout)
	defer cancel()
	w, err := t.st.Claim(cctx, f.Source)
	if err != nil {
		return err
	}
	r.w = w
	r.primaries = nil
	if t.rc.Mode() == rueidis.ClientModeCluster {
		if r.primaries, err = state.PrimaryInfo(cctx, t.rc); err != nil {
			r.close(ctx)
			return err
		}
	}
	q, ok := r.attach()
	if !ok {
		r.close(ctx)
		return ctx.Err() // the stream ended: the next session rebuilds it
	}
	q.setFailing(true) // not applying while it rebuilds: a full queue leaves it behind again
	t.log(f).Info("target answers; rebuilding it while the others go on")
	r.rebuild, r.lost, r.applied, r.since = t.Caches, true, 0, map[string]pglogrepl.LSN{}
	if err = r.forget(ctx); err == nil {
		err = r.rebuildStreaming(ctx)
	}
	if err != nil {
		r.detach()
		r.close(ctx)
		return err
	}
	r.conf.join(t, 0)
	t.away.Store(false)
	t.log(f).Info("target rebuilt; streaming its changes")
	return nil
}

// apply runs the applier on q (and, on a Cluster, the watch of the
// primaries) until q ends or something fails.
func (r *runner) apply(ctx context.Context, q *queue) error {
	if q == nil {
		return nil
	}
	actx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	var wg sync.WaitGroup
	if r.primaries != nil {
		wg.Go(func() {
			if err := r.f.watchPrimaries(actx, r.t, r.primaries); err != nil {
				stop(err)
			}
		})
	}
	err := r.a.run(actx, q)
	if err != nil && actx.Err() != nil && ctx.Err() == nil {
		err = context.Cause(actx) // the primaries' watch
	}
	stop(nil)
	wg.Wait()
	return err
}

// sleep waits d, or returns false when ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
