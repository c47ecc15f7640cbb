// Package metrics exports cachesync's figures in the Prometheus format:
// what the Go API did per cache, the change feeds, write-behind queues,
// refreshes, and what Redis itself reports (INFO, including its latency
// percentiles per command). Every
// figure is read when scraped; the hot paths only count with atomics.
package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/changefeed"
	"github.com/cachesync/cachesync/internal/consistency"
	"github.com/cachesync/cachesync/internal/drain"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/keymiss"
	"github.com/cachesync/cachesync/internal/latency"
	"github.com/cachesync/cachesync/internal/refresh"
	"github.com/cachesync/cachesync/internal/state"
	"github.com/cachesync/cachesync/internal/status"
)

// Sources are what the metrics are read from; any but Config and Redis may be nil.
type Sources struct {
	Config *config.Config
	Redis  rueidis.Client
	API    *engine.Engine
	Feeds  []*changefeed.Feed
	// Targets are the clients of Config.Targets, in order, when the
	// config has several (Redis is then the first's): each target's feed
	// position is read from it.
	Targets []status.TargetClient
	// Parts give what the daemon runs for each target of Config.Targets,
	// in order (one for a config with one target), read at each scrape:
	// their figures carry the target's name (empty for a config's only
	// target). Without Parts, API, Refresher, Keymiss and Consistency are
	// the parts of a config's only target.
	Parts     []status.TargetParts
	Refresher *refresh.Refresher
	Keymiss   *keymiss.Listener
	// Consistency is the continuous consistency check, when it runs.
	Consistency *consistency.Sampler
	Log         *slog.Logger
	// Deadline is how long a scrape waits for each server (Redis, each
	// source); one that has not answered by then is reported down
	// (redis_up, source_up 0). 0: status.DefaultDeadline.
	Deadline time.Duration
}

// Handler serves the metrics of s, with Go's process and runtime metrics.
func Handler(s Sources) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{s: s}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogAdapter{s.Log}})
}

// Gatherer gathers the figures of s that Handler serves, without Go's
// process and runtime metrics: what the dashboard's history samples.
func Gatherer(s Sources) prometheus.Gatherer {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{s: s})
	return reg
}

type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Println(v ...any) {
	if a.log != nil {
		a.log.Warn("metrics: " + strings.TrimSpace(fmt.Sprintln(v...)))
	}
}

