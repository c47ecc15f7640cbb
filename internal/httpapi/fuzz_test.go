// Fuzz tests of what a careless or hostile client sends: a PUT's body and
// a key in the path. go test runs their seeds; to fuzz for longer, one
// target at a time:
//
//	go test -run='^$' -fuzz='^FuzzReadRow$' -fuzztime=2m ./httpapi
//	go test -run='^$' -fuzz='^FuzzKeyPath$' -fuzztime=2m ./httpapi
//
// What the fuzzer finds is saved under httpapi/testdata/fuzz and replayed
// by go test from then on.
package httpapi_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/httpapi"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// fuzzMax is the body limit of FuzzReadRow: room for JSON nested deeper
// than encoding/json goes (10000).
const fuzzMax = 1 << 15

// FuzzReadRow: a body is either a row, or an answer of 400 bad_json or 413
// body_too_large and no row; never a panic. A row is from a body within
// the limit that is UTF-8 and one JSON object, with as many fields as the
// object has names, each the JSON it was; a body refused within the limit
// that is one JSON object is refused for a name twice.
func FuzzReadRow(f *testing.F) {
	for _, seed := range []string{
		`{"v":"a"}`, `{"v":"a","w":[1,{"x":null}]}`, `{}`, ` {"v": 1.50} `,
		`{"v":"a","v":"b"}`, `{"v":{"x":1,"x":2}}`, `{"v":[{"x":1},{"x":2}]}`, `{"v":{"x":{"y":1}},"w":{"x":{"y":1}}}`,
		``, ` `, `null`, `[1,2]`, `"v"`, `1`, `{} {}`, `{}}`, `{}]`, `{} x`, `{"v":`, `{"v" 1}`, `{'v':1}`,
		"{\"v\":\"\xff\"}", "{\"\xfe\":1}", "{\"v\":\"a\x00b\"}", `{"v":"a\u0000b"}`, `{"\u0000":1}`, `{"v":"\ud800"}`,
		`{"v":1e999}`, `{"v":-0}`, `{"v":01}`,
		`{"v":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`,
		`{"v":` + strings.Repeat("[", 9990) + strings.Repeat("]", 9990) + `}`,
		`{"v":"` + strings.Repeat("x", fuzzMax) + `"}`,
		`{}` + strings.Repeat(" ", fuzzMax),
	} {
		f.Add([]byte(seed))
	}
	s := httpapi.New(nil, config.HTTP{MaxBody: fuzzMax}, world.Logger())
	f.Fuzz(func(t *testing.T, body []byte) {
		w := httptest.NewRecorder()
		row, err := httpapi.ReadRow(s, w, httptest.NewRequest("PUT", "/v1/caches/c/k", bytes.NewReader(body)))
		if err != nil {
			var e struct {
				Error struct{ Code, Message string }
			}
			if json.Unmarshal(w.Body.Bytes(), &e) != nil || e.Error.Message == "" {
				t.Fatalf("refused with %d %q, not a JSON error", w.Code, w.Body)
			}
			switch {
			case len(body) > fuzzMax && (w.Code != 413 || e.Error.Code != "body_too_large"):
				t.Fatalf("%d bytes over a limit of %d: %d %s", len(body), fuzzMax, w.Code, w.Body)
			case len(body) <= fuzzMax && (w.Code != 400 || e.Error.Code != "bad_json"):
				t.Fatalf("refused with %d %s, want 400 bad_json", w.Code, w.Body)
			case len(body) <= fuzzMax && utf8.Valid(body) && json.Valid(body) && bytes.HasPrefix(bytes.TrimSpace(body), []byte("{")) &&
				!strings.Contains(e.Error.Message, "twice"):
				t.Fatalf("one valid JSON object refused: %s", w.Body)
			}
			return
		}
		switch {
		case w.Code != 200 || w.Body.Len() > 0:
			t.Fatalf("a row, and an answer %d %s", w.Code, w.Body)
		case len(body) > fuzzMax:
			t.Fatalf("a row from %d bytes, over the limit of %d", len(body), fuzzMax)
		case !utf8.Valid(body):
			t.Fatalf("a row from a body that is not UTF-8")
		case !json.Valid(body):
			t.Fatalf("a row from a body that is not one JSON value")
		}
		if n := names(t, body); n != len(row) {
			t.Fatalf("%d fields from an object of %d names", len(row), n)
		}
		for k, v := range row {
			if raw, ok := v.(json.RawMessage); !ok || !json.Valid(raw) {
				t.Fatalf("field %q is %T %q, not the JSON it was", k, v, v)
			}
		}
		again, err := json.Marshal(row)
		if err != nil {
			t.Fatal(err)
		}
		if was, is := decode(t, body), decode(t, again); !reflect.DeepEqual(was, is) {
			t.Fatalf("the row re-encodes as %s, not as the body %s", again, body)
		}
	})
}

