package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
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
	fs := newFlagSet("check", "check --config FILE [--sample N] [--repair] [--json] [CACHE...]\n\nCompares Redis with PostgreSQL for each CACHE (default: every cache) and\nreports missing, stale and extra keys with examples. Keys that change while\nit runs are read again before they are reported. Exit code 0 only when\nconsistent, 3 when it found differences.")
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
	rc, err := cfg.RedisClient()
	if err != nil {
		return err
	}
	defer rc.Close()
	api, err := engine.Open(ctx, cfg, engine.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))})
	if err != nil {
		return err
	}
	defer api.Close()
	var reports []*check.Report
	for _, n := range names {
		r, err := check.Run(ctx, cfg, api, rc, n, check.Options{Sample: *sample, Repair: *repair, Lookup: *lookup})
		if err != nil {
			return err
		}
		reports = append(reports, r)
		if !*asJSON {
			printReport(os.Stdout, r, *repair)
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

func printReport(w io.Writer, r *check.Report, repair bool) {
	state := "consistent"
	if !r.Consistent() {
		state = "INCONSISTENT"
	}
	fmt.Fprintf(w, "%s: %s (%d keys, %d rows checked in %s)\n", r.Cache, state, r.Keys, r.Rows, time.Duration(r.Took).Round(time.Millisecond))
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
