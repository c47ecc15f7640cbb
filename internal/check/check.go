// Package check compares what Redis holds for a cache with what PostgreSQL
// says it should hold, and can repair the differences. It tolerates a live
// system: a key that looks wrong is read again, on both sides, after the
// change feed has applied everything committed when it was first read, and
// is reported only when it still differs.
package check

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"github.com/redis/rueidis"
	"golang.org/x/sync/errgroup"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/engine"
)

// Options tune a check.
type Options struct {
	// Sample checks this many random rows instead of every key and row
	// (extra keys are found only by a full check).
	Sample int
	// Repair fixes what the check finds: missing keys are filled, stale
	// keys invalidated and filled, extra keys removed; each lease-guarded
	// like any fill, so a repair never writes an older value.
	Repair bool
	// Examples is how many keys of each kind the report names (default 5).
	Examples int
	// Lookup compares key by key, looking rows up by key, instead of
	// hashing the whole cache and table in memory (about 50 bytes a key):
	// slower, for caches too big for that; chosen by itself beyond 20M keys.
	Lookup bool
	// Settle bounds the wait for the change feed before re-verifying (default 10s).
	Settle time.Duration
}

// Report is what a check found in one cache.
type Report struct {
	Cache    string   `json:"cache"`
	Keys     int      `json:"keys_checked"` // keys found in Redis and compared
	Rows     int      `json:"rows_checked"` // rows whose key was looked up
	Missing  Finding  `json:"missing"`      // rows whose key is absent (caches that hold every row)
	Stale    Finding  `json:"stale"`        // keys whose value differs from their row
	Extra    Finding  `json:"extra"`        // keys without a row
	Repaired int      `json:"repaired"`
	Took     Duration `json:"took"`
}

// Finding counts keys of one kind and names a few.
type Finding struct {
	Count    int      `json:"count"`
	Examples []string `json:"examples"`
}

// Duration prints as a string in JSON.
type Duration time.Duration

// MarshalText renders d like time.Duration does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Consistent reports whether Redis agrees with PostgreSQL.
func (r *Report) Consistent() bool { return r.Missing.Count+r.Stale.Count+r.Extra.Count == 0 }

const batch = 1000

// Run checks cache name.
func Run(ctx context.Context, cfg *config.Config, api *engine.Engine, redis rueidis.Client, name string, opt Options) (*Report, error) {
	return run(ctx, cfg, api, redis, name, opt, func(ctx context.Context, k *checker) error {
		if opt.Sample > 0 {
			return k.sample(ctx)
		}
		return k.full(ctx)
	})
}

// Keys checks the given keys of cache name as Run checks a sample: each
// compared with its row, and what differs read again before it counts
// (Options.Sample, Lookup and Repair are ignored). Report.Keys counts the
// keys compared: held by Redis or with a row (a key of neither says
// nothing).
func Keys(ctx context.Context, cfg *config.Config, api *engine.Engine, redis rueidis.Client, name string, keys []string, opt Options) (*Report, error) {
	opt.Repair = false
	return run(ctx, cfg, api, redis, name, opt, func(ctx context.Context, k *checker) error {
		for lo := 0; lo < len(keys); lo += batch {
			compared, err := k.compare(ctx, keys[lo:min(lo+batch, len(keys))])
			if err != nil {
				return err
			}
			k.r.Keys += compared
		}
		return nil
	})
}

// run checks cache name: pass compares, then what looked wrong is verified
// (and repaired).
func run(ctx context.Context, cfg *config.Config, api *engine.Engine, redis rueidis.Client, name string, opt Options, pass func(context.Context, *checker) error) (*Report, error) {
	cc, ok := cfg.Caches[name]
	if !ok {
		return nil, fmt.Errorf("cache %q: %w", name, engine.ErrUnknownCache)
	}
	if opt.Repair && cc.Writes == config.WritesBehind {
		return nil, fmt.Errorf("cache %q: --repair refuses a cache with writes: behind: a key whose write is still queued is newer than its row, and repairing it would bring the older row back", name)
	}
	if opt.Examples <= 0 {
		opt.Examples = 5
	}
	if opt.Settle <= 0 {
		opt.Settle = 10 * time.Second
	}
	start := time.Now()
	r := &Report{Cache: name}
	k := &checker{cc: cc, api: api, redis: redis, opt: opt, r: r}
	if err := pass(ctx, k); err != nil {
		return nil, err
	}
	if err := k.verify(ctx); err != nil {
		return nil, err
	}
	r.Took = Duration(time.Since(start))
	return r, nil
}

