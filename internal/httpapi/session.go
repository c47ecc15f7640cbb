package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/leaderboard"
	"github.com/cachesync/cachesync/session"
)

// The bounds of a session over HTTP.
const (
	maxSessionData = 64 << 10 // bytes of a session's data, as JSON
	minSessionTTL  = time.Second
	maxSessionIdle = 24 * time.Hour
	maxSessionLife = 30 * 24 * time.Hour
)

// ServeSessions serves sessions stored in rc under the key prefix:
// POST /v1/sessions creates one, GET /v1/sessions/{id} reads it and
// slides its expiry, PUT replaces its data, DELETE ends it. A GET takes
// the read scope although it slides the expiry: keeping a session alive
// by using it is what reading it means, and it neither changes the data
// nor extends the session past its lifetime. It panics when prefix
// contains "{", as a mux does on a bad pattern.
func (s *Server) ServeSessions(rc rueidis.Client, prefix string) {
	store, err := session.New(rc, prefix)
	if err != nil {
		panic(err)
	}
	h := sessions{s: s, store: store}
	s.mux.HandleFunc("POST /v1/sessions", s.auth("write", h.create))
	s.mux.HandleFunc("GET /v1/sessions/{id}", s.auth("read", h.get))
	s.mux.HandleFunc("PUT /v1/sessions/{id}", s.auth("write", h.update))
	s.mux.HandleFunc("DELETE /v1/sessions/{id}", s.auth("write", h.destroy))
}

type sessions struct {
	s     *Server
	store *session.Store
}

// sessionReply is a session as the API answers it.
type sessionReply struct {
	ID        string          `json:"id"`
	Data      json.RawMessage `json:"data"`
	ExpiresMS int64           `json:"expires_ms"` // unless it is used again
	EndsAt    time.Time       `json:"ends_at"`    // its lifetime's end
}

func (h sessions) create(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Data       json.RawMessage `json:"data"`
		IdleMS     *int64          `json:"idle_ms"`
		LifetimeMS *int64          `json:"lifetime_ms"`
	}
	if !h.s.readJSON(w, r, &req, "data", "idle_ms", "lifetime_ms") {
		return
	}
	opts := session.Options{Idle: session.DefaultIdle, Lifetime: session.DefaultLifetime}
	for _, f := range []struct {
		name   string
		ms     *int64
		to     *time.Duration
		bounds time.Duration
	}{{"idle_ms", req.IdleMS, &opts.Idle, maxSessionIdle}, {"lifetime_ms", req.LifetimeMS, &opts.Lifetime, maxSessionLife}} {
		if f.ms == nil {
			continue
		}
		if *f.ms < minSessionTTL.Milliseconds() || *f.ms > f.bounds.Milliseconds() {
			writeError(w, http.StatusBadRequest, "bad_ttl", fmt.Sprintf("%s %d is not between %d and %d", f.name, *f.ms, minSessionTTL.Milliseconds(), f.bounds.Milliseconds()))
			return
		}
		*f.to = time.Duration(*f.ms) * time.Millisecond
	}
	data, ok := sessionData(w, req.Data)
	if !ok {
		return
	}
	sess, err := h.store.Create(r.Context(), data, opts)
	if err != nil {
		h.s.recipeFail(w, err)
		return
	}
	w.Header().Set("Location", "/v1/sessions/"+sess.ID)
	h.reply(w, http.StatusCreated, sess)
}

func (h sessions) get(w http.ResponseWriter, r *http.Request) {
	sess, err := h.store.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		h.s.recipeFail(w, err)
		return
	}
	h.reply(w, http.StatusOK, sess)
}

func (h sessions) update(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Data json.RawMessage `json:"data"`
	}
	if !h.s.readJSON(w, r, &req, "data") {
		return
	}
	if req.Data == nil {
		writeError(w, http.StatusBadRequest, "bad_json", `the body must have "data"`)
		return
	}
	data, ok := sessionData(w, req.Data)
	if !ok {
		return
	}
	sess, err := h.store.Update(r.Context(), r.PathValue("id"), data)
	if err != nil {
		h.s.recipeFail(w, err)
		return
	}
	h.reply(w, http.StatusOK, sess)
}

func (h sessions) destroy(w http.ResponseWriter, r *http.Request) {
	if err := h.store.Destroy(r.Context(), r.PathValue("id")); err != nil {
		h.s.recipeFail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// sessionData is the data to store, compacted: JSON null when the
// request had none; false, having answered, when it is too big.
func sessionData(w http.ResponseWriter, raw json.RawMessage) ([]byte, bool) {
	if raw == nil {
		return []byte("null"), true
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil { // it was decoded: never
		writeError(w, http.StatusBadRequest, "bad_json", err.Error())
		return nil, false
	}
	if b.Len() > maxSessionData {
		writeError(w, http.StatusRequestEntityTooLarge, "data_too_large", fmt.Sprintf("a session's data exceeds %d bytes", maxSessionData))
		return nil, false
	}
	return b.Bytes(), true
}

func (h sessions) reply(w http.ResponseWriter, status int, sess session.Session) {
	if !json.Valid(sess.Data) { // stored under the prefix by another writer
		h.s.recipeFail(w, fmt.Errorf("session %s: the data is not JSON", sess.ID))
		return
	}
	writeJSON(w, status, sessionReply{ID: sess.ID, Data: sess.Data, ExpiresMS: sess.TTL.Milliseconds(), EndsAt: sess.Ends.UTC()})
}

// readJSON decodes the body, one JSON object within the size limit whose
// fields are among fields, into v; false, having answered, when it cannot.
func (s *Server) readJSON(w http.ResponseWriter, r *http.Request, v any, fields ...string) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("the body exceeds %d bytes", s.cfg.MaxBody))
		return false
	}
	var raw map[string]json.RawMessage
	if err == nil {
		raw, err = decodeObject(body)
	}
	for name := range raw {
		if err == nil && !slices.Contains(fields, name) {
			err = fmt.Errorf("the field %q is not one of %q", name, fields)
		}
	}
	if err == nil {
		err = json.Unmarshal(body, v)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_json", "the body must be one JSON object: "+err.Error())
		return false
	}
	return true
}

// recipeFail answers with the status and code of an error of the
// session or leaderboard package.
func (s *Server) recipeFail(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, session.ErrNotFound), errors.Is(err, leaderboard.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, session.ErrBadID):
		writeError(w, http.StatusBadRequest, "bad_id", err.Error())
	case errors.Is(err, leaderboard.ErrExpired):
		writeError(w, http.StatusConflict, "expired", err.Error())
	case errors.Is(err, leaderboard.ErrOverflow):
		writeError(w, http.StatusUnprocessableEntity, "overflow", err.Error())
	default:
		s.redisFail(w, err)
	}
}
