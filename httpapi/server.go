// Package httpapi serves the caches over HTTP for services in any language:
// GET reads through, PUT writes through, DELETE invalidates, with API keys,
// body limits and JSON errors whose code is stable. docs/openapi.yaml
// describes it.
package httpapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/cachesync/cachesync"
	"github.com/cachesync/cachesync/binding"
	"github.com/cachesync/cachesync/config"
)

// Server is the HTTP API over a cachesync Client.
type Server struct {
	api *cachesync.Client
	cfg config.HTTP
	log *slog.Logger
	mux *http.ServeMux
}

// New returns the API of api as configured by cfg.
func New(api *cachesync.Client, cfg config.HTTP, log *slog.Logger) *Server {
	s := &Server{api: api, cfg: cfg, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.ready)
	mux.HandleFunc("GET /v1/caches/{cache}/{key...}", s.auth("read", s.get))
	mux.HandleFunc("PUT /v1/caches/{cache}/{key...}", s.auth("write", s.put))
	mux.HandleFunc("DELETE /v1/caches/{cache}/{key...}", s.auth("write", s.delete))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no_route", "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	s.mux = mux
	return s
}

// Observe serves the operator's views: GET /metrics (Prometheus; no key,
// as scrapers expect, and nothing secret in it), GET /v1/status (a key with
// the read scope when keys are configured) and the dashboard at GET /.
func (s *Server) Observe(metrics http.Handler, status func(context.Context) (any, error), page http.Handler) {
	s.mux.Handle("GET /metrics", metrics)
	s.mux.HandleFunc("GET /v1/status", s.auth("read", func(w http.ResponseWriter, r *http.Request) {
		st, err := status(r.Context())
		if err != nil {
			s.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	}))
	s.mux.Handle("GET /{$}", page)
	s.mux.Handle("GET /app.js", page)
	s.mux.Handle("GET /style.css", page)
}

// Handler returns the API's handler.
func (s *Server) Handler() http.Handler { return s.mux }

// Run serves on cfg.Addr until ctx is done, then shuts down gracefully.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln until ctx is done. Then the requests in flight are
// cut short and answered at once: a write that committed and waits for
// the change feed gets 202 not_applied, the others 503 with Retry-After.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	base, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	srv := &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
		BaseContext: func(net.Listener) context.Context { return base }}
	if len(s.cfg.Keys) == 0 {
		s.log.Warn("the HTTP API has no API keys: anyone who reaches it may read and write", "addr", ln.Addr().String())
	}
	s.log.Info("HTTP API listening", "addr", ln.Addr().String())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("http: %w", err)
	case <-ctx.Done():
	}
	stop()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-done
	return err
}

// auth lets a request through when it carries a key with scope (in
// Authorization: Bearer KEY or X-API-Key), comparing in constant time.
func (s *Server) auth(scope string, next http.HandlerFunc) http.HandlerFunc {
	next = withTimeout(next)
	return func(w http.ResponseWriter, r *http.Request) {
		if len(s.cfg.Keys) == 0 {
			next(w, r)
			return
		}
		given := r.Header.Get("X-API-Key")
		if b, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			given = b
		}
		if given == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="cachesync"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "an API key is needed (Authorization: Bearer KEY or X-API-Key)")
			return
		}
		var key *config.APIKey
		for i := range s.cfg.Keys {
			// Compare with every key, so timing does not tell which matched.
			if subtle.ConstantTimeCompare([]byte(given), []byte(s.cfg.Keys[i].Key)) == 1 {
				key = &s.cfg.Keys[i]
			}
		}
		if key == nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="cachesync"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "unknown API key")
			return
		}
		for _, sc := range key.Scopes {
			if sc == scope {
				next(w, r)
				return
			}
		}
		writeError(w, http.StatusForbidden, "forbidden", fmt.Sprintf("the API key %q lacks the %s scope", key.Name, scope))
	}
}

// requestTimeout bounds the work of one request: a dependency that hangs
// gives 503, not a stuck client.
const requestTimeout = 25 * time.Second

func withTimeout(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		next(w, r.WithContext(ctx))
	}
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.api.Ping(ctx); err != nil {
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	name, key := r.PathValue("cache"), r.PathValue("key")
	v, err := s.api.Get(r.Context(), name, key)
	if err != nil {
		s.fail(w, err)
		return
	}
	if c, _ := s.api.Cache(name); c.Format == binding.FormatString {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	} else {
		w.Header().Set("Content-Type", "application/json")
	}
	w.Write(v)
}

