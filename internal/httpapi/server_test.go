package httpapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/drain"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/httpapi"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

func TestMain(m *testing.M) { world.Main(m) }

const (
	rwKey = "rw-key-0123456789abcdef"
	roKey = "ro-key-0123456789abcdef"
)

// bed is a world and an API client of its config.
type bed struct {
	*world.World
	cfg *config.Config
	api *engine.Engine
}

// newBed opens an API client, with opts[0] when given, of w's config whose
// caches section is caches, followed by the config's other sections
// (http) if any.
func newBed(w *world.World, caches string, opts ...engine.Options) *bed {
	w.T.Helper()
	cfg := w.Config(caches)
	return &bed{World: w, cfg: cfg, api: w.Open(cfg, opts...)}
}

func TestAPI(t *testing.T) {
	w := newBed(world.New(t, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2), note text, meta json);
		INSERT INTO inventory VALUES ('apple', 1.99, 'crisp')`), `  prices: {table: inventory, key: "price:{item}", value: {columns: [item, price]}, sync: none}
  notes: {table: inventory, key: "note:{item}", value: {format: string, column: note}, sync: none}
http:
  max_body: 1024
  keys:
    - {name: app, key: "`+rwKey+`", scopes: [read, write]}
    - {name: reporting, key: "`+roKey+`", scopes: [read]}
`)
	srv := httptest.NewServer(httpapi.New(w.api, w.cfg.HTTP, world.Logger()).Handler())
	defer srv.Close()

	tests := []struct {
		name, method, path, key, body string
		header                        map[string]string
		status                        int
		code                          string            // error code, or the exact body of a success
		want                          map[string]string // headers of the answer, and "message": a part of the error's
	}{
		{"no key", "GET", "/v1/caches/prices/price:apple", "", "", nil, 401, "unauthorized", nil},
		{"wrong key", "GET", "/v1/caches/prices/price:apple", "nope-0123456789abcdef", "", nil, 401, "unauthorized", nil},
		{"read", "GET", "/v1/caches/prices/price:apple", roKey, "", nil, 200, `{"item":"apple","price":1.99}`, nil},
		{"X-API-Key", "GET", "/v1/caches/notes/note:apple", "", "", map[string]string{"X-API-Key": roKey}, 200, `crisp`, nil},
		{"write needs scope", "PUT", "/v1/caches/prices/price:apple", roKey, `{"price": 2}`, nil, 403, "forbidden", nil},
		{"delete needs scope", "DELETE", "/v1/caches/prices/price:apple", roKey, "", nil, 403, "forbidden", nil},
		{"oversize body", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"note": "` + strings.Repeat("x", 2000) + `"}`, nil, 413, "body_too_large", nil},
		{"malformed JSON", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"price": `, nil, 400, "bad_json", nil},
		{"not an object", "PUT", "/v1/caches/prices/price:apple", rwKey, `[1, 2]`, nil, 400, "bad_json", nil},
		{"two values", "PUT", "/v1/caches/prices/price:apple", rwKey, `{} {}`, nil, 400, "bad_json", nil},
		{"unknown cache", "GET", "/v1/caches/nosuch/price:apple", rwKey, "", nil, 404, "unknown_cache", nil},
		{"unknown cache put", "PUT", "/v1/caches/nosuch/price:apple", rwKey, `{}`, nil, 404, "unknown_cache", nil},
		{"bad key", "GET", "/v1/caches/prices/cost:apple", rwKey, "", nil, 400, "bad_key", nil},
		{"bad key put", "PUT", "/v1/caches/prices/cost:apple", rwKey, `{}`, nil, 400, "bad_key", nil},
		{"not found", "GET", "/v1/caches/prices/price:kiwi", rwKey, "", nil, 404, "not_found", nil},
		{"a NUL in the key", "GET", "/v1/caches/prices/price:a%00b", rwKey, "", nil, 400, "bad_key", nil},
		{"not UTF-8 in the key", "GET", "/v1/caches/prices/price:%FF", rwKey, "", nil, 400, "bad_key", nil},
		{"unknown column", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"colour": "red"}`, nil, 400, "bad_row", nil},
		{"key mismatch", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"item": "pear"}`, nil, 400, "key_mismatch", nil},
		{"refused row", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"price": "cheap"}`, nil, 422, "row_refused", nil},
		{"behind needs writes: behind", "PUT", "/v1/caches/prices/price:apple?mode=behind", rwKey, `{"price": 2}`, nil, 400, "not_behind", nil},
		{"bad mode", "PUT", "/v1/caches/prices/price:apple?mode=sideways", rwKey, `{"price": 2}`, nil, 400, "bad_mode", nil},
		{"write through", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"price": 2.49}`, nil, 204, "", nil},
		{"reads the write", "GET", "/v1/caches/prices/price:apple", rwKey, "", nil, 200, `{"item":"apple","price":2.49}`, nil},
		{"insert", "PUT", "/v1/caches/prices/price:kiwi", rwKey, `{"price": 0.69, "note": "new"}`, nil, 204, "", nil},
		{"reads the insert", "GET", "/v1/caches/notes/note:kiwi", rwKey, "", nil, 200, `new`, nil},
		{"invalidate", "DELETE", "/v1/caches/prices/price:apple", rwKey, "", nil, 204, "", nil},
		{"no route", "GET", "/v2/whatever", rwKey, "", nil, 404, "no_route", nil},
		{"no route for any method", "POST", "/v2/whatever", rwKey, "", nil, 404, "no_route", nil},
		{"no route without a key", "GET", "/v1/nothing", "", "", nil, 404, "no_route", nil},
		{"healthz", "GET", "/healthz", "", "", nil, 200, "{\"status\":\"ok\"}\n", nil},
		{"readyz", "GET", "/readyz", "", "", nil, 200, "{\"status\":\"ready\"}\n", nil},

		// Issue 13: a wrong method is 405 with Allow, before the key is asked for.
		{"POST a key", "POST", "/v1/caches/prices/price:apple", rwKey, `{"price": 2}`, nil, 405, "method_not_allowed",
			map[string]string{"Allow": "DELETE, GET, HEAD, PUT", "message": "POST"}},
		{"PATCH without a key", "PATCH", "/v1/caches/prices/price:apple", "", `{}`, nil, 405, "method_not_allowed",
			map[string]string{"Allow": "DELETE, GET, HEAD, PUT"}},
		{"PUT healthz", "PUT", "/healthz", "", "", nil, 405, "method_not_allowed", map[string]string{"Allow": "GET, HEAD"}},
		{"DELETE readyz", "DELETE", "/readyz", "", "", nil, 405, "method_not_allowed", map[string]string{"Allow": "GET, HEAD"}},
		{"HEAD a key", "HEAD", "/v1/caches/prices/price:apple", roKey, "", nil, 200, "", nil},

		// Issue 13: the auth scheme is case-insensitive, with any blanks after it.
		{"lowercase bearer", "GET", "/v1/caches/notes/note:apple", "", "", map[string]string{"Authorization": "bearer " + roKey}, 200, "crisp", nil},
		{"BEARER, spaces and a tab", "GET", "/v1/caches/notes/note:apple", "", "", map[string]string{"Authorization": "BEARER  \t " + roKey}, 200, "crisp", nil},
		{"bEaReR writes", "PUT", "/v1/caches/notes/note:apple", "", `{"note": "crisp"}`, map[string]string{"Authorization": "bEaReR " + rwKey}, 204, "", nil},
		{"bearer with a read key cannot write", "PUT", "/v1/caches/notes/note:apple", "", `{}`, map[string]string{"Authorization": "bearer " + roKey}, 403, "forbidden", nil},
		{"bearer without a blank", "GET", "/v1/caches/notes/note:apple", "", "", map[string]string{"Authorization": "Bearer" + roKey}, 401, "unauthorized", nil},
		{"bearer without a key", "GET", "/v1/caches/notes/note:apple", "", "", map[string]string{"Authorization": "Bearer "}, 401, "unauthorized", nil},
		{"another scheme", "GET", "/v1/caches/notes/note:apple", "", "", map[string]string{"Authorization": "Basic " + roKey}, 401, "unauthorized", nil},

		// Issue 13: a name twice in one object of the body is refused, naming it.
		{"duplicate field", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"price": 2, "price": 3}`, nil, 400, "bad_json",
			map[string]string{"message": `"price"`}},
		{"duplicate key column", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"item": "apple", "price": 2, "item": "pear"}`, nil, 400, "bad_json",
			map[string]string{"message": `"item"`}},
		{"duplicate inside a json value", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"meta": {"a": [{"b": 1, "b": 2}]}}`, nil, 400, "bad_json",
			map[string]string{"message": `"b"`}},
		{"one name in two objects", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"meta": [{"b": 1}, {"b": 2}], "price": 1.99}`, nil, 204, "", nil},
		{"not UTF-8", "PUT", "/v1/caches/notes/note:apple", rwKey, "{\"note\": \"\xff\"}", nil, 400, "bad_json", nil},
		{"a stray brace after the object", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"price": 2}}`, nil, 400, "bad_json", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, code, h, msg := call(t, srv.URL, tt.method, tt.path, tt.key, tt.body, tt.header)
			if status != tt.status || code != tt.code {
				t.Fatalf("%s %s: %d %q (%s), want %d %q", tt.method, tt.path, status, code, msg, tt.status, tt.code)
			}
			for k, v := range tt.want {
				if k == "message" && !strings.Contains(msg, v) {
					t.Errorf("%s %s: message %q does not say %s", tt.method, tt.path, msg, v)
				} else if k != "message" && h.Get(k) != v {
					t.Errorf("%s %s: %s: %q, want %q", tt.method, tt.path, k, h.Get(k), v)
				}
			}
		})
	}

	// Redis down: reads answer 503 with Retry-After, and so does /readyz.
	if err := w.Redis.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/v1/caches/prices/price:pear", "/readyz"} {
		status, code, h, _ := call(t, srv.URL, "GET", path, rwKey, "", nil)
		if status != 503 || code != "unavailable" || h.Get("Retry-After") == "" {
			t.Fatalf("GET %s with Redis down: %d %q, Retry-After %q; want 503 unavailable with Retry-After", path, status, code, h.Get("Retry-After"))
		}
	}
}

