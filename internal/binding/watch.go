package binding

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// A watched reload is how a reload writes on one Redis node without
// leases: it WATCHes its keys and the cache's removal count, reads the rows
// (after the WATCH), and writes them in one MULTI/EXEC. Redis refuses the
// EXEC when a watched key was written meanwhile (by the change feed, a
// fill, a queued write), or removed, or expired after it was watched. The
// removal count catches what watching the key cannot: removing a key that
// is missing already (the row was deleted after the reload read it) does
// not touch the key, so every removal of a cache's key bumps the count
// first (AppendInvalidate, which AppendSet also uses for a hash of NULLs;
// AppendDrop; Clear). A watched reload that read a row before
// a newer change thus writes nothing, like a fill whose lease was ended
// (DESIGN invariant 2), and it costs a few plain commands a key where a
// lease costs two scripts' work. It needs every key of a transaction in one
// hash slot, so a Redis Cluster reloads under leases.
//
// A cache without a change feed (and without stale copies or hashes) fills
// expired keys lighter still (action ClaimRecord): only the removal count
// is watched, and each value is written only while its key is missing (SET
// NX; a removal, only while OBJECT ENCODING finds no key). Without a feed,
// a change reaches Redis only as an invalidation after its commit (Put,
// Invalidate, check's repairs, Clear), which bumps the count: one that came
// before the WATCH followed a commit the read sees (or, a Put that gave up
// while its commit was still finishing, one the read waits for: rows are
// read FOR SHARE); one that comes after refuses the EXEC, or follows it and
// removes what it wrote. A value another fill wrote meanwhile is kept (SET NX), and one it
// wrote that expired again was read no later than this reload's read
// (anything newer is followed by an invalidation). Keys not written because
// they were there are told as refused, for a lease-guarded reload that
// keeps them and records their expiry as it is (this transaction's ZADD may
// have recorded its own). So no key is watched, nor looked at first.

// Watched is a reload begun by Binding.Watch; Exec writes it, Close ends it.
type Watched struct {
	b     *Binding
	keys  []string
	txns  []*txn
	light bool // only the removal count is watched; values go in with SET NX
}

// txn is the transaction of keys[lo:hi] on a connection of its own.
type txn struct {
	dc      rueidis.DedicatedClient
	release func()
	lo, hi  int
	kept    []rueidis.Completed // kept keys' TTL renewals and expiry record updates
	done    bool                // Redis answered its EXEC: nothing is watched
}

// Watch begins a watched reload of keys on c (one Redis node): BatchKeys
// keys a transaction, each on a connection of its own (Redis 7.0 takes
// time quadratic in a connection's watched keys to WATCH them), it WATCHes
// them and the cache's removal count, then tells of each key what
// ExecClaims would: Load for a key to fill, or to overwrite with action
// ClaimLease; no key is Held. Exec makes the kept keys' updates, with the
// fills. The caller must Close what Watch returns. (A write-behind cache
// reloads under leases: its fills must see its pending marks.)
func (b *Binding) Watch(ctx context.Context, c rueidis.Client, keys []string, action string, now time.Time) ([]Claimed, *Watched, error) {
	w := &Watched{b: b, keys: keys, light: action == ClaimRecord && !b.Feed && !b.Queued && b.Stale == 0 && b.Format != FormatHash}
	out := make([]Claimed, len(keys))
	for lo := 0; lo < len(keys); lo += BatchKeys {
		t := &txn{lo: lo, hi: min(lo+BatchKeys, len(keys))}
		t.dc, t.release = c.Dedicate()
		w.txns = append(w.txns, t)
	}
	if err := w.each(func(t *txn) error { return w.watch(ctx, t, action, now, out) }); err != nil {
		w.Close(ctx)
		return nil, nil, fmt.Errorf("watch: %w", err)
	}
	return out, w, nil
}