// Names and help of every metric, in one place (docs/grafana.json uses them).
var (
	descGets         = desc("gets_total", "Gets through the Go API and HTTP, by result: hit, miss, negative (a cached \"not found\"), stale (served stale).", "cache", "target", "result")
	descGetDuration  = desc("get_duration_seconds", "Duration of Gets through the Go API and HTTP, hits and misses.", "cache", "target")
	descFills        = desc("fills_total", "Rows loaded from PostgreSQL by read-through fills.", "cache", "target")
	descCollapsed    = desc("fills_collapsed_total", "Misses that waited for another fill instead of querying (stampedes collapsed).", "cache", "target")
	descL1Gets       = desc("l1_gets_total", "Gets of a cache with l1, by result: hit (answered from this process's memory), miss (asked Redis).", "cache", "target", "result")
	descL1Inval      = desc("l1_invalidations_total", "Keys Redis told this process changed (client tracking), each dropping its copy.", "cache", "target")
	descL1Flushes    = desc("l1_flushes_total", "Connections of the l1 that were lost, each dropping its copies.", "cache", "target")
	descL1Bytes      = desc("l1_bytes", "Memory held by the l1's copies, approximately.", "cache", "target")
	descWBPending    = desc("writebehind_pending", "Write-behind entries in the queue stream, not yet applied to PostgreSQL.", "cache")
	descWBDead       = desc("writebehind_dead_letters", "Entries in the write-behind dead-letter stream.", "cache")
	descWBDrained    = desc("writebehind_drained_total", "Write-behind entries applied to PostgreSQL by this process.", "cache", "target")
	descWBDeadTotal  = desc("writebehind_dead_lettered_total", "Write-behind entries this process moved to the dead-letter stream.", "cache", "target")
	descFeedRows     = desc("changefeed_rows_applied_total", "Keys written or deleted in Redis by the change feed.", "source", "target")
	descFeedTxns     = desc("changefeed_transactions_total", "Transactions the change feed applied.", "source", "target")
	descFeedErrors   = desc("changefeed_errors_total", "Change feed errors, by kind: map (a row with no key or value), session (a session that ended in an error).", "source", "target", "kind")
	descFeedRebuilds = desc("changefeed_rebuilds_total", "Caches rebuilt from a snapshot.", "source", "target")
	descFeedLSN      = desc("changefeed_confirmed_lsn", "End LSN of the last transaction applied to Redis (and confirmed to PostgreSQL), as a number.", "source", "target")
	descFeedLagBytes = desc("changefeed_lag_bytes", "WAL bytes between PostgreSQL's current position and the last transaction applied.", "source", "target")
	descFeedLag      = desc("changefeed_lag_seconds", "Commit to visible in Redis, for the last transaction of each applied batch.", "source", "target")
	descFeedAway     = desc("changefeed_target_away", "1 when the change feed left the target behind (unreachable past its buffer): it is rebuilt once it answers.", "source", "target")
	descRefresh      = desc("refresh_keys_total", "Keys handled by refreshes, by result: refreshed, repaired (expired while unwatched), kept, not_found, scheduled.", "cache", "target", "result")
	descRefreshEv    = desc("refresh_events_total", "Expired-key events, by fate: received, ignored (no refreshing cache), dropped (backed up; the record repairs them).", "fate", "target")
	descRefreshErr   = desc("refresh_errors_total", "Refresh batches that failed.", "target")
	descRefreshDelay = desc("refresh_delay_seconds", "From a key's recorded expiry to its refresh.", "target")
	descKeymiss      = desc("keymiss_events_total", "Keymiss events, by fate: received, filled, ignored, dropped, error.", "fate", "target")
	descEventsOK     = desc("keyspace_events_ok", "1 when cachesync can check and enable, on every Redis node, the notify-keyspace-events flags a feature (keymiss, refresh) needs; 0 while a node refuses CONFIG: configure them by hand (the log says what).", "feature", "target")
	descEventsAgain  = desc("keyspace_events_reenabled_total", "Times a Redis node had lost the notify-keyspace-events flags a feature needs (a restart without persistence, someone's CONFIG SET) and cachesync enabled them again.", "feature", "target")
	descConsChecked  = desc("consistency_checked_total", "Keys the continuous consistency check compared with their rows (held by Redis, or with a row).", "cache", "target")
	descConsBad      = desc("consistency_inconsistent_total", "Keys the continuous consistency check found differing from their rows, and still differing when read again after the change feed caught up.", "cache", "target")
	descConsNines    = desc("consistency_nines", "-log10 of the share of checked keys found inconsistent (3: one in a thousand); with none found, log10 of the keys checked, what the sample can show.", "cache", "target")
	descConsErrors   = desc("consistency_errors_total", "Consistency samples that failed (a server down).", "target")
	descRedisUp      = desc("redis_up", "1 when Redis answered the scrape's INFO within its deadline.")
	descSourceUp     = desc("source_up", "1 when the source's PostgreSQL answered the scrape's query of its WAL position within its deadline.", "source")
	descRedisGauge   = map[string]*prometheus.Desc{
		"used_memory":               desc("redis_used_memory_bytes", "Redis used_memory."),
		"maxmemory":                 desc("redis_maxmemory_bytes", "Redis maxmemory (0: no limit)."),
		"connected_clients":         desc("redis_connected_clients", "Redis connected_clients."),
		"instantaneous_ops_per_sec": desc("redis_instantaneous_ops_per_second", "Redis instantaneous_ops_per_sec."),
	}
	descRedisCounter = map[string]*prometheus.Desc{
		"evicted_keys":             desc("redis_evicted_keys_total", "Redis evicted_keys."),
		"expired_keys":             desc("redis_expired_keys_total", "Redis expired_keys."),
		"keyspace_hits":            desc("redis_keyspace_hits_total", "Redis keyspace_hits: reads that found their key, from every client."),
		"keyspace_misses":          desc("redis_keyspace_misses_total", "Redis keyspace_misses."),
		"total_commands_processed": desc("redis_commands_processed_total", "Redis total_commands_processed."),
	}
	descRedisLatency = desc("redis_command_duration_seconds", "Redis's own latency of each command cachesync uses: percentiles from INFO latencystats (its latency histograms), count and sum from commandstats.", "command")
)

