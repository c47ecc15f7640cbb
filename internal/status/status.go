// Package status answers "is the cache right, and how is it doing?" per
// cache: its mode, keys, hit ratio, change-feed lag, write-behind queue and
// last error, plus what Redis reports. The daemon serves it at /v1/status
// (and draws it at /); `cachesync status` prints it.
package status

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/changefeed"
	"github.com/cachesync/cachesync/internal/drain"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/state"
)

// Report is the status of one config's caches.
type Report struct {
	Name  string    `json:"name"`
	Time  time.Time `json:"time"`
	Live  bool      `json:"live"` // from the running daemon (hit ratios, errors), not read from outside
	Redis Redis     `json:"redis"`
	// Sources are the PostgreSQL sources by name, when they were probed
	// (with an API client).
	Sources map[string]Source `json:"sources,omitempty"`
	Caches  []Cache           `json:"caches"`
}

// Redis is what Redis reports of itself.
type Redis struct {
	Up            bool    `json:"up"`
	Error         string  `json:"error,omitempty"` // why not up: "unreachable: ..." or Redis's own error
	UsedMemory    int64   `json:"used_memory_bytes"`
	MaxMemory     int64   `json:"maxmemory_bytes"`
	EvictedKeys   int64   `json:"evicted_keys"`
	Clients       int64   `json:"connected_clients"`
	OpsPerSecond  int64   `json:"ops_per_second"`
	KeyspaceHits  int64   `json:"keyspace_hits"`
	KeyspaceMiss  int64   `json:"keyspace_misses"`
	HitRatio      float64 `json:"hit_ratio"` // keyspace hits / (hits + misses), every client
	ExpiredKeys   int64   `json:"expired_keys"`
	CommandsTotal int64   `json:"commands_processed"`
}

// Source is the state of a PostgreSQL source.
type Source struct {
	Up    bool   `json:"up"`
	Error string `json:"error,omitempty"` // why not up: "unreachable: ..." or PostgreSQL's own error
	// Active is the daemon that streams the source's slot, as it names its
	// session ("cachesync HOST:PID"); "" when none does (or no cache of the
	// source has a change feed). Others of the config wait as standbys.
	Active string `json:"active,omitempty"`
}

// Cache is the status of one cache. Counters are since the daemon started.
type Cache struct {
	Name        string   `json:"name"`
	Mode        string   `json:"mode"`
	Keys        int64    `json:"keys"` // -1: not counted
	Gets        int64    `json:"gets"`
	Hits        int64    `json:"hits"`
	HitRatio    *float64 `json:"hit_ratio"` // of Gets through cachesync; null when none
	Fills       int64    `json:"fills"`
	LagBytes    *int64   `json:"lag_bytes"`   // change feed: WAL not yet applied
	LagSeconds  *float64 `json:"lag_seconds"` // change feed: commit → visible of the last transaction applied, or how long it has not moved while behind (daemon only)
	Applied     int64    `json:"rows_applied"`
	Queue       *int64   `json:"queue"` // write-behind entries waiting
	DeadLetters *int64   `json:"dead_letters"`
	Drained     int64    `json:"drained"`
	Refreshed   int64    `json:"refreshed"`
	LastError   string   `json:"last_error"`
}

// Sources are what a status is read from; API, Feeds and Errors may be nil
// (outside the daemon).
type Sources struct {
	Config    *config.Config
	Redis     rueidis.Client
	API       *engine.Engine
	Feeds     []*changefeed.Feed
	Errors    *Errors
	Refreshed func(cache string) int64 // keys of cache refreshed by the daemon, when it refreshes
	// Outside is set when API is not the daemon's client (cachesync
	// status without a daemon): its counters say nothing then.
	Outside bool
}

// Collector builds reports, counting each cache's keys at most every
// KeysEvery (a SCAN of the keyspace is not free) and waiting for each
// server at most Deadline (DefaultDeadline when 0).
type Collector struct {
	s         Sources
	KeysEvery time.Duration
	Deadline  time.Duration

	mu      sync.Mutex
	keys    map[string]int64
	counted time.Time
}

