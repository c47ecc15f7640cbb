package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/ratelimit"
)

// maxID bounds the id of a rate-limited client or of a lock, in bytes.
const maxID = 512

// ServeRateLimits serves POST /v1/ratelimits/{name}/{id...} (write
// scope): a decision of the policy name for id, kept in client under
// prefix + name + ":" + algorithm + ":" + id. It fails on a policy that is
// not valid.
func (s *Server) ServeRateLimits(client rueidis.Client, prefix string, policies map[string]config.RateLimit) error {
	limiters := make(map[string]*ratelimit.Limiter, len(policies))
	for name, p := range policies {
		// The algorithm in the key: a policy whose algorithm changes does
		// not meet the old one's keys, of another type.
		l, err := ratelimit.New(client, prefix+name+":"+p.Algorithm+":", ratelimit.Policy{Algorithm: ratelimit.Algorithm(p.Algorithm), Limit: p.Limit, Window: p.Window, Burst: p.Burst})
		if err != nil {
			return fmt.Errorf("http: ratelimits.%s: %w", name, err)
		}
		limiters[name] = l
	}
	s.mux.HandleFunc("POST /v1/ratelimits/{name}/{id...}", s.auth("write", func(w http.ResponseWriter, r *http.Request) {
		s.decide(w, r, limiters)
	}))
	return nil
}

// decide answers 200 when the request is admitted, 429 rate_limited when
// not, with the decision in the body and the RateLimit-* headers of the
// IETF draft (and Retry-After on a 429).
func (s *Server) decide(w http.ResponseWriter, r *http.Request, limiters map[string]*ratelimit.Limiter) {
	name, id := r.PathValue("name"), r.PathValue("id")
	l, ok := limiters[name]
	if !ok {
		writeError(w, http.StatusNotFound, "unknown_ratelimit", fmt.Sprintf("no rate limit named %q", name))
		return
	}
	if id == "" || len(id) > maxID {
		writeError(w, http.StatusBadRequest, "bad_id", fmt.Sprintf("the id must have 1 to %d bytes, not %d", maxID, len(id)))
		return
	}
	cost := 1
	if c := r.URL.Query().Get("cost"); c != "" {
		n, err := strconv.Atoi(c)
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_cost", fmt.Sprintf("cost %q is not a whole number", c))
			return
		}
		cost = n
	}
	d, err := l.AllowN(r.Context(), id, cost)
	if errors.Is(err, ratelimit.ErrCost) {
		writeError(w, http.StatusBadRequest, "bad_cost", err.Error())
		return
	}
	if err != nil {
		s.redisFail(w, err)
		return
	}
	h := w.Header()
	h.Set("RateLimit-Limit", strconv.Itoa(d.Limit))
	h.Set("RateLimit-Remaining", strconv.Itoa(d.Remaining))
	h.Set("RateLimit-Reset", strconv.FormatInt(seconds(d.Reset), 10))
	body := map[string]any{"allowed": d.Allowed, "limit": d.Limit, "remaining": d.Remaining,
		"reset_ms": milliseconds(d.Reset), "retry_after_ms": milliseconds(d.RetryAfter)}
	if d.Allowed {
		writeJSON(w, http.StatusOK, body)
		return
	}
	// A 429 is an error as every other: its body has the error object too.
	h.Set("Retry-After", strconv.FormatInt(seconds(d.RetryAfter), 10))
	body["error"] = map[string]string{"code": "rate_limited", "message": fmt.Sprintf("over the rate limit %q for %q: retry after %v", name, id, d.RetryAfter)}
	writeJSON(w, http.StatusTooManyRequests, body)
}

// seconds is d in whole seconds, rounded up: a client that waits that long
// is not early.
func seconds(d time.Duration) int64 { return int64(math.Ceil(d.Seconds())) }

// milliseconds is d in whole milliseconds, rounded up.
func milliseconds(d time.Duration) int64 {
	return int64(math.Ceil(float64(d) / float64(time.Millisecond)))
}

// redisFail answers a recipe's failure in Redis: 503 unavailable with
// Retry-After when Redis did not answer (a retry may work), else 500
// internal: Redis answered and refused (a key of another type under the
// recipe's name, a command the user may not run), or its reply made no
// sense, which no retry mends.
func (s *Server) redisFail(w http.ResponseWriter, err error) {
	var refused *rueidis.RedisError
	if errors.As(err, &refused) || !unreachable(err) {
		s.log.Error("http request failed", "err", err)
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	s.log.Warn("http request failed", "err", err)
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusServiceUnavailable, "unavailable", "redis unavailable: "+err.Error())
}

// unreachable tells an error of a Redis that did not answer: a connection
// refused, broken or closed, or no reply within the request's time.
func unreachable(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, rueidis.ErrClosing) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
