package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/check"
	"github.com/cachesync/cachesync/internal/engine"
)

type checkCommand struct{}

// errInconsistent ends check with exit code 3: the check ran and found differences.
var errInconsistent = errors.New("the cache in Redis differs from PostgreSQL")

func (c *checkCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("check", "check --config FILE [--sample N] [--repair] [--json] [CACHE...]\n\nCompares Redis with PostgreSQL for each CACHE (default: every cache) and\nreports missing, stale and extra keys with examples, in each Redis target\nthat holds it. Keys that change while\nit runs are read again before they are reported. Exit code 0 only when\nconsistent, 3 when it found differences.")
	common := addCommonFlags(fs)
	sample := fs.Int("sample", 0, "check `N` random rows instead of everything")
	repair := fs.Bool("repair", false, "fix what it finds (lease-guarded fills and invalidations)")
	lookup := fs.Bool("lookup", false, "look rows up key by key instead of hashing the cache in memory (slower; for very big caches)")
	asJSON := fs.Bool("json", false, "print the reports as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *sample < 0 {
		return usageError{"--sample must not be negative"}
	}
	cfg, err := config.LoadFile(common.config)
	if err != nil {
		return err
	}
	names := fs.Args()
	if len(names) == 0 {
		names = cfg.CacheNames()
	}
	for _, n := range names {
		if _, ok := cfg.Caches[n]; !ok {
			return config.FieldError("caches", "no cache named %q (caches: %s)", n, strings.Join(cfg.CacheNames(), ", "))
		}
	}
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	targets, err := openTargets(cfg, quiet, false)
	if err != nil {
		return err
	}
	defer func() {
		for _, t := range targets {
			t.redis.Close()
		}
	}()
	// An engine per target that holds a cache to check.
	apis := make([]*engine.Engine, len(targets))
	for i, t := range targets {
		if !slices.ContainsFunc(names, func(n string) bool { return t.cfg.Caches[n] != nil }) {
			continue
		}
		if apis[i], err = engine.Open(ctx, t.cfg, engine.Options{Logger: quiet}); err != nil {
			return err
		}
		defer apis[i].Close()
	}
	var reports []targetReport
	for _, n := range names {
		for i, t := range targets {
			if t.cfg.Caches[n] == nil {
				continue
			}
			r, err := check.Run(ctx, t.cfg, apis[i], t.redis, n, check.Options{Sample: *sample, Repair: *repair, Lookup: *lookup})
			if err != nil {
				if len(targets) > 1 {
					return fmt.Errorf("target %s: %w", t.name, err)
				}
				return err
			}
			tr := targetReport{Report: r}
			if len(targets) > 1 {
				tr.Target = t.name
			}
			reports = append(reports, tr)
			if !*asJSON {
				printReport(os.Stdout, tr, *repair)
			}
		}
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(reports); err != nil {
			return err
		}
	}
	for _, r := range reports {
		if !r.Consistent() && !*repair {
			return errInconsistent
		}
	}
	return nil
}

// targetReport is a check's report of one cache in one target, the target
// named when the config has several.
type targetReport struct {
	Target string `json:"target,omitempty"`
	*check.Report
}

func printReport(w io.Writer, r targetReport, repair bool) {
	state := "consistent"
	if !r.Consistent() {
		state = "INCONSISTENT"
	}
	name := r.Cache
	if r.Target != "" {
		name += " in target " + r.Target
	}
	fmt.Fprintf(w, "%s: %s (%d keys, %d rows checked in %s)\n", name, state, r.Keys, r.Rows, time.Duration(r.Took).Round(time.Millisecond))
	for _, f := range []struct {
		what string
		f    check.Finding
	}{{"missing", r.Missing}, {"stale", r.Stale}, {"extra", r.Extra}} {
		if f.f.Count > 0 {
			fmt.Fprintf(w, "  %s: %d, e.g. %s\n", f.what, f.f.Count, strings.Join(f.f.Examples, ", "))
		}
	}
	if repair && !r.Consistent() {
		fmt.Fprintf(w, "  repaired: %d\n", r.Repaired)
	}
}
