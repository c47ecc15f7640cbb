package main

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv/world"
)

// recipeKeys are the API keys of the recipe tests: one that writes, one
// that only reads.
const (
	recipeWriter = "recipe-writer-0123456789abcdef"
	recipeReader = "recipe-reader-0123456789abcdef"
)

// serveRecipes starts a daemon with an HTTP API and the two keys, and
// returns a request function that decodes a JSON reply into out (when
// given) and returns the status.
func serveRecipes(t *testing.T, w *world.World, more string) (*world.Proc, string, func(method, path, body, key string, out any) int) {
	t.Helper()
	d, base, _ := serve(w, w.YAML(itemsCaches), fmt.Sprintf("  keys:\n    - {name: w, key: %q, scopes: [read, write]}\n    - {name: r, key: %q, scopes: [read]}\n%s",
		recipeWriter, recipeReader, more))
	return d, base, func(method, path, body, key string, out any) int {
		t.Helper()
		code, reply := httpDo(t, method, base+path, body, key)
		if out != nil && code < 300 {
			if err := json.Unmarshal([]byte(reply), out); err != nil {
				t.Fatalf("%s %s: %d %q: %v", method, path, code, reply, err)
			}
		}
		return code
	}
}

// TestSessionsAndLeaderboardsThroughDaemon: cachesync run serves sessions
// and leaderboards behind its API keys, in Redis under cachesync's prefix.
func TestSessionsAndLeaderboardsThroughDaemon(t *testing.T) {
	w := world.New(t, itemsSchema(1))
	d, _, do := serveRecipes(t, w, "")

	var s struct {
		ID   string
		Data map[string]int
	}
	if code := do("POST", "/v1/sessions", `{"data": {"user": 7}}`, recipeReader, nil); code != 403 {
		t.Fatalf("POST /v1/sessions with a read key: %d, want 403", code)
	}
	if code := do("POST", "/v1/sessions", `{"data": {"user": 7}, "idle_ms": 60000}`, recipeWriter, &s); code != 201 || s.ID == "" {
		t.Fatalf("POST /v1/sessions: %d %+v", code, s)
	}
	if ttl, err := w.RC.Do(t.Context(), w.RC.B().Pttl().Key("cachesync:session:{"+s.ID+"}").Build()).AsInt64(); err != nil || ttl <= 0 || ttl > 60000 {
		t.Fatalf("the session's key: PTTL %d, %v; want within its idle 60 s", ttl, err)
	}
	s.Data = nil
	if code := do("GET", "/v1/sessions/"+s.ID, "", recipeReader, &s); code != 200 || s.Data["user"] != 7 {
		t.Fatalf("GET the session: %d %+v", code, s)
	}
	if code := do("PUT", "/v1/sessions/"+s.ID, `{"data": {"user": 8}}`, recipeWriter, nil); code != 200 {
		t.Fatalf("PUT the session: %d", code)
	}
	if code := do("GET", "/v1/sessions/"+s.ID, "", recipeReader, &s); code != 200 || s.Data["user"] != 8 {
		t.Fatalf("GET the updated session: %d %+v", code, s)
	}
	if code := do("DELETE", "/v1/sessions/"+s.ID, "", recipeWriter, nil); code != 204 {
		t.Fatalf("DELETE the session: %d", code)
	}
	if code := do("GET", "/v1/sessions/"+s.ID, "", recipeReader, nil); code != 404 {
		t.Fatalf("GET a destroyed session: %d, want 404", code)
	}

	for _, p := range []struct{ member, body string }{{"ann", `{"score": 10}`}, {"bob", `{"score": 10}`}, {"cy", `{"add": 4}`}, {"cy", `{"add": 8}`}} {
		if code := do("POST", "/v1/leaderboards/chess/"+p.member, p.body, recipeWriter, nil); code != 200 {
			t.Fatalf("POST %s %s: %d", p.member, p.body, code)
		}
	}
	var top struct {
		Entries []struct {
			Rank   int
			Member string
			Score  float64
		}
	}
	if code := do("GET", "/v1/leaderboards/chess?top=3", "", recipeReader, &top); code != 200 {
		t.Fatalf("GET the board: %d", code)
	}
	if got := fmt.Sprint(top.Entries); got != "[{1 cy 12} {2 ann 10} {3 bob 10}]" {
		t.Fatalf("the board's top 3: %s; want cy, then ann (10 first), then bob", got)
	}
	if n, err := w.RC.Do(t.Context(), w.RC.B().Exists().Key("cachesync:leaderboard:{all:chess}").Build()).AsInt64(); err != nil || n != 1 {
		t.Fatalf("the board's key under cachesync's prefix: %d, %v", n, err)
	}
	d.Stop()
}
