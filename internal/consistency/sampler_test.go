package consistency_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/consistency"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

func TestMain(m *testing.M) { world.Main(m) }

const caches = `  items: {table: public.items, key: "item:{id}", value: {format: string, column: v}, sync: changefeed}
`

// start runs a sampler of the world's config, sampling rate keys every
// millisecond, until the test ends; it returns the sampler and its log.
func start(t *testing.T, w *world.World, rate int) (*consistency.Sampler, *testenv.LogBuffer) {
	t.Helper()
	cfg := w.Config(caches + fmt.Sprintf("consistency: {sample_rate: %d}\n", rate))
	var log testenv.LogBuffer
	s := consistency.New(cfg, w.Open(cfg), w.RC, slog.New(slog.NewTextHandler(&log, nil)))
	s.Every = time.Millisecond
	testenv.Go(t, s.Run)
	return s, &log
}

// TestSamplerQuietWhileConsistent: under a stream of updates, the feed
// keeping the cache, the sampler checks keys and finds none inconsistent:
// a key caught between a commit and the feed's write is read again, not
// counted.
func TestSamplerQuietWhileConsistent(t *testing.T) {
	t.Parallel()
	w := world.New(t, `CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL);
		INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 50) g`)
	w.Feed(w.Config(caches))
	// Many keys a sample: a sample that finds a key caught between a
	// commit and the feed's write waits for the feed before it ends, so
	// on a busy machine the count grows with the samples taken, not time.
	s, log := start(t, w, 400)
	var updates atomic.Int64
	stop := testenv.Go(t, func(ctx context.Context) error {
		r := rand.New(rand.NewPCG(1, 2))
		for ctx.Err() == nil {
			if _, err := w.DB.Exec(ctx, `UPDATE items SET v = v || '.' WHERE id = $1`, 1+r.IntN(50)); err != nil && ctx.Err() == nil {
				return err
			}
			updates.Add(1)
		}
		return nil
	})
	st := s.PerCache["items"]
	world.WaitCount(t, "keys checked", &st.Checked, 2000)
	stop()
	if n := st.Inconsistent.Load(); n != 0 {
		t.Fatalf("%d keys counted inconsistent in a consistent cache (%d checked, %d updates):\n%s", n, st.Checked.Load(), updates.Load(), log.String())
	}
	t.Logf("%d keys checked during %d updates; nines %.1f", st.Checked.Load(), updates.Load(), st.Nines())
}

// TestSamplerFindsFaults: a stale value, a missing key and a key without a
// row, planted behind cachesync's back, are each found and counted.
func TestSamplerFindsFaults(t *testing.T) {
	t.Parallel()
	w := world.New(t, `CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL);
		INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 50) g`)
	w.Feed(w.Config(caches))
	w.WaitEqual("item:*", func() map[string]string { return w.Rows(`SELECT 'item:' || id, v FROM items`) })
	w.Do(w.RC.B().Set().Key("item:7").Value("planted").Build())
	w.Do(w.RC.B().Del().Key("item:8").Build())
	w.Do(w.RC.B().Set().Key("item:999").Value("no row").Build())
	s, log := start(t, w, 20)
	for _, want := range []string{"stale=[item:7]", "missing=[item:8]", "extra=[item:999]"} {
		world.WaitFor(t, fmt.Sprintf("the sampler to report %s", want), func() bool {
			return strings.Contains(log.String(), want)
		})
	}
	if n := s.PerCache["items"].Inconsistent.Load(); n < 3 {
		t.Fatalf("%d inconsistent keys counted, want at least 3", n)
	}
}

// TestSampleKeysBigTable: on a table too big to order by random(), never
// analyzed (no row estimate), and then analyzed, a sample of 5 rows' keys
// reads a few random pages and finds 5 keys, others each time. (Pages are
// drawn at random: a sample may find none, about once in 20,000.)
func TestSampleKeysBigTable(t *testing.T) {
	t.Parallel()
	w := world.New(t, `CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL);
		INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 200000) g`)
	api := w.Open(w.Config(caches))
	for _, analyzed := range []bool{false, true} {
		if analyzed {
			w.Exec(`ANALYZE items`)
		}
		seen, found := map[string]bool{}, 0
		for range 10 {
			keys, err := api.SampleKeys(t.Context(), "items", 5)
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) > 5 {
				t.Fatalf("analyzed %v: %d keys, want 5 at most: %v", analyzed, len(keys), keys)
			}
			found += len(keys)
			for _, k := range keys {
				seen[k] = true
			}
		}
		if found < 40 || len(seen) < found/2 {
			t.Fatalf("analyzed %v: 10 samples of 5 found %d keys, %d of them distinct", analyzed, found, len(seen))
		}
	}
}
