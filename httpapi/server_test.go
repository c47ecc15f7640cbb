package httpapi_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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

func TestAPI(t *testing.T) {
	ctx := context.Background()
	pg := testenv.StartPostgres(t)
	rds := testenv.StartRedis(t)
	db, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	if _, err := db.Exec(ctx, `CREATE TABLE inventory (item text PRIMARY KEY, price numeric(6,2), note text);
		INSERT INTO inventory VALUES ('apple', 1.99, 'crisp')`); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(strings.NewReader(`name: api
redis: {url: "` + rds.URL() + `"}
sources: {db: {url: "` + pg.URL("postgres") + `"}}
caches:
  prices: {table: inventory, key: "price:{item}", value: {columns: [item, price]}, sync: none}
  notes: {table: inventory, key: "note:{item}", value: {format: string, column: note}, sync: none}
http:
  max_body: 1024
  keys:
    - {name: app, key: "` + rwKey + `", scopes: [read, write]}
    - {name: reporting, key: "` + roKey + `", scopes: [read]}
`))
	if err != nil {
		t.Fatal(err)
	}
	api, err := cachesync.Open(ctx, cfg, cachesync.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
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