// NewCollector returns a collector of s.
func NewCollector(s Sources) *Collector {
	return &Collector{s: s, KeysEvery: 10 * time.Second, Deadline: DefaultDeadline}
}

// Collect reads the status now. Redis and each source are read at once,
// each within the Deadline: one that has not answered by then is reported
// down, with why, and the report is made of what the others said.
func (c *Collector) Collect(ctx context.Context) (*Report, error) {
	cfg := c.s.Config
	r := &Report{Name: cfg.Name, Time: time.Now().UTC(), Live: !c.s.Outside}
	d := c.Deadline
	if d <= 0 {
		d = DefaultDeadline
	}
	var rd redisRead
	var sources map[string]SourceProbe
	var wg sync.WaitGroup
	wg.Go(func() { rd = c.readRedis(ctx, d) })
	if c.s.API != nil {
		wg.Go(func() { sources = ProbeSources(ctx, c.s.API, cfg.SourceNames(), d, true) })
	}
	wg.Wait()
	r.Redis = rd.info
	if sources != nil {
		r.Sources = map[string]Source{}
		for name, p := range sources {
			s := Source{Up: p.Err == nil, Active: p.Active}
			if p.Err != nil {
				s.Error = Describe(p.Err)
			}
			r.Sources[name] = s
		}
	}
	keys, queues := rd.keys, rd.queues
	lag := c.lag(rd.applied, sources)
	for _, name := range cfg.CacheNames() {
		cc := cfg.Caches[name]
		cs := Cache{Name: name, Mode: Mode(cc), Keys: -1}
		if n, ok := keys[name]; ok {
			cs.Keys = n
		}
		if c.s.API != nil && !c.s.Outside {
			if st := c.s.API.CacheStats(name); st != nil {
				hits, misses := st.Hits.Load(), st.Misses.Load()
				cs.Gets, cs.Hits, cs.Fills, cs.Drained = hits+misses, hits, st.Fills.Load(), st.Drained.Load()
				if hits+misses > 0 {
					ratio := float64(hits) / float64(hits+misses)
					cs.HitRatio = &ratio
				}
			}
		}
		if l, ok := lag[cc.Source]; ok && cc.Sync == config.SyncChangefeed {
			cs.LagBytes, cs.LagSeconds, cs.Applied = l.bytes, l.seconds, l.applied
		}
		if q, ok := queues[name]; ok {
			cs.Queue, cs.DeadLetters = &q.Pending, &q.DeadLetters
		}
		if cc.Refreshes() && c.s.Refreshed != nil {
			cs.Refreshed = c.s.Refreshed(name)
		}
		if c.s.Errors != nil {
			cs.LastError = c.s.Errors.Last(name, cc.Source)
		}
		r.Caches = append(r.Caches, cs)
	}
	return r, nil
}

// Mode says in a few words how a cache is kept.
func Mode(c *config.Cache) string {
	m := []string{c.Sync}
	if c.Writes == config.WritesBehind {
		m = append(m, "writes behind")
	}
	if c.Refreshes() {
		m = append(m, "refresh "+c.Refresh)
	}
	if len(c.Schedule) > 0 {
		m = append(m, "scheduled")
	}
	if c.Fill == config.FillOnMiss {
		m = append(m, "fill on-miss")
	}
	if c.TTL > 0 {
		m = append(m, "ttl "+c.TTL.String())
	}
	return strings.Join(m, ", ")
}

type lagInfo struct {
	bytes   *int64
	seconds *float64
	applied int64
}

// redisRead is what a status reads from Redis.
type redisRead struct {
	info    Redis
	keys    map[string]int64
	queues  map[string]drain.Queue
	applied map[string]uint64 // by source: how far its changes are applied in Redis
}

