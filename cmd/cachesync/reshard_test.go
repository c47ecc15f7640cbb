package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// reshardCaches are the caches of the resharding test: items, kept by the
// change feed, and wb, kept by it too and taking write-behind writes (on a
// Cluster its keys share one slot, with its queue).
const reshardCaches = itemsCaches + `  wb:
    table: public.wb
    key: "{{wb}}:wb:{id}"
    value: {format: json, columns: {id: id, v: v}}
    sync: changefeed
    writes: behind
`

// wbWant is what Redis must hold of the wb table.
const wbWant = `SELECT '{wb}:wb:' || id, format('{"id":%s,"v":%s}', id, v) FROM wb`

// TestReshardWhileStreaming: on a three-primary Cluster, hash slots move
// between primaries (slots holding items' keys, and the slot of wb's keys
// and queue), then to a primary added meanwhile, and back, while a writer
// inserts, updates and deletes items, readers invalidate items and read
// them back through the HTTP API (fills), and write-behind writes of wb
// are queued and drained. A slot's move answers ASK, TRYAGAIN and then
// MOVED. Once the writers stop, Redis equals both tables, the table holds
// every acknowledged write-behind write, and the daemon neither rebuilt
// nor had to start its change feed over.
func TestReshardWhileStreaming(t *testing.T) {
	t.Parallel()
	const rows, maxID, wbKeys = 2000, 2200, 40
	c := testenv.StartCluster(t, 3)
	w := world.NewOn(t, c.Nodes[0], itemsSchema(rows)+`;
		CREATE TABLE wb (id int PRIMARY KEY, v bigint NOT NULL)`)
	d, base, _ := serve(w, w.YAML(reshardCaches), "")
	d.WaitLog("streaming changes")
	waitItems(w)
	rebuilt := len(d.Stderr.Lines("cache rebuilt"))

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	var reads, puts atomic.Int64
	fails := map[string]*atomic.Int64{"read": {}, "put": {}}

	iw := newItemWriter(w, rand.New(rand.NewPCG(1, 2)), rows, maxID)
	iw.start(t, math.MaxInt64) // until stopped
	// Readers: a key invalidated (a complete cache loads it again at
	// once), then read; a read of a row that is gone is a 404.
	for reader := range 2 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(reader), 3))
			for ctx.Err() == nil {
				u := fmt.Sprintf("%s/v1/caches/items/item:%d", base, 1+r.IntN(maxID))
				code, body := httpDo(t, "DELETE", u, "")
				if code != 204 && code != 200 {
					fails["read"].Add(1)
					t.Logf("DELETE %s: %d %s", u, code, body)
				}
				if code, body := httpDo(t, "GET", u, ""); code != 200 && code != 404 {
					fails["read"].Add(1)
					t.Logf("GET %s: %d %s", u, code, body)
				}
				reads.Add(1)
			}
		})
	}
	// The write-behind writer: each key's values grow; last holds each
	// key's last acknowledged one.
	var mu sync.Mutex
	last := map[int]int64{}
	wg.Go(func() {
		for v := int64(1); ctx.Err() == nil; v++ {
			id := 1 + int(v)%wbKeys
			u := base + "/v1/caches/wb/" + url.PathEscape(fmt.Sprintf("{wb}:wb:%d", id)) + "?mode=behind"
			code, body := httpDo(t, "PUT", u, fmt.Sprintf(`{"v": %d}`, v))
			if code == 204 || code == 200 {
				mu.Lock()
				last[id] = v
				mu.Unlock()
			} else {
				fails["put"].Add(1)
				t.Logf("PUT %s: %d %s", u, code, body)
			}
			puts.Add(1)
		}
	})
	// Each move begins once all three are under way again.
	going := func(what string) {
		t.Helper()
		u0, r0, p0 := iw.updates.Load(), reads.Load(), puts.Load()
		d.WaitFor("the writers going on "+what, func() bool {
			return iw.updates.Load() > u0+50 && reads.Load() > r0+20 && puts.Load() > p0+20
		})
	}

	nc := c.Nodes[0].NodeClient(t)
	wbSlot, err := nc.Do(ctx, nc.B().ClusterKeyslot().Key("{wb}").Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	wbOwner := c.Owner(t, "{wb}")
	others := []*testenv.Redis{}
	for _, n := range c.Nodes {
		if n != wbOwner {
			others = append(others, n)
		}
	}
	first, second := c.Nodes[0], c.Nodes[1]
	going("before the first move")
	c.MoveSlots(t, first, second, 0, 499) // about 60 items
	going("after slots 0-499 moved")
	c.MoveSlots(t, wbOwner, others[0], int(wbSlot), int(wbSlot))
	going("after wb's slot moved")
	fourth := c.AddPrimary(t)
	c.MoveSlots(t, second, fourth, 0, 499)
	going("after slots 0-499 moved to a new primary")
	c.MoveSlots(t, others[0], fourth, int(wbSlot), int(wbSlot))
	going("after wb's slot moved to the new primary")
	c.MoveSlots(t, fourth, first, 0, 499)
	going("after slots 0-499 moved back")

	lsn := iw.stop(t)
	stop()
	wg.Wait()
	t.Logf("%d updates (%d multi-row txns, %d deletes, %d inserts, %d rekeys, %d rollbacks), %d invalidations and reads (%d failed), %d write-behind writes (%d failed)",
		iw.updates.Load(), iw.multi, iw.deletes, iw.inserts, iw.rekeys, iw.rollbacks, reads.Load(), fails["read"].Load(), puts.Load(), fails["put"].Load())

	waitItems(w)
	// A write not acknowledged may have been queued all the same: the
	// table holds each key's last acknowledged value or a later one.
	var lost []string
	if !world.Within(world.Patience, func() bool {
		got := w.Rows(`SELECT id::text, v::text FROM wb`)
		lost = lost[:0]
		for id, v := range last {
			if g, err := strconv.ParseInt(got[strconv.Itoa(id)], 10, 64); err != nil || g < v {
				lost = append(lost, fmt.Sprintf("id %d: %q, last acknowledged %d", id, got[strconv.Itoa(id)], v))
			}
		}
		return len(lost) == 0
	}) {
		t.Fatalf("acknowledged write-behind writes lost:\n%s", strings.Join(lost, "\n"))
	}
	w.WaitEqual("{wb}:wb:*", func() map[string]string { return w.Rows(wbWant) })
	requireItems(w)
	if n := len(d.Stderr.Lines("cache rebuilt")); n != rebuilt {
		t.Errorf("the daemon rebuilt %d times while slots moved:\n%s", n-rebuilt, d.Tail(30))
	}
	if lines := d.Stderr.Lines("change feed interrupted"); len(lines) > 0 {
		t.Errorf("the change feed started over %d times while slots moved; the first:\n%s", len(lines), lines[0])
	}
	if n := fails["read"].Load() + fails["put"].Load(); n > 0 {
		t.Errorf("%d HTTP requests failed while slots moved (logged above)", n)
	}
	if lines := d.Stderr.Lines("write-behind: retrying"); len(lines) > 0 {
		t.Errorf("the write-behind drainer started over %d times while slots moved; the first:\n%s", len(lines), lines[0])
	}
	d.Stop()
	requireConfirmed(w, lsn)
}