type checker struct {
	cc    *config.Cache
	api   *engine.Engine
	redis rueidis.Client
	opt   Options
	r     *Report
	// suspects are keys that looked wrong once, by kind.
	mu       sync.Mutex
	suspects map[string]string
}

func (k *checker) suspect(key, kind string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.suspects == nil {
		k.suspects = map[string]string{}
	}
	k.suspects[key] = kind
}

// kind classifies a key from what Redis holds and what its row says: "" when
// they agree. A missing key counts only in a cache that holds every row.
func (k *checker) kind(have, want []byte) string {
	switch {
	case have == nil && want == nil:
		return ""
	case have == nil:
		if k.cc.Complete() {
			return "missing"
		}
		return ""
	case want == nil:
		return "extra"
	case !bytes.Equal(have, want):
		return "stale"
	}
	return ""
}

// compare reads keys on both sides and notes the ones that differ; it
// returns how many of the keys Redis holds or have a row.
func (k *checker) compare(ctx context.Context, keys []string) (int, error) {
	have, err := k.api.Peek(ctx, k.cc.Name, keys)
	if err != nil {
		return 0, err
	}
	want, err := k.api.Want(ctx, k.cc.Name, keys, false)
	if err != nil {
		return 0, err
	}
	compared := 0
	for i, key := range keys {
		if have[i] != nil || want[i] != nil {
			compared++
		}
		if kind := k.kind(have[i], want[i]); kind != "" {
			k.suspect(key, kind)
		}
	}
	return compared, nil
}

// hashedLimit is the most keys full keeps hashes of (about 50 bytes each);
// a bigger cache is checked by fullByLookup.
const hashedLimit = 20_000_000

// full compares the whole cache: one pass over its keys in Redis (SCAN, then
// MGET or HGETALL of each page) and, at the same time, one pass over its
// table, each reduced to a hash of every key and its value; then the two
// are compared, and a second pass names the keys that differ (rare).
func (k *checker) full(ctx context.Context) error {
	var size int64 // keys on all primaries
	err := binding.EachPrimary(ctx, k.redis, func(addr string, node rueidis.Client) error {
		n, err := node.Do(ctx, node.B().Dbsize().Build()).AsInt64()
		size += n
		return err
	})
	if err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	if size > hashedLimit || k.opt.Lookup {
		return k.fullByLookup(ctx, size)
	}
	seed := maphash.MakeSeed()
	var inRedis, inTable map[uint64]uint64 // hash of key -> hash of value
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		inRedis = make(map[uint64]uint64, size)
		return k.scan(gctx, func(keys []string) error {
			vals, err := k.api.Peek(gctx, k.cc.Name, keys)
			if err != nil {
				return err
			}
			for i, v := range vals {
				if v != nil {
					inRedis[maphash.String(seed, keys[i])] = maphash.Bytes(seed, v)
				}
			}
			return nil
		})
	})
	g.Go(func() error {
		inTable = make(map[uint64]uint64, size)
		return k.api.EachRow(gctx, k.cc.Name, func(key string, value []byte) error {
			inTable[maphash.String(seed, key)] = maphash.Bytes(seed, value)
			return nil
		})
	})
	if err := g.Wait(); err != nil {
		return err
	}
	k.r.Keys, k.r.Rows = len(inRedis), len(inTable)
	bad := map[uint64]string{}
	for hk, hv := range inRedis {
		switch rv, ok := inTable[hk]; {
		case !ok:
			bad[hk] = "extra"
		case rv != hv:
			bad[hk] = "stale"
		}
	}
	missing := false
	if k.cc.Complete() {
		for hk := range inTable {
			if _, ok := inRedis[hk]; !ok {
				bad[hk], missing = "missing", true
			}
		}
	}
	if len(bad) == 0 {
		return nil
	}
	// Name the keys behind the hashes: the verification reads them again.
	err = k.scan(ctx, func(keys []string) error {
		for _, key := range keys {
			if kind, ok := bad[maphash.String(seed, key)]; ok && kind != "missing" {
				k.suspect(key, kind)
			}
		}
		return nil
	})
	if err != nil || !missing {
		return err
	}
	return k.api.EachRow(ctx, k.cc.Name, func(key string, _ []byte) error {
		if bad[maphash.String(seed, key)] == "missing" {
			k.suspect(key, "missing")
		}
		return nil
	})
}