func (s *Server) put(w http.ResponseWriter, r *http.Request) {
	name, key := r.PathValue("cache"), r.PathValue("key")
	c, ok := s.api.Cache(name)
	if !ok {
		writeError(w, http.StatusNotFound, "unknown_cache", fmt.Sprintf("no cache named %q", name))
		return
	}
	mode := r.URL.Query().Get("mode")
	switch mode {
	case "", "through", "behind":
	default:
		writeError(w, http.StatusBadRequest, "bad_mode", fmt.Sprintf("mode %q is not through or behind", mode))
		return
	}
	values, ok := c.Template.Parse(key)
	if !ok {
		writeError(w, http.StatusBadRequest, "bad_key", fmt.Sprintf("key %q does not fit the template %s", key, c.Template))
		return
	}
	row, err := s.readRow(w, r)
	if err != nil {
		return
	}
	// The key names the row: its columns come from the key, and a body that
	// says otherwise is a mistake.
	for i, col := range c.Template.Columns() {
		if v, ok := row[col]; ok && plain(v) != values[i] {
			writeError(w, http.StatusBadRequest, "key_mismatch", fmt.Sprintf("column %q is %s in the body but %q in the key", col, v, values[i]))
			return
		}
		row[col] = values[i]
	}
	put := s.api.Put
	if mode == "behind" {
		put = s.api.PutBehind
	}
	if _, err := put(r.Context(), name, row); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// plain is a body's JSON value as a key spells it: a string unquoted,
// anything else as written.
func plain(v any) string {
	raw, _ := v.(json.RawMessage)
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

// readRow decodes the body as one JSON object, within the size limit; each
// value stays the JSON it was (json.RawMessage), which the API converts
// for its column's type (a json column keeps its text as written).
func (s *Server) readRow(w http.ResponseWriter, r *http.Request) (map[string]any, error) {
	body := http.MaxBytesReader(w, r.Body, s.cfg.MaxBody)
	dec := json.NewDecoder(body)
	var raw map[string]json.RawMessage
	err := dec.Decode(&raw)
	if err == nil && dec.More() {
		err = errors.New("more than one JSON value")
	}
	if err == nil {
		_, err = io.Copy(io.Discard, body) // reach the limit check for trailing bytes
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("the body exceeds %d bytes", s.cfg.MaxBody))
	case err != nil:
		writeError(w, http.StatusBadRequest, "bad_json", "the body must be one JSON object of column values: "+err.Error())
	case raw == nil:
		err = errors.New("null body")
		writeError(w, http.StatusBadRequest, "bad_json", "the body must be one JSON object of column values")
	}
	if err != nil {
		return nil, err
	}
	row := make(map[string]any, len(raw))
	for k, v := range raw {
		row[k] = v
	}
	return row, nil
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	if err := s.api.Invalidate(r.Context(), r.PathValue("cache"), r.PathValue("key")); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// fail answers with the status and code of err.
func (s *Server) fail(w http.ResponseWriter, err error) {
	var rowErr *cachesync.RowError
	switch {
	case errors.Is(err, cachesync.ErrUnknownCache):
		writeError(w, http.StatusNotFound, "unknown_cache", err.Error())
	case errors.Is(err, cachesync.ErrBadKey):
		writeError(w, http.StatusBadRequest, "bad_key", err.Error())
	case errors.Is(err, cachesync.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, cachesync.ErrNotBehind):
		writeError(w, http.StatusBadRequest, "not_behind", err.Error())
	case errors.Is(err, cachesync.ErrBadRow):
		writeError(w, http.StatusBadRequest, "bad_row", err.Error())
	case errors.As(err, &rowErr):
		writeError(w, http.StatusUnprocessableEntity, "row_refused", err.Error())
	case errors.Is(err, cachesync.ErrNotApplied):
		writeError(w, http.StatusAccepted, "not_applied", err.Error())
	case errors.Is(err, cachesync.ErrUnavailable), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
	default:
		s.log.Error("http request failed", "err", err)
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// writeError writes {"error": {"code": CODE, "message": MESSAGE}}.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}
