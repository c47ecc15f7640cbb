// Package state is cachesync's own record in Redis of what the caches
// hold: how far each source's changes are applied, and from which snapshot
// each cache was built. The change feed writes it; Put (read-your-writes),
// check, status and metrics read it.
package state

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
)

// State is cachesync's own record in Redis of what the caches hold, kept in
// one hash (binding.StateKey: cachesync:state:NAME):
//
//	lsn:SOURCE  end LSN of the last transaction of SOURCE applied to Redis
//	cache:NAME  FINGERPRINT/SINCE: the cache was built from a snapshot at SINCE
//	            with the mapping FINGERPRINT
//
// If Redis loses data (flushed, restarted without persistence, restored from
// an old dump) this record goes missing or falls behind the slot; that is how
// a lost cache is noticed and rebuilt.
type State struct {
	Key    string         // the record's hash, binding.StateKey of the config
	Config string         // the config's name
	Redis  rueidis.Client // where it lives
}

// ErrRedisLost reports that Redis no longer holds what cachesync wrote.
var ErrRedisLost = errors.New("redis lost cachesync's writes (flushed or restarted without them)")

// New returns the state record of the config named name.
func New(client rueidis.Client, name string) *State {
	return &State{Key: binding.StateKey(name), Config: name, Redis: client}
}

// CacheEntry is what the state says of one cache.
type CacheEntry struct {
	Fingerprint string        // the cache's mapping when it was built (config.Cache.Fingerprint)
	Since       pglogrepl.LSN // the snapshot it was built from
}

// Load returns the applied LSN of source (0, false when unknown) and the entries of caches.
func (s *State) Load(ctx context.Context, source string, caches []string) (pglogrepl.LSN, bool, map[string]CacheEntry, error) {
	m, err := s.Redis.Do(ctx, s.Redis.B().Hgetall().Key(s.Key).Build()).AsStrMap()
	if err != nil {
		return 0, false, nil, fmt.Errorf("read %s: %w", s.Key, err)
	}
	entries := map[string]CacheEntry{}
	for _, c := range caches {
		v, ok := m["cache:"+c]
		if !ok {
			continue
		}
		fp, since, _ := strings.Cut(v, "/")
		lsn, err := parseLSN(since)
		if err != nil {
			continue // a damaged entry means rebuild
		}
		entries[c] = CacheEntry{Fingerprint: fp, Since: lsn}
	}
	v, ok := m["lsn:"+source]
	if !ok {
		return 0, false, entries, nil
	}
	lsn, err := parseLSN(v)
	return lsn, err == nil, entries, nil
}

// setCache records that cache was rebuilt from a snapshot at e.Since.
func (s *State) setCache(cache string, e CacheEntry) rueidis.Completed {
	return s.Redis.B().Hset().Key(s.Key).FieldValue().
		FieldValue("cache:"+cache, e.Fingerprint+"/"+formatLSN(e.Since)).Build()
}

// SetCache records that cache was rebuilt from a snapshot at e.Since,
// fenced by w's claim, as its writes are: the record of a rebuild of a
// session that lost its claim (arriving late, after another session began
// rebuilding the cache) writes nothing.
func (w *Writer) SetCache(ctx context.Context, cache string, e CacheEntry) error {
	if err := w.Write(ctx, []rueidis.Completed{w.s.setCache(cache, e)}); err != nil {
		return fmt.Errorf("write %s: %w", w.s.Key, err)
	}
	return nil
}

// forget removes the cache entries ARGV[4..] and, when ARGV[1] is 1, sets
// the field ARGV[2] (applied LSN) to ARGV[3], in one atomic step.
const forget = `local n = tonumber(ARGV[1])
for i = 4, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
if n == 1 then redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) end
return 1`

