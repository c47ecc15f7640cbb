package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestTargetOutage: `cachesync run` keeps two targets, a and b, from one
// slot while a writer changes the table. b stopped briefly (its data kept)
// catches up from what was held for it; b stopped for 30 s, past its
// buffer, is left behind while a streams on, and rebuilt once it is back.
// Both end equal to the table.
func TestTargetOutage(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(2000))
	b := w.Target(testenv.StartRedis(t, testenv.WithRedisArgs("--appendonly", "yes", "--appendfsync", "always")))
	d := w.Daemon(w.WriteYAML(w.TargetsYAML(itemsCaches,
		fmt.Sprintf("name: a, url: %q", w.Redis.URL()),
		fmt.Sprintf("name: b, url: %q, buffer: 2000", b.Redis.URL()))))
	waitItems(w)
	waitItems(b)

	// The writer: single-row updates, inserts and deletes, until stopped.
	ctx, stopWriting := context.WithCancel(context.Background())
	db, err := pgx.Connect(ctx, w.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	var wg sync.WaitGroup
	var writes, failed int
	wg.Go(func() {
		r := rand.New(rand.NewPCG(1, 2))
		for ctx.Err() == nil {
			id := 1 + r.IntN(3000)
			var err error
			switch r.IntN(10) {
			case 0:
				_, err = db.Exec(ctx, `DELETE FROM items WHERE id = $1`, id)
			case 1:
				_, err = db.Exec(ctx, `INSERT INTO items VALUES ($1, 0, 'new') ON CONFLICT (id) DO NOTHING`, id)
			default:
				_, err = db.Exec(ctx, `UPDATE items SET val = val + 1 WHERE id = $1`, id)
			}
			if err != nil && ctx.Err() == nil {
				failed++
			}
			writes++
		}
	})
	defer func() { stopWriting(); wg.Wait() }()
	marker := func(what string) {
		// A row only this test writes, seen in a while b is down: a is not
		// held back.
		w.Exec(`INSERT INTO items VALUES (0, 0, $1) ON CONFLICT (id) DO UPDATE SET note = $1`, what)
		world.WaitFor(t, "a to apply "+what, func() bool {
			v, _ := w.Get("item:0")
			return v == fmt.Sprintf(`{"id":0,"val":0,"note":%q}`, what)
		})
	}

	// A short outage: b keeps its data and catches up on what was held.
	if err := b.Redis.Stop(); err != nil {
		t.Fatal(err)
	}
	d.WaitLog("cannot write to this target")
	marker("during the short outage")
	if err := b.Redis.Start(); err != nil {
		t.Fatal(err)
	}
	d.WaitLog("target answers again; applying its held changes")

	// 30 s down: past its buffer, b is left behind; a goes on.
	if err := b.Redis.Stop(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	d.WaitLog("target left behind")
	marker("while b is left behind")
	time.Sleep(time.Until(down.Add(30 * time.Second))) // the outage the issue names, under load
	marker("after 30 s")
	if err := b.Redis.Start(); err != nil {
		t.Fatal(err)
	}
	d.WaitLog("target rebuilt; streaming its changes")
	stopWriting()
	wg.Wait()
	if failed > 0 {
		t.Fatalf("%d of %d writes failed", failed, writes)
	}
	waitItems(w)
	waitItems(b)
	if n := len(d.Stderr.Lines("target rebuilt")); n != 1 {
		t.Errorf("b was rebuilt %d times, want once (after the long outage only):\n%s", n, d.Tail(30))
	}
	t.Logf("%d writes; daemon log:\n%s", writes, d.Tail(12))
}
