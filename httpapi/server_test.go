package httpapi_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/httpapi"
	"github.com/cachesync/cachesync/internal/testenv"
)

const (
	rwKey = "rw-key-0123456789abcdef"
	roKey = "ro-key-0123456789abcdef"
)

// world is a test's PostgreSQL database, Redis and API client.
type world struct {
	db  *pgx.Conn
	rds *testenv.Redis
	cfg *config.Config
	api *cachesync.Client
}

// newWorld starts private servers, runs schema, and opens a client of a
// config named name, whose caches (and http) sections are rest.
func newWorld(t *testing.T, name, schema, rest string, opts cachesync.Options) *world {
	t.Helper()
	ctx := context.Background()
	pg := testenv.StartPostgres(t)
	w := &world{rds: testenv.StartRedis(t)}
	db, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(ctx) })
	w.db = db
	if _, err := db.Exec(ctx, schema); err != nil {
		t.Fatal(err)
	}
	text := "name: " + name + "\nredis: {url: \"" + w.rds.URL() + "\"}\nsources: {db: {url: \"" + pg.URL("postgres") + "\"}}\n" + rest
	if w.cfg, err = config.Load(strings.NewReader(text)); err != nil {
		t.Fatal(err)
	}
	if w.api, err = cachesync.Open(ctx, w.cfg, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.api.Close)
	return w
}

func TestAPI(t *testing.T) {
	w := newWorld(t, "api", `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2), note text);
		INSERT INTO inventory VALUES ('apple', 1.99, 'crisp')`, `caches:
  prices: {table: inventory, key: "price:{item}", value: {columns: [item, price]}, sync: none}
  notes: {table: inventory, key: "note:{item}", value: {format: string, column: note}, sync: none}
http:
  max_body: 1024
  keys:
    - {name: app, key: "`+rwKey+`", scopes: [read, write]}
    - {name: reporting, key: "`+roKey+`", scopes: [read]}
`, cachesync.Options{})
	api, cfg, rds := w.api, w.cfg, w.rds
	srv := httptest.NewServer(httpapi.New(api, cfg.HTTP, slog.New(slog.NewTextHandler(io.Discard, nil))).Handler())
	defer srv.Close()

	tests := []struct {
		name, method, path, key, body string
		header                        map[string]string
		status                        int
		code                          string // error code, or the exact body of a success
	}{
		{"no key", "GET", "/v1/caches/prices/price:apple", "", "", nil, 401, "unauthorized"},
		{"wrong key", "GET", "/v1/caches/prices/price:apple", "nope-0123456789abcdef", "", nil, 401, "unauthorized"},
		{"read", "GET", "/v1/caches/prices/price:apple", roKey, "", nil, 200, `{"item":"apple","price":1.99}`},
		{"X-API-Key", "GET", "/v1/caches/notes/note:apple", "", "", map[string]string{"X-API-Key": roKey}, 200, `crisp`},
		{"write needs scope", "PUT", "/v1/caches/prices/price:apple", roKey, `{"price": 2}`, nil, 403, "forbidden"},
		{"delete needs scope", "DELETE", "/v1/caches/prices/price:apple", roKey, "", nil, 403, "forbidden"},
		{"oversize body", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"note": "` + strings.Repeat("x", 2000) + `"}`, nil, 413, "body_too_large"},
		{"malformed JSON", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"price": `, nil, 400, "bad_json"},
		{"not an object", "PUT", "/v1/caches/prices/price:apple", rwKey, `[1, 2]`, nil, 400, "bad_json"},
		{"two values", "PUT", "/v1/caches/prices/price:apple", rwKey, `{} {}`, nil, 400, "bad_json"},
		{"unknown cache", "GET", "/v1/caches/nosuch/price:apple", rwKey, "", nil, 404, "unknown_cache"},
		{"unknown cache put", "PUT", "/v1/caches/nosuch/price:apple", rwKey, `{}`, nil, 404, "unknown_cache"},
		{"bad key", "GET", "/v1/caches/prices/cost:apple", rwKey, "", nil, 400, "bad_key"},
		{"bad key put", "PUT", "/v1/caches/prices/cost:apple", rwKey, `{}`, nil, 400, "bad_key"},
		{"not found", "GET", "/v1/caches/prices/price:kiwi", rwKey, "", nil, 404, "not_found"},
		{"unknown column", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"colour": "red"}`, nil, 400, "bad_row"},
		{"key mismatch", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"item": "pear"}`, nil, 400, "key_mismatch"},
		{"refused row", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"price": "cheap"}`, nil, 422, "row_refused"},
		{"behind needs writes: behind", "PUT", "/v1/caches/prices/price:apple?mode=behind", rwKey, `{"price": 2}`, nil, 400, "not_behind"},
		{"bad mode", "PUT", "/v1/caches/prices/price:apple?mode=sideways", rwKey, `{"price": 2}`, nil, 400, "bad_mode"},
		{"write through", "PUT", "/v1/caches/prices/price:apple", rwKey, `{"price": 2.49}`, nil, 204, ""},
		{"reads the write", "GET", "/v1/caches/prices/price:apple", rwKey, "", nil, 200, `{"item":"apple","price":2.49}`},
		{"insert", "PUT", "/v1/caches/prices/price:kiwi", rwKey, `{"price": 0.69, "note": "new"}`, nil, 204, ""},
		{"reads the insert", "GET", "/v1/caches/notes/note:kiwi", rwKey, "", nil, 200, `new`},
		{"invalidate", "DELETE", "/v1/caches/prices/price:apple", rwKey, "", nil, 204, ""},
		{"no route", "GET", "/v2/whatever", rwKey, "", nil, 404, "no_route"},
		{"healthz", "GET", "/healthz", "", "", nil, 200, "{\"status\":\"ok\"}\n"},
		{"readyz", "GET", "/readyz", "", "", nil, 200, "{\"status\":\"ready\"}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, code, _ := call(t, srv.URL, tt.method, tt.path, tt.key, tt.body, tt.header)
			if status != tt.status || code != tt.code {
				t.Fatalf("%s %s: %d %q, want %d %q", tt.method, tt.path, status, code, tt.status, tt.code)
			}
		})
	}

	// Redis down: reads answer 503 with Retry-After, and so does /readyz.
	if err := rds.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/v1/caches/prices/price:pear", "/readyz"} {
		status, code, h := call(t, srv.URL, "GET", path, rwKey, "", nil)
		if status != 503 || code != "unavailable" || h.Get("Retry-After") == "" {
			t.Fatalf("GET %s with Redis down: %d %q, Retry-After %q; want 503 unavailable with Retry-After", path, status, code, h.Get("Retry-After"))
		}
	}
}

// call makes a request and returns the status and the error code (or, for a
// success, the body).
func call(t *testing.T, base, method, path, key, body string, header map[string]string) (int, string, http.Header) {
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
		return resp.StatusCode, string(b), resp.Header
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
	return resp.StatusCode, e.Error.Code, resp.Header
}

// TestShutdownAnswersWaitingPuts: a PUT that committed and waits for a
// change feed that is not running is answered at once when the server
// shuts down: 202 not_applied, not after its whole wait.
func TestShutdownAnswersWaitingPuts(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t, "down", `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2))`, `caches:
  prices: {table: inventory, key: "price:{item}", value: {format: string, column: price}}