// scan calls fn with the cache's keys, a SCAN page at a time (a key may
// come twice).
func (k *checker) scan(ctx context.Context, fn func(keys []string) error) error {
	owns := func(key string) bool { return k.api.OwnsKey(k.cc.Name, key) }
	return binding.ScanTemplate(ctx, k.redis, k.cc.Template, owns, fn)
}

// workers is how many batches are compared at once: PostgreSQL, Redis and
// this process each work while the others do.
const workers = 4

// fullByLookup compares every key of the cache in Redis (SCAN) with its row
// looked up by key, batches in parallel, and, for caches that hold every
// row, looks every row's key up (streaming the table). It holds little in
// memory beyond a hash of each key seen: for caches too big for full.
func (k *checker) fullByLookup(ctx context.Context, size int64) error {
	// SCAN may return a key twice: count each once, by a 64-bit hash of it
	// (cheaper than keeping the keys; a collision is vanishingly rare).
	seen := make(map[uint64]struct{}, min(size, 1<<26))
	seed := maphash.MakeSeed()
	g, gctx := errgroup.WithContext(ctx)
	work := make(chan []string)
	for range workers {
		g.Go(func() error {
			for keys := range work {
				if _, err := k.compare(gctx, keys); err != nil {
					return err
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(work)
		// Pages of a MATCH scan may hold few of the cache's keys: batches
		// gather them, so each comparison has batch keys (the last fewer).
		var keys []string
		send := func() error {
			select {
			case work <- keys:
				keys = nil
				return nil
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		err := k.scan(gctx, func(page []string) error {
			for _, key := range page {
				h := maphash.String(seed, key)
				if _, dup := seen[h]; !dup {
					seen[h] = struct{}{}
					keys = append(keys, key)
				}
			}
			if len(keys) < batch {
				return nil
			}
			return send()
		})
		if err != nil || len(keys) == 0 {
			return err
		}
		return send()
	})
	if err := g.Wait(); err != nil {
		return err
	}
	k.r.Keys = len(seen)
	if !k.cc.Complete() {
		return nil
	}
	// Every row's key must be there: look them up, streaming the rows.
	var chunk []string
	lookup := func() error {
		cmds := make(rueidis.Commands, len(chunk))
		for i, key := range chunk {
			cmds[i] = k.redis.B().Exists().Key(key).Build()
		}
		for i, res := range k.redis.DoMulti(ctx, cmds...) {
			n, err := res.AsInt64()
			if err != nil {
				return fmt.Errorf("redis: %w", err)
			}
			if n == 0 {
				k.suspect(chunk[i], "missing")
			}
		}
		k.r.Rows += len(chunk)
		chunk = chunk[:0]
		return nil
	}
	err := k.api.EachRow(ctx, k.cc.Name, func(key string, _ []byte) error {
		if chunk = append(chunk, key); len(chunk) == batch {
			return lookup()
		}
		return nil
	})
	if err == nil && len(chunk) > 0 {
		err = lookup()
	}
	return err
}

// sample compares the keys of opt.Sample random rows.
func (k *checker) sample(ctx context.Context) error {
	keys, err := k.api.KeysWhere(ctx, k.cc.Name, fmt.Sprintf("true ORDER BY random() LIMIT %d", k.opt.Sample))
	if err != nil {
		return err
	}
	for lo := 0; lo < len(keys); lo += batch {
		chunk := keys[lo:min(lo+batch, len(keys))]
		if _, err := k.compare(ctx, chunk); err != nil {
			return err
		}
		k.r.Rows += len(chunk)
	}
	return nil
}

// verify reads each suspect again, three times over: its row, then (after
// the change feed applied everything committed by then) its key, then its
// row once more, FOR SHARE: a plain read may miss a commit that is in the
// WAL, so already applied by the feed, but not yet visible. A key whose row
// changed between the two row reads is left out (a live system, not a
// fault); one that is still wrong the same way after every round is
// reported (and repaired). A row inserted by a commit not yet visible
// cannot be waited for; the rounds, further apart each time, let it show.
func (k *checker) verify(ctx context.Context) error {
	for round := 0; round < 3 && len(k.suspects) > 0; round++ {
		if round > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(round*round) * 50 * time.Millisecond):
			}
		}
		first := k.suspects
		k.suspects = nil
		keys := make([]string, 0, len(first))
		for key := range first {
			keys = append(keys, key)
		}
		for lo := 0; lo < len(keys); lo += batch {
			chunk := keys[lo:min(lo+batch, len(keys))]
			before, err := k.api.Want(ctx, k.cc.Name, chunk, false)
			if err != nil {
				return err
			}
			if k.cc.Sync == config.SyncChangefeed {
				if err := k.settle(ctx); err != nil {
					return err
				}
			}
			have, err := k.api.Peek(ctx, k.cc.Name, chunk)
			if err != nil {
				return err
			}
			after, err := k.api.Want(ctx, k.cc.Name, chunk, true)
			if err != nil {
				return err
			}
			for i, key := range chunk {
				if bytes.Equal(before[i], after[i]) && k.kind(have[i], after[i]) == first[key] {
					k.suspect(key, first[key])
				}
			}
		}
	}
	if k.cc.Writes == config.WritesBehind && len(k.suspects) > 0 {
		queued, err := k.queued(ctx)
		if err != nil {
			return err
		}
		for key := range queued {
			delete(k.suspects, key) // its write is on its way: newer than its row
		}
	}
	var missing, stale, extra []string
	for key, kind := range k.suspects {
		f := map[string]*Finding{"missing": &k.r.Missing, "stale": &k.r.Stale, "extra": &k.r.Extra}[kind]
		f.Count++
		if len(f.Examples) < k.opt.Examples {
			f.Examples = append(f.Examples, key)
		}
		switch kind {
		case "missing":
			missing = append(missing, key)
		case "stale":
			stale = append(stale, key)
		default:
			extra = append(extra, key)
		}
	}
	if !k.opt.Repair {
		return nil
	}
	return k.repair(ctx, missing, stale, extra)
}

// queued returns those of k's suspects that have writes in the cache's
// write-behind queue: their pending marks (binding.PendingKey).
func (k *checker) queued(ctx context.Context) (map[string]bool, error) {
	keys := make([]string, 0, len(k.suspects))
	for key := range k.suspects {
		keys = append(keys, key)
	}
	out := map[string]bool{}
	for lo := 0; lo < len(keys); lo += batch {
		chunk := keys[lo:min(lo+batch, len(keys))]
		marks, err := k.redis.Do(ctx, k.redis.B().Hmget().Key(binding.PendingKey(k.cc.Name)).Field(chunk...).Build()).ToArray()
		if err != nil {
			return nil, fmt.Errorf("redis: %w", err)
		}
		for i, m := range marks {
			if !m.IsNil() {
				out[chunk[i]] = true
			}
		}
	}
	return out, nil
}

// settle waits until the feed's applied position reaches PostgreSQL's
// current one, or opt.Settle passes.
func (k *checker) settle(ctx context.Context) error {
	target, err := k.api.WALPosition(ctx, k.cc.Source)
	if err != nil {
		return err
	}
	err = k.api.WaitApplied(ctx, k.cc.Name, target, k.opt.Settle)
	if errors.Is(err, engine.ErrNotApplied) {
		return nil // a feed that is down or behind: the second read decides
	}
	return err
}

// repair invalidates stale and extra keys, then fills them and the missing
// ones by Client.Reload (watched, or under leases): a key whose row appeared meanwhile is
// filled again, a key whose row is gone stays gone, and no repair writes an
// older value than the change feed's.
func (k *checker) repair(ctx context.Context, missing, stale, extra []string) error {
	name := k.cc.Name
	for _, key := range append(stale, extra...) {
		if err := k.api.Invalidate(ctx, name, key); err != nil {
			return err
		}
	}
	k.r.Repaired += len(stale) + len(extra)
	for i, keys := range [][]string{missing, stale, extra} {
		for lo := 0; lo < len(keys); lo += batch {
			res, err := k.api.Reload(ctx, name, keys[lo:min(lo+batch, len(keys))], false)
			if err != nil {
				return err
			}
			if i == 0 {
				k.r.Repaired += res.Written
			}
		}
	}
	return nil
}
