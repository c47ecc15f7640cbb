package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv/world"
)

// recipeKeys are the API keys of the recipe tests: one that writes, one
// that only reads.
const (
	recipeWriter = "recipe-writer-0123456789abcdef"
	recipeReader = "recipe-reader-0123456789abcdef"
)

// serveRecipes starts a daemon of the items cache with an HTTP API, the
// two keys and more config (top-level YAML), as a Redis user with exactly
// the README's ACL rules, and returns it, the API's base URL and a request
// function that decodes a JSON reply into out (when given) and returns the
// status. When the test ends, Redis must have refused the user nothing.
func serveRecipes(t *testing.T, w *world.World, more string) (*world.Proc, string, func(method, path, body, key string, out any) int) {
	t.Helper()
	url, file := readmeRedisUser(t, w, "~item:*")
	yaml := fmt.Sprintf("name: %s\nredis: {url: %q, password_file: %q}\nsources:\n  db: {url: %q}\ncaches:\n%s%s", w.Name, url, file, w.DBURL, itemsCaches, more)
	d, base, _ := serve(w, yaml, fmt.Sprintf("  keys:\n    - {name: w, key: %q, scopes: [read, write]}\n    - {name: r, key: %q, scopes: [read]}\n",
		recipeWriter, recipeReader))
	t.Cleanup(func() { requireNoACLRefusal(t, w) })
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

// TestRecipesThroughDaemon: cachesync run serves sessions, leaderboards,
// rate limits, locks and topics behind its API keys, in Redis under
// cachesync's prefix, as a Redis user with the README's ACL rules.
func TestRecipesThroughDaemon(t *testing.T) {
	w := world.New(t, itemsSchema(1))
	d, base, do := serveRecipes(t, w, "ratelimits:\n  api: {algorithm: gcra, limit: 2, window: 1h}\n")

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

	// Rate limits: two a key an hour, the third refused with its headers.
	for i, want := range []int{200, 200, 429} {
		code, _ := httpDo(t, "POST", base+"/v1/ratelimits/api/alice", "", recipeWriter)
		if code != want {
			t.Fatalf("decision %d for alice: %d, want %d", i+1, code, want)
		}
	}
	if code := do("POST", "/v1/ratelimits/api/bob", "", recipeWriter, nil); code != 200 {
		t.Fatalf("bob's first decision: %d", code)
	}

	// Locks: held by one token, refused to another, released by its holder.
	var l struct {
		Token string
		Fence int64
	}
	if code := do("POST", "/v1/locks/report", `{"ttl_ms": 60000}`, recipeWriter, &l); code != 200 || l.Token == "" || l.Fence != 1 {
		t.Fatalf("acquire: %d %+v", code, l)
	}
	if code := do("POST", "/v1/locks/report", `{"ttl_ms": 60000}`, recipeWriter, nil); code != 409 {
		t.Fatalf("acquire while held: %d, want 409", code)
	}
	if code := do("DELETE", "/v1/locks/report", `{"token": "not-the-holder"}`, recipeWriter, nil); code != 409 {
		t.Fatalf("release by another token: %d, want 409", code)
	}
	if code := do("DELETE", "/v1/locks/report", fmt.Sprintf(`{"token": %q}`, l.Token), recipeWriter, nil); code != 200 {
		t.Fatalf("release by the holder: %d", code)
	}
	if code := do("POST", "/v1/locks/report", `{"ttl_ms": 60000}`, recipeWriter, &l); code != 200 || l.Fence != 2 {
		t.Fatalf("acquire after the release: %d %+v, want fence 2", code, l)
	}

	// Topics: a reader resuming after the first message gets the second.
	var ids []string
	for _, m := range []string{"first", "second"} {
		var p struct{ ID string }
		if code := do("POST", "/v1/topics/news/messages", m, recipeWriter, &p); code != 201 {
			t.Fatalf("publish %s: %d", m, code)
		}
		ids = append(ids, p.ID)
	}
	if got := readEvent(t, base+"/v1/topics/news/events", recipeReader, ids[0]); got != ids[1]+" second" {
		t.Fatalf("the event after %s: %q, want %q", ids[0], got, ids[1]+" second")
	}
	d.Stop()
}

// readEvent opens an event stream at url after lastID and returns its first
// message event as "ID DATA".
func readEvent(t *testing.T, url, key, lastID string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), world.Patience)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Last-Event-ID", lastID)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	var id, data string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			data = strings.TrimPrefix(line, "data: ")
		case line == "" && data != "":
			return id + " " + data
		}
	}
	t.Fatalf("the event stream ended: %v", sc.Err())
	return ""
}