// TestReadyzSaysLittle: /readyz is open, so when a source or Redis is down
// it says which, not how to reach it (user, database, host, port); a key
// with the read scope gets the whole error, and so does everyone when the
// API has no keys (everyone may read then).
func TestReadyzSaysLittle(t *testing.T) {
	const wKey = "w-key-0123456789abcdef"
	own, pg := world.NewOwnPostgres(t, `CREATE TABLE t (id int PRIMARY KEY)`) // stopped below
	w := newBed(own, `  t: {table: t, key: "t:{id}", sync: none}
http:
  keys:
    - {name: loader, key: "`+wKey+`", scopes: [write]}
    - {name: reporting, key: "`+roKey+`", scopes: [read]}
`)
	log := world.Logger()
	keyed := httptest.NewServer(httpapi.New(w.api, w.cfg.HTTP, log).Handler())
	defer keyed.Close()
	open := httptest.NewServer(httpapi.New(w.api, config.HTTP{}, log).Handler())
	defer open.Close()
	secrets := []string{strconv.Itoa(pg.Port), "127.0.0.1", "user", "postgres", strings.Split(w.Redis.Addr, ":")[1]}
	check := func(down string) {
		t.Helper()
		for _, tt := range []struct {
			name, base, key string
			header          map[string]string
			whole           bool // the whole error, not only what is down
		}{
			{"no key", keyed.URL, "", nil, false},
			{"unknown key", keyed.URL, "nope-0123456789abcdef", nil, false},
			{"a key without the read scope", keyed.URL, wKey, nil, false},
			{"a key with the read scope", keyed.URL, roKey, nil, true},
			{"X-API-Key with the read scope", keyed.URL, "", map[string]string{"X-API-Key": roKey}, true},
			{"lowercase bearer with the read scope", keyed.URL, "", map[string]string{"Authorization": "bearer " + roKey}, true},
			{"no keys configured", open.URL, "", nil, true},
		} {
			status, code, h, msg := call(t, tt.base, "GET", "/readyz", tt.key, "", tt.header)
			if status != 503 || code != "unavailable" || h.Get("Retry-After") == "" {
				t.Errorf("%s down, %s: %d %q, Retry-After %q; want 503 unavailable with Retry-After", down, tt.name, status, code, h.Get("Retry-After"))
			}
			if !strings.HasPrefix(msg, down+" unavailable") {
				t.Errorf("%s down, %s: %q does not say %s is unavailable", down, tt.name, msg, down)
			}
			if tt.whole && !strings.HasPrefix(msg, down+" unavailable: ") {
				t.Errorf("%s down, %s: %q, want the whole error", down, tt.name, msg)
			}
			for _, s := range secrets {
				if !tt.whole && strings.Contains(msg, s) {
					t.Errorf("%s down, %s: %q tells %q", down, tt.name, msg, s)
				}
			}
		}
	}
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	check("source db")
	if err := w.Redis.Stop(); err != nil {
		t.Fatal(err)
	}
	check("redis")
}

