package httpapi

import (
	"fmt"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/leaderboard"
)

// The bounds of a leaderboard request.
const (
	maxBoardName = 256 // bytes of a board's or a member's name
	defaultTop   = 10
	maxTop       = 100
	maxOffset    = 1_000_000
	defaultNear  = 5
	maxNear      = 50
)

// ServeLeaderboards serves the leaderboards stored in rc under the key
// prefix: POST /v1/leaderboards/{board}/{member} sets or adds to a score,
// GET /v1/leaderboards/{board} pages from the top, GET
// /v1/leaderboards/{board}/{member} gives a member's rank and score, and
// GET .../{member}/around the members around it. ?period=daily or weekly
// picks the board of the current UTC day or ISO week. It panics when
// prefix contains "{", as a mux does on a bad pattern.
func (s *Server) ServeLeaderboards(rc rueidis.Client, prefix string) {
	l, err := leaderboard.New(rc, prefix, leaderboard.Options{})
	if err != nil {
		panic(err)
	}
	h := boards{s: s, l: l}
	s.mux.HandleFunc("POST /v1/leaderboards/{board}/{member}", s.auth("write", h.score))
	s.mux.HandleFunc("GET /v1/leaderboards/{board}", s.auth("read", h.top))
	s.mux.HandleFunc("GET /v1/leaderboards/{board}/{member}", s.auth("read", h.rank))
	s.mux.HandleFunc("GET /v1/leaderboards/{board}/{member}/around", s.auth("read", h.around))
}

type boards struct {
	s *Server
	l *leaderboard.Leaderboards
}

// entry is a leaderboard entry as the API answers it.
type entry struct {
	Rank   int64   `json:"rank"` // 1 is the top
	Member string  `json:"member"`
	Score  float64 `json:"score"`
}

func (h boards) score(w http.ResponseWriter, r *http.Request) {
	b, member, ok := h.board(w, r, true)
	if !ok {
		return
	}
	var req struct {
		Add   *float64 `json:"add"`
		Score *float64 `json:"score"`
	}
	if !h.s.readJSON(w, r, &req, "add", "score") {
		return
	}
	var score float64
	var err error
	switch {
	case (req.Add == nil) == (req.Score == nil):
		writeError(w, http.StatusBadRequest, "bad_json", `the body must have one of "add" and "score"`)
		return
	case req.Add != nil:
		score, err = b.Add(r.Context(), member, *req.Add)
	default:
		score, err = *req.Score, b.Set(r.Context(), member, *req.Score)
	}
	if err != nil {
		h.s.recipeFail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"member": member, "score": score})
}

func (h boards) top(w http.ResponseWriter, r *http.Request) {
	b, _, ok := h.board(w, r, false)
	if !ok {
		return
	}
	n, ok := param(w, r, "top", defaultTop, 1, maxTop)
	if !ok {
		return
	}
	offset, ok := param(w, r, "offset", 0, 0, maxOffset)
	if !ok {
		return
	}
	es, err := b.Top(r.Context(), offset, n)
	h.entries(w, es, err)
}

func (h boards) rank(w http.ResponseWriter, r *http.Request) {
	b, member, ok := h.board(w, r, true)
	if !ok {
		return
	}
	e, err := b.Rank(r.Context(), member)
	if err != nil {
		h.s.recipeFail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, entry(e))
}

func (h boards) around(w http.ResponseWriter, r *http.Request) {
	b, member, ok := h.board(w, r, true)
	if !ok {
		return
	}
	n, ok := param(w, r, "n", defaultNear, 0, maxNear)
	if !ok {
		return
	}
	es, err := b.Around(r.Context(), member, n)
	h.entries(w, es, err)
}

func (h boards) entries(w http.ResponseWriter, es []leaderboard.Entry, err error) {
	if err != nil {
		h.s.recipeFail(w, err)
		return
	}
	out := make([]entry, len(es))
	for i, e := range es {
		out[i] = entry(e)
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": out})
}

// board returns the request's board (of its ?period, now) and, when
// withMember, its member; false, having answered, when a name is not
// UTF-8 of 1 to maxBoardName bytes or the period is unknown.
func (h boards) board(w http.ResponseWriter, r *http.Request, withMember bool) (*leaderboard.Board, string, bool) {
	names := []string{"board"}
	if withMember {
		names = append(names, "member")
	}
	for _, name := range names {
		if v := r.PathValue(name); v == "" || len(v) > maxBoardName || !utf8.ValidString(v) {
			writeError(w, http.StatusBadRequest, "bad_name", fmt.Sprintf("a %s's name must be UTF-8 of 1 to %d bytes", name, maxBoardName))
			return nil, "", false
		}
	}
	p := leaderboard.AllTime
	switch period := r.URL.Query().Get("period"); period {
	case "", "all":
	case "daily":
		p = leaderboard.Daily
	case "weekly":
		p = leaderboard.Weekly
	default:
		writeError(w, http.StatusBadRequest, "bad_period", fmt.Sprintf("period %q is not all, daily or weekly", period))
		return nil, "", false
	}
	return h.l.Board(r.PathValue("board"), p, time.Now()), r.PathValue("member"), true
}

// param returns the query parameter name, an integer from lo to hi, or
// def when absent; false, having answered, when it is not one.
func param(w http.ResponseWriter, r *http.Request, name string, def, lo, hi int64) (int64, bool) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, true
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < lo || n > hi {
		writeError(w, http.StatusBadRequest, "bad_param", fmt.Sprintf("%s=%q is not an integer from %d to %d", name, v, lo, hi))
		return 0, false
	}
	return n, true
}
