package main

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

// TestRunServesHTTP: cachesync run with http.addr serves the API beside the
// change feed, with its keys, and a PUT through it lands in Redis.
func TestRunServesHTTP(t *testing.T) {
	b := newBed(t, "httpdb")
	b.createItems(10)
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	const key = "test-key-0123456789abcdef"
	cfg := b.writeConfig("http.yaml", fmt.Sprintf(itemsYAML, "httpcfg", b.redis.URL(), b.dbURL)+
		fmt.Sprintf("http:\n  addr: 127.0.0.1:%d\n  keys:\n    - {name: t, key: %q, scopes: [read, write]}\n", port, key))
	d := b.run(cfg)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	do := func(method, path, body string) (int, string) { return httpDo(t, method, base+path, body, key) }
	deadline := time.Now().Add(20 * time.Second)
	for {
		status, body := do("GET", "/v1/caches/items/item:3", "")
		if status == 200 {
			if body != `{"id":3,"val":30,"note":"note 3"}` {
				t.Fatalf("GET item:3 = %s", body)
			}
			break
		}
		if time.Now().After(deadline) || d.exited() {
			t.Fatalf("the API never answered: %d %s", status, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if status, body := do("PUT", "/v1/caches/items/item:3", `{"val": 99, "note": "via http"}`); status != 204 {
		t.Fatalf("PUT: %d %s", status, body)
	}
	// Put returned after the feed applied the commit: Redis has it already.
	if v, _ := b.rc.Do(t.Context(), b.rc.B().Get().Key("item:3").Build()).ToString(); v != `{"id":3,"val":99,"note":"via http"}` {
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
	d.stopOK(t)
}