// call makes a request and returns the status, the error code (or, for a
// success, the body), the headers and the error's message.
func call(t *testing.T, base, method, path, key, body string, header map[string]string) (int, string, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode < 300 {
		return resp.StatusCode, string(b), resp.Header, ""
	}
	var e struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("%s %s: error body %q is not JSON: %v", method, path, b, err)
	}
	if e.Error.Message == "" {
		t.Fatalf("%s %s: error without a message: %s", method, path, b)
	}
	return resp.StatusCode, e.Error.Code, resp.Header, e.Error.Message
}

// TestShutdownAnswersWaitingPuts: a PUT that committed and waits for a
// change feed that is not running is answered at once when the server
// shuts down: 202 not_applied, not after its whole wait.
func TestShutdownAnswersWaitingPuts(t *testing.T) {
	w := newBed(world.New(t, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2))`), `  prices: {table: inventory, key: "price:{item}", value: {format: string, column: price}}
`, engine.Options{WriteWait: time.Hour}) // no feed runs: Put would wait an hour
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srvCtx, shutdown := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() {
		served <- httpapi.New(w.api, w.cfg.HTTP, world.Logger()).Serve(srvCtx, ln)
	}()
	type answer struct {
		status int
		code   string
	}
	answered := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest("PUT", "http://"+ln.Addr().String()+"/v1/caches/prices/price:apple", strings.NewReader(`{"price": 2.5}`))
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req) // a hang detector, not a measure
		if err != nil {
			answered <- answer{0, err.Error()}
			return
		}
		defer resp.Body.Close()
		var e struct {
			Error struct{ Code, Message string }
		}
		json.NewDecoder(resp.Body).Decode(&e)
		answered <- answer{resp.StatusCode, e.Error.Code + ": " + e.Error.Message}
	}()
	// The PUT waits for the feed once it reads the cache's applied position
	// (HMGET of the state record), which nothing else on this Redis does:
	// a row merely visible may still have its statement's reply in flight,
	// and a statement cut short by the shutdown is answered 503.
	world.WaitFor(t, "the PUT committed and waits for the feed", func() bool {
		info, err := w.RC.Do(t.Context(), w.RC.B().Info().Section("commandstats").Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Contains(info, "cmdstat_hmget:calls=")
	})
	if n := w.Rows(`SELECT 'rows', count(*)::text FROM inventory`)["rows"]; n != "1" {
		t.Fatalf("%s rows before the shutdown, want the PUT's 1", n)
	}
	shutdown()
	if a := <-answered; a.status != 202 || !strings.HasPrefix(a.code, "not_applied:") {
		t.Fatalf("the waiting PUT at shutdown: %d %q, want 202 not_applied", a.status, a.code)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

// TestBodyRoundTrip: a GET's body PUT back unchanged is taken, by
// write-through and by write-behind alike, and changes nothing: not the
// row, not what a GET returns; and write-behind takes what write-through
// takes (a timestamp with an offset, "yes" for a boolean).
func TestBodyRoundTrip(t *testing.T) {
	ctx := context.Background()
	w := newBed(world.New(t, `CREATE TABLE rt (id int PRIMARY KEY, n numeric(6,2), f float8, b bool, t text,
			ts timestamptz, tsn timestamp, d date, u uuid, by bytea, ia int[], ta text[], j jsonb, js json, iv interval);
		INSERT INTO rt VALUES (1, 2.5, 1.5, true, 'say "hi"', '2026-01-02 03:04:05+05:30', '2026-01-02 03:04:05.123',
			'2026-01-02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x0102ff', '{1,2,NULL}', '{"a b","c,d"}',
			'{"x": [1, "y"]}', '{"k":  1}', '1 day 02:00:00')`), `  rt: {table: rt, key: "rt:{id}", sync: none, writes: behind}
  rh: {table: rt, key: "rh:{id}", value: {format: hash, columns: [id, n, f, b, t, ts, tsn, d, u, ia, ta, j, js, iv]}, sync: none, writes: behind}
`)
	testenv.Go(t, func(ctx context.Context) error { return drain.Run(ctx, w.api) })
	srv := httptest.NewServer(httpapi.New(w.api, w.cfg.HTTP, world.Logger()).Handler())
	defer srv.Close()
	row := func() string {
		var s string
		if err := w.DB.QueryRow(ctx, `SELECT rt::text FROM rt WHERE id = 1`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	drained := func(cache string) {
		world.WaitFor(t, cache+": the queue drained", func() bool {
			q, ok := drain.Queues(ctx, w.RC, w.cfg)[cache]
			return ok && q.Pending == 0
		})
	}
	stored := row()
	for _, cache := range []string{"rt", "rh"} {
		path := "/v1/caches/" + cache + "/" + cache + ":1"
		status, body, _, _ := call(t, srv.URL, "GET", path, "", "", nil)
		if status != 200 {
			t.Fatalf("GET %s: %d %s", path, status, body)
		}
		for _, mode := range []string{"through", "behind"} {
			if status, code, _, _ := call(t, srv.URL, "PUT", path+"?mode="+mode, "", body, nil); status != 204 {
				t.Fatalf("%s: PUT back (%s) the GET's body %s: %d %s", cache, mode, body, status, code)
			}
			drained(cache)
			if got := row(); got != stored {
				t.Errorf("%s: PUT back (%s) changed the row:\n%s\nwas\n%s", cache, mode, got, stored)
			}
			if status, again, _, _ := call(t, srv.URL, "GET", path, "", "", nil); status != 200 || again != body {
				t.Errorf("%s: GET after the PUT (%s) = %d %s, was %s", cache, mode, status, again, body)
			}
		}
	}
	// The same values spelled otherwise (write-behind needs every column
	// the value shows: the GET's body, three of its values respelled).
	_, body, _, _ := call(t, srv.URL, "GET", "/v1/caches/rt/rt:1", "", "", nil)
	var m map[string]json.RawMessage // the other values as they were written
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatal(err)
	}
	m["ts"], m["b"], m["n"] = json.RawMessage(`"2026-01-02T03:04:05+05:30"`), json.RawMessage(`"yes"`), json.RawMessage(`2.5`)
	respelled := "{" // by hand: json.Marshal would compact the json column's text
	for k, v := range m {
		if len(respelled) > 1 {
			respelled += ","
		}
		respelled += strconv.Quote(k) + ":" + string(v)
	}
	respelled += "}"
	for _, mode := range []string{"through", "behind"} {
		if status, code, _, _ := call(t, srv.URL, "PUT", "/v1/caches/rt/rt:1?mode="+mode, "", respelled, nil); status != 204 {
			t.Fatalf("PUT (%s) of a timestamp with an offset and yes: %d %s", mode, status, code)
		}
		drained("rt")
		if got := row(); got != stored {
			t.Errorf("PUT (%s) of the same values spelled otherwise changed the row:\n%s\nwas\n%s", mode, got, stored)
		}
	}
}
