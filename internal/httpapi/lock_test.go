package httpapi_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestLocks: acquire, hold, extend and release over HTTP, on one node and
// on a Cluster.
func TestLocks(t *testing.T) {
	world.EachTopology(t, func(t *testing.T, topology string) {
		w, srv := recipes(t, topology)
		type lease struct {
			Token string `json:"token"`
			Fence int64  `json:"fence"`
			TTL   int64  `json:"ttl_ms"`
		}
		// acquire POSTs body to /v1/locks/job and returns the lease or the
		// error's code.
		acquire := func(body string) (lease, string) {
			t.Helper()
			status, got, _, _ := call(t, srv.URL, "POST", "/v1/locks/job", rwKey, body, nil)
			if status != 200 {
				return lease{}, got
			}
			var l lease
			if err := json.Unmarshal([]byte(got), &l); err != nil || len(l.Token) != 32 {
				t.Fatalf("acquired: %s (%v)", got, err)
			}
			return l, ""
		}
		first, code := acquire("")
		if code != "" || first.Fence != 1 || first.TTL != 30000 {
			t.Fatalf("the first acquisition: %+v %q, want fence 1 and the default ttl_ms 30000", first, code)
		}
		for _, body := range []string{`{"ttl_ms": 1000}`, `{"wait_ms": 30}`} {
			if _, code := acquire(body); code != "held" {
				t.Fatalf("acquiring a held lock with %s: %q, want held", body, code)
			}
		}
		tok := `{"token": "` + first.Token + `"`
		for _, tt := range []struct {
			name, method, path, key, body string
			header                        map[string]string
			status                        int
			code                          string // the error's code, "" for a 200
		}{
			{"extend by another", "POST", "/v1/locks/job/extend", rwKey, `{"token": "nope", "ttl_ms": 60000}`, nil, 409, "not_holder"},
			{"extend by the holder", "POST", "/v1/locks/job/extend", rwKey, tok + `, "ttl_ms": 60000}`, nil, 200, ""},
			{"extend too long", "POST", "/v1/locks/job/extend", rwKey, tok + `, "ttl_ms": 3600001}`, nil, 400, "bad_ttl"},
			{"extend without a token", "POST", "/v1/locks/job/extend", rwKey, `{"ttl_ms": 60000}`, nil, 400, "no_token"},
			{"release by another", "DELETE", "/v1/locks/job", rwKey, `{"token": "nope"}`, nil, 409, "not_holder"},
			{"release without a token", "DELETE", "/v1/locks/job", rwKey, ``, nil, 400, "no_token"},
			{"a negative ttl", "POST", "/v1/locks/other", rwKey, `{"ttl_ms": -1}`, nil, 400, "bad_ttl"},
			{"a wait too long", "POST", "/v1/locks/other", rwKey, `{"wait_ms": 20001}`, nil, 400, "bad_wait"},
			{"a negative wait", "POST", "/v1/locks/other", rwKey, `{"wait_ms": -5}`, nil, 400, "bad_wait"},
			{"not JSON", "POST", "/v1/locks/other", rwKey, `ttl=5`, nil, 400, "bad_json"},
			{"an unknown field", "POST", "/v1/locks/other", rwKey, `{"ttl": 5}`, nil, 400, "bad_json"},
			{"a body too big", "POST", "/v1/locks/other", rwKey, `{"token": "` + strings.Repeat("x", 5000) + `"}`, nil, 413, "body_too_large"},
			{"a name with no tag", "POST", "/v1/locks/%7Dx", rwKey, ``, nil, 400, "bad_name"},
			{"a name too long", "POST", "/v1/locks/" + strings.Repeat("n", 513), rwKey, ``, nil, 400, "bad_name"},
			{"needs the write scope", "POST", "/v1/locks/other", roKey, ``, nil, 403, "forbidden"},
			{"release by the holder's header", "DELETE", "/v1/locks/job", rwKey, ``, map[string]string{"Lock-Token": first.Token}, 200, ""},
			{"release again", "DELETE", "/v1/locks/job", rwKey, tok + `}`, nil, 409, "not_holder"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				status, code, _, msg := call(t, srv.URL, tt.method, tt.path, tt.key, tt.body, tt.header)
				if status == 200 {
					code = "" // the body
				}
				if status != tt.status || code != tt.code {
					t.Fatalf("%s %s %s: %d %q (%s), want %d %q", tt.method, tt.path, tt.body, status, code, msg, tt.status, tt.code)
				}
			})
		}
		// Released, the lock is taken again with the next fence; a waiter
		// gets it once the short lease expires.
		second, code := acquire(`{"ttl_ms": 50}`)
		if code != "" || second.Fence != 2 || second.TTL != 50 {
			t.Fatalf("the acquisition after the release: %+v %q, want fence 2, ttl_ms 50", second, code)
		}
		third, code := acquire(`{"wait_ms": 20000}`)
		if code != "" || third.Fence != 3 || third.Token == second.Token {
			t.Fatalf("the waiter: %+v %q, want fence 3 once the 50 ms lease expired", third, code)
		}
		if status, code, _, _ := call(t, srv.URL, "DELETE", "/v1/locks/job", rwKey, `{"token": "`+second.Token+`"}`, nil); status != 409 || code != "not_holder" {
			t.Fatalf("the expired holder's release: %d %q, want 409 not_holder", status, code)
		}
		if topology == "single" {
			redisDown(t, w, srv.URL, "POST", "/v1/locks/job", `{"wait_ms": 1000}`)
		}
	})
}
