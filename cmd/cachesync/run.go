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

// daemon is a loaded config with its Redis client and one feed per source.
type daemon struct {
	cfg    *config.Config
	log    *slog.Logger
	errors *status.Errors // the last error of each cache, for the status
	redis  rueidis.Client
	feeds  []*changefeed.Feed
}

// openDaemon loads the config, connects to Redis and checks every cache
// against its live table, so a bad config fails at once with one line.
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
	client, err := cfg.RedisClient()
	if err != nil {
		return nil, err
	}
	d := &daemon{cfg: cfg, log: log, errors: errs, redis: client}
	d.warnEviction(ctx)
	// Every cache is checked, and no two may name one key (whatever their
	// sources), before any feed starts: a feed's rebuild clears its keys.
	all := map[string]*binding.Binding{}
	for _, source := range cfg.SourceNames() {
		bindings, err := checkSource(ctx, cfg, source)
		if err != nil {
			client.Close()
			return nil, err
		}
		maps.Copy(all, bindings)
		d.feeds = append(d.feeds, changefeed.New(cfg, source, log, client))
	}
	if err := schema.CheckKeyspaces(all); err != nil {
		client.Close()
		return nil, err
	}
	return d, nil
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

// run runs every feed, and the HTTP API when configured, until ctx is done
// (SIGINT/SIGTERM) or one fails for good.
func (d *daemon) run(ctx context.Context) error {
	d.log.Info("cachesync running", "name", d.cfg.Name, "caches", len(d.cfg.Caches), "sources", len(d.feeds))
	g, gctx := errgroup.WithContext(ctx)
	for _, f := range d.feeds {
		g.Go(func() error { return f.Run(gctx) })
	}
	onMiss := slices.ContainsFunc(d.cfg.CacheNames(), func(n string) bool { return d.cfg.Caches[n].Fill == config.FillOnMiss })
	behind := slices.ContainsFunc(d.cfg.CacheNames(), func(n string) bool { return d.cfg.Caches[n].Writes == config.WritesBehind })
	refreshes := slices.ContainsFunc(d.cfg.CacheNames(), func(n string) bool {
		return d.cfg.Caches[n].Refreshes() || len(d.cfg.Caches[n].Schedule) > 0
	})
	sampling := d.cfg.Consistency.Rate() > 0
	if d.cfg.HTTP.Addr != "" || onMiss || behind || refreshes || sampling {
		api, err := engine.Open(ctx, d.cfg, engine.Options{Logger: d.log})
		if err != nil {
			return err
		}
		defer api.Close()
		listener, err := keymiss.New(d.cfg, api, d.redis, d.log)
		if err != nil {
			return err
		}
		if listener != nil {
			g.Go(func() error { return listener.Run(gctx, 16) })
		}
		refresher, err := refresh.New(d.cfg, api, d.redis, d.log)
		if err != nil {
			return err
		}
		if refresher != nil {
			g.Go(func() error { return refresher.Run(gctx) })
		}
		sampler := consistency.New(d.cfg, api, d.redis, d.log)
		if sampler != nil {
			g.Go(func() error { return sampler.Run(gctx) })
		}
		if d.cfg.HTTP.Addr != "" {
			srv := httpapi.New(api, d.cfg.HTTP, d.log)
			ms := metrics.Sources{Config: d.cfg, Redis: d.redis, API: api, Feeds: d.feeds, Keymiss: listener, Consistency: sampler, Log: d.log}
			st := status.Sources{Config: d.cfg, Redis: d.redis, API: api, Feeds: d.feeds, Errors: d.errors}
			if refresher != nil {
				ms.Refresher = refresher
				st.Refreshed = func(cache string) int64 {
					if pc := refresher.PerCache[cache]; pc != nil {
						return pc.Refreshed.Load()
					}
					return 0
				}
			}
			collector := status.NewCollector(st)
			srv.Observe(metrics.Handler(ms), func(ctx context.Context) (any, error) { return collector.Collect(ctx) }, dashboard.Handler())
			g.Go(func() error { return srv.Run(gctx) })
		}
		if behind {
			d.warnNoAOF(ctx)
			g.Go(func() error { return drain.Run(gctx, api) })
		}
	}
	err := g.Wait()
	if err == nil {
		d.log.Info("cachesync stopped")
	}
	return err
}

func (d *daemon) close() { d.redis.Close() }

// warnEviction warns when Redis may evict any key: cachesync's state record
// would go too, and every cache would be rebuilt.
func (d *daemon) warnEviction(ctx context.Context) {
	m, err := d.redis.Do(ctx, d.redis.B().ConfigGet().Parameter("maxmemory-policy").Build()).AsStrMap()
	if err != nil {
		return // CONFIG may be refused (managed Redis, ACL); nothing to say then
	}
	if p := m["maxmemory-policy"]; strings.HasPrefix(p, "allkeys-") {
		d.log.Warn("redis maxmemory-policy may evict cachesync's state key (cachesync:state:"+d.cfg.Name+"), which forces full rebuilds; prefer volatile-* or noeviction", "policy", p)
	}
}

// warnNoAOF warns when Redis does not log writes to disk: acknowledged
// write-behind writes queued in it would be lost if it crashed.
func (d *daemon) warnNoAOF(ctx context.Context) {
	m, err := d.redis.Do(ctx, d.redis.B().ConfigGet().Parameter("appendonly").Build()).AsStrMap()
	if err != nil {
		d.log.Warn("cannot read Redis appendonly: write-behind is only as durable as Redis (use appendonly yes)", "err", err)
		return
	}
	if m["appendonly"] != "yes" {
		d.log.Warn("Redis runs without appendonly: queued write-behind writes are lost if Redis crashes; set appendonly yes")
	}
}
