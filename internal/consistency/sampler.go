// Package consistency checks the caches against their tables all the
// time, a few keys a second, the way cachesync check does, and counts what
// it finds: keys checked, keys still wrong after their re-checks, and so
// the "nines" of consistency the caches keep, as Meta's Polaris measures
// TAO's. A key that differs once is read again (its row, then, after the
// change feed caught up, the key, then the row FOR SHARE) before it counts:
// a live system's keys differ for a moment; a fault's stay wrong.
package consistency

import (
	"context"
	"log/slog"
	"math"
	"slices"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/check"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/state"
)

// Stats counts what the checks of one cache found; safe for concurrent reads.
type Stats struct {
	Checked      atomic.Int64 // keys compared with their rows (held by Redis, or with a row)
	Inconsistent atomic.Int64 // keys found wrong and still wrong when read again
}

// Nines is -log10 of the share of checked keys found inconsistent: 3 for
// one in a thousand. With none found it is log10 of the keys checked, what
// the sample can show (at least that many nines); NaN before any check.
func (s *Stats) Nines() float64 {
	checked, bad := s.Checked.Load(), s.Inconsistent.Load()
	switch {
	case checked == 0:
		return math.NaN()
	case bad == 0:
		return math.Log10(float64(checked))
	}
	return -math.Log10(float64(bad) / float64(checked))
}

// Sampler is the continuous check of a config's caches.
type Sampler struct {
	// PerCache holds each cache's figures.
	PerCache map[string]*Stats
	// Errors counts samples that failed (a server down, a query refused).
	Errors atomic.Int64
	// Every is how often a sample is taken (default a second).
	Every time.Duration

	cfg   *config.Config
	api   *engine.Engine
	redis rueidis.Client
	log   *slog.Logger
	state *state.State // whether a change-feed cache is built
	rate  int
	names []string // the config's caches
	// complete are the caches whose tables are sampled (config.Cache.Complete).
	complete []string
}

// New returns the sampler of cfg, or nil when consistency.sample_rate is 0.
func New(cfg *config.Config, api *engine.Engine, redis rueidis.Client, log *slog.Logger) *Sampler {
	rate := cfg.Consistency.Rate()
	if rate == 0 {
		return nil
	}
	s := &Sampler{PerCache: map[string]*Stats{}, Every: time.Second, cfg: cfg, api: api, redis: redis, log: log.With("component", "consistency"), state: state.New(redis, cfg.Name), rate: rate}
	s.names = cfg.CacheNames()
	for _, name := range s.names {
		s.PerCache[name] = &Stats{}
		if cfg.Caches[name].Complete() {
			s.complete = append(s.complete, name)
		}
	}
	return s
}

// Run takes a sample every s.Every until ctx is done: the keys of random
// rows of a complete cache's table (config.Cache.Complete, the caches in
// turn: there a missing key is a fault), and random keys of Redis that
// belong to a cache (stale values and keys without a row, in any cache),
// half of the rate each (all of it from Redis when no cache is complete).
// Only complete caches' absent keys are read, so a sample starts no fill
// of a read-through cache (Redis's keymiss events).
func (s *Sampler) Run(ctx context.Context) error {
	tick := time.NewTicker(s.Every)
	defer tick.Stop()
	failing := false
	for turn := 0; ; turn++ {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		table := ""
		if len(s.complete) > 0 {
			table = s.complete[turn%len(s.complete)]
		}
		err := s.sample(ctx, table)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			s.Errors.Add(1)
			if !failing {
				s.log.Warn("consistency sample failed; retrying every sample", "err", err)
			}
		case failing:
			s.log.Info("consistency samples work again")
		}
		failing = err != nil
	}
}

// sample checks the keys of (rate+1)/2 random rows of cache table, when
// set, and rate/2 random keys of Redis's (rate, without a table).
func (s *Sampler) sample(ctx context.Context, table string) error {
	byCache := map[string][]string{}
	n := s.rate
	if table != "" {
		keys, err := s.api.SampleKeys(ctx, table, (s.rate+1)/2)
		if err != nil {
			return err
		}
		byCache[table] = keys
		n = s.rate / 2
	}
	if n > 0 {
		cmds := make(rueidis.Commands, n)
		for i := range cmds {
			cmds[i] = s.redis.B().Randomkey().Build()
		}
		for _, r := range s.redis.DoMulti(ctx, cmds...) {
			key, err := r.ToString()
			if rueidis.IsRedisNil(err) {
				continue // an empty node
			}
			if err != nil {
				return err
			}
			for _, c := range s.names {
				if s.api.OwnsKey(c, key) && !slices.Contains(byCache[c], key) {
					byCache[c] = append(byCache[c], key)
					break
				}
			}
		}
	}
	for c, keys := range byCache {
		cc := s.cfg.Caches[c]
		if _, built, err := s.state.AppliedTo(ctx, cc.Source, c); err == nil && !built && cc.Sync == config.SyncChangefeed {
			continue // being rebuilt (or never built): its keys are missing by design
		}
		r, err := check.Keys(ctx, s.cfg, s.api, s.redis, c, keys, check.Options{})
		if err != nil {
			return err
		}
		st := s.PerCache[c]
		st.Checked.Add(int64(r.Keys))
		if bad := r.Missing.Count + r.Stale.Count + r.Extra.Count; bad > 0 {
			st.Inconsistent.Add(int64(bad))
			s.log.Warn("consistency: keys differ from their rows after re-checks", "cache", c,
				"missing", r.Missing.Examples, "stale", r.Stale.Examples, "extra", r.Extra.Examples)
		}
	}
	return nil
}
