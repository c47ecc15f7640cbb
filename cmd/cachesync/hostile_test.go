package main

// Hostile and careless input through the binary, its config and the HTTP
// API, as a user meets it: a key spelled another way, templates that reach
// other keys, values of the wrong kind, a write while Redis is down.

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv/world"
)

// errorCode is the "code" of a JSON error body, or "" for another body.
func errorCode(body string) string {
	var e struct{ Error struct{ Code string } }
	json.Unmarshal([]byte(body), &e)
	return e.Error.Code
}

// errorMessage is the "message" of a JSON error body.
func errorMessage(body string) string {
	var e struct{ Error struct{ Message string } }
	json.Unmarshal([]byte(body), &e)
	return e.Error.Message
}

// TestKeySpellings (issue 13, 1): for a key column of each type a key can
// have, the key spelled as the change feed writes it is served, and every
// other spelling of the same row (GET, PUT, PUT ?mode=behind) is 400
// bad_key naming the row's key, writes nothing to Redis or the table, so a
// change to the row is never hidden behind a stale second copy; a DELETE
// of such a key (left by an older version) removes it.
func TestKeySpellings(t *testing.T) {
	w := world.New(t, "")
	types := []struct {
		name, typ, canon string
		aliases          []string
	}{
		{"int", "int", "1", []string{"01", "+1", " 1", "1 ", "0001"}},
		{"numeric", "numeric(10,2)", "1.50", []string{"1.5", "1.500", "+1.50", "01.50"}},
		{"text", "text", "two words", nil},
		{"bool", "bool", "t", []string{"true", "yes", "1", "T"}},
		{"uuid", "uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", []string{"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "a0eebc999c0b4ef8bb6d6bb9bd380a11"}},
		{"date", "date", "2026-01-02", []string{"2026-1-2", "20260102", "2026/1/2"}},
		{"timestamptz", "timestamptz", "2026-01-02 03:04:05+00", []string{"2026-01-02T03:04:05Z", "2026-01-02 04:04:05+01", "2026-01-02 03:04:05.000+00"}},
		{"char", "char(4)", "ab  ", []string{"ab", "ab   "}},
	}
	var caches strings.Builder
	for _, ty := range types {
		w.Exec(fmt.Sprintf("CREATE TABLE %s_t (k %s PRIMARY KEY, v text NOT NULL)", ty.name, ty.typ))
		w.Exec(fmt.Sprintf("INSERT INTO %s_t VALUES ($1, 'one')", ty.name), ty.canon)
		fmt.Fprintf(&caches, "  %s:\n    table: public.%s_t\n    key: \"%s:{k}\"\n    value: {format: string, columns: {v: v}}\n    sync: changefeed\n", ty.name, ty.name, ty.name)
	}
	// A JSON cache of the same rows: a GET's body PUT back changes nothing,
	// its key columns spelled as JSON carries them (true, RFC 3339).
	for _, ty := range []string{"bool", "timestamptz", "numeric", "uuid"} {
		fmt.Fprintf(&caches, "  %sj:\n    table: public.%s_t\n    key: \"%sj:{k}\"\n    value: {format: json}\n    sync: changefeed\n", ty, ty, ty)
	}
	w.Exec("CREATE TABLE wb_t (k int PRIMARY KEY, v text NOT NULL)")
	w.Exec("INSERT INTO wb_t VALUES (1, 'one')")
	caches.WriteString("  wb:\n    table: public.wb_t\n    key: \"wb:{k}\"\n    value: {format: string, columns: {v: v}}\n    sync: changefeed\n    writes: behind\n")
	d, base, _ := serve(w, w.YAML(caches.String()), "")
	types = append(types, struct {
		name, typ, canon string
		aliases          []string
	}{"wb", "int", "1", []string{"01", "+1"}})
	for _, ty := range types {
		key := ty.name + ":" + ty.canon
		path := base + "/v1/caches/" + ty.name + "/" + url.PathEscape(key)
		if code, body := httpDo(t, "GET", path, ""); code != 200 || body != "one" {
			t.Fatalf("GET %q = %d %s", key, code, body)
		}
		for _, a := range ty.aliases {
			alias := ty.name + ":" + a
			apath := base + "/v1/caches/" + ty.name + "/" + url.PathEscape(alias)
			reqs := []struct{ method, query, body string }{{"GET", "", ""}, {"PUT", "", `{"v": "two"}`}}
			if ty.name == "wb" {
				reqs = append(reqs, struct{ method, query, body string }{"PUT", "?mode=behind", `{"v": "two"}`})
			}
			for _, req := range reqs {
				code, body := httpDo(t, req.method, apath+req.query, req.body)
				if code != 400 || errorCode(body) != "bad_key" {
					t.Errorf("%s %q%s = %d %s, want 400 bad_key", req.method, alias, req.query, code, body)
				}
				if req.method == "GET" && !strings.Contains(errorMessage(body), fmt.Sprintf("%q", key)) {
					t.Errorf("GET %q: %s does not name the row's key %q", alias, body, key)
				}
			}
			if _, ok := w.Get(alias); ok {
				t.Errorf("%q is in Redis", alias)
			}
			// A DELETE removes such a key (one an older version wrote).
			w.Do(w.RC.B().Set().Key(alias).Value("stale").Build())
			if code, body := httpDo(t, "DELETE", apath, ""); code != 204 {
				t.Errorf("DELETE %q = %d %s, want 204", alias, code, body)
			}
			if _, ok := w.Get(alias); ok {
				t.Errorf("DELETE %q left it in Redis", alias)
			}
		}
		// The row was not written by any of them, and a change reaches
		// the one key.
		var v string
		if err := w.DB.QueryRow(t.Context(), fmt.Sprintf("SELECT v FROM %s_t", ty.name)).Scan(&v); err != nil || v != "one" {
			t.Errorf("%s_t.v = %q, %v after the refused writes", ty.name, v, err)
		}
		if code, body := httpDo(t, "PUT", path, `{"v": "three"}`); code != 204 {
			t.Fatalf("PUT %q = %d %s", key, code, body)
		}
		if code, body := httpDo(t, "GET", path, ""); code != 200 || body != "three" {
			t.Errorf("GET %q after its PUT = %d %s", key, code, body)
		}
	}
	for _, ty := range types[:len(types)-1] {
		name := ty.name + "j"
		if !strings.Contains(caches.String(), "  "+name+":") {
			continue
		}
		path := base + "/v1/caches/" + name + "/" + url.PathEscape(name+":"+ty.canon)
		code, body := httpDo(t, "GET", path, "")
		if code != 200 {
			t.Fatalf("GET %s = %d %s", path, code, body)
		}
		if code, out := httpDo(t, "PUT", path, body); code != 204 {
			t.Errorf("PUT %s back to %s = %d %s, want 204", body, name, code, out)
		}
	}
	// NUL, invalid UTF-8 and out of range: no value of the column, 400.
	for _, p := range []string{"text/text:a%00b", "text/text:%FF", "int/int:99999999999", "int/int:one", "uuid/uuid:xyz", "date/date:2026-02-30", "date/date:Jan%202%202026"} {
		if code, body := httpDo(t, "GET", base+"/v1/caches/"+p, ""); code != 400 || errorCode(body) != "bad_key" {
			t.Errorf("GET %s = %d %s, want 400 bad_key", p, code, body)
		}
	}
	d.Stop()
}

// TestKeyspaceRefused (issue 13, 2): templates that can reach keys that
// are not their cache's are refused at start with the reason, naming the
// caches; cachesync's own keys cannot be named through the API; and the
// seed's bare-name cache (no change feed, refreshed on expiry) works and
// touches nothing of cachesync's.
func TestKeyspaceRefused(t *testing.T) {
	w := world.New(t, `CREATE TABLE kv (k text PRIMARY KEY, v text NOT NULL);
		CREATE TABLE users (name text PRIMARY KEY, v text);
		CREATE TABLE orders (name text PRIMARY KEY, n int);
		CREATE TABLE nums (x numeric PRIMARY KEY, v text);
		CREATE TABLE pairs (x int, y int, v text, PRIMARY KEY (x, y));
		INSERT INTO kv VALUES ('apple', '1.99')`)
	_, otherURL := world.Postgres(t).Database(t, w.Name+"other", "CREATE TABLE users (name text PRIMARY KEY, v text)")
	head := w.YAML("")
	twoSources := fmt.Sprintf("name: %s\nredis: {url: %q}\nsources:\n  db: {url: %q}\n  other: {url: %q}\ncaches:\n", w.Name, w.Redis.URL(), w.DBURL, otherURL)
	refused := []struct{ caches, want string }{
		{"  kv: {table: public.kv, key: \"{k}\", sync: changefeed}\n",
			`caches.kv.key: template {k} can produce keys that are not this cache's own, such as "cachesync:`},
		{"  kv: {table: public.kv, key: \"cachesync:{k}\", sync: none}\n", `keys beginning "cachesync:" are cachesync's own`},
		{"  users: {table: public.users, key: \"user:{name}\"}\n  orders: {table: public.orders, key: \"user:{name}:orders\"}\n",
			`caches orders (user:{name}:orders) and users (user:{name}) can both produce the key "user:`},
		{"  kv: {table: public.kv, key: \"{k}\", sync: none}\n  users: {table: public.users, key: \"user:{name}\"}\n",
			`caches kv ({k}) and users (user:{name}) can both produce the key`},
		// A numeric without a scale has many spellings: its keys could be anything.
		{"  nums: {table: public.nums, key: \"n:{x}\"}\n  pairs: {table: public.pairs, key: \"n:{x}:{y}\"}\n",
			`caches nums (n:{x}) and pairs (n:{x}:{y}) can both produce the key "n:`},
		// Caches of two sources share one Redis: refused before any feed starts.
		{"  users: {source: db, table: public.users, key: \"user:{name}\"}\n  others: {source: other, table: public.users, key: \"user:{name}\"}\n",
			`caches others (user:{name}) and users (user:{name}) can both produce the key "user:`},
	}
	for _, r := range refused {
		h := head
		if strings.Contains(r.caches, "source: other") {
			h = twoSources
		}
		cfg := w.WriteYAML(h + r.caches)
		for _, cmd := range []string{"run", "check"} {
			code, _, stderr := world.CLI(t, nil, cmd, "--config", cfg)
			if code != 1 || !strings.Contains(stderr, r.want) {
				t.Errorf("cachesync %s with\n%s= %d, stderr %q; want 1 and %q", cmd, r.caches, code, stderr, r.want)
			}
		}
	}

	// The seed: items by their bare name, refreshed when they expire.
	seed := head + "  kv:\n    table: public.kv\n    key: \"{k}\"\n    value: {format: string, columns: {v: v}}\n    sync: none\n    ttl: 1h\n    refresh: on-expiry\n"
	d, base, _ := serve(w, seed, "")
	state := "cachesync:state:" + w.Name
	for _, req := range []struct{ method, path, body string }{
		{"PUT", state, `{"v": "pwned"}`},
		{"GET", state, ""},
		{"DELETE", state, ""},
		{"GET", "cachesync:lease:apple", ""},
	} {
		if code, body := httpDo(t, req.method, base+"/v1/caches/kv/"+req.path, req.body); code != 400 || errorCode(body) != "bad_key" {
			t.Errorf("%s %s = %d %s, want 400 bad_key", req.method, req.path, code, body)
		}
	}
	if n := w.Rows("SELECT k, v FROM kv WHERE k LIKE 'cachesync:%'"); len(n) != 0 {
		t.Errorf("%d rows of kv were written under cachesync's keys", len(n))
	}
	// SET apple 1, EXPIRE apple: the refresh brings back the price.
	w.Do(w.RC.B().Set().Key("apple").Value("1").Px(300 * time.Millisecond).Build())
	d.WaitFor("apple refreshed to 1.99", func() bool { v, _ := w.Get("apple"); return v == "1.99" })
	if code, body := httpDo(t, "GET", base+"/v1/caches/kv/apple", ""); code != 200 || body != "1.99" {
		t.Errorf("GET apple = %d %s", code, body)
	}
	d.Stop()
}

// TestBadValues (issue 13, 4): a value of the wrong kind, or one
// PostgreSQL refuses as data, is the caller's mistake (400 or 422, saying
// which column), never "unavailable" (503), which clients retry forever.
func TestBadValues(t *testing.T) {
	w := world.New(t, `CREATE TABLE p (id text PRIMARY KEY, name text, price numeric(6,2) CHECK (price >= 0), qty int, ok bool,
		meta jsonb, tags text[], day date, raw bytea);
		INSERT INTO p (id, name, price) VALUES ('a1', 'apple', 1)`)
	d, base, _ := serve(w, w.YAML("  p: {table: public.p, key: \"p:{id}\", sync: changefeed}\n"), "")
	tests := []struct {
		body string
		code int
		err  string
	}{
		{`{"name": true}`, 400, "bad_row"},
		{`{"name": 5}`, 400, "bad_row"},
		{`{"name": {"a": 1}}`, 400, "bad_row"},
		{`{"name": [1]}`, 400, "bad_row"},
		{`{"name": "a\u0000b"}`, 400, "bad_row"},
		{`{"price": true}`, 400, "bad_row"},
		{`{"price": {}}`, 400, "bad_row"},
		{`{"price": "abc"}`, 422, "row_refused"},
		{`{"price": 1e10}`, 422, "row_refused"},
		{`{"price": -1}`, 422, "row_refused"},
		{`{"qty": 99999999999}`, 422, "row_refused"},
		{`{"qty": 1.5}`, 422, "row_refused"},
		{`{"qty": "x"}`, 422, "row_refused"},
		{`{"ok": 1}`, 400, "bad_row"},
		{`{"ok": "maybe"}`, 422, "row_refused"},
		{`{"day": 20260102}`, 400, "bad_row"},
		{`{"day": "2026-02-30"}`, 422, "row_refused"},
		{`{"tags": "x"}`, 422, "row_refused"},
		{`{"tags": {"a": 1}}`, 400, "bad_row"},
		{`{"raw": "!!"}`, 400, "bad_row"},
		{`{"nope": 1}`, 400, "bad_row"},
	}
	for _, tt := range tests {
		code, body := httpDo(t, "PUT", base+"/v1/caches/p/p:a1", tt.body)
		if code != tt.code || errorCode(body) != tt.err {
			t.Errorf("PUT %s = %d %s, want %d %s", tt.body, code, body, tt.code, tt.err)
		}
	}
	// A JSON string for a jsonb column stays a string; any other value is itself.
	for _, tt := range []struct{ meta, want string }{{`"5"`, `"5"`}, {`5`, `5`}, {`{"a": [1]}`, `{"a": [1]}`}} {
		if code, body := httpDo(t, "PUT", base+"/v1/caches/p/p:a1", `{"meta": `+tt.meta+`}`); code != 204 {
			t.Fatalf("PUT meta %s = %d %s", tt.meta, code, body)
		}
		var got string
		if err := w.DB.QueryRow(t.Context(), "SELECT meta::text FROM p WHERE id = 'a1'").Scan(&got); err != nil || got != tt.want {
			t.Errorf("PUT meta %s stored %s, %v; want %s", tt.meta, got, err, tt.want)
		}
	}
	d.Stop()
}

// TestPutWhileRedisDown (issue 13, 5): a PUT whose row committed while
// Redis cannot be reached answers 202 not_applied (the row is in the
// table, Redis gets it when the feed runs again), never 500.
func TestPutWhileRedisDown(t *testing.T) {
	w := world.New(t, itemsSchema(3))
	d, base, _ := serve(w, w.YAML(itemsCaches), "")
	if err := w.Redis.Stop(); err != nil {
		t.Fatal(err)
	}
	code, body := httpDo(t, "PUT", base+"/v1/caches/items/item:2", `{"val": 77, "note": "while down"}`)
	var val int64
	if err := w.DB.QueryRow(t.Context(), "SELECT val FROM items WHERE id = 2").Scan(&val); err != nil {
		t.Fatal(err)
	}
	switch {
	case code == 202 && errorCode(body) == "not_applied" && val == 77:
	case code == 503 && val != 77:
	default:
		t.Fatalf("PUT with Redis down = %d %s, and the row's val is %d: want 202 not_applied with the row written, or 503 without", code, body, val)
	}
	if err := w.Redis.Start(); err != nil {
		t.Fatal(err)
	}
	d.WaitFor("GET item:2 with val 77", func() bool {
		code, body := httpDo(t, "GET", base+"/v1/caches/items/item:2", "")
		return code == 200 && strings.Contains(body, `"val":77`)
	})
	d.Stop()
}

// TestRefreshByType (issue 13, 2): "user:{id}" and "user:{id}:{n}" over
// integers coexist, and an expired key is refreshed by its own cache: the
// other's template parses it too, but not its types.
func TestRefreshByType(t *testing.T) {
	w := world.New(t, `CREATE TABLE a (id int PRIMARY KEY, v text NOT NULL); INSERT INTO a VALUES (1, 'a1');
		CREATE TABLE bb (id int, n int, v text NOT NULL, PRIMARY KEY (id, n)); INSERT INTO bb VALUES (1, 2, 'b12')`)
	d, _, _ := serve(w, w.YAML(`  a: {table: public.a, key: "user:{id}", value: {format: string, columns: {v: v}}, sync: none, ttl: 1h, refresh: on-expiry}
  b: {table: public.bb, key: "user:{id}:{n}", value: {format: string, columns: {v: v}}, sync: none, ttl: 1h, refresh: on-expiry}
`), "")
	for _, k := range []string{"user:1:2", "user:1"} {
		w.Do(w.RC.B().Set().Key(k).Value("old").Px(200 * time.Millisecond).Build())
	}
	for k, v := range map[string]string{"user:1:2": "b12", "user:1": "a1"} {
		d.WaitFor(fmt.Sprintf("%s refreshed to %q", k, v), func() bool { got, _ := w.Get(k); return got == v })
	}
	d.Stop()
}
