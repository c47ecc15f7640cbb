package main

import (
	"fmt"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestL1ThroughHTTP runs two daemons of one config whose cache has l1 and
// reads a key over each one's HTTP API, then changes it each way: by SQL
// (the change feed), by a PUT through the other daemon, by a Redis-side
// DEL, and across a Redis restart. Each daemon serves hits from its memory
// (its l1 metrics say so) and reads every change, the writer at once.
func TestL1ThroughHTTP(t *testing.T) {
	w := world.New(t, itemsSchema(5))
	caches := itemsCaches + "    l1: {max: 1MiB, ttl: 1h}\n"
	a, baseA, _ := serve(w, w.YAML(caches), "")
	_, baseB, _ := serve(w, w.YAML(caches), "")
	bases := []string{baseA, baseB}
	const path = "/v1/caches/items/item:3"
	l1 := func(base, what string) float64 {
		return scrape(t, base)[fmt.Sprintf(`cachesync_l1_%s{cache="items",target=""}`, what)]
	}
	hits := func(base string) float64 {
		return scrape(t, base)[`cachesync_l1_gets_total{cache="items",result="hit",target=""}`]
	}
	get := func(base string) string {
		t.Helper()
		code, body := httpDo(t, "GET", base+path, "")
		if code != 200 {
			t.Fatalf("GET %s%s: %d %s", base, path, code, body)
		}
		return body
	}
	// held reads the key on each daemon until its l1 answers (a GET right
	// after a fill may find the copy of the missing key until the fill's
	// invalidation arrives).
	held := func(want string) {
		t.Helper()
		for _, base := range bases {
			before := hits(base)
			world.WaitFor(t, base+"'s l1 hit", func() bool {
				if got := get(base); got != want {
					t.Fatalf("GET %s = %s, want %s", base, got, want)
				}
				return hits(base) > before
			})
		}
	}
	// reads waits until each daemon reads want (an error, as while Redis
	// restarts, is no answer yet).
	reads := func(what, want string) {
		t.Helper()
		for _, base := range bases {
			world.WaitFor(t, fmt.Sprintf("%s to read %s", base, what), func() bool {
				code, body := httpDo(t, "GET", base+path, "")
				return code == 200 && body == want
			})
		}
	}
	a.WaitFor("the first GET", func() bool { code, _ := httpDo(t, "GET", baseA+path, ""); return code == 200 })
	held(`{"id":3,"val":30,"note":"note 3"}`)

	inval := l1(baseB, "invalidations_total")
	w.Exec(`UPDATE items SET val = 31 WHERE id = 3`)
	reads("the SQL update", `{"id":3,"val":31,"note":"note 3"}`)
	if l1(baseB, "invalidations_total") == inval {
		t.Fatal("B read the update without an invalidation")
	}
	held(`{"id":3,"val":31,"note":"note 3"}`)

	if code, body := httpDo(t, "PUT", baseA+path, `{"val": 32, "note": "put"}`); code != 204 {
		t.Fatalf("PUT: %d %s", code, body)
	}
	if got := get(baseA); got != `{"id":3,"val":32,"note":"put"}` { // the writer, at once
		t.Fatalf("GET on the writer right after its PUT = %s", got)
	}
	reads("the PUT", `{"id":3,"val":32,"note":"put"}`)
	held(`{"id":3,"val":32,"note":"put"}`)

	w.Do(w.RC.B().Set().Key("item:3").Value(`{"id":3,"val":33,"note":"redis-side"}`).Build())
	reads("the Redis-side SET", `{"id":3,"val":33,"note":"redis-side"}`)
	held(`{"id":3,"val":33,"note":"redis-side"}`)
	w.Do(w.RC.B().Del().Key("item:3").Build())
	reads("the Redis-side DEL (filled again from the table)", `{"id":3,"val":32,"note":"put"}`)
	held(`{"id":3,"val":32,"note":"put"}`)

	flushes := l1(baseB, "flushes_total")
	if err := w.Redis.Kill(); err != nil {
		t.Fatal(err)
	}
	world.WaitFor(t, "B's l1 to see Redis gone", func() bool { return l1(baseB, "flushes_total") > flushes })
	if err := w.Redis.Start(); err != nil {
		t.Fatal(err)
	}
	w.Exec(`UPDATE items SET val = 34 WHERE id = 3`)
	reads("the update after a Redis restart", `{"id":3,"val":34,"note":"put"}`)
	held(`{"id":3,"val":34,"note":"put"}`)
}
