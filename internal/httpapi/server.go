// Package httpapi serves the caches over HTTP for services in any language:
// GET reads through, PUT writes through, DELETE invalidates, with API keys,
// body limits and JSON errors whose code is stable. docs/openapi.yaml
// describes it.
package httpapi

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/engine"
)

// Server is the HTTP API over a cachesync Client.
type Server struct {
	api *engine.Engine
	cfg config.HTTP
	log *slog.Logger
	mux *http.ServeMux
}

// New returns the API of api as configured by cfg.
func New(api *engine.Engine, cfg config.HTTP, log *slog.Logger) *Server {
	s := &Server{api: api, cfg: cfg, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.ready)
	mux.HandleFunc("GET /v1/caches/{cache}/{key...}", s.auth("read", s.get))
	mux.HandleFunc("PUT /v1/caches/{cache}/{key...}", s.auth("write", s.put))
	mux.HandleFunc("DELETE /v1/caches/{cache}/{key...}", s.auth("write", s.delete))
	s.mux = mux
	return s
}

// Observe serves the operator's views: GET /metrics (Prometheus; no key,
// as scrapers expect, and nothing secret in it), GET /v1/status and GET
// /v1/history (a key with the read scope when keys are configured) and the
// dashboard at GET /.
func (s *Server) Observe(metrics http.Handler, status func(context.Context) (any, error), page, history http.Handler) {
	s.mux.Handle("GET /metrics", metrics)
	s.mux.HandleFunc("GET /v1/status", s.auth("read", func(w http.ResponseWriter, r *http.Request) {
		st, err := status(r.Context())
		if err != nil {
			s.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	}))
	s.mux.HandleFunc("GET /v1/history", s.auth("read", history.ServeHTTP))
	s.mux.Handle("GET /{$}", page)
	s.mux.Handle("GET /app.js", page)
	s.mux.Handle("GET /style.css", page)
}

// Handler returns the API's handler.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serve) }

// serve serves r as the mux does, and answers in JSON where no pattern
// serves it: 405 method_not_allowed with the mux's Allow header where a
// pattern takes the path with other methods, else 404 no_route.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	h, pattern := s.mux.Handler(r)
	if pattern != "" { // a handler, or a redirect to the cleaned path
		s.mux.ServeHTTP(w, r)
		return
	}
	allow := headers{}
	h.ServeHTTP(allow, r) // the mux's plain-text answer; only its Allow is kept
	if methods := allow.Header().Get("Allow"); methods != "" {
		w.Header().Set("Allow", methods)
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", fmt.Sprintf("%s takes %s, not %s", r.URL.Path, methods, r.Method))
		return
	}
	writeError(w, http.StatusNotFound, "no_route", "no such endpoint: "+r.Method+" "+r.URL.Path)
}

// headers is a ResponseWriter that keeps the headers and drops the rest.
type headers http.Header

func (h headers) Header() http.Header       { return http.Header(h) }
func (headers) Write(b []byte) (int, error) { return len(b), nil }
func (headers) WriteHeader(int)             {}

// Run serves on cfg.Addr until ctx is done, then shuts down gracefully.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln (HTTPS when cfg.TLS is set) until ctx is done. Then
// the requests in flight are cut short and answered at once: a write that
// committed and waits for the change feed gets 202 not_applied, the others
// 503 with Retry-After.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	base, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
		BaseContext: func(net.Listener) context.Context { return base },
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)} // a failed TLS handshake, say
	if len(s.cfg.Keys) == 0 {
		s.log.Warn("the HTTP API has no API keys: anyone who reaches it may read and write", "addr", ln.Addr().String())
	}
	s.log.Info("HTTP API listening", "addr", ln.Addr().String(), "tls", s.cfg.TLS.Enabled())
	done := make(chan error, 1)
	go func() {
		if s.cfg.TLS.Enabled() {
			done <- srv.ServeTLS(ln, s.cfg.TLS.CertFile, s.cfg.TLS.KeyFile)
			return
		}
		done <- srv.Serve(ln)
	}()
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
// Authorization: Bearer KEY or X-API-Key), or when no keys are configured.
func (s *Server) auth(scope string, next http.HandlerFunc) http.HandlerFunc {
	next = withTimeout(next)
	return func(w http.ResponseWriter, r *http.Request) {
		given, key := s.key(r)
		switch {
		case s.may(key, scope):
			next(w, r)
		case given == "":
			w.Header().Set("WWW-Authenticate", `Bearer realm="cachesync"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "an API key is needed (Authorization: Bearer KEY or X-API-Key)")
		case key == nil:
			w.Header().Set("WWW-Authenticate", `Bearer realm="cachesync"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "unknown API key")
		default:
			writeError(w, http.StatusForbidden, "forbidden", fmt.Sprintf("the API key %q lacks the %s scope", key.Name, scope))
		}
	}
}

// key returns the key r gives (Authorization's bearer token, the scheme
// in any case as RFC 9110 has it, or else X-API-Key) and the configured key
// it is, or nil, comparing in constant time.
func (s *Server) key(r *http.Request) (given string, key *config.APIKey) {
	auth := r.Header.Get("Authorization")
	if i := strings.IndexAny(auth, " \t"); i > 0 && strings.EqualFold(auth[:i], "Bearer") {
		given = strings.TrimLeft(auth[i:], " \t")
	}
	if given == "" {
		given = r.Header.Get("X-API-Key")
	}
	for i := range s.cfg.Keys {
		// Compare with every key, so timing does not tell which matched.
		if subtle.ConstantTimeCompare([]byte(given), []byte(s.cfg.Keys[i].Key)) == 1 {
			key = &s.cfg.Keys[i]
		}
	}
	return given, key
}