// readRedis reads Redis within d; when Redis does not answer, info says
// why, and applied holds what the running feeds know without it.
func (c *Collector) readRedis(ctx context.Context, d time.Duration) redisRead {
	rd, err := Within(ctx, d, func(ctx context.Context) (redisRead, error) {
		info, err := Info(ctx, c.s.Redis, "default")
		if err != nil {
			return redisRead{}, err
		}
		return redisRead{info: redisInfo(info), keys: c.countKeys(ctx), queues: drain.Queues(ctx, c.s.Redis, c.s.Config),
			applied: c.applied(ctx, true)}, nil
	})
	if err != nil {
		rd = redisRead{info: Redis{Error: Describe(err)}, applied: c.applied(ctx, false)}
	}
	return rd
}

// applied returns how far each source's changes are applied in Redis: the
// position of its running feed, or else, when Redis is up, the recorded
// one; 0 when neither is known (or without an API: no lag to compute).
func (c *Collector) applied(ctx context.Context, redisUp bool) map[string]uint64 {
	out := map[string]uint64{}
	if c.s.API == nil {
		return out
	}
	rec := state.New(c.s.Redis, c.s.Config.Name)
	for _, source := range c.s.Config.SourceNames() {
		f := c.feed(source)
		switch {
		case redisUp:
			out[source] = rec.Position(ctx, source, f.Applied())
		case f != nil:
			out[source] = f.Stats.AppliedLSN.Load()
		}
	}
	return out
}

// lag sets each source's feed position against PostgreSQL's.
func (c *Collector) lag(applied map[string]uint64, sources map[string]SourceProbe) map[string]lagInfo {
	out := map[string]lagInfo{}
	if c.s.API == nil {
		return out
	}
	for _, source := range c.s.Config.SourceNames() {
		var li lagInfo
		var lastLag, progress int64
		f := c.feed(source)
		if f != nil {
			lastLag, progress, li.applied = f.Stats.LastLag.Load(), f.Stats.Progress.Load(), f.Stats.Writes.Load()
		}
		p := sources[source]
		if p.Err != nil || applied[source] == 0 {
			out[source] = li
			continue
		}
		b := max(int64(p.WAL)-int64(applied[source]), 0)
		li.bytes = &b
		if f != nil {
			// The last transaction's commit → visible time; a feed that has
			// not moved for a while (stuck, or catching up a backlog since
			// its start) is at least that far behind.
			lag := time.Duration(lastLag)
			if stalled := time.Since(time.Unix(0, progress)); b > 0 && stalled > time.Second {
				lag = max(lag, stalled)
			}
			s := lag.Seconds()
			li.seconds = &s
		}
		out[source] = li
	}
	return out
}

func (c *Collector) feed(source string) *changefeed.Feed {
	for _, f := range c.s.Feeds {
		if f.Source == source {
			return f
		}
	}
	return nil
}

// countKeys counts each cache's keys with SCAN, at most every KeysEvery
// (or again next time when a count failed).
func (c *Collector) countKeys(ctx context.Context) map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.keys != nil && time.Since(c.counted) < c.KeysEvery {
		return c.keys
	}
	keys := map[string]int64{}
	cfg := c.s.Config
	for _, name := range cfg.CacheNames() {
		var n int64
		err := binding.ScanTemplate(ctx, c.s.Redis, cfg.Caches[name].Template, nil, func(ks []string) error {
			n += int64(len(ks))
			return nil
		})
		if err == nil {
			keys[name] = n
		}
	}
	if len(keys) == len(cfg.Caches) {
		c.keys, c.counted = keys, time.Now()
	}
	return keys
}