// Forget removes the entries of caches about to be rebuilt, so an
// interrupted rebuild is redone whole; with setLSN it also records lsn as
// source's applied LSN (Redis lost data: streaming resumes at the slot).
func (s *State) Forget(ctx context.Context, source string, caches []*config.Cache, setLSN bool, lsn pglogrepl.LSN) error {
	flag := "0"
	if setLSN {
		flag = "1"
	}
	args := []string{flag, "lsn:" + source, formatLSN(lsn)}
	for _, c := range caches {
		args = append(args, "cache:"+c.Name)
	}
	if err := s.Redis.Do(ctx, s.Redis.B().Eval().Script(forget).Numkeys(1).Key(s.Key).Arg(args...).Build()).Error(); err != nil {
		return fmt.Errorf("write %s: %w", s.Key, err)
	}
	return nil
}

// advance moves lsn:SOURCE from ARGV[2] to ARGV[3] (fixed-width hex, so
// string order is LSN order) and returns 1, or returns 0 when the field does
// not hold ARGV[2]: something other than this feed changed or lost it.
const advance = `local v = redis.call('HGET', KEYS[1], ARGV[1])
if v ~= ARGV[2] then return 0 end
if ARGV[3] > v then redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1`

// ErrFenced reports that another feed session claimed the source (Claim)
// after this one: this one has lost the slot and must write nothing more.
var ErrFenced = errors.New("another cachesync took over this source's slot")

// Writer is the one feed session allowed to write a source's changes: what
// Claim returns. Its writes are fenced: a writer whose claim was taken over
// by a later one writes nothing more, whenever its commands reach Redis,
// even late, across a network that held them.
type Writer struct {
	s      *State
	source string
	key    string // binding.FeedOwnerKey
	token  string
	// On one Redis node, a connection of its own that WATCHes key: a
	// later claim makes its next EXEC write nothing.
	dc       rueidis.DedicatedClient
	release  func()
	watching bool // key is watched on dc, and held token when last read
	// On a Cluster, which node serves each slot, as last read: its
	// writes are grouped by node (binding.Fence).
	routes *binding.Routes
}

// Claim makes the caller the writer of source's changes, taking over from
// any before it: it records a new token in binding.FeedOwnerKey (and, on a
// Cluster, in every hash slot's binding.FeedFenceKey), which every write of
// a writer checks (see Advance). Call it
// holding the slot's lock, before the session writes to Redis; Close the
// Writer when the session ends.
func (s *State) Claim(ctx context.Context, source string) (*Writer, error) {
	w := &Writer{s: s, source: source, key: binding.FeedOwnerKey(s.Config, source), token: binding.NewToken()}
	if err := s.Redis.Do(ctx, s.Redis.B().Set().Key(w.key).Value(w.token).Build()).Error(); err != nil {
		return nil, fmt.Errorf("claim %s: %w", w.key, err)
	}
	if s.Redis.Mode() != rueidis.ClientModeCluster {
		w.dc, w.release = s.Redis.Dedicate()
		return w, nil
	}
	// On a Cluster, the token goes in every hash slot's fence too: the
	// writes to a node check the fence of one of its slots (Advance).
	rb := s.Redis.B()
	fences := make(rueidis.Commands, binding.Slots)
	for slot := range fences {
		fences[slot] = rb.Set().Key(binding.FeedFenceKey(s.Config, source, uint16(slot))).Value(w.token).Build()
	}
	if err := firstError(s.Redis.DoMulti(ctx, fences...)); err != nil {
		return nil, fmt.Errorf("claim %s's fences: %w", w.key, err)
	}
	var err error
	if w.routes, err = binding.ReadRoutes(ctx, s.Redis); err != nil {
		return nil, err
	}
	return w, nil
}

// Token is the writer's claim, as recorded in binding.FeedOwnerKey.
func (w *Writer) Token() string { return w.token }

// Close gives back the writer's connection, watching nothing (or, when
// it does not answer at once, closes it).
func (w *Writer) Close() {
	if w != nil && w.release != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if w.dc.Do(ctx, w.dc.B().Unwatch().Build()).Error() != nil {
			w.dc.Close()
		}
		w.release()
	}
}