`, cachesync.Options{WriteWait: time.Hour}) // no feed runs: Put would wait an hour
	api, cfg, db := w.api, w.cfg, w.db
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srvCtx, shutdown := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() {
		served <- httpapi.New(api, cfg.HTTP, slog.New(slog.NewTextHandler(io.Discard, nil))).Serve(srvCtx, ln)
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
	for { // the PUT committed: it waits for the feed now
		var n int
		if err := db.QueryRow(ctx, `SELECT count(*) FROM inventory`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
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
	w := newWorld(t, "rt", `CREATE TABLE rt (id int PRIMARY KEY, n numeric(6,2), f float8, b bool, t text,
			ts timestamptz, tsn timestamp, d date, u uuid, by bytea, ia int[], ta text[], j jsonb, js json, iv interval);
		INSERT INTO rt VALUES (1, 2.5, 1.5, true, 'say "hi"', '2026-01-02 03:04:05+05:30', '2026-01-02 03:04:05.123',
			'2026-01-02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x0102ff', '{1,2,NULL}', '{"a b","c,d"}',
			'{"x": [1, "y"]}', '{"k":  1}', '1 day 02:00:00')`, `caches:
  rt: {table: rt, key: "rt:{id}", sync: none, writes: behind}
  rh: {table: rt, key: "rh:{id}", value: {format: hash, columns: [id, n, f, b, t, ts, tsn, d, u, ia, ta, j, js, iv]}, sync: none, writes: behind}
`, cachesync.Options{})
	api, cfg, db, rds := w.api, w.cfg, w.db, w.rds
	testenv.Go(t, api.Drain)
	srv := httptest.NewServer(httpapi.New(api, cfg.HTTP, slog.New(slog.NewTextHandler(io.Discard, nil))).Handler())
	defer srv.Close()
	row := func() string {
		var s string
		if err := db.QueryRow(ctx, `SELECT rt::text FROM rt WHERE id = 1`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	rc := rds.Client(t)
	drained := func(cache string) {
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
			if q, ok := cachesync.Queues(ctx, rc, cfg)[cache]; ok && q.Pending == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the queue never drained", cache)
			}
		}
	}
	stored := row()
	for _, cache := range []string{"rt", "rh"} {
		path := "/v1/caches/" + cache + "/" + cache + ":1"
		status, body, _ := call(t, srv.URL, "GET", path, "", "", nil)
		if status != 200 {
			t.Fatalf("GET %s: %d %s", path, status, body)
		}
		for _, mode := range []string{"through", "behind"} {
			if status, code, _ := call(t, srv.URL, "PUT", path+"?mode="+mode, "", body, nil); status != 204 {
				t.Fatalf("%s: PUT back (%s) the GET's body %s: %d %s", cache, mode, body, status, code)
			}
			drained(cache)
			if got := row(); got != stored {
				t.Errorf("%s: PUT back (%s) changed the row:\n%s\nwas\n%s", cache, mode, got, stored)
			}
			if status, again, _ := call(t, srv.URL, "GET", path, "", "", nil); status != 200 || again != body {
				t.Errorf("%s: GET after the PUT (%s) = %d %s, was %s", cache, mode, status, again, body)
			}
		}
	}
	// The same values spelled otherwise (write-behind needs every column
	// the value shows: the GET's body, three of its values respelled).
	_, body, _ := call(t, srv.URL, "GET", "/v1/caches/rt/rt:1", "", "", nil)
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
		if status, code, _ := call(t, srv.URL, "PUT", "/v1/caches/rt/rt:1?mode="+mode, "", respelled, nil); status != 204 {
			t.Fatalf("PUT (%s) of a timestamp with an offset and yes: %d %s", mode, status, code)
		}
		drained("rt")
		if got := row(); got != stored {
			t.Errorf("PUT (%s) of the same values spelled otherwise changed the row:\n%s\nwas\n%s", mode, got, stored)
		}
	}
}
