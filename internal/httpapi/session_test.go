package httpapi_test

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/httpapi"
	"github.com/cachesync/cachesync/internal/testenv/world"
	"github.com/cachesync/cachesync/session"
)

const (
	sessionPrefix = "cachesync:session:"
	boardPrefix   = "cachesync:leaderboard:"
)

// newRecipes is a server of the sessions and leaderboards on a world of
// topology, with the read-write and the read-only key.
func newRecipes(t *testing.T, topology string) (*bed, string) {
	w := newBed(world.NewTopology(t, topology, `CREATE TABLE t (id int PRIMARY KEY)`), `  t: {table: t, key: "t:{id}", sync: none}
http:
  max_body: 100000
  keys:
    - {name: app, key: "`+rwKey+`", scopes: [read, write]}
    - {name: reporting, key: "`+roKey+`", scopes: [read]}
`)
	srv := httpapi.New(w.api, w.cfg.HTTP, world.Logger())
	srv.ServeSessions(w.RC, sessionPrefix)
	srv.ServeLeaderboards(w.RC, boardPrefix)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return w, hs.URL
}

// reply is a session as the API answers it.
type reply struct {
	ID        string          `json:"id"`
	Data      json.RawMessage `json:"data"`
	ExpiresMS int64           `json:"expires_ms"`
	EndsAt    time.Time       `json:"ends_at"`
}

