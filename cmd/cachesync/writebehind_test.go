package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/engine"
)

// TestWriteBehindKillNine: while 50,000 write-behind writes arrive, the
// daemon draining them is killed with -9 at random moments (at least five
// times) and restarted; at the end the table holds the last acknowledged
// write of every key (none lost, none reordered), and the poison rows are in
// the dead-letter stream with the rest drained.
func TestWriteBehindKillNine(t *testing.T) {
	b := newBed(t, "wbdb")
	b.exec(`CREATE TABLE wb (id int PRIMARY KEY, v bigint NOT NULL CHECK (v >= 0))`)
	text := fmt.Sprintf(`name: wbkill
redis: {url: %q}
sources: {main: {url: %q}}
caches:
  wb: {table: public.wb, key: "wb:{id}", value: {columns: [id, v]}, sync: none, writes: behind}
`, b.redis.URL(), b.dbURL)
	path := b.writeConfig("wb.yaml", text)
	cfg, err := config.Load(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	api, err := engine.Open(t.Context(), cfg, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()

	const total, keys, poison = 50_000, 500, 5
	var (
		mu   sync.Mutex
		last = map[int]int64{} // id -> last acknowledged value
		sent int
	)
	d := b.run(path)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for ctx.Err() == nil {
				mu.Lock()
				if sent >= total {
					mu.Unlock()
					return
				}
				sent++
				n := sent
				// Keys are owned by one writer each (id % 4 == w), so the
				// order of acknowledgements is the order of writes per key.
				id := 4*r.IntN(keys/4) + w
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

	kills := 0
	r := rand.New(rand.NewPCG(1, 2))
	for {
		mu.Lock()
		done := sent >= total
		mu.Unlock()
		if done && kills >= 5 {
			break
		}
		time.Sleep(time.Duration(200+r.IntN(600)) * time.Millisecond)
		d.kill(t)
		kills++
		d = b.run(path)
		if kills > 60 {
			t.Fatal("the writers did not finish")
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d writes, %d kills of the draining daemon", total, kills)

	// The last daemon drains the rest.
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := map[int]int64{}
		rows, err := b.db.Query(t.Context(), `SELECT id, v FROM wb`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id int
			var v int64
			rows.Scan(&id, &v)
			got[id] = v
		}
		bad, example := 0, ""
		for id, v := range last {
			if got[id] != v {
				bad++
				example = fmt.Sprintf("id %d: table %d, last write %d", id, got[id], v)
			}
		}
		if len(got) != len(last) {
			bad++
			example = fmt.Sprintf("%d rows in the table, %d keys written", len(got), len(last))
		}
		if bad == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d keys differ from their last acknowledged write, e.g. %s", bad, example)
		}
		time.Sleep(50 * time.Millisecond)
	}
	dead, err := b.rc.Do(t.Context(), b.rc.B().Xlen().Key(binding.DeadLetterKey("wb")).Build()).AsInt64()
	if err != nil || dead != poison {
		t.Fatalf("%d dead letters (%v), want %d", dead, err, poison)
	}
	for i := range poison {
		if n, _ := b.rc.Do(t.Context(), b.rc.B().Exists().Key(fmt.Sprintf("wb:%d", 10_000+i)).Build()).AsInt64(); n != 0 {
			t.Fatalf("wb:%d still holds a refused value", 10_000+i)
		}
	}
	d.waitLog(t, "cachesync running", 30*time.Second) // a SIGTERM before Go installs its handler kills outright
	d.stopOK(t)
}