// names counts the names of the object that is the JSON text b.
func names(t *testing.T, b []byte) int {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("a row from a body that is not an object: %v %v", tok, err)
	}
	n := 0
	for ; dec.More(); n++ {
		var v json.RawMessage
		if _, err := dec.Token(); err != nil {
			t.Fatal(err)
		}
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// decode decodes the JSON text b, numbers as written.
func decode(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return v
}

// FuzzKeyPath: any key a client puts in the path gets an answer of the API
// (a JSON error with its code, or a redirect to the cleaned path), never a
// 5xx; a key written by a PUT is read back by a GET, and a row's key
// column is the key as sent.
func FuzzKeyPath(f *testing.F) {
	for _, seed := range []string{
		"apple", "", " ", "a b", "a/b", "a%2Fb", "a//b", "/", ".", "..", "a/../b", "./a", "a/.",
		"a?b", "a#b", "a;b", "%", "%zz", "%00", "a\x00b", "\xff", "\xc3", "ü", "\u2028", "\t", "{item}", "w:x",
		strings.Repeat("k", 4000),
	} {
		f.Add(seed)
	}
	w := newBed(world.New(f, `CREATE TABLE words (w text PRIMARY KEY, n int);
		CREATE TABLE nums (id int PRIMARY KEY, w text);
		CREATE TYPE mood AS ENUM ('calm', 'cross'); CREATE TABLE moods (m mood PRIMARY KEY, w text);
		INSERT INTO words VALUES ('apple', 1); INSERT INTO nums VALUES (1, 'apple'); INSERT INTO moods VALUES ('calm', 'apple')`), `  words: {table: words, key: "w:{w}", sync: none}
  nums: {table: nums, key: "n:{id}", sync: none}
  moods: {table: moods, key: "m:{m}", sync: none}
`)
	h := httpapi.New(w.api, w.cfg.HTTP, world.Logger()).Handler()
	serve := func(t *testing.T, method, target, body string) (int, string, string) {
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(method + " " + target + " HTTP/1.1\r\nHost: cachesync\r\n" +
			"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)))
		if err != nil {
			return 0, "", "" // not a request a server takes
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var e struct {
			Error struct{ Code, Message string }
		}
		switch {
		case rec.Code >= 500:
			t.Fatalf("%s %q: %d %s", method, target, rec.Code, rec.Body)
		case rec.Code >= 300 && rec.Code < 400:
			if rec.Header().Get("Location") == "" {
				t.Fatalf("%s %q: %d without a Location", method, target, rec.Code)
			}
		case rec.Code >= 400:
			if json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Error.Code == "" || e.Error.Message == "" {
				t.Fatalf("%s %q: %d %q, not a JSON error", method, target, rec.Code, rec.Body)
			}
		}
		return rec.Code, e.Error.Code, rec.Body.String()
	}
	f.Fuzz(func(t *testing.T, key string) {
		for _, path := range []string{"/v1/caches/words/", "/v1/caches/nums/", "/v1/caches/words/w:", "/v1/caches/nums/n:", "/v1/caches/moods/m:"} {
			serve(t, "GET", path+key, "")
		}
		target := "/v1/caches/words/w:" + url.PathEscape(key)
		status, code, _ := serve(t, "PUT", target, `{"n": 7}`)
		if status == 400 && code == "bad_key" || status == 422 && code == "row_refused" {
			return // PostgreSQL takes no such text (a NUL, not UTF-8)
		}
		if status != 204 {
			t.Fatalf("PUT %q: %d %s", target, status, code)
		}
		status, _, body := serve(t, "GET", target, "")
		var row struct{ W string }
		if status != 200 || json.Unmarshal([]byte(body), &row) != nil || row.W != key {
			t.Fatalf("GET %q after its PUT: %d %s, want the row of %q", target, status, body, key)
		}
	})
}