func TestSessionsAPI(t *testing.T) {
	world.EachTopology(t, func(t *testing.T, topology string) {
		w, base := newRecipes(t, topology)
		// send makes a request that must answer status, and returns the
		// session of a success, or the error's code.
		send := func(method, path, key, body string, status int) (reply, string) {
			t.Helper()
			got, code, h, msg := call(t, base, method, path, key, body, nil)
			if got != status {
				t.Fatalf("%s %s %s: %d %s %s, want %d", method, path, body, got, code, msg, status)
			}
			var r reply
			if status < 300 && status != 204 {
				if err := json.Unmarshal([]byte(code), &r); err != nil {
					t.Fatalf("%s %s: %q: %v", method, path, code, err)
				}
				if method == "POST" && h.Get("Location") != "/v1/sessions/"+r.ID {
					t.Errorf("POST: Location %q for the session %s", h.Get("Location"), r.ID)
				}
			}
			return r, code
		}

		before := time.Now()
		def, _ := send("POST", "/v1/sessions", rwKey, `{"data": {"user": 7, "cart": [1, 2]}}`, 201)
		if len(def.ID) != session.IDLen || string(def.Data) != `{"user":7,"cart":[1,2]}` || def.ExpiresMS != 30*60*1000 {
			t.Fatalf("created %+v, want a new id, the data, the default idle 30m", def)
		}
		if left := def.EndsAt.Sub(before); left < 23*time.Hour || left > 25*time.Hour {
			t.Fatalf("ends at %v, %v from now: want the default lifetime, 24h", def.EndsAt, left)
		}
		got, _ := send("GET", "/v1/sessions/"+def.ID, roKey, "", 200) // a read key reads
		if got.ID != def.ID || string(got.Data) != string(def.Data) || !got.EndsAt.Equal(def.EndsAt) {
			t.Fatalf("GET: %+v, want %+v", got, def)
		}

		// A GET slides the expiry, within the lifetime.
		own, _ := send("POST", "/v1/sessions", rwKey, `{"idle_ms": 3600000, "lifetime_ms": 7200000}`, 201)
		if string(own.Data) != "null" || own.ExpiresMS != 3600000 {
			t.Fatalf("created %+v, want no data and the idle 1h", own)
		}
		key := sessionPrefix + "{" + own.ID + "}"
		w.Do(w.RC.B().Pexpire().Key(key).Milliseconds(60000).Build()) // as if unused for 59 minutes
		if got, _ := send("GET", "/v1/sessions/"+own.ID, rwKey, "", 200); got.ExpiresMS != 3600000 {
			t.Fatalf("after a GET: expires in %d ms, want it slid back to the idle 3600000", got.ExpiresMS)
		}
		if ms, _ := w.Do(w.RC.B().Pttl().Key(key).Build()).AsInt64(); ms <= 60000 || ms > 3600000 {
			t.Fatalf("after a GET: PTTL %d, want (60000, 3600000]", ms)
		}

		up, _ := send("PUT", "/v1/sessions/"+def.ID, rwKey, `{"data": "new"}`, 200)
		if string(up.Data) != `"new"` || !up.EndsAt.Equal(def.EndsAt) {
			t.Fatalf("PUT: %+v, want the new data and the same end", up)
		}
		if got, _ := send("GET", "/v1/sessions/"+def.ID, rwKey, "", 200); string(got.Data) != `"new"` {
			t.Fatalf("GET after PUT: %s", got.Data)
		}
		send("DELETE", "/v1/sessions/"+def.ID, rwKey, "", 204)

		gone := session.NewID()
		for _, tt := range []struct {
			name, method, path, key, body string
			status                        int
			code                          string
		}{
			{"get destroyed", "GET", "/v1/sessions/" + def.ID, rwKey, "", 404, "not_found"},
			{"put destroyed", "PUT", "/v1/sessions/" + def.ID, rwKey, `{"data": 1}`, 404, "not_found"},
			{"delete destroyed", "DELETE", "/v1/sessions/" + def.ID, rwKey, "", 404, "not_found"},
			{"get never made", "GET", "/v1/sessions/" + gone, rwKey, "", 404, "not_found"},
			{"bad id", "GET", "/v1/sessions/abc", rwKey, "", 400, "bad_id"},
			{"an id with braces", "GET", "/v1/sessions/AAAAAAAAAAAAAAAAAAAA%7B%7D", rwKey, "", 400, "bad_id"},
			{"not UTF-8", "PUT", "/v1/sessions/%FF%FE", rwKey, `{"data": 1}`, 400, "bad_id"},
			{"no key", "GET", "/v1/sessions/" + own.ID, "", "", 401, "unauthorized"},
			{"a read key cannot create", "POST", "/v1/sessions", roKey, `{}`, 403, "forbidden"},
			{"a read key cannot update", "PUT", "/v1/sessions/" + own.ID, roKey, `{"data": 1}`, 403, "forbidden"},
			{"a read key cannot destroy", "DELETE", "/v1/sessions/" + own.ID, roKey, "", 403, "forbidden"},
			{"idle too short", "POST", "/v1/sessions", rwKey, `{"idle_ms": 999}`, 400, "bad_ttl"},
			{"idle too long", "POST", "/v1/sessions", rwKey, `{"idle_ms": 86400001}`, 400, "bad_ttl"},
			{"lifetime too long", "POST", "/v1/sessions", rwKey, `{"lifetime_ms": 2592000001}`, 400, "bad_ttl"},
			{"lifetime negative", "POST", "/v1/sessions", rwKey, `{"lifetime_ms": -1}`, 400, "bad_ttl"},
			{"idle not an integer", "POST", "/v1/sessions", rwKey, `{"idle_ms": 1.5}`, 400, "bad_json"},
			{"an unknown field", "POST", "/v1/sessions", rwKey, `{"data": 1, "ttl": 5}`, 400, "bad_json"},
			{"a field twice", "POST", "/v1/sessions", rwKey, `{"data": 1, "data": 2}`, 400, "bad_json"},
			{"not an object", "POST", "/v1/sessions", rwKey, `[1]`, 400, "bad_json"},
			{"put without data", "PUT", "/v1/sessions/" + own.ID, rwKey, `{}`, 400, "bad_json"},
			{"data too large", "POST", "/v1/sessions", rwKey, `{"data": "` + strings.Repeat("x", 70000) + `"}`, 413, "data_too_large"},
			{"body too large", "POST", "/v1/sessions", rwKey, `{"data": "` + strings.Repeat("x", 100001) + `"}`, 413, "body_too_large"},
			{"a wrong method", "PATCH", "/v1/sessions/" + own.ID, rwKey, "", 405, "method_not_allowed"},
		} {
			if status, code, _, msg := call(t, base, tt.method, tt.path, tt.key, tt.body, nil); status != tt.status || code != tt.code {
				t.Errorf("%s: %s %s: %d %q (%s), want %d %q", tt.name, tt.method, tt.path, status, code, msg, tt.status, tt.code)
			}
		}
		// The session a failed update named is as it was, and a PUT made none.
		if got, _ := send("GET", "/v1/sessions/"+own.ID, rwKey, "", 200); string(got.Data) != "null" {
			t.Fatalf("after refused requests: %s", got.Data)
		}
		if n, _ := w.Do(w.RC.B().Exists().Key(sessionPrefix + "{" + def.ID + "}").Build()).AsInt64(); n != 0 {
			t.Fatal("a PUT of a destroyed session made it again")
		}
	})
}