// may tells whether key may do what scope allows: any request may when no
// keys are configured.
func (s *Server) may(key *config.APIKey, scope string) bool {
	return len(s.cfg.Keys) == 0 || key != nil && slices.Contains(key.Scopes, scope)
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
		msg := err.Error()
		if _, key := s.key(r); !s.may(key, "read") {
			msg = down(err) + " (a key with the read scope is told why)"
		}
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "unavailable", msg)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// down says what Ping's error err found unavailable ("redis unavailable",
// "source db unavailable") without the cause, which may tell how to reach
// it: user, database, host, port.
func down(err error) string {
	if e, ok := err.(interface{ Unwrap() []error }); ok {
		if errs := e.Unwrap(); len(errs) > 0 {
			if what, ok := strings.CutSuffix(err.Error(), ": "+errs[len(errs)-1].Error()); ok {
				return what
			}
		}
	}
	return "Redis or a source unavailable"
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
	values, err := s.api.ParseKey(name, key)
	if err != nil {
		s.fail(w, err)
		return
	}
	row, err := s.readRow(w, r)
	if err != nil {
		return
	}
	// The key names the row: its columns come from the key, and a body that
	// says otherwise is a mistake (a body that spells them as a GET returns
	// them, true or RFC 3339, agrees).
	named, repeated := map[string]any{}, false
	for i, col := range c.Template.Columns() {
		named[col] = values[i]
		if v, ok := row[col]; ok {
			named[col], repeated = v, true
		}
		row[col] = values[i]
	}
	if repeated {
		k, err := s.api.KeyOf(name, named)
		if err != nil {
			s.fail(w, err)
			return
		}
		if k != key {
			writeError(w, http.StatusBadRequest, "key_mismatch", fmt.Sprintf("the body's key columns name the key %q, not %q", k, key))
			return
		}
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

// readRow decodes the body as one JSON object, within the size limit; each
// value stays the JSON it was (json.RawMessage), which the API converts
// for its column's type (a json column keeps its text as written).
func (s *Server) readRow(w http.ResponseWriter, r *http.Request) (map[string]any, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("the body exceeds %d bytes", s.cfg.MaxBody))
		return nil, err
	}
	var raw map[string]json.RawMessage
	if err == nil {
		raw, err = decodeObject(body)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_json", "the body must be one JSON object of column values: "+err.Error())
		return nil, err
	}
	row := make(map[string]any, len(raw))
	for k, v := range raw {
		row[k] = v
	}
	return row, nil
}

// decodeObject decodes body: one JSON object in UTF-8 in which, as in
// every object nested in it, no name appears twice (JSON leaves open which
// one counts, and readers differ: PostgreSQL's jsonb keeps the last, json
// both).
func decodeObject(body []byte) (map[string]json.RawMessage, error) {
	if !utf8.Valid(body) {
		return nil, errors.New("it is not UTF-8")
	}
	if b := bytes.TrimLeft(body, " \t\r\n"); len(b) == 0 || b[0] != '{' {
		return nil, errors.New("it is not an object")
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil { // syntax, depth and what follows the object
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber() // any number, not only a float64's
	return raw, twice(dec, 0, "")
}

// twice reads one JSON value, valid and nested no deeper than
// json.Unmarshal takes, from dec, and reports a name twice in one object:
// at depth 0 the row's, deeper in the value of column.
func twice(dec *json.Decoder, depth int, column string) error {
	t, err := dec.Token()
	if err != nil || t != json.Delim('{') && t != json.Delim('[') {
		return err
	}
	seen := map[string]bool{}
	for dec.More() {
		in := column
		if t == json.Delim('{') {
			k, err := dec.Token()
			if err != nil {
				return err
			}
			name, _ := k.(string)
			switch {
			case seen[name] && depth == 0:
				return fmt.Errorf("the field %q appears twice", name)
			case seen[name]:
				return fmt.Errorf("the name %q appears twice in one object in the value of %q", name, column)
			case depth == 0:
				in = name
			}
			seen[name] = true
		}
		if err := twice(dec, depth+1, in); err != nil {
			return err
		}
	}
	_, err = dec.Token() // the closing } or ]
	return err
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
	var rowErr *engine.RowError
	switch {
	case errors.Is(err, engine.ErrNotApplied): // first: the write committed, whatever else went wrong
		writeError(w, http.StatusAccepted, "not_applied", err.Error())
	case errors.Is(err, engine.ErrUnknownCache):
		writeError(w, http.StatusNotFound, "unknown_cache", err.Error())
	case errors.Is(err, engine.ErrBadKey):
		writeError(w, http.StatusBadRequest, "bad_key", err.Error())
	case errors.Is(err, engine.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, engine.ErrNotBehind):
		writeError(w, http.StatusBadRequest, "not_behind", err.Error())
	case errors.Is(err, engine.ErrBadRow):
		writeError(w, http.StatusBadRequest, "bad_row", err.Error())
	case errors.As(err, &rowErr):
		writeError(w, http.StatusUnprocessableEntity, "row_refused", err.Error())
	case errors.Is(err, engine.ErrUnavailable), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
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
