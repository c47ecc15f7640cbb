package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestWriteBehindKillNine: while 50,000 write-behind writes arrive, the
// daemon draining them is killed with -9 at random moments (at least five
// times) and restarted; at the end the table holds the last acknowledged
// write of every key (none lost, none reordered), and the poison rows are in
// the dead-letter stream with the rest drained.
func TestWriteBehindKillNine(t *testing.T) {
	w := world.New(t, `CREATE TABLE wb (id int PRIMARY KEY, v bigint NOT NULL CHECK (v >= 0))`)
	const caches = `  wb: {table: public.wb, key: "wb:{id}", value: {columns: [id, v]}, sync: none, writes: behind}
`
	path := w.WriteConfig(caches)
	api := w.Open(w.Config(caches))

	const total, keys, poison = 50_000, 500, 5
	var (
		mu   sync.Mutex
		last = map[int]int64{} // id -> last acknowledged value
		sent int
	)
	d := w.Daemon(path)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for writer := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(writer), 7))
			for ctx.Err() == nil {
				mu.Lock()
				if sent >= total {
					mu.Unlock()
					return
				}
				sent++
				n := sent
				// Keys are owned by one writer each (id % 4 == writer), so
				// the order of acknowledgements is the order of writes per key.
				id := 4*r.IntN(keys/4) + writer
				mu.Unlock()
				v := int64(n)
				if _, err := api.PutBehind(ctx, "wb", map[string]any{"id": id, "v": v}); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				last[id] = v
				mu.Unlock()
			}
		}()
	}
	// Poison rows on keys of their own: refused by the CHECK.
	for i := range poison {
		if _, err := api.PutBehind(t.Context(), "wb", map[string]any{"id": 10_000 + i, "v": -1}); err != nil {
			t.Fatal(err)
		}
	}

	kills, lastSent, progress := 0, 0, time.Now()
	r := rand.New(rand.NewPCG(1, 2))
	for {
		mu.Lock()
		n := sent
		mu.Unlock()
		if n >= total && kills >= 5 {
			break
		}
		if n != lastSent {
			lastSent, progress = n, time.Now()
		} else if n < total && time.Since(progress) > world.Patience {
			t.Fatalf("the writers are stuck at %d writes", n)
		}
		time.Sleep(time.Duration(200+r.IntN(600)) * time.Millisecond) // a random moment, on purpose
		d.Kill()
		kills++
		d = w.Daemon(path)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d writes, %d kills of the draining daemon", total, kills)

	// The last daemon drains the rest.
	want := map[string]string{}
	for id, v := range last {
		want[strconv.Itoa(id)] = strconv.FormatInt(v, 10)
	}
	var diff string
	if !world.Within(world.Patience, func() bool {
		diff = world.Diff(want, w.Rows(`SELECT id::text, v::text FROM wb`))
		return diff == ""
	}) {
		t.Fatalf("the table differs from the last acknowledged writes:\n%s", diff)
	}
	dead, err := w.Do(w.RC.B().Xlen().Key(binding.DeadLetterKey("wb")).Build()).AsInt64()
	if err != nil || dead != poison {
		t.Fatalf("%d dead letters (%v), want %d", dead, err, poison)
	}
	for i := range poison {
		if n, _ := w.Do(w.RC.B().Exists().Key(fmt.Sprintf("wb:%d", 10_000+i)).Build()).AsInt64(); n != 0 {
			t.Fatalf("wb:%d still holds a refused value", 10_000+i)
		}
	}
	d.WaitLog("cachesync running") // a SIGTERM before Go installs its handler kills outright
	d.Stop()
}
