package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/pgsource"
)

type resyncCommand struct{}

func (c *resyncCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("resync", "resync --config FILE CACHE\n\nRebuilds CACHE from a consistent snapshot of its table, then keeps streaming\nchanges like run. Stop a running daemon of the same config first.")
	common := addCommonFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"want exactly one CACHE argument"}
	}
	name := fs.Arg(0)
	d, err := openDaemon(ctx, common)
	if err != nil {
		return err
	}
	defer d.close()
	cache, ok := d.cfg.Caches[name]
	if !ok {
		return config.FieldError("caches", "no cache named %q (caches: %s)", name, strings.Join(d.cfg.CacheNames(), ", "))
	}
	if cache.Sync != config.SyncChangefeed {
		return config.FieldError("caches."+name+".sync", "resync rebuilds caches with sync: changefeed; this one has %q", cache.Sync)
	}
	if err := slotIdle(ctx, d.cfg, cache.Source); err != nil {
		return err
	}
	p := newProgress(os.Stderr)
	for _, f := range d.feeds {
		if f.Source == cache.Source {
			f.Rebuild = []string{name}
			f.Progress = p.update
		}
	}
	return d.run(ctx)
}

// slotIdle fails when another process streams from the source's slot: two
// daemons of one config cannot both stream.
func slotIdle(ctx context.Context, cfg *config.Config, source string) error {
	db, err := pgx.Connect(ctx, cfg.Sources[source].URL)
	if err != nil {
		return fmt.Errorf("sources.%s.url: cannot connect: %w", source, err)
	}
	defer db.Close(context.WithoutCancel(ctx))
	slot, err := pgsource.ReadSlot(ctx, db, cfg.SlotName(source))
	if err != nil {
		return err
	}
	locked, err := pgsource.LockSlot(ctx, db, cfg.SlotName(source))
	if err != nil {
		return err
	}
	if slot.ActivePID != 0 || !locked {
		return fmt.Errorf("replication slot %s is in use by a running cachesync of this config: stop it first", cfg.SlotName(source))
	}
	return pgsource.UnlockSlot(ctx, db, cfg.SlotName(source))
}

// progress draws a rebuild's progress: a bar redrawn in place on a terminal,
// a plain line every few seconds otherwise.
type progress struct {
	mu       sync.Mutex
	w        io.Writer
	terminal bool
	start    time.Time
	last     time.Time
}

func newProgress(f *os.File) *progress {
	fi, err := f.Stat()
	return &progress{w: f, terminal: err == nil && fi.Mode()&os.ModeCharDevice != 0}
}

func (p *progress) update(cache string, done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.start.IsZero() || done == 0 {
		p.start = now
	}
	finished := done >= total
	if !finished && !p.terminal && now.Sub(p.last) < 2*time.Second {
		return
	}
	p.last = now
	elapsed := now.Sub(p.start).Seconds()
	rate := 0.0
	if elapsed > 0 {
		rate = float64(done) / elapsed
	}
	eta := "?"
	if rate > 0 && total >= done {
		eta = (time.Duration(float64(total-done)/rate) * time.Second).Round(time.Second).String()
	}
	pct := 100.0
	if total > 0 {
		pct = 100 * float64(done) / float64(total)
	}
	if !p.terminal {
		fmt.Fprintf(p.w, "resync %s: %d/%d rows (%.0f%%), %.0f rows/s, eta %s\n", cache, done, total, pct, rate, eta)
		return
	}
	const width = 30
	filled := min(width, int(pct/100*width))
	bar := strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
	fmt.Fprintf(p.w, "\r%s [%s] %d/%d rows %3.0f%%  %.0f rows/s  eta %s  ", cache, bar, done, total, pct, rate, eta)
	if finished {
		fmt.Fprintln(p.w)
	}
}