// Advance sends writes, a batch of the feed's writes (possibly none), and
// moves source's applied LSN from from to to once Redis has acknowledged
// every one of them; ErrRedisLost when the record no longer holds from.
// Others trust that record (Put waits on it), so it never runs ahead of a
// write.
//
// On one Redis node the writes and the check-and-advance go in one
// transaction (MULTI/EXEC) on the writer's connection, which WATCHes the
// owner token and read it after the previous EXEC (in the same round
// trip): a later Claim makes the EXEC write nothing (ErrFenced), even if
// this writer's commands reach Redis late. On a Cluster a transaction
// cannot span hash slots: each node's writes go in one script call that
// checks the fence of one of its slots first (binding.Fence), to several
// nodes at once, and the advance follows in a second round trip, after all
// of them answered.
func (w *Writer) Advance(ctx context.Context, writes []rueidis.Completed, from, to pglogrepl.LSN) error {
	s := w.s
	adv := s.Redis.B().Eval().Script(advance).Numkeys(1).Key(s.Key).
		Arg("lsn:"+w.source, formatLSN(from), formatLSN(max(from, to))).Build()
	return w.send(ctx, writes, &adv)
}

// Write sends writes, fenced as Advance sends them, and moves no position:
// a rebuild's.
func (w *Writer) Write(ctx context.Context, writes []rueidis.Completed) error {
	return w.send(ctx, writes, nil)
}

// Fork returns a writer of the same claim with a connection of its own,
// for writes sent in parallel (a rebuild's); Close it.
func (w *Writer) Fork() *Writer {
	f := &Writer{s: w.s, source: w.source, key: w.key, token: w.token, routes: w.routes}
	if w.dc != nil {
		f.dc, f.release = w.s.Redis.Dedicate()
	}
	return f
}

// send sends writes fenced (see Advance) and then, in the same
// transaction on one node, adv when given, whose reply it checks.
func (w *Writer) send(ctx context.Context, writes []rueidis.Completed, adv *rueidis.Completed) error {
	s := w.s
	if w.dc == nil {
		if err := w.fenced(ctx, writes); err != nil {
			return err
		}
		if adv == nil {
			return nil
		}
		res := s.Redis.DoMulti(ctx, *adv, s.Redis.B().Get().Key(w.key).Build())
		if err := w.owned(res[1]); err != nil {
			return err
		}
		return checkAdvance(res[0].AsInt64())
	}
	b := w.dc.B()
	if !w.watching {
		// (UNWATCH first: the connection comes from a pool.)
		res := w.dc.DoMulti(ctx, b.Unwatch().Build(), b.Watch().Key(w.key).Build(), b.Get().Key(w.key).Build())
		if err := w.watched(res[1:]); err != nil {
			return err
		}
	}
	cmds := make(rueidis.Commands, 0, len(writes)+5)
	cmds = append(cmds, b.Multi().Build())
	cmds = append(cmds, writes...)
	if adv != nil {
		cmds = append(cmds, *adv)
	}
	cmds = append(cmds, b.Exec().Build(), b.Watch().Key(w.key).Build(), b.Get().Key(w.key).Build())
	res := w.dc.DoMulti(ctx, cmds...)
	n := len(res)
	w.watching = false
	replies, err := res[n-3].ToArray()
	if err != nil && !rueidis.IsRedisNil(err) {
		// A write refused as queued discards the transaction: say which.
		if werr := firstError(res[1 : n-3]); werr != nil {
			return werr
		}
		return fmt.Errorf("redis write: %w", err)
	}
	if werr := w.watched(res[n-2:]); werr != nil {
		return werr
	}
	if rueidis.IsRedisNil(err) {
		// Nothing was written, yet the token is still this writer's:
		// something else touched it. The session starts over.
		return fmt.Errorf("redis write: refused: %s was touched, though it still holds this writer's token", w.key)
	}
	written := replies
	if adv != nil {
		written = replies[:len(replies)-1]
	}
	for _, r := range written {
		if err := r.Error(); err != nil {
			return fmt.Errorf("redis write: %w", err)
		}
	}
	if adv == nil {
		return nil
	}
	return checkAdvance(replies[len(replies)-1].AsInt64())
}

