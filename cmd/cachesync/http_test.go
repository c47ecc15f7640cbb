package main

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestRunServesHTTP: cachesync run with http.addr serves the API beside the
// change feed, with its keys, and a PUT through it lands in Redis.
func TestRunServesHTTP(t *testing.T) {
	w := world.New(t, itemsSchema(10))
	const key = "test-key-0123456789abcdef"
	d, base, _ := serve(w, w.YAML(itemsCaches), fmt.Sprintf("  keys:\n    - {name: t, key: %q, scopes: [read, write]}\n", key))
	do := func(method, path, body string) (int, string) { return httpDo(t, method, base+path, body, key) }
	var status int
	var body string
	d.WaitFor("GET item:3 = 200", func() bool { status, body = do("GET", "/v1/caches/items/item:3", ""); return status == 200 })
	if body != `{"id":3,"val":30,"note":"note 3"}` {
		t.Fatalf("GET item:3 = %s", body)
	}
	if status, body := do("PUT", "/v1/caches/items/item:3", `{"val": 99, "note": "via http"}`); status != 204 {
		t.Fatalf("PUT: %d %s", status, body)
	}
	// Put returned after the feed applied the commit: Redis has it already.
	if v, _ := w.Get("item:3"); v != `{"id":3,"val":99,"note":"via http"}` {
		t.Fatalf("redis item:3 = %s right after the PUT", v)
	}
	req, _ := http.NewRequest("GET", base+"/v1/caches/items/item:3", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("GET without a key: %d, want 401", resp.StatusCode)
	}
	d.Stop()
}
