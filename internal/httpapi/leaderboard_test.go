package httpapi_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv/world"
	"github.com/cachesync/cachesync/leaderboard"
)

type entry struct {
	Rank   int64   `json:"rank"`
	Member string  `json:"member"`
	Score  float64 `json:"score"`
}

func TestLeaderboardsAPI(t *testing.T) {
	world.EachTopology(t, func(t *testing.T, topology string) {
		w, base := newRecipes(t, topology)
		// send makes a request that must answer 200 and decodes its body
		// into v.
		send := func(method, path, key, body string, v any) {
			t.Helper()
			status, got, _, msg := call(t, base, method, path, key, body, nil)
			if status != 200 {
				t.Fatalf("%s %s %s: %d %s %s, want 200", method, path, body, status, got, msg)
			}
			if err := json.Unmarshal([]byte(got), v); err != nil {
				t.Fatalf("%s %s: %q: %v", method, path, got, err)
			}
		}
		entries := func(path, key string, want ...entry) {
			t.Helper()
			var got struct{ Entries []entry }
			send("GET", path, key, "", &got)
			if !reflect.DeepEqual(got.Entries, want) && (len(want) > 0 || len(got.Entries) > 0) {
				t.Fatalf("GET %s: %+v, want %+v", path, got.Entries, want)
			}
		}
		// The board's name has a slash, braces and a space, all escaped.
		const board = "/v1/leaderboards/chess%2Fblitz%20%7B1%7D"
		for _, s := range []struct{ member, body string }{
			{"zed", `{"score": 100}`}, {"amy", `{"score": 100}`}, {"bo", `{"add": 40}`}, {"bo", `{"add": 2.5}`}, {"cy", `{"score": -3}`},
		} {
			var got map[string]any
			send("POST", board+"/"+s.member, rwKey, s.body, &got)
			if got["member"] != s.member {
				t.Fatalf("POST %s: %v", s.body, got)
			}
		}
		var last map[string]any
		send("POST", board+"/bo", rwKey, `{"add": -0.5}`, &last)
		if last["score"] != 42.0 {
			t.Fatalf("the score after adds of 40, 2.5, -0.5: %v, want 42", last)
		}
		all := []entry{{1, "zed", 100}, {2, "amy", 100}, {3, "bo", 42}, {4, "cy", -3}} // zed reached 100 first
		entries(board, roKey, all...)
		entries(board+"?top=2", roKey, all[:2]...)
		entries(board+"?top=2&offset=2", roKey, all[2:]...)
		entries(board+"?top=2&offset=4", roKey)
		entries(board+"/zed/around?n=1", roKey, all[:2]...) // the top: nothing above
		entries(board+"/bo/around?n=1", roKey, all[1:]...)
		entries(board+"/cy/around", roKey, all...) // n defaults to 5
		var e entry
		send("GET", board+"/amy", roKey, "", &e)
		if e != all[1] {
			t.Fatalf("GET amy: %+v, want %+v", e, all[1])
		}

		// The period boards: the current day's and week's, with an expiry.
		for _, period := range []leaderboard.Period{leaderboard.Daily, leaderboard.Weekly} {
			name := map[leaderboard.Period]string{leaderboard.Daily: "daily", leaderboard.Weekly: "weekly"}[period]
			before := time.Now()
			send("POST", "/v1/leaderboards/chess/amy?period="+name, rwKey, `{"add": 5}`, &last)
			after := time.Now()
			entries("/v1/leaderboards/chess?period="+name, roKey, entry{1, "amy", 5})
			l, err := leaderboard.New(w.RC, boardPrefix, leaderboard.Options{})
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, b := range []*leaderboard.Board{l.Board("chess", period, before), l.Board("chess", period, after)} { // a new day may begin between
				for _, k := range b.Keys() {
					at, _ := w.Do(w.RC.B().Pexpiretime().Key(k).Build()).AsInt64()
					if at != -2 {
						found = true
					}
					if at != -2 && at != b.Expires().UnixMilli() {
						t.Errorf("%s: %s expires at %d, want %d", name, k, at, b.Expires().UnixMilli())
					}
				}
			}
			if !found {
				t.Errorf("%s: no key of the board", name)
			}
		}
		entries("/v1/leaderboards/chess", roKey) // the all-time board has none of it

		long := strings.Repeat("x", 257)
		for _, tt := range []struct {
			name, method, path, key, body string
			status                        int
			code                          string
		}{
			{"a member not on the board", "GET", board + "/nobody", roKey, "", 404, "not_found"},
			{"around a member not on the board", "GET", board + "/nobody/around", roKey, "", 404, "not_found"},
			{"a read key cannot write", "POST", board + "/amy", roKey, `{"add": 1}`, 403, "forbidden"},
			{"no key", "GET", board, "", "", 401, "unauthorized"},
			{"add and score", "POST", board + "/amy", rwKey, `{"add": 1, "score": 2}`, 400, "bad_json"},
			{"neither", "POST", board + "/amy", rwKey, `{}`, 400, "bad_json"},
			{"not a number", "POST", board + "/amy", rwKey, `{"add": "1"}`, 400, "bad_json"},
			{"beyond a float64", "POST", board + "/amy", rwKey, `{"score": 1e400}`, 400, "bad_json"},
			{"an unknown field", "POST", board + "/amy", rwKey, `{"add": 1, "by": 2}`, 400, "bad_json"},
			{"an add that overflows", "POST", board + "/big", rwKey, `{"score": 1.7e308}`, 200, ""},
			{"an add that overflows", "POST", board + "/big", rwKey, `{"add": 1.7e308}`, 422, "overflow"},
			{"a period unknown", "GET", board + "?period=monthly", roKey, "", 400, "bad_period"},
			{"top 0", "GET", board + "?top=0", roKey, "", 400, "bad_param"},
			{"top too many", "GET", board + "?top=101", roKey, "", 400, "bad_param"},
			{"top not a number", "GET", board + "?top=ten", roKey, "", 400, "bad_param"},
			{"offset negative", "GET", board + "?offset=-1", roKey, "", 400, "bad_param"},
			{"offset too far", "GET", board + "?offset=1000001", roKey, "", 400, "bad_param"},
			{"around too many", "GET", board + "/amy/around?n=51", roKey, "", 400, "bad_param"},
			{"around negative", "GET", board + "/amy/around?n=-1", roKey, "", 400, "bad_param"},
			{"a board's name too long", "GET", "/v1/leaderboards/" + long, roKey, "", 400, "bad_name"},
			{"a member's name too long", "POST", board + "/" + long, rwKey, `{"add": 1}`, 400, "bad_name"},
			{"a member's name not UTF-8", "POST", board + "/%FF", rwKey, `{"add": 1}`, 400, "bad_name"},
			{"a wrong method", "DELETE", board + "/amy", rwKey, "", 405, "method_not_allowed"},
		} {
			status, code, _, msg := call(t, base, tt.method, tt.path, tt.key, tt.body, nil)
			if status != tt.status || tt.status != 200 && code != tt.code {
				t.Errorf("%s: %s %s: %d %q (%s), want %d %q", tt.name, tt.method, tt.path, status, code, msg, tt.status, tt.code)
			}
		}
		// What was refused changed nothing.
		entries(board, roKey, entry{1, "big", 1.7e308}, entry{2, "zed", 100}, entry{3, "amy", 100}, entry{4, "bo", 42}, entry{5, "cy", -3})
	})
}
