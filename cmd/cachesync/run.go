package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"
	"golang.org/x/sync/errgroup"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/changefeed"
	"github.com/cachesync/cachesync/internal/consistency"
	"github.com/cachesync/cachesync/internal/dashboard"
	"github.com/cachesync/cachesync/internal/drain"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/httpapi"
	"github.com/cachesync/cachesync/internal/keymiss"
	"github.com/cachesync/cachesync/internal/metrics"
	"github.com/cachesync/cachesync/internal/refresh"
	"github.com/cachesync/cachesync/internal/schema"
	"github.com/cachesync/cachesync/internal/status"
	"github.com/cachesync/cachesync/lock"
)

type runCommand struct{}

func (c *runCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("run", "run --config FILE")
	common := addCommonFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	d, err := openDaemon(ctx, common)
	if err != nil {
		return err
	}
	defer d.close()
	return d.run(ctx)
}

// commonFlags are the flags of every command that reads a config.
type commonFlags struct {
	config    string
	logLevel  string
	logFormat string
}

func addCommonFlags(fs *flag.FlagSet) *commonFlags {
	c := &commonFlags{}
	fs.StringVar(&c.config, "config", "cachesync.yaml", "config `file`")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	return c
}

func (c *commonFlags) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return nil, usageError{fmt.Sprintf("--log-level %q: want debug, info, warn or error", c.logLevel)}
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(c.logFormat) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, usageError{fmt.Sprintf("--log-format %q: want text or json", c.logFormat)}
}

// daemon is a loaded config with a Redis client per target and one feed
// per source.
type daemon struct {
	cfg     *config.Config
	log     *slog.Logger
	errors  *status.Errors // the last error of each cache, for the status
	targets []*target      // the config's targets, in its order
	feeds   []*changefeed.Feed
}

// target is one Redis target of the daemon: its view of the config
// (config.Config.ForTarget, or the config itself when it has one target),
// its client, and a logger that names it when there are several.
type target struct {
	name string
	spec config.Redis
	cfg  *config.Config
	log  *slog.Logger

	mu sync.Mutex
	// redis is nil while a target other than the first has not answered
	// since the daemon started; err says why.
	redis rueidis.Client
	err   error
	// parts are what start runs for the target's caches, once it has.
	parts status.Parts
}

// client returns the target's client, or why it has none yet.
func (t *target) client() (rueidis.Client, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.redis, t.err
}

// running returns what the target runs for its caches now: nothing
// before it started (a target that did not answer yet).
func (t *target) running() status.Parts {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.parts
}

// openDaemon loads the config, connects to each Redis target and checks
// every cache against its live table, so a bad config fails at once with
// one line.
func openDaemon(ctx context.Context, common *commonFlags) (*daemon, error) {
	log, err := common.logger()
	if err != nil {
		return nil, err
	}
	errs := &status.Errors{}
	log = slog.New(errs.Wrap(log.Handler()))
	cfg, err := config.LoadFile(common.config)
	if err != nil {
		return nil, err
	}
	d := &daemon{cfg: cfg, log: log, errors: errs}
	if d.targets, err = openTargets(cfg, log, true); err != nil {
		return nil, err
	}
	for _, t := range d.targets {
		if t.redis != nil {
			t.warnEviction(ctx)
		}
	}
	// Every cache is checked, and no two of one target may name one key
	// (whatever their sources), before any feed starts: a feed's rebuild
	// clears its keys. Caches in different targets may share key names.
	all := map[string]*binding.Binding{}
	clients := make([]rueidis.Client, len(d.targets))
	for i, t := range d.targets {
		clients[i] = t.redis // nil for a target that does not answer: the feeds open their own once it does
	}
	for _, source := range cfg.SourceNames() {
		bindings, err := checkSource(ctx, cfg, source)
		if err != nil {
			d.close()
			return nil, err
		}
		maps.Copy(all, bindings)
		d.feeds = append(d.feeds, changefeed.New(cfg, source, log, clients...))
	}
	for _, t := range d.targets {
		if err := schema.CheckKeyspaces(targetBindings(all, t.cfg)); err != nil {
			d.close()
			if len(d.targets) > 1 {
				return nil, fmt.Errorf("target %s: %w", t.name, err)
			}
			return nil, err
		}
	}
	return d, nil
}

// openTargets opens a client of each target of cfg. With later, a target
// other than the first that does not answer is left without one (its
// err says why), for the daemon to open when it answers.
func openTargets(cfg *config.Config, log *slog.Logger, later bool) ([]*target, error) {
	if len(cfg.Targets) <= 1 {
		client, err := cfg.RedisClient()
		if err != nil {
			return nil, err
		}
		return []*target{{name: cfg.Redis.Name, spec: cfg.Redis, cfg: cfg, redis: client, log: log}}, nil
	}
	var targets []*target
	for i, tc := range cfg.Targets {
		t := &target{name: tc.Name, spec: tc, cfg: cfg.ForTarget(tc.Name), log: log.With("target", tc.Name)}
		t.redis, t.err = tc.Client()
		if t.err != nil {
			if _, err := tc.Option(); i == 0 || !later || err != nil {
				for _, t := range targets {
					t.close()
				}
				return nil, t.err
			}
			t.log.Warn("redis target does not answer: its caches are built once it does, the others go on", "err", t.err)
		}
		targets = append(targets, t)
	}
	return targets, nil
}