// redisInfo reads the fields of INFO default that a status reports.
func redisInfo(info map[string]string) Redis {
	r := Redis{Up: true}
	fields := map[string]*int64{"used_memory": &r.UsedMemory, "maxmemory": &r.MaxMemory, "evicted_keys": &r.EvictedKeys,
		"connected_clients": &r.Clients, "instantaneous_ops_per_sec": &r.OpsPerSecond, "keyspace_hits": &r.KeyspaceHits,
		"keyspace_misses": &r.KeyspaceMiss, "expired_keys": &r.ExpiredKeys, "total_commands_processed": &r.CommandsTotal}
	for k, p := range fields {
		*p, _ = strconv.ParseInt(info[k], 10, 64)
	}
	if r.KeyspaceHits+r.KeyspaceMiss > 0 {
		r.HitRatio = float64(r.KeyspaceHits) / float64(r.KeyspaceHits+r.KeyspaceMiss)
	}
	return r
}

// Info reads a section of Redis's INFO ("default", "everything",
// "commandstats", ...) as field → value.
func Info(ctx context.Context, rc rueidis.Client, section string) (map[string]string, error) {
	info, err := rc.Do(ctx, rc.B().Info().Section(section).Build()).ToString()
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			m[k] = v
		}
	}
	return m, nil
}

// CommandStat reads the calls and CPU time (µs) of an INFO commandstats
// value ("calls=3,usec=27,usec_per_call=9.00,...").
func CommandStat(v string) (calls int64, usec int64) {
	for _, f := range strings.Split(v, ",") {
		name, val, _ := strings.Cut(f, "=")
		switch name {
		case "calls":
			calls, _ = strconv.ParseInt(val, 10, 64)
		case "usec":
			usec, _ = strconv.ParseInt(val, 10, 64)
		}
	}
	return calls, usec
}

// WriteTable prints r as a table for a terminal.
func WriteTable(w io.Writer, r *Report) {
	mem := fmt.Sprintf("%.1f MiB", float64(r.Redis.UsedMemory)/(1<<20))
	if r.Redis.MaxMemory > 0 {
		mem += fmt.Sprintf(" of %.1f MiB", float64(r.Redis.MaxMemory)/(1<<20))
	}
	if !r.Redis.Up {
		mem = down(r.Redis.Error)
	}
	fmt.Fprintf(w, "%s at %s — Redis: %s, %d clients, %d ops/s, %d evicted, keyspace hit ratio %.1f%%\n",
		r.Name, r.Time.Format(time.RFC3339), mem, r.Redis.Clients, r.Redis.OpsPerSecond, r.Redis.EvictedKeys, 100*r.Redis.HitRatio)
	names := make([]string, 0, len(r.Sources))
	for name := range r.Sources {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		switch s := r.Sources[name]; {
		case !s.Up:
			fmt.Fprintf(w, "source %s: %s\n", name, down(s.Error))
		case s.Active != "":
			fmt.Fprintf(w, "source %s: streamed by %s\n", name, s.Active)
		}
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CACHE\tMODE\tKEYS\tHIT RATIO\tLAG\tQUEUE\tLAST ERROR")
	for _, c := range r.Caches {
		keys, hit, lag, queue := "-", "-", "-", "-"
		if c.Keys >= 0 {
			keys = fmt.Sprint(c.Keys)
		}
		if c.HitRatio != nil {
			hit = fmt.Sprintf("%.1f%% of %d", 100**c.HitRatio, c.Gets)
		}
		if c.LagBytes != nil {
			lag = fmt.Sprintf("%d B", *c.LagBytes)
			if c.LagSeconds != nil {
				lag += fmt.Sprintf(", %.1fs", *c.LagSeconds)
			}
		}
		if c.Queue != nil {
			queue = fmt.Sprint(*c.Queue)
			if c.DeadLetters != nil && *c.DeadLetters > 0 {
				queue += fmt.Sprintf(" (+%d dead)", *c.DeadLetters)
			}
		}
		last := c.LastError
		if last == "" {
			last = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Name, c.Mode, keys, hit, lag, queue, last)
	}
	tw.Flush()
}

// down says that a server is down, and why when known.
func down(why string) string {
	if why == "" {
		return "DOWN"
	}
	return "DOWN (" + why + ")"
}
