package changefeed

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/rueidis"
	"golang.org/x/sync/errgroup"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/pgsource"
	"github.com/cachesync/cachesync/internal/schema"
	"github.com/cachesync/cachesync/internal/state"
)

const (
	rebuildBatch   = 1000 // commands per Redis round trip during a rebuild
	rebuildWriters = 4    // round trips in flight during a rebuild
)

// rebuild fills caches in target t from one consistent snapshot and returns
// its LSN: t must skip these caches' transactions that committed before it.
// Its writes go through w, this session's claim on t: fenced, as the
// stream's are.
func (f *Feed) rebuild(ctx context.Context, t *Target, w *state.Writer, tables map[string]*pgsource.Table, caches []*config.Cache) (pglogrepl.LSN, error) {
	snap, err := pgsource.TakeSnapshot(ctx, f.URL)
	if err != nil {
		return 0, err
	}
	defer snap.Close(ctx)
	conn, err := pgsource.Connect(ctx, f.URL)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, c := range caches {
		start := time.Now()
		n, err := f.rebuildCache(ctx, t, w, snap, conn, tables[c.Table], c)
		if err != nil {
			return 0, fmt.Errorf("cache %q: rebuild: %w", c.Name, err)
		}
		t.Stats.Rebuilds.Add(1)
		t.log(f).Info("cache rebuilt", "cache", c.Name, "rows", n, "snapshot_lsn", snap.LSN, "took", time.Since(start).Round(time.Millisecond))
	}
	return snap.LSN, nil
}

// rebuildCache replaces every key of cache c with the rows of the snapshot.
// Its state entry was removed before (State.Forget), so a crash midway
// redoes the rebuild; it is written back at the end.
func (f *Feed) rebuildCache(ctx context.Context, tg *Target, w *state.Writer, snap *pgsource.Snapshot, conn *pgconn.PgConn, t *pgsource.Table, c *config.Cache) (int64, error) {
	b, cols, err := schema.SelectBinding(c, t)
	if err != nil {
		return 0, err
	}
	if _, err := b.ClearThrough(ctx, tg.rc, w.Write); err != nil {
		return 0, err
	}
	total, err := snap.Count(ctx, conn, t)
	if err != nil {
		return 0, err
	}
	n, err := f.copyInto(ctx, tg, w, b, c, total, func(fn func(row [][]byte) error) (int64, error) {
		return snap.Copy(ctx, conn, t, cols, fn)
	})
	if err != nil {
		return n, err
	}
	return n, w.SetCache(ctx, c.Name, state.CacheEntry{Fingerprint: c.Fingerprint(), Since: snap.LSN})
}

// copyInto reads the cache's rows from the snapshot and writes them to Redis,
// with several round trips in flight, each writer a fork of w.
func (f *Feed) copyInto(ctx context.Context, t *Target, w *state.Writer, b *binding.Binding, c *config.Cache, total int64, read func(fn func(row [][]byte) error) (int64, error)) (int64, error) {
	g, gctx := errgroup.WithContext(ctx)
	batches := make(chan []rueidis.Completed, rebuildWriters)
	for range rebuildWriters {
		g.Go(func() error {
			fw := w.Fork()
			defer fw.Close()
			for cmds := range batches {
				if err := fw.Write(gctx, cmds); err != nil {
					return err
				}
			}
			return nil
		})
	}
	var (
		cmds    = make([]rueidis.Completed, 0, rebuildBatch)
		rb      = t.rc.B()
		done    int64
		errLog  rateLimiter
		lastLog = time.Now()
	)
	label := c.Name // what Progress is told of
	if t.Name != "" {
		label += " in " + t.Name
	}
	if f.Progress != nil {
		f.Progress(label, 0, total)
	}
	n, err := read(func(row [][]byte) error {
		key, err := b.Key(row)
		if err == nil {
			cmds, err = b.AppendSet(cmds, rb, key, row, false) // Clear ended leases and markers
		}
		if err != nil {
			t.Stats.MapErrors.Add(1)
			if errLog.allow() {
				t.log(f).Error("row skipped: cannot map it to the cache", "cache", c.Name, "table", c.Table, "key", key, "err", err, "suppressed", errLog.takeSuppressed())
			}
		}
		done++
		if len(cmds) >= rebuildBatch {
			select {
			case batches <- cmds:
			case <-gctx.Done():
				return gctx.Err()
			}
			cmds = make([]rueidis.Completed, 0, rebuildBatch)
		}
		if f.Progress != nil && done%10000 == 0 && time.Since(lastLog) > 100*time.Millisecond {
			f.Progress(label, done, total)
			lastLog = time.Now()
		}
		return nil
	})
	if err == nil && len(cmds) > 0 {
		select {
		case batches <- cmds:
		case <-gctx.Done():
			err = gctx.Err()
		}
	}
	close(batches)
	if werr := g.Wait(); werr != nil && err == nil {
		err = werr
	}
	t.Stats.BackfillRow.Add(done)
	if f.Progress != nil && err == nil {
		f.Progress(label, done, done) // the count was an estimate; now it is exact
	}
	return n, err
}