// redisCommands are the commands whose Redis latency histogram is exported.
var redisCommands = []string{"get", "set", "hgetall", "mget", "unlink", "eval", "evalsha", "xadd", "xreadgroup", "zadd"}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("cachesync_"+name, help, labels, nil)
}

type collector struct{ s Sources }

func (c *collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

// Collect reads Redis and each source at once, each within the deadline,
// while it reports the figures counted in this process.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ctx := context.Background()
	d := c.s.Deadline
	if d <= 0 {
		d = status.DefaultDeadline
	}
	n := max(len(c.s.Targets), 1)
	reads, errs := make([]redisRead, n), make([]error, n)
	var sources map[string]status.SourceProbe
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			reads[i], errs[i] = status.Within(ctx, d, func(ctx context.Context) (redisRead, error) { return c.readRedis(ctx, i) })
		})
	}
	if c.s.API != nil {
		wg.Go(func() { sources = status.ProbeSources(ctx, c.s.API, c.s.Config.SourceNames(), d, false) })
	}
	c.collectCounts(ch)
	wg.Wait()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, rd := range reads {
		for name, q := range rd.queues {
			gauge(descWBPending, float64(q.Pending), name)
			gauge(descWBDead, float64(q.DeadLetters), name)
		}
	}
	for _, f := range c.s.Feeds {
		for _, t := range f.Targets {
			if len(c.s.Targets) > 0 && len(t.Caches) == 0 {
				continue
			}
			i := c.index(t.Name)
			applied, known := reads[i].applied[f.Source]
			if errs[i] != nil {
				applied, known = t.Stats.AppliedLSN.Load(), true // what the feed knows without Redis
			}
			if known {
				gauge(descFeedLSN, float64(applied), f.Source, t.Name)
			}
			if p, ok := sources[f.Source]; ok && p.Err == nil && applied > 0 {
				gauge(descFeedLagBytes, float64(max(int64(p.WAL)-int64(applied), 0)), f.Source, t.Name)
			}
		}
	}
	for name, p := range sources {
		gauge(descSourceUp, ok(p.Err == nil), name)
	}
	if errs[0] != nil {
		gauge(descRedisUp, 0)
		return
	}
	gauge(descRedisUp, 1)
	collectInfo(reads[0].info, ch)
}

// redisRead is what a scrape reads from a Redis target.
type redisRead struct {
	info    map[string]string      // the first target's
	queues  map[string]drain.Queue // of the caches whose figures the target gives (status.Home)
	applied map[string]uint64      // by source of a feed: how far its changes are applied in the target
}

// readRedis reads target i: INFO of the first, the write-behind queues
// of the caches it is the first target of, and the feeds' positions in it.
func (c *collector) readRedis(ctx context.Context, i int) (redisRead, error) {
	rc, cfg := c.s.Redis, c.s.Config
	if len(c.s.Targets) > 0 {
		var err error
		if rc, err = c.s.Targets[i](); err != nil {
			return redisRead{}, err
		}
		cfg = status.Homed(c.s.Config, i)
	}
	var rd redisRead
	var err error
	if i == 0 {
		if rd.info, err = status.Info(ctx, rc, "everything"); err != nil {
			return redisRead{}, err
		}
	} else if err := rc.Do(ctx, rc.B().Ping().Build()).Error(); err != nil {
		return redisRead{}, err
	}
	rd.queues, rd.applied = drain.Queues(ctx, rc, cfg), map[string]uint64{}
	rec := state.New(rc, c.s.Config.Name)
	for _, f := range c.s.Feeds {
		for _, t := range f.Targets {
			if c.index(t.Name) == i {
				rd.applied[f.Source] = rec.Position(ctx, f.Source, t.Stats.AppliedLSN.Load())
			}
		}
	}
	return rd, nil
}

