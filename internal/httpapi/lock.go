package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/cachesync/cachesync/lock"
)

// The bounds of a lock's TTL and of a request's wait for a lock: the wait
// ends well within the request's own timeout.
const (
	defaultLockTTL = 30 * time.Second
	maxLockTTL     = time.Hour
	maxLockWait    = 20 * time.Second
)

// ServeLocks serves the locks of locks (write scope):
//
//	POST   /v1/locks/{name}         {"ttl_ms", "wait_ms"} → 200 {"token", "fence", "ttl_ms"}, 409 held
//	POST   /v1/locks/{name}/extend  {"token", "ttl_ms"}   → 200, 409 not_holder
//	DELETE /v1/locks/{name}         {"token"} or the header Lock-Token → 200, 409 not_holder
func (s *Server) ServeLocks(locks *lock.Locks) {
	s.mux.HandleFunc("POST /v1/locks/{name}", s.auth("write", func(w http.ResponseWriter, r *http.Request) { s.acquire(w, r, locks) }))
	s.mux.HandleFunc("POST /v1/locks/{name}/extend", s.auth("write", func(w http.ResponseWriter, r *http.Request) { s.extend(w, r, locks) }))
	s.mux.HandleFunc("DELETE /v1/locks/{name}", s.auth("write", func(w http.ResponseWriter, r *http.Request) { s.release(w, r, locks) }))
}

// lockRequest is the body of a lock request.
type lockRequest struct {
	TTL   int64  `json:"ttl_ms"`
	Wait  int64  `json:"wait_ms"`
	Token string `json:"token"`
}

// errWaited ends a request's wait for a lock.
var errWaited = errors.New("waited wait_ms")

func (s *Server) acquire(w http.ResponseWriter, r *http.Request, locks *lock.Locks) {
	name, req, ok := lockInput(w, r)
	if !ok {
		return
	}
	ttl, ok := lockTTL(w, req.TTL)
	if !ok {
		return
	}
	wait := time.Duration(req.Wait) * time.Millisecond
	if req.Wait < 0 || wait > maxLockWait {
		writeError(w, http.StatusBadRequest, "bad_wait", fmt.Sprintf("wait_ms %d: want 0 to %d", req.Wait, maxLockWait.Milliseconds()))
		return
	}
	lease, err := locks.TryAcquire(r.Context(), name, ttl)
	if errors.Is(err, lock.ErrHeld) && wait > 0 {
		ctx, cancel := context.WithTimeoutCause(r.Context(), wait, errWaited)
		defer cancel()
		lease, err = locks.Acquire(ctx, name, ttl)
	}
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, map[string]any{"name": name, "token": lease.Token, "fence": lease.Fence, "ttl_ms": lease.TTL.Milliseconds()})
	case errors.Is(err, lock.ErrHeld), errors.Is(err, errWaited):
		writeError(w, http.StatusConflict, "held", fmt.Sprintf("the lock %q is held by another holder", name))
	default:
		s.redisFail(w, err)
	}
}

func (s *Server) extend(w http.ResponseWriter, r *http.Request, locks *lock.Locks) {
	name, req, ok := lockInput(w, r)
	if !ok {
		return
	}
	ttl, ok := lockTTL(w, req.TTL)
	if !ok || !hasToken(w, req.Token) {
		return
	}
	s.ifHolder(w, name, ttl, locks.Extend(r.Context(), name, req.Token, ttl))
}

func (s *Server) release(w http.ResponseWriter, r *http.Request, locks *lock.Locks) {
	name, req, ok := lockInput(w, r)
	if !ok {
		return
	}
	if t := r.Header.Get("Lock-Token"); t != "" && req.Token == "" {
		req.Token = t
	}
	if !hasToken(w, req.Token) {
		return
	}
	s.ifHolder(w, name, 0, locks.Release(r.Context(), name, req.Token))
}

// ifHolder answers an extend or a release by its error err.
func (s *Server) ifHolder(w http.ResponseWriter, name string, ttl time.Duration, err error) {
	switch {
	case err == nil && ttl > 0:
		writeJSON(w, http.StatusOK, map[string]any{"name": name, "ttl_ms": ttl.Milliseconds()})
	case err == nil:
		writeJSON(w, http.StatusOK, map[string]any{"name": name, "released": true})
	case errors.Is(err, lock.ErrNotHeld):
		writeError(w, http.StatusConflict, "not_holder", fmt.Sprintf("the token does not hold the lock %q (any more)", name))
	default:
		s.redisFail(w, err)
	}
}

// lockInput reads the lock's name and the request's body (which may be
// empty), answering 400 when either is bad.
func lockInput(w http.ResponseWriter, r *http.Request) (string, lockRequest, bool) {
	var req lockRequest
	name := r.PathValue("name")
	if name == "" || len(name) > maxID || strings.HasPrefix(name, "}") {
		writeError(w, http.StatusBadRequest, "bad_name", fmt.Sprintf("a lock's name must have 1 to %d bytes and not begin with '}'", maxID))
		return "", req, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4096))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", "the body exceeds 4096 bytes")
		return "", req, false
	}
	if err == nil && len(strings.TrimSpace(string(body))) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		err = dec.Decode(&req)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_json", "the body must be a JSON object of ttl_ms, wait_ms, token: "+err.Error())
		return "", req, false
	}
	return name, req, true
}

// lockTTL returns the TTL ms asks for (defaultLockTTL for 0), answering 400
// out of bounds.
func lockTTL(w http.ResponseWriter, ms int64) (time.Duration, bool) {
	if ms == 0 {
		return defaultLockTTL, true
	}
	if ms < 1 || ms > maxLockTTL.Milliseconds() {
		writeError(w, http.StatusBadRequest, "bad_ttl", fmt.Sprintf("ttl_ms %d: want 1 to %d", ms, maxLockTTL.Milliseconds()))
		return 0, false
	}
	return time.Duration(ms) * time.Millisecond, true
}

// hasToken answers 400 when the request gives no token.
func hasToken(w http.ResponseWriter, token string) bool {
	if token == "" {
		writeError(w, http.StatusBadRequest, "no_token", "give the lock's token: {\"token\": ...} or the header Lock-Token")
	}
	return token != ""
}