// fenced sends writes on a Cluster: a script call per node that writes
// only while the fence of one of the node's slots holds the writer's token
// (binding.Fence). What did not run is sent again, in order: a node's
// call, with the script itself when the node did not have it loaded
// (NOSCRIPT); and, with the routes read anew once a slot's move ends
// (binding.UntilMoved), a node's call refused while its fence's slot moves
// (TRYAGAIN) and the writes of keys a node does not serve (any longer).
func (w *Writer) fenced(ctx context.Context, writes []rueidis.Completed) error {
	s := w.s
	evalsha, stale := true, false
	err := binding.UntilMoved(ctx, func() error {
		if stale {
			routes, err := binding.ReadRoutes(ctx, s.Redis)
			if err != nil {
				return err
			}
			w.routes, stale = routes, false
		}
		for len(writes) > 0 {
			cmds, of, err := binding.Fence(s.Redis.B(), s.Config, w.source, w.token, writes, evalsha, w.routes)
			if err != nil {
				return err
			}
			again := make([]bool, len(writes))
			sent := evalsha
			for i, r := range s.Redis.DoMulti(ctx, cmds...) {
				err := r.Error()
				switch {
				case err == nil:
					failed, err := binding.FenceFailures(r)
					if err != nil {
						return fmt.Errorf("redis write: %w", err)
					}
					for _, f := range failed {
						if !f.Misrouted() {
							return fmt.Errorf("redis write: %s", f.Err)
						}
						again[of[i][f.Step]], stale = true, true
					}
					continue
				case sent && binding.NoScript(err):
					evalsha = false
				case binding.TryAgain(err):
					stale = true
				case binding.FencedReply(err):
					return ErrFenced
				case binding.FenceGoneReply(err):
					return fmt.Errorf("%w: %w", ErrRedisLost, err)
				default:
					return fmt.Errorf("redis write: %w", err)
				}
				for _, j := range of[i] {
					again[j] = true
				}
			}
			var left []rueidis.Completed
			for j, a := range again {
				if a {
					left = append(left, writes[j])
				}
			}
			writes = left
			if stale {
				return binding.ErrMoving // sent again once the move ends
			}
		}
		return nil
	})
	if binding.TryAgain(err) {
		return fmt.Errorf("redis write: %w", err)
	}
	return err
}

// watched checks the replies of WATCH and GET of the owner token, and
// notes the watch when the token is still the writer's.
func (w *Writer) watched(res []rueidis.RedisResult) error {
	if err := res[0].Error(); err != nil {
		return fmt.Errorf("watch %s: %w", w.key, err)
	}
	if err := w.owned(res[1]); err != nil {
		return err
	}
	w.watching = true
	return nil
}

// owned checks the reply of GET of the owner token: ErrFenced when another
// holds it, ErrRedisLost when it is gone (flushed, lost, evicted).
func (w *Writer) owned(r rueidis.RedisResult) error {
	v, err := r.ToString()
	switch {
	case rueidis.IsRedisNil(err):
		return fmt.Errorf("%w: %s is gone", ErrRedisLost, w.key)
	case err != nil:
		return fmt.Errorf("read %s: %w", w.key, err)
	case v != w.token:
		return ErrFenced
	}
	return nil
}

// firstError returns the first failed write of res.
func firstError(res []rueidis.RedisResult) error {
	for _, r := range res {
		if err := r.Error(); err != nil {
			return fmt.Errorf("redis write: %w", err)
		}
	}
	return nil
}

// checkAdvance interprets the reply of the check-and-advance.
func checkAdvance(n int64, err error) error {
	if err != nil {
		return fmt.Errorf("state check: %w", err)
	}
	if n != 1 {
		return ErrRedisLost
	}
	return nil
}

