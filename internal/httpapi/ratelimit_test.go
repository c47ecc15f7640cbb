package httpapi_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/httpapi"
	"github.com/cachesync/cachesync/internal/testenv/world"
	"github.com/cachesync/cachesync/lock"
)

// recipes serves the API of a world of topology with the rate limits and
// locks, behind a read key and a read-write key.
func recipes(t *testing.T, topology string) (*bed, *httptest.Server) {
	t.Helper()
	w := newBed(world.NewTopology(t, topology, `CREATE TABLE t (id int PRIMARY KEY)`), `  t: {table: t, key: "t:{id}", sync: none}
http:
  keys:
    - {name: app, key: "`+rwKey+`", scopes: [read, write]}
    - {name: reporting, key: "`+roKey+`", scopes: [read]}
`)
	srv := httpapi.New(w.api, w.cfg.HTTP, world.Logger())
	if err := srv.ServeRateLimits(w.RC, "cachesync:ratelimit:", map[string]config.RateLimit{
		"login": {Algorithm: "gcra", Limit: 3, Window: time.Hour},
		"api":   {Algorithm: "sliding", Limit: 2, Window: time.Hour},
		"cheap": {Algorithm: "fixed", Limit: 100, Window: time.Hour},
	}); err != nil {
		t.Fatal(err)
	}
	srv.ServeLocks(lock.New(w.RC, "cachesync:lock:"))
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return w, hs
}

// TestRateLimits: decisions over HTTP, with their headers, on one node and
// on a Cluster.
func TestRateLimits(t *testing.T) {
	world.EachTopology(t, func(t *testing.T, topology string) {
		w, srv := recipes(t, topology)
		long := "/v1/ratelimits/login/" + strings.Repeat("x", 513)
		for _, tt := range []struct {
			name, method, path, key string
			status                  int
			code                    string // the error's code, or for a 200 the body's "remaining"
			// headers are the answer's; "≤N" is a whole number in [1, N]:
			// it depends on the time between requests.
			headers map[string]string
		}{
			{"first", "POST", "/v1/ratelimits/login/alice", rwKey, 200, "2", map[string]string{"RateLimit-Limit": "3", "RateLimit-Remaining": "2", "RateLimit-Reset": "1200"}},
			{"second", "POST", "/v1/ratelimits/login/alice", rwKey, 200, "1", map[string]string{"RateLimit-Remaining": "1", "RateLimit-Reset": "≤2400"}},
			{"third", "POST", "/v1/ratelimits/login/alice", rwKey, 200, "0", map[string]string{"RateLimit-Remaining": "0", "RateLimit-Reset": "≤3600"}},
			{"fourth", "POST", "/v1/ratelimits/login/alice", rwKey, 429, "rate_limited", map[string]string{"RateLimit-Limit": "3", "RateLimit-Remaining": "0", "Retry-After": "≤1200"}},
			{"another id", "POST", "/v1/ratelimits/login/bob", rwKey, 200, "2", nil},
			{"an id of any bytes", "POST", "/v1/ratelimits/login/a%00%7D%7B%FF/b", rwKey, 200, "2", nil},
			{"cost", "POST", "/v1/ratelimits/api/carol?cost=2", rwKey, 200, "0", map[string]string{"RateLimit-Limit": "2"}},
			{"over after cost", "POST", "/v1/ratelimits/api/carol", rwKey, 429, "rate_limited", map[string]string{"Retry-After": "≤3600"}},
			{"fixed", "POST", "/v1/ratelimits/cheap/dave", rwKey, 200, "99", map[string]string{"RateLimit-Limit": "100"}},
			{"cost above the limit", "POST", "/v1/ratelimits/api/carol?cost=3", rwKey, 400, "bad_cost", nil},
			{"cost not a number", "POST", "/v1/ratelimits/api/carol?cost=two", rwKey, 400, "bad_cost", nil},
			{"cost 0", "POST", "/v1/ratelimits/api/carol?cost=0", rwKey, 400, "bad_cost", nil},
			{"id too long", "POST", long, rwKey, 400, "bad_id", nil},
			{"unknown policy", "POST", "/v1/ratelimits/nosuch/alice", rwKey, 404, "unknown_ratelimit", nil},
			{"needs the write scope", "POST", "/v1/ratelimits/login/alice", roKey, 403, "forbidden", nil},
			{"needs a key", "POST", "/v1/ratelimits/login/alice", "", 401, "unauthorized", nil},
			{"no id", "POST", "/v1/ratelimits/login/", rwKey, 400, "bad_id", nil},
			{"GET", "GET", "/v1/ratelimits/login/alice", rwKey, 405, "method_not_allowed", nil},
		} {
			t.Run(tt.name, func(t *testing.T) {
				status, code, h, msg := call(t, srv.URL, tt.method, tt.path, tt.key, "", nil)
				if status == 200 {
					code = decision(t, code, h)
				}
				if status != tt.status || code != tt.code {
					t.Fatalf("%s %s: %d %q (%s), want %d %q", tt.method, tt.path, status, code, msg, tt.status, tt.code)
				}
				for k, v := range tt.headers {
					if most, ok := strings.CutPrefix(v, "≤"); ok {
						n, err := strconv.Atoi(h.Get(k))
						if m, _ := strconv.Atoi(most); err != nil || n < 1 || n > m {
							t.Errorf("%s: %q, want 1 to %s", k, h.Get(k), most)
						}
					} else if h.Get(k) != v {
						t.Errorf("%s: %q, want %q", k, h.Get(k), v)
					}
				}
			})
		}
		// The odd id stays under the policy's prefix, as it was given.
		if n, err := w.Do(w.RC.B().Exists().Key("cachesync:ratelimit:login:gcra:a\x00}{\xff/b").Build()).AsInt64(); err != nil || n != 1 {
			t.Fatalf("the key of the id a\\x00}{\\xff/b: EXISTS %d %v", n, err)
		}
		if topology == "single" {
			redisDown(t, w, srv.URL, "POST", "/v1/ratelimits/login/erin", "")
		}
	})
}

// decision checks the body of a 200 and returns its remaining.
func decision(t *testing.T, body string, h http.Header) string {
	t.Helper()
	var d struct {
		Allowed      bool  `json:"allowed"`
		Remaining    int   `json:"remaining"`
		ResetMS      int64 `json:"reset_ms"`
		RetryAfterMS int64 `json:"retry_after_ms"`
	}
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatalf("decision body %q: %v", body, err)
	}
	if !d.Allowed || d.ResetMS <= 0 || d.RetryAfterMS != 0 {
		t.Fatalf("200 with %s", body)
	}
	if s, _ := strconv.ParseInt(h.Get("RateLimit-Reset"), 10, 64); s*1000 < d.ResetMS || (s-1)*1000 >= d.ResetMS {
		t.Fatalf("RateLimit-Reset %q for reset_ms %d: want the seconds rounded up", h.Get("RateLimit-Reset"), d.ResetMS)
	}
	return strconv.Itoa(d.Remaining)
}

// redisDown stops w's Redis and checks that a request answers 503
// unavailable with Retry-After.
func redisDown(t *testing.T, w *bed, base, method, path, body string) {
	t.Helper()
	if err := w.Redis.Stop(); err != nil {
		t.Fatal(err)
	}
	status, code, h, _ := call(t, base, method, path, rwKey, body, nil)
	if status != 503 || code != "unavailable" || h.Get("Retry-After") == "" {
		t.Fatalf("%s %s with Redis down: %d %q, Retry-After %q; want 503 unavailable with Retry-After", method, path, status, code, h.Get("Retry-After"))
	}
}
