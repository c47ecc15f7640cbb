// Package status answers "is the cache right, and how is it doing?" per
// cache: its mode, keys, hit ratio, change-feed lag, write-behind queue and
// last error, plus what Redis reports. The daemon serves it at /v1/status
// (and draws it at /); `cachesync status` prints it.
package status

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/changefeed"
	"github.com/cachesync/cachesync/internal/consistency"
	"github.com/cachesync/cachesync/internal/drain"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/keymiss"
	"github.com/cachesync/cachesync/internal/refresh"
	"github.com/cachesync/cachesync/internal/state"
)

// Report is the status of one config's caches.
type Report struct {
	Name  string    `json:"name"`
	Time  time.Time `json:"time"`
	Live  bool      `json:"live"`  // from the running daemon (hit ratios, errors), not read from outside
	Redis Redis     `json:"redis"` // the first target's
	// Targets are the Redis targets, when the config has several.
	Targets []Target `json:"targets,omitempty"`
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

// Target is the state of one Redis target of a config with several.
type Target struct {
	Name  string `json:"name"`
	Up    bool   `json:"up"`
	Error string `json:"error,omitempty"` // why not up, as Redis.Error
	// Sources are, by source with a change-feed cache in the target, how
	// far the target has applied its changes.
	Sources map[string]TargetSource `json:"sources,omitempty"`
}

// TargetSource is how far a target has applied a source's changes.
type TargetSource struct {
	// Applied is the end LSN of the last transaction applied to the
	// target: the running feed's, else the one recorded in it (0: none
	// known).
	Applied uint64 `json:"applied_lsn"`
	// Away is set when the feed left the target behind (it was unreachable
	// past its buffer): it is rebuilt once it answers.
	Away bool `json:"away"`
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
	Config *config.Config
	Redis  rueidis.Client
	API    *engine.Engine
	Feeds  []*changefeed.Feed
	// Targets give the clients of Config.Targets, in order, when the
	// config has several (Redis is then the first's).
	Targets []TargetClient
	// Parts give what the daemon runs for each target of Config.Targets,
	// in order (one for a config with one target). A cache's counters
	// (gets, hits, fills, drained, refreshed) are those of its first
	// target's parts (Home). Without Parts they are API's, and no cache
	// counts refreshes.
	Parts  []TargetParts
	Errors *Errors
	// Outside is set when API is not the daemon's client (cachesync
	// status without a daemon): its counters say nothing then.
	Outside bool
}

// TargetClient returns a Redis target's client, or why it has none (it
// has not answered yet).
type TargetClient func() (rueidis.Client, error)

// Parts are what the daemon runs for one Redis target besides its feeds;
// each is nil when the target's caches need none, or while the target
// has not started them (it did not answer yet).
type Parts struct {
	Engine      *engine.Engine
	Refresher   *refresh.Refresher
	Keymiss     *keymiss.Listener
	Consistency *consistency.Sampler
}

// TargetParts returns a target's parts as they are now: they are read
// through the target each time, as a target that did not answer at the
// start gets its parts once it does.
type TargetParts func() Parts

// Collector builds reports, counting each cache's keys at most every
// KeysEvery (a SCAN of the keyspace is not free) and waiting for each
// server at most Deadline (DefaultDeadline when 0).
type Collector struct {
	s         Sources
	KeysEvery time.Duration
	Deadline  time.Duration

	mu      sync.Mutex
	keys    map[int]map[string]int64 // by target
	counted map[int]time.Time
}

// NewCollector returns a collector of s.
func NewCollector(s Sources) *Collector {
	return &Collector{s: s, KeysEvery: 10 * time.Second, Deadline: DefaultDeadline}
}

// Collect reads the status now. Each Redis target and each source are read at once,
// each within the Deadline: one that has not answered by then is reported
// down, with why, and the report is made of what the others said.
func (c *Collector) Collect(ctx context.Context) (*Report, error) {
	cfg := c.s.Config
	r := &Report{Name: cfg.Name, Time: time.Now().UTC(), Live: !c.s.Outside}
	d := c.Deadline
	if d <= 0 {
		d = DefaultDeadline
	}
	n := max(len(c.s.Targets), 1)
	reads := make([]redisRead, n)
	var sources map[string]SourceProbe
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { reads[i] = c.readRedis(ctx, d, i) })
	}
	if c.s.API != nil {
		wg.Go(func() { sources = ProbeSources(ctx, c.s.API, cfg.SourceNames(), d, true) })
	}
	wg.Wait()
	r.Redis = reads[0].info
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
	lags, parts := make([]map[string]lagInfo, n), make([]Parts, n)
	for i, rd := range reads {
		lags[i], parts[i] = c.lag(i, rd.applied, sources), c.parts(i)
		if len(c.s.Targets) > 0 {
			r.Targets = append(r.Targets, c.target(i, rd))
		}
	}
	for _, name := range cfg.CacheNames() {
		cc := cfg.Caches[name]
		cs := Cache{Name: name, Mode: Mode(cc), Keys: -1}
		// A cache's figures, from Redis and counted, are its first target's.
		home := c.home(cc)
		keys, queues, lag := reads[home].keys, reads[home].queues, lags[home]
		if n, ok := keys[name]; ok {
			cs.Keys = n
		}
		p := parts[home]
		if p.Engine != nil && !c.s.Outside {
			if st := p.Engine.CacheStats(name); st != nil {
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
		if r := p.Refresher; r != nil && cc.Refreshes() {
			if pc := r.PerCache[name]; pc != nil {
				cs.Refreshed = pc.Refreshed.Load()
			}
		}
		if c.s.Errors != nil {
			cs.LastError = c.s.Errors.Last(name, cc.Source)
		}
		r.Caches = append(r.Caches, cs)
	}
	return r, nil
}

// parts are the parts of target i: API alone without Parts.
func (c *Collector) parts(i int) Parts {
	if c.s.Parts == nil {
		return Parts{Engine: c.s.API}
	}
	if i < len(c.s.Parts) && c.s.Parts[i] != nil {
		return c.s.Parts[i]()
	}
	return Parts{}
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

// readRedis reads target i's Redis within d; when it does not answer,
// info says why, and applied holds what the running feeds know without it.
func (c *Collector) readRedis(ctx context.Context, d time.Duration, i int) redisRead {
	rc, err := c.client(i)
	if err != nil {
		return redisRead{info: Redis{Error: Describe(err)}, applied: c.applied(ctx, i, false)}
	}
	rd, err := Within(ctx, d, func(ctx context.Context) (redisRead, error) {
		info, err := Info(ctx, rc, "default")
		if err != nil {
			return redisRead{}, err
		}
		return redisRead{info: redisInfo(info), keys: c.countKeys(ctx, i), queues: drain.Queues(ctx, rc, c.homed(i)),
			applied: c.applied(ctx, i, true)}, nil
	})
	if err != nil {
		rd = redisRead{info: Redis{Error: Describe(err)}, applied: c.applied(ctx, i, false)}
	}
	return rd
}

// client is the client of target i, or why it has none.
func (c *Collector) client(i int) (rueidis.Client, error) {
	if len(c.s.Targets) == 0 {
		return c.s.Redis, nil
	}
	return c.s.Targets[i]()
}

// view is the config as target i sees it: only its caches.
func (c *Collector) view(i int) *config.Config {
	if len(c.s.Targets) == 0 {
		return c.s.Config
	}
	return c.s.Config.ForTarget(c.s.Config.Targets[i].Name)
}

// homed is the config with only the caches whose figures target i
// reports.
func (c *Collector) homed(i int) *config.Config {
	if len(c.s.Targets) == 0 {
		return c.s.Config
	}
	return Homed(c.s.Config, i)
}

// home is the index of the target whose figures the report gives for cc.
func (c *Collector) home(cc *config.Cache) int {
	if len(c.s.Targets) == 0 {
		return 0
	}
	return Home(c.s.Config, cc)
}

// Home is the index in cfg.Targets of cc's first target: the one whose
// figures (keys, write-behind queue, lag) a status or a scrape gives for
// the cache.
func Home(cfg *config.Config, cc *config.Cache) int {
	if len(cc.Targets) == 0 {
		return 0
	}
	return max(slices.IndexFunc(cfg.Targets, func(t config.Redis) bool { return t.Name == cc.Targets[0] }), 0)
}

// Homed returns cfg as target i sees it (config.Config.ForTarget) with
// only the caches it is the first target of (Home).
func Homed(cfg *config.Config, i int) *config.Config {
	h := cfg.ForTarget(cfg.Targets[i].Name)
	for name, cc := range h.Caches {
		if Home(cfg, cc) != i {
			delete(h.Caches, name)
		}
	}
	return h
}

// target reports target i from what was read of it.
func (c *Collector) target(i int, rd redisRead) Target {
	t := Target{Name: c.s.Config.Targets[i].Name, Up: rd.info.Up, Error: rd.info.Error}
	for _, cc := range c.view(i).Caches {
		if cc.Sync != config.SyncChangefeed {
			continue
		}
		if t.Sources == nil {
			t.Sources = map[string]TargetSource{}
		}
		ts := TargetSource{Applied: rd.applied[cc.Source]}
		if ft := c.feedTarget(cc.Source, i); ft != nil {
			ts.Away = ft.Away()
		}
		t.Sources[cc.Source] = ts
	}
	return t
}

// applied returns how far each source's changes are applied in target i:
// the position of its running feed, or else, when the target is up, the
// recorded one; 0 when neither is known (or without an API: no lag to
// compute).
func (c *Collector) applied(ctx context.Context, i int, redisUp bool) map[string]uint64 {
	out := map[string]uint64{}
	if c.s.API == nil {
		return out
	}
	rc, err := c.client(i)
	if err != nil {
		redisUp = false
	}
	rec := state.New(rc, c.s.Config.Name)
	for _, source := range c.s.Config.SourceNames() {
		st := c.stats(source, i)
		switch {
		case redisUp:
			var running uint64
			if st != nil {
				running = st.AppliedLSN.Load()
			}
			out[source] = rec.Position(ctx, source, running)
		case st != nil:
			out[source] = st.AppliedLSN.Load()
		}
	}
	return out
}

// lag sets each source's feed position in target i against PostgreSQL's.
func (c *Collector) lag(i int, applied map[string]uint64, sources map[string]SourceProbe) map[string]lagInfo {
	out := map[string]lagInfo{}
	if c.s.API == nil {
		return out
	}
	for _, source := range c.s.Config.SourceNames() {
		var li lagInfo
		var lastLag, progress int64
		st := c.stats(source, i)
		if st != nil {
			lastLag, progress, li.applied = st.LastLag.Load(), st.Progress.Load(), st.Writes.Load()
		}
		p := sources[source]
		if p.Err != nil || applied[source] == 0 {
			out[source] = li
			continue
		}
		b := max(int64(p.WAL)-int64(applied[source]), 0)
		li.bytes = &b
		if st != nil {
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

// feedTarget is target i of the running feed of source, or nil (no
// running feed, or none of its caches in that target).
func (c *Collector) feedTarget(source string, i int) *changefeed.Target {
	for _, f := range c.s.Feeds {
		if f.Source != source {
			continue
		}
		if len(c.s.Targets) == 0 {
			return f.Targets[0]
		}
		for _, t := range f.Targets {
			if t.Name == c.s.Config.Targets[i].Name {
				return t
			}
		}
	}
	return nil
}

// stats are the running feed's figures of source in target i, or nil.
func (c *Collector) stats(source string, i int) *changefeed.Stats {
	if t := c.feedTarget(source, i); t != nil {
		return t.Stats
	}
	return nil
}

// countKeys counts with SCAN the keys of each cache whose figures target
// i reports, at most every KeysEvery (or again next time when a count
// failed).
func (c *Collector) countKeys(ctx context.Context, i int) map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.keys == nil {
		c.keys, c.counted = map[int]map[string]int64{}, map[int]time.Time{}
	}
	if c.keys[i] != nil && time.Since(c.counted[i]) < c.KeysEvery {
		return c.keys[i]
	}
	keys := map[string]int64{}
	cfg := c.homed(i)
	rc, err := c.client(i)
	if err != nil {
		return keys
	}
	for _, name := range cfg.CacheNames() {
		var n int64
		err := binding.ScanTemplate(ctx, rc, cfg.Caches[name].Template, nil, func(ks []string) error {
			n += int64(len(ks))
			return nil
		})
		if err == nil {
			keys[name] = n
		}
	}
	if len(keys) == len(cfg.Caches) {
		c.keys[i], c.counted[i] = keys, time.Now()
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
	for _, t := range r.Targets {
		fmt.Fprintf(w, "target %s: %s\n", t.Name, targetLine(t))
	}
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

// targetLine says how target t is: up or down, and how far it applied
// each source, or that it was left behind.
func targetLine(t Target) string {
	line := "up"
	if !t.Up {
		line = down(t.Error)
	}
	sources := slices.Sorted(maps.Keys(t.Sources))
	for _, name := range sources {
		ts := t.Sources[name]
		line += fmt.Sprintf(", source %s applied to %s", name, pglogrepl.LSN(ts.Applied))
		if ts.Away {
			line += " (left behind: rebuilt once it answers)"
		}
	}
	return line
}

// down says that a server is down, and why when known.
func down(why string) string {
	if why == "" {
		return "DOWN"
	}
	return "DOWN (" + why + ")"
}