func formatLSN(l pglogrepl.LSN) string { return fmt.Sprintf("%016X", uint64(l)) }

func parseLSN(s string) (pglogrepl.LSN, error) {
	var v uint64
	if _, err := fmt.Sscanf(s, "%016X", &v); err != nil || len(s) != 16 {
		return 0, fmt.Errorf("bad lsn %q", s)
	}
	return pglogrepl.LSN(v), nil
}

// Primary is a primary of a Redis Cluster as it says of itself.
type Primary struct {
	ID    string // master_replid: its replication history
	RunID string // run_id: a new one at every start of its process
	Epoch string // cluster_my_epoch: a new, greater one whenever it is promoted ("" when it cannot be read)
}

// PrimaryInfo returns the primaries of c, a Redis Cluster, sorted by
// replication ID, with what else each says of itself. A primary promoted
// from a replica (a failover) has a new ID, and so has a restarted one
// (Redis 7 starts a new ID at every start, data kept or not): a changed ID
// says writes it had acknowledged may be lost, not that they are (see
// Renewed). The error names the nodes that did not answer (within a few
// seconds each); the primaries are the others.
func PrimaryInfo(ctx context.Context, c rueidis.Client) ([]Primary, error) {
	var mu sync.Mutex
	var ps []Primary
	var errs []error
	var wg sync.WaitGroup
	for addr, node := range c.Nodes() {
		wg.Go(func() {
			nctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			res := node.DoMulti(nctx, node.B().Info().Section("server", "replication").Build(), node.B().ClusterInfo().Build())
			info, err := res[0].ToString()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("redis %s: info: %w", addr, err))
				return
			}
			if !strings.Contains(info, "role:master") {
				return
			}
			var p Primary
			for line := range strings.Lines(info) {
				if id, ok := strings.CutPrefix(strings.TrimSpace(line), "master_replid:"); ok {
					p.ID = id
				}
				if id, ok := strings.CutPrefix(strings.TrimSpace(line), "run_id:"); ok {
					p.RunID = id
				}
			}
			// (Without it, as when the user may not run CLUSTER INFO, no
			// new replication ID is taken for a renewal.)
			cinfo, _ := res[1].ToString()
			for line := range strings.Lines(cinfo) {
				if e, ok := strings.CutPrefix(strings.TrimSpace(line), "cluster_my_epoch:"); ok {
					p.Epoch = e
				}
			}
			ps = append(ps, p)
		})
	}
	wg.Wait()
	slices.SortFunc(ps, func(a, b Primary) int { return strings.Compare(a.ID, b.ID) })
	return ps, errors.Join(errs...)
}

// IDs returns the replication IDs of ps, in order.
func IDs(ps []Primary) []string {
	ids := make([]string, len(ps))
	for i, p := range ps {
		ids[i] = p.ID
	}
	return ids
}

// Renewed returns was (replication IDs) with the ID of each primary that
// began a new replication history in place since prev (what PrimaryInfo
// said before) replaced by its new one from now: a primary of prev that is
// still one in now, the same process (run ID) never promoted since (the
// same config epoch: a Cluster gives a promoted node a new, greater one),
// so a primary all along, its data its own. Redis gives a primary a new
// replication ID when it creates its replication backlog (its first
// replica attaches) and when it frees it (no replica for
// repl-backlog-ttl); nothing it held is lost. Every other ID is left as
// it is: Gone tells whether it is still there.
func Renewed(was []string, prev, now []Primary) []string {
	out := slices.Clone(was)
	for i, id := range out {
		if slices.ContainsFunc(now, func(q Primary) bool { return q.ID == id }) {
			continue
		}
		j := slices.IndexFunc(prev, func(p Primary) bool { return p.ID == id })
		if j < 0 || prev[j].RunID == "" || prev[j].Epoch == "" {
			continue
		}
		p := prev[j]
		if k := slices.IndexFunc(now, func(q Primary) bool { return q.RunID == p.RunID && q.Epoch == p.Epoch }); k >= 0 {
			out[i] = now[k].ID
		}
	}
	return out
}

