package httpapi_test

import (
	"net/http/httptest"
	"testing"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/httpapi"
	"github.com/cachesync/cachesync/internal/testenv/world"
	"github.com/cachesync/cachesync/lock"
)

// TestRecipeRefused: where Redis answers but refuses (a key of another
// type under a recipe's name: WRONGTYPE), each recipe answers 500
// internal, not 503 unavailable: no retry would help.
func TestRecipeRefused(t *testing.T) {
	w := newBed(world.New(t, `CREATE TABLE t (id int PRIMARY KEY)`), `  t: {table: t, key: "t:{id}", sync: none}
http:
  keys:
    - {name: app, key: "`+rwKey+`", scopes: [read, write]}
`)
	srv := httpapi.New(w.api, w.cfg.HTTP, world.Logger())
	srv.ServeSessions(w.RC, sessionPrefix)
	srv.ServeLeaderboards(w.RC, boardPrefix)
	srv.ServeTopics(w.RC, "cachesync:topic:")
	if err := srv.ServeRateLimits(w.RC, "cachesync:ratelimit:", map[string]config.RateLimit{"api": {Algorithm: "gcra", Limit: 3, Window: 3600e9}}); err != nil {
		t.Fatal(err)
	}
	srv.ServeLocks(lock.New(w.RC, "cachesync:lock:"))
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)

	for _, c := range []struct{ name, key, method, path, body string }{
		{"session", sessionPrefix + "{AAAAAAAAAAAAAAAAAAAAAA}", "GET", "/v1/sessions/AAAAAAAAAAAAAAAAAAAAAA", ""},
		{"leaderboard", boardPrefix + "{all:b}", "GET", "/v1/leaderboards/b", ""},
		{"topic", "cachesync:topic:{news}", "POST", "/v1/topics/news/messages", "hello"},
		{"rate limit", "cachesync:ratelimit:api:gcra:alice", "POST", "/v1/ratelimits/api/alice", ""},
		{"lock", "cachesync:lock:{report}:fence", "POST", "/v1/locks/report", `{"ttl_ms": 1000}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			w.Do(w.RC.B().Del().Key(c.key).Build())
			w.Do(w.RC.B().Lpush().Key(c.key).Element("not a recipe's").Build())
			status, code, h, _ := call(t, hs.URL, c.method, c.path, rwKey, c.body, nil)
			if status != 500 || code != "internal" || h.Get("Retry-After") != "" {
				t.Fatalf("%s %s on a list: %d %q (Retry-After %q), want 500 internal", c.method, c.path, status, code, h.Get("Retry-After"))
			}
		})
	}
}