// targetBindings returns the bindings of all that belong to the caches of
// cfg.
func targetBindings(all map[string]*binding.Binding, cfg *config.Config) map[string]*binding.Binding {
	out := map[string]*binding.Binding{}
	for name := range cfg.Caches {
		if b, ok := all[name]; ok {
			out[name] = b
		}
	}
	return out
}

// checkSource checks the caches of source against the live schema and
// returns their bindings.
func checkSource(ctx context.Context, cfg *config.Config, source string) (map[string]*binding.Binding, error) {
	db, err := pgx.Connect(ctx, cfg.Sources[source].URL)
	if err != nil {
		return nil, fmt.Errorf("sources.%s.url: cannot connect: %w", source, err)
	}
	defer db.Close(context.WithoutCancel(ctx))
	var caches []*config.Cache
	for _, name := range cfg.CacheNames() {
		if c := cfg.Caches[name]; c.Source == source {
			caches = append(caches, c)
		}
	}
	tables, err := schema.LoadTables(ctx, db, caches)
	if err != nil {
		return nil, err
	}
	return schema.Bindings(caches, tables), nil
}

// run runs every feed, what each target's caches need besides (fills on
// a miss, refreshes, the consistency sampler, write-behind drains), and the
// HTTP API when configured, until ctx is done (SIGINT/SIGTERM) or one fails
// for good.
func (d *daemon) run(ctx context.Context) error {
	d.log.Info("cachesync running", "name", d.cfg.Name, "caches", len(d.cfg.Caches), "sources", len(d.feeds), "targets", len(d.targets))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	for _, f := range d.feeds {
		g.Go(func() error { return f.Run(gctx) })
	}
	for i, t := range d.targets {
		if i > 0 {
			// Another target than the first may be down, or go down, at
			// any time: it is served once it answers, and again after a
			// failure, without ending the daemon.
			g.Go(func() error { t.await(gctx); return nil })
			continue
		}
		api, err := t.start(ctx, gctx, g, d.cfg.HTTP.Addr != "") // the first: it serves the HTTP API
		if api != nil {
			defer api.Close()
		}
		if err != nil {
			cancel() // what started already ends before the engines close
			_ = g.Wait()
			return err
		}
		if d.cfg.HTTP.Addr != "" {
			d.serve(gctx, g, api)
		}
	}
	err := g.Wait()
	if err == nil {
		d.log.Info("cachesync stopped")
	}
	return err
}

// start opens the engine of t when its caches need one (or api, for the
// HTTP API) and starts in g what they need: the keymiss listener, the
// refresher, the consistency sampler, the write-behind drain. The engine
// (nil when none) is for the caller to close, also after an error. Once
// all started, they are the target's parts (running) for the status and
// metrics.
func (t *target) start(ctx, gctx context.Context, g *errgroup.Group, api bool) (*engine.Engine, error) {
	var p status.Parts
	cfg := t.cfg
	has := func(ok func(*config.Cache) bool) bool {
		return slices.ContainsFunc(cfg.CacheNames(), func(n string) bool { return ok(cfg.Caches[n]) })
	}
	onMiss := has(func(c *config.Cache) bool { return c.Fill == config.FillOnMiss })
	behind := has(func(c *config.Cache) bool { return c.Writes == config.WritesBehind })
	refreshes := has(func(c *config.Cache) bool { return c.Refreshes() || len(c.Schedule) > 0 })
	sampling := cfg.Consistency.Rate() > 0 && len(cfg.Caches) > 0
	if !api && !onMiss && !behind && !refreshes && !sampling {
		return nil, nil
	}
	e, err := engine.Open(ctx, cfg, engine.Options{Logger: t.log})
	if err != nil {
		return nil, err
	}
	p.Engine = e
	if p.Keymiss, err = keymiss.New(cfg, e, t.redis, t.log); err != nil {
		return e, err
	}
	if l := p.Keymiss; l != nil {
		g.Go(func() error { return l.Run(gctx, 16) })
	}
	if p.Refresher, err = refresh.New(cfg, e, t.redis, t.log); err != nil {
		return e, err
	}
	if r := p.Refresher; r != nil {
		g.Go(func() error { return r.Run(gctx) })
	}
	if sampling {
		p.Consistency = consistency.New(cfg, e, t.redis, t.log)
	}
	if s := p.Consistency; s != nil {
		g.Go(func() error { return s.Run(gctx) })
	}
	if behind {
		t.warnNoAOF(ctx)
		g.Go(func() error { return drain.Run(gctx, e) })
	}
	t.mu.Lock()
	t.parts = p
	t.mu.Unlock()
	return e, nil
}

