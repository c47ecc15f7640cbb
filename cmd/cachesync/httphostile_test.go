package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestRunRefusesCarelessHTTP (issue 13) over real HTTP to cachesync run: a
// method a path does not take is 405 with Allow, a path it does not have
// 404; the bearer scheme is taken in any case; a body with a field twice
// is refused, naming it, and changes nothing.
func TestRunRefusesCarelessHTTP(t *testing.T) {
	w := world.New(t, itemsSchema(3))
	const key = "careless-key-0123456789abcdef"
	d, base, _ := serve(w, w.YAML(itemsCaches), fmt.Sprintf("  keys:\n    - {name: t, key: %q, scopes: [read, write]}\n", key))
	for _, tt := range []struct {
		name, method, path, auth, body string
		status                         int
		code, allow, says              string // the error code, the Allow header, a part of the body
	}{
		{"POST a key", "POST", "/v1/caches/items/item:1", "Bearer " + key, `{"val": 1}`, 405, "method_not_allowed", "DELETE, GET, HEAD, PUT", "POST"},
		{"DELETE the dashboard", "DELETE", "/", "", "", 405, "method_not_allowed", "GET, HEAD", ""},
		{"POST metrics", "POST", "/metrics", "", "", 405, "method_not_allowed", "GET, HEAD", ""},
		{"no such path", "POST", "/v2/items", "Bearer " + key, "", 404, "no_route", "", ""},
		{"lowercase bearer", "GET", "/v1/caches/items/item:1", "bearer " + key, "", 200, "", "", `{"id":1,"val":10,"note":"note 1"}`},
		{"a field twice", "PUT", "/v1/caches/items/item:1", "bearer \t" + key, `{"val": 11, "val": 12}`, 400, "bad_json", "", `\"val\"`},
		{"a name twice inside a value", "PUT", "/v1/caches/items/item:1", "BEARER " + key, `{"note": "x", "val": {"a": 1, "a": 2}}`, 400, "bad_json", "", `\"a\"`},
	} {
		req, err := http.NewRequest(tt.method, base+tt.path, strings.NewReader(tt.body))
		if err != nil {
			t.Fatal(err)
		}
		if tt.auth != "" {
			req.Header.Set("Authorization", tt.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e struct{ Error struct{ Code string } }
		json.Unmarshal(body, &e)
		if resp.StatusCode != tt.status || e.Error.Code != tt.code || resp.Header.Get("Allow") != tt.allow || !strings.Contains(string(body), tt.says) {
			t.Errorf("%s: %s %s: %d, Allow %q, %s; want %d %s, Allow %q, saying %s",
				tt.name, tt.method, tt.path, resp.StatusCode, resp.Header.Get("Allow"), body, tt.status, tt.code, tt.allow, tt.says)
		}
	}
	var val int64
	var note string
	if err := w.DB.QueryRow(t.Context(), `SELECT val, note FROM items WHERE id = 1`).Scan(&val, &note); err != nil {
		t.Fatal(err)
	}
	if val != 10 || note != "note 1" {
		t.Errorf("after the refused PUTs, item 1 is %d %q, was 10 \"note 1\"", val, note)
	}
	d.Stop()
}