// each runs fn for every transaction at once (each has its own
// connection), and returns their errors joined.
func (w *Watched) each(fn func(t *txn) error) error {
	errs := make([]error, len(w.txns))
	var wg sync.WaitGroup
	for i, t := range w.txns {
		wg.Go(func() { errs[i] = fn(t) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// watch WATCHes t's keys and sets their out entries.
func (w *Watched) watch(ctx context.Context, t *txn, action string, now time.Time, out []Claimed) error {
	b, rb, keys := w.b, t.dc.B(), w.keys[t.lo:t.hi]
	if w.light {
		// Every key is to be filled if missing; Exec tells those that were not.
		for j := range keys {
			out[t.lo+j] = Claimed{Load: true}
		}
		return t.dc.Do(ctx, rb.Watch().Key(RemovalsKey(b.Name)).Build()).Error()
	}
	// Which keys are there. OBJECT ENCODING, unlike PTTL or EXISTS, does
	// not publish a keymiss event for a missing key, which would start a
	// fill: on-miss of it beside this reload.
	cmds := make(rueidis.Commands, 0, len(keys)+1)
	cmds = append(cmds, rb.Watch().Key(append([]string{RemovalsKey(b.Name)}, keys...)...).Build())
	for _, k := range keys {
		cmds = append(cmds, rb.ObjectEncoding().Key(k).Build())
	}
	res := t.dc.DoMulti(ctx, cmds...)
	if err := res[0].Error(); err != nil {
		return err
	}
	var present []int // indexes in keys
	for j := range keys {
		switch err := res[1+j].Error(); {
		case rueidis.IsRedisNil(err):
			out[t.lo+j] = Claimed{Load: true}
		case err != nil:
			return fmt.Errorf("object encoding: %w", err)
		case action == ClaimLease:
			out[t.lo+j] = Claimed{Load: true, Present: true}
		default:
			present = append(present, j)
		}
	}
	if len(present) == 0 {
		return nil
	}
	cmds = cmds[:0]
	for _, j := range present {
		cmds = append(cmds, rb.Pttl().Key(keys[j]).Build())
	}
	res = t.dc.DoMulti(ctx, cmds...)
	var record []string // kept keys to record anew, if off
	var recordAt []int64
	var zadd, zrem []string
	for n, j := range present {
		k := keys[j]
		pttl, err := res[n].AsInt64()
		if err != nil {
			return fmt.Errorf("pttl: %w", err)
		}
		o := &out[t.lo+j]
		switch {
		case pttl == -2: // expired since: the EXEC will be refused
			*o = Claimed{Load: true}
			continue
		case action == ClaimRenew && pttl >= 0:
			pttl = b.ttl().Milliseconds()
			t.kept = append(t.kept, rb.Pexpire().Key(k).Milliseconds(pttl).Build())
			if b.Stale > 0 {
				t.kept = append(t.kept, rb.Pexpire().Key(CompanionsOf(k).Stale).Milliseconds(pttl+b.Stale.Milliseconds()).Build())
			}
		}
		*o = Claimed{Present: true, TTL: time.Duration(pttl) * time.Millisecond}
		switch {
		case pttl < 0:
			o.TTL = -1
			zrem = append(zrem, k)
		case action == ClaimRenew:
			zadd = append(zadd, strconv.FormatInt(now.UnixMilli()+pttl, 10), k)
		default:
			record, recordAt = append(record, k), append(recordAt, now.UnixMilli()+pttl)
		}
	}
	if b.Record == "" {
		return nil
	}
	// As the claim script: a kept key is recorded anew when not recorded
	// or off by over a second.
	if len(record) > 0 {
		was, err := t.dc.Do(ctx, rb.Zmscore().Key(b.Record).Member(record...).Build()).ToArray()
		if err != nil {
			return fmt.Errorf("expiry record: %w", err)
		}
		for j, k := range record {
			if at, err := was[j].AsFloat64(); err != nil || math.Abs(at-float64(recordAt[j])) > 1000 {
				zadd = append(zadd, strconv.FormatInt(recordAt[j], 10), k)
			}
		}
	}
	if len(zadd) > 0 {
		t.kept = append(t.kept, rb.Arbitrary("ZADD").Keys(b.Record).Args(zadd...).Build())
	}
	if len(zrem) > 0 {
		t.kept = append(t.kept, rb.Zrem().Key(b.Record).Member(zrem...).Build())
	}
	return nil
}

// ErrWatchChanged is a transaction's refusal: a watched key, or the cache's
// removal count, changed since Watch, and nothing of it was written.
var ErrWatchChanged = errors.New("a watched key changed")

// Exec writes fills, fills[j] of keys[of[j]] (over its key, present or not:
// it is watched; or, light, only while it is missing), and the kept keys'
// updates, a transaction (MULTI/EXEC) at a time. It returns, ascending, the
// indexes in keys whose transaction Redis refused (ErrWatchChanged): none
// of those was written or updated; and, light, those of keys found there,
// whose value or removal was not written (their "not found" markers may
// have been removed, and their expiries recorded as this fill's). Every
// other was written.
func (w *Watched) Exec(ctx context.Context, fills []Fill, of []int) ([]int, error) {
	mine := make([][]Fill, len(w.txns))
	mineOf := make([][]int, len(w.txns))
	j := 0 // of ascends
	for n, t := range w.txns {
		for ; j < len(of) && of[j] < t.hi; j++ {
			mine[n], mineOf[n] = append(mine[n], fills[j]), append(mineOf[n], of[j])
		}
	}
	changed := make([]bool, len(w.txns))
	lost := make([][]int, len(w.txns))
	err := w.each(func(t *txn) error {
		n := t.lo / BatchKeys
		var err error
		lost[n], err = w.exec(ctx, t, mine[n], mineOf[n])
		if errors.Is(err, ErrWatchChanged) {
			changed[n] = true
			return nil
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	var refused []int
	for n, t := range w.txns {
		if changed[n] {
			for i := t.lo; i < t.hi; i++ {
				refused = append(refused, i)
			}
		} else {
			refused = append(refused, lost[n]...)
		}
	}
	return refused, nil
}

// gone is a light watched reload's removal of key KEYS[1] whose row is gone,
// only while it is missing: then its "not found" marker KEYS[2] for ARGV[2]
// ms when ARGV[1] is n, and its removal from the expiry record KEYS[3] if
// given. 1: done; 0: the key is there (OBJECT ENCODING publishes no keymiss
// event).
const gone = `if redis.call('OBJECT', 'ENCODING', KEYS[1]) then return 0 end
if ARGV[1] == 'n' then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end
if KEYS[3] then redis.call('ZREM', KEYS[3], KEYS[1]) end
return 1`

// exec writes one transaction, fills[j] of keys[of[j]]; light, it returns
// the indexes of the keys found there, not written.
func (w *Watched) exec(ctx context.Context, t *txn, fills []Fill, of []int) ([]int, error) {
	b, rb := w.b, t.dc.B()
	cmds := append(make(rueidis.Commands, 0, len(fills)+len(t.kept)+5), rb.Multi().Build())
	cmds = append(cmds, t.kept...)
	var zadd, zrem, neg []string
	var ifMissing []int // light: where in cmds each fill's conditional write is
	for _, f := range fills {
		k, c := f.Key, CompanionsOf(f.Key)
		if w.light {
			ifMissing = append(ifMissing, len(cmds))
			if f.Deletes() {
				keys := []string{k, c.Neg}
				if b.Record != "" {
					keys = append(keys, b.Record)
				}
				cmds = append(cmds, rb.Eval().Script(gone).Numkeys(int64(len(keys))).Key(keys...).Arg(f.mode, strconv.FormatInt(f.ttl, 10)).Build())
				continue
			}
			// (Light: a string, without a stale copy.)
			set := rb.Set().Key(k).Value(f.value[0]).Nx()
			if f.ttl > 0 {
				cmds = append(cmds, set.Px(time.Duration(f.ttl)*time.Millisecond).Build())
			} else {
				cmds = append(cmds, set.Build())
			}
			neg = append(neg, c.Neg)
			if f.expiresAt > 0 {
				zadd = append(zadd, strconv.FormatInt(f.expiresAt, 10), k)
			}
			continue
		}
		if f.Deletes() { // no row
			cmds = append(cmds, rb.Del().Key(k, c.Stale).Build())
			switch {
			case f.mode == "n" && b.Feed: // unless the key's exists marker is there (see fill in fill.go)
				cmds = append(cmds, rb.Eval().Script(notFound).Numkeys(2).Key(c.Neg, c.Exists).Arg(strconv.FormatInt(f.ttl, 10)).Build())
			case f.mode == "n":
				cmds = append(cmds, rb.Set().Key(c.Neg).Value("1").Px(time.Duration(f.ttl)*time.Millisecond).Build())
			}
			zrem = append(zrem, k)
			continue
		}
		cmds = appendValue(cmds, rb, k, c, f.writeArgs) // as the feed writes it
		neg = append(neg, c.Neg)
		if b.Feed {
			neg = append(neg, c.Exists) // a value ends the exists marker too
		}
		if f.expiresAt > 0 {
			zadd = append(zadd, strconv.FormatInt(f.expiresAt, 10), k)
		}
	}
	if len(neg) > 0 {
		cmds = append(cmds, rb.Del().Key(neg...).Build())
	}
	if b.Record != "" && len(zadd) > 0 {
		cmds = append(cmds, rb.Arbitrary("ZADD").Keys(b.Record).Args(zadd...).Build())
	}
	if b.Record != "" && len(zrem) > 0 {
		cmds = append(cmds, rb.Zrem().Key(b.Record).Member(zrem...).Build())
	}
	cmds = append(cmds, rb.Exec().Build())
	res := t.dc.DoMulti(ctx, cmds...)
	replies, err := res[len(res)-1].ToArray()
	if _, refused := rueidis.IsRedisErr(err); err == nil || refused || rueidis.IsRedisNil(err) {
		t.done = true // Redis took the EXEC: nothing is watched any more
	}
	for _, r := range res[:len(res)-1] {
		if err := r.Error(); err != nil {
			// A command refused as queued makes Redis discard the whole
			// transaction.
			return nil, fmt.Errorf("write: %w", err)
		}
	}
	switch {
	case rueidis.IsRedisNil(err):
		return nil, ErrWatchChanged
	case err != nil:
		return nil, fmt.Errorf("write: %w", err)
	}
	var lost []int
	for j, at := range ifMissing {
		// (MULTI has no reply among EXEC's.)
		switch n, err := replies[at-1].AsInt64(); {
		case rueidis.IsRedisNil(err) || err == nil && n == 0:
			lost = append(lost, of[j])
		}
	}
	for _, r := range replies {
		if err := r.Error(); err != nil && !rueidis.IsRedisNil(err) {
			return nil, fmt.Errorf("write: %w", err)
		}
	}
	return lost, nil
}

// Close ends the reload: a transaction not executed is abandoned
// (DISCARD, if it got as far as MULTI, then UNWATCH), and the connections
// go back to their pool.
func (w *Watched) Close(ctx context.Context) {
	if w == nil {
		return
	}
	for _, t := range w.txns {
		if !t.done {
			// If this fails, the connection is broken and its pool drops
			// it; DISCARD outside MULTI is refused, and harmless.
			rb := t.dc.B()
			t.dc.DoMulti(context.WithoutCancel(ctx), rb.Discard().Build(), rb.Unwatch().Build())
		}
		t.release()
	}
}