// await runs what the caches of t, a target other than the first, need
// (start) until ctx is done: it waits for the target to answer when the
// daemon has no client of it yet, and starts again after a failure (the
// target went down), so neither ends the daemon.
func (t *target) await(ctx context.Context) {
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		if rc, _ := t.client(); rc != nil {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		rc, err := t.spec.Client()
		if err != nil {
			continue
		}
		t.mu.Lock()
		t.redis, t.err = rc, nil
		t.mu.Unlock()
		t.log.Info("redis target answers")
		t.warnEviction(ctx)
		break
	}
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		g, gctx := errgroup.WithContext(ctx)
		api, err := t.start(ctx, gctx, g, false)
		if err == nil && api == nil {
			<-ctx.Done() // the target's caches need nothing besides the change feed
			return
		}
		if err == nil {
			err = g.Wait()
		} else {
			_ = g.Wait() // (nothing started, or what did ends with ctx: start failed after it)
		}
		if api != nil {
			api.Close()
		}
		if ctx.Err() != nil {
			return
		}
		t.log.Warn("cannot serve the target's caches; trying again", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// serve starts the HTTP API on api, the first target's engine, with the
// status and metrics of every target, whose parts they read through the
// target at each request (a target that did not answer at the start runs
// its own once it does).
func (d *daemon) serve(gctx context.Context, g *errgroup.Group, api *engine.Engine) {
	first := d.targets[0]
	srv := httpapi.New(api, d.cfg.HTTP, d.log)
	ms := metrics.Sources{Config: d.cfg, Redis: first.redis, API: api, Feeds: d.feeds, Log: d.log}
	st := status.Sources{Config: d.cfg, Redis: first.redis, API: api, Feeds: d.feeds, Errors: d.errors}
	for _, t := range d.targets {
		ms.Parts = append(ms.Parts, t.running)
		st.Parts = append(st.Parts, t.running)
		if len(d.targets) > 1 {
			ms.Targets = append(ms.Targets, t.client)
			st.Targets = append(st.Targets, t.client)
		}
	}
	collector := status.NewCollector(st)
	sampled := status.NewCollector(st)
	sampled.KeysEvery = dashboard.Window // the history draws no key counts: a SCAN of the keyspace every 15 minutes, not every sample
	history := dashboard.NewHistory(metrics.Gatherer(ms), sampled.Collect)
	g.Go(func() error { history.Run(gctx); return nil })
	srv.Observe(metrics.Handler(ms), func(ctx context.Context) (any, error) { return collector.Collect(ctx) }, dashboard.Handler(), history)
	srv.ServeSessions(first.redis, binding.SessionPrefix)
	srv.ServeLeaderboards(first.redis, binding.LeaderboardPrefix)
	srv.ServeTopics(first.redis, binding.TopicPrefix)
	if err := srv.ServeRateLimits(first.redis, binding.RateLimitPrefix, d.cfg.RateLimits); err != nil {
		g.Go(func() error { return err }) // config.Validate checked the policies: not expected
		return
	}
	srv.ServeLocks(lock.New(first.redis, binding.LockPrefix))
	g.Go(func() error { return srv.Run(gctx) })
}

// close closes every target's client.
func (d *daemon) close() {
	for _, t := range d.targets {
		t.close()
	}
}

// close closes the target's client, when it has one.
func (t *target) close() {
	if rc, _ := t.client(); rc != nil {
		rc.Close()
	}
}

// warnEviction warns when the target's Redis may evict any key:
// cachesync's state record would go too, and every cache would be rebuilt.
func (t *target) warnEviction(ctx context.Context) {
	m, err := t.redis.Do(ctx, t.redis.B().ConfigGet().Parameter("maxmemory-policy").Build()).AsStrMap()
	if err != nil {
		return // CONFIG may be refused (managed Redis, ACL); nothing to say then
	}
	if p := m["maxmemory-policy"]; strings.HasPrefix(p, "allkeys-") {
		t.log.Warn("redis maxmemory-policy may evict cachesync's state key (cachesync:state:"+t.cfg.Name+"), which forces full rebuilds; prefer volatile-* or noeviction", "policy", p)
	}
}

// warnNoAOF warns when the target's Redis does not log writes to disk:
// acknowledged write-behind writes queued in it would be lost if it crashed.
func (t *target) warnNoAOF(ctx context.Context) {
	m, err := t.redis.Do(ctx, t.redis.B().ConfigGet().Parameter("appendonly").Build()).AsStrMap()
	if err != nil {
		t.log.Warn("cannot read Redis appendonly: write-behind is only as durable as Redis (use appendonly yes)", "err", err)
		return
	}
	if m["appendonly"] != "yes" {
		t.log.Warn("Redis runs without appendonly: queued write-behind writes are lost if Redis crashes; set appendonly yes")
	}
}