// PrimaryGone reports whether a primary recorded for source (SetPrimaries)
// is not among now (PrimaryInfo), also after a renewal in place (Renewed):
// it failed over or lost its data since, and with it, maybe, writes it had
// acknowledged. (A primary added since is no loss.)
func (s *State) PrimaryGone(ctx context.Context, source string, now []Primary) (bool, error) {
	v, err := s.Redis.Do(ctx, s.Redis.B().Hget().Key(s.Key).Field("primaries:"+source).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", s.Key, err)
	}
	was := parsePrimaries(v)
	return Gone(Renewed(IDs(was), was, now), IDs(now)) != "", nil
}

// Gone returns the first of was (replication IDs, PrimaryInfo) not among
// now, or "" when all are: a primary added since is no loss.
func Gone(was, now []string) string {
	for _, id := range was {
		if !slices.Contains(now, id) {
			return id
		}
	}
	return ""
}

// SetPrimaries records ps (PrimaryInfo) as the primaries source's writes
// go to: each one's replication ID, run ID and config epoch.
func (s *State) SetPrimaries(ctx context.Context, source string, ps []Primary) error {
	recs := make([]string, len(ps))
	for i, p := range ps {
		recs[i] = p.ID + "/" + p.RunID + "/" + p.Epoch
	}
	if err := s.Redis.Do(ctx, s.Redis.B().Hset().Key(s.Key).FieldValue().FieldValue("primaries:"+source, strings.Join(recs, ",")).Build()).Error(); err != nil {
		return fmt.Errorf("write %s: %w", s.Key, err)
	}
	return nil
}

// parsePrimaries reads what SetPrimaries recorded (an older record holds
// replication IDs alone).
func parsePrimaries(v string) []Primary {
	var ps []Primary
	for rec := range strings.SplitSeq(v, ",") {
		f := strings.SplitN(rec, "/", 3)
		f = append(f, "", "")
		ps = append(ps, Primary{ID: f[0], RunID: f[1], Epoch: f[2]})
	}
	return ps
}

// Position returns how far source's changes are applied in Redis: running,
// the position of a feed of source running here, once it is known (not 0),
// else the recorded one; 0 when neither is known.
func (s *State) Position(ctx context.Context, source string, running uint64) uint64 {
	if running > 0 {
		return running
	}
	if lsn, ok, err := s.Applied(ctx, source); err == nil && ok {
		return uint64(lsn)
	}
	return 0
}

// Applied returns source's applied LSN; ok is false when none is recorded.
func (s *State) Applied(ctx context.Context, source string) (pglogrepl.LSN, bool, error) {
	return s.lsn(s.Redis.Do(ctx, s.Redis.B().Hget().Key(s.Key).Field("lsn:"+source).Build()).ToString())
}

// AppliedTo returns how far cache (of source) holds the changes: source's
// applied LSN, once the cache is built (its entry recorded); ok is false
// while it is not (never built, or being rebuilt: then the applied LSN may
// already be the slot's, ahead of what the cache holds).
func (s *State) AppliedTo(ctx context.Context, source, cache string) (pglogrepl.LSN, bool, error) {
	vals, err := s.Redis.Do(ctx, s.Redis.B().Hmget().Key(s.Key).Field("lsn:"+source, "cache:"+cache).Build()).ToArray()
	if err != nil {
		return 0, false, fmt.Errorf("read %s: %w", s.Key, err)
	}
	if vals[1].IsNil() {
		return 0, false, nil
	}
	return s.lsn(vals[0].ToString())
}

// lsn parses an applied LSN as read from the state hash; ok is false when
// none is recorded.
func (s *State) lsn(v string, err error) (pglogrepl.LSN, bool, error) {
	if rueidis.IsRedisNil(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read %s: %w", s.Key, err)
	}
	lsn, err := parseLSN(v)
	return lsn, err == nil, err
}
