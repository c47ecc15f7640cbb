package status

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Errors remembers the last error logged for each cache (by the "cache"
// attribute) and each source (by "source"), for the status report. Wrap
// the daemon's log handler with it.
type Errors struct {
	mu   sync.Mutex
	last map[string]string
}

// Wrap returns a handler that passes records to h and remembers errors.
func (e *Errors) Wrap(h slog.Handler) slog.Handler { return &errHandler{next: h, e: e} }

// Last returns the last error of cache, or else of its source.
func (e *Errors) Last(cache, source string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s := e.last["cache\x00"+cache]; s != "" {
		return s
	}
	return e.last["source\x00"+source]
}

func (e *Errors) note(key, msg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.last == nil {
		e.last = map[string]string{}
	}
	e.last[key] = msg
}

type errHandler struct {
	next  slog.Handler
	e     *Errors
	attrs []slog.Attr
}

func (h *errHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError || h.next.Enabled(ctx, l)
}

func (h *errHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		var cache, source, err string
		see := func(a slog.Attr) bool {
			switch a.Key {
			case "cache":
				cache = a.Value.String()
			case "source":
				source = a.Value.String()
			case "err":
				err = a.Value.String()
			}
			return true
		}
		for _, a := range h.attrs {
			see(a)
		}
		r.Attrs(see)
		msg := r.Time.UTC().Format(time.RFC3339) + " " + r.Message
		if err != "" {
			msg += ": " + err
		}
		switch {
		case cache != "":
			h.e.note("cache\x00"+cache, msg)
		case source != "":
			h.e.note("source\x00"+source, msg)
		}
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *errHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &errHandler{next: h.next.WithAttrs(as), e: h.e, attrs: append(append([]slog.Attr{}, h.attrs...), as...)}
}

func (h *errHandler) WithGroup(name string) slog.Handler {
	return &errHandler{next: h.next.WithGroup(name), e: h.e, attrs: h.attrs}
}