// index is the index of the target named name among Targets (0 with one).
func (c *collector) index(name string) int {
	if len(c.s.Targets) == 0 {
		return 0
	}
	return max(slices.IndexFunc(c.s.Config.Targets, func(t config.Redis) bool { return t.Name == name }), 0)
}

// collectCounts reports what this process counted: nothing to read from
// a server.
func (c *collector) collectCounts(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, f := range c.s.Feeds {
		for _, t := range f.Targets {
			if len(c.s.Targets) > 0 && len(t.Caches) == 0 {
				continue // a feed without a change-feed cache holds a target of no name
			}
			st, labels := t.Stats, []string{f.Source, t.Name}
			counter(descFeedRows, st.Writes.Load(), labels...)
			counter(descFeedTxns, st.Txns.Load(), labels...)
			counter(descFeedErrors, st.MapErrors.Load(), f.Source, t.Name, "map")
			counter(descFeedErrors, st.Reconnects.Load(), f.Source, t.Name, "session")
			counter(descFeedRebuilds, st.Rebuilds.Load(), labels...)
			ch <- histogram(descFeedLag, st.Lag, labels...)
			gauge(descFeedAway, ok(t.Away()), labels...)
		}
	}
	for i, p := range c.parts() {
		c.collectParts(ch, p, c.targetName(i))
	}
}

// collectParts reports what the parts of a target counted, labelled with
// its name.
func (c *collector) collectParts(ch chan<- prometheus.Metric, p status.Parts, target string) {
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	cfg := c.s.Config
	if e := p.Engine; e != nil {
		for _, name := range cfg.CacheNames() {
			st := e.CacheStats(name)
			if st == nil {
				continue // a cache of another target
			}
			counter(descGets, st.Hits.Load(), name, target, "hit")
			counter(descGets, st.Misses.Load(), name, target, "miss")
			counter(descGets, st.NegativeHits.Load(), name, target, "negative")
			counter(descGets, st.Stale.Load(), name, target, "stale")
			counter(descFills, st.Fills.Load(), name, target)
			counter(descCollapsed, st.Collapsed.Load(), name, target)
			ch <- histogram(descGetDuration, st.Gets, name, target)
			if l1 := e.L1Stats(name); l1 != nil {
				counter(descL1Gets, l1.Hits.Load(), name, target, "hit")
				counter(descL1Gets, l1.Misses.Load(), name, target, "miss")
				counter(descL1Inval, l1.Invalidations.Load(), name, target)
				counter(descL1Flushes, l1.Flushes.Load(), name, target)
				gauge(descL1Bytes, float64(l1.Bytes.Load()), name, target)
			}
			if cfg.Caches[name].Writes == config.WritesBehind {
				counter(descWBDrained, st.Drained.Load(), name, target)
				counter(descWBDeadTotal, st.DeadLettered.Load(), name, target)
			}
		}
	}
	if r := p.Refresher; r != nil {
		st := &r.Stats
		for _, name := range cfg.CacheNames() {
			if pc := r.PerCache[name]; pc != nil {
				counter(descRefresh, pc.Refreshed.Load(), name, target, "refreshed")
				counter(descRefresh, pc.Repaired.Load(), name, target, "repaired")
				counter(descRefresh, pc.Kept.Load(), name, target, "kept")
				counter(descRefresh, pc.NotFound.Load(), name, target, "not_found")
				counter(descRefresh, pc.Scheduled.Load(), name, target, "scheduled")
			}
		}
		counter(descRefreshEv, st.Events.Load(), "received", target)
		counter(descRefreshEv, st.Ignored.Load(), "ignored", target)
		counter(descRefreshEv, st.Dropped.Load(), "dropped", target)
		counter(descRefreshErr, st.Errors.Load(), target)
		ch <- histogram(descRefreshDelay, st.Delays, target)
		if r.Listens() {
			gauge(descEventsOK, ok(st.Notify.OK()), "refresh", target)
			counter(descEventsAgain, st.Notify.Reenabled.Load(), "refresh", target)
		}
	}
	if sm := p.Consistency; sm != nil {
		for _, name := range cfg.CacheNames() {
			st := sm.PerCache[name]
			if st == nil {
				continue // a cache of another target
			}
			counter(descConsChecked, st.Checked.Load(), name, target)
			counter(descConsBad, st.Inconsistent.Load(), name, target)
			if n := st.Nines(); !math.IsNaN(n) {
				gauge(descConsNines, n, name, target)
			}
		}
		counter(descConsErrors, sm.Errors.Load(), target)
	}
	if l := p.Keymiss; l != nil {
		counter(descKeymiss, l.Stats.Events.Load(), "received", target)
		counter(descKeymiss, l.Stats.Filled.Load(), "filled", target)
		counter(descKeymiss, l.Stats.Ignored.Load(), "ignored", target)
		counter(descKeymiss, l.Stats.Dropped.Load(), "dropped", target)
		counter(descKeymiss, l.Stats.Errors.Load(), "error", target)
		gauge(descEventsOK, ok(l.Stats.Notify.OK()), "keymiss", target)
		counter(descEventsAgain, l.Stats.Notify.Reenabled.Load(), "keymiss", target)
	}
}

// parts are the parts of each target as they are now.
func (c *collector) parts() []status.Parts {
	if c.s.Parts == nil {
		return []status.Parts{{Engine: c.s.API, Refresher: c.s.Refresher, Keymiss: c.s.Keymiss, Consistency: c.s.Consistency}}
	}
	out := make([]status.Parts, 0, len(c.s.Parts))
	for _, p := range c.s.Parts {
		var got status.Parts
		if p != nil {
			got = p()
		}
		out = append(out, got)
	}
	return out
}

// targetName is the name of target i, as the change-feed metrics give
// it (empty for a config's only target, unless it is named).
func (c *collector) targetName(i int) string {
	if ts := c.s.Config.Targets; i < len(ts) {
		return ts[i].Name
	}
	return ""
}

// ok is 1 for true, 0 for false.
func ok(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// histogram turns h into a Prometheus histogram in seconds.
func histogram(d *prometheus.Desc, h *latency.Histogram, labels ...string) prometheus.Metric {
	cum, n, sum := h.Snapshot()
	buckets := make(map[float64]uint64, len(cum))
	for i, b := range h.Bounds() {
		buckets[b.Seconds()] = cum[i]
	}
	return prometheus.MustNewConstHistogram(d, n, sum.Seconds(), buckets, labels...)
}

// collectInfo reports the fields of INFO everything and Redis's command
// latencies.
func collectInfo(info map[string]string, ch chan<- prometheus.Metric) {
	calls, usec := map[string]uint64{}, map[string]float64{}
	quantiles := map[string]map[float64]float64{}
	for k, v := range info {
		if cmd, ok := strings.CutPrefix(k, "cmdstat_"); ok && slices.Contains(redisCommands, cmd) {
			n, us := status.CommandStat(v)
			calls[cmd], usec[cmd] = uint64(n), float64(us)
			continue
		}
		if cmd, ok := strings.CutPrefix(k, "latency_percentiles_usec_"); ok && slices.Contains(redisCommands, cmd) {
			q := map[float64]float64{}
			for _, f := range strings.Split(v, ",") { // p50=1.003,p99=2.007,p99.9=10.015
				name, val, _ := strings.Cut(f, "=")
				pct, err1 := strconv.ParseFloat(strings.TrimPrefix(name, "p"), 64)
				us, err2 := strconv.ParseFloat(val, 64)
				if err1 == nil && err2 == nil {
					q[pct/100] = us / 1e6
				}
			}
			quantiles[cmd] = q
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			continue
		}
		if d, ok := descRedisGauge[k]; ok {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, f)
		}
		if d, ok := descRedisCounter[k]; ok {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, f)
		}
	}
	for cmd, q := range quantiles {
		ch <- prometheus.MustNewConstSummary(descRedisLatency, calls[cmd], usec[cmd]/1e6, q, cmd)
	}
}
