package status

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

// TestErrors: the last error logged for a cache (by its own attribute or
// one a logger was made With) is its status's last error; a cache without
// one shows its source's; warnings are not errors; the wrapped handler
// still gets every record it is enabled for.
func TestErrors(t *testing.T) {
	var out bytes.Buffer
	var e Errors
	log := slog.New(e.Wrap(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn})))

	log.Info("not passed on")
	log.Warn("a warning", "cache", "a")
	log.Error("first", "cache", "a", "err", errors.New("boom"))
	log.With("cache", "a").Error("second", "err", errors.New("bang"))
	log.With("source", "main").Error("stream broke")
	log.With("source", "main").WithGroup("g").Error("grouped", "cache", "b")

	for _, c := range []struct{ cache, source, want string }{
		{"a", "main", "second: bang"},
		{"b", "main", "grouped"},
		{"c", "main", "stream broke"},
		{"c", "other", ""},
	} {
		got := e.Last(c.cache, c.source)
		if !strings.HasSuffix(got, c.want) || (c.want == "") != (got == "") {
			t.Errorf("Last(%q, %q) = %q, want ... %q", c.cache, c.source, got, c.want)
		}
	}
	if strings.Contains(out.String(), "not passed on") || strings.Count(out.String(), "\n") != 5 {
		t.Errorf("the wrapped handler got:\n%s", out.String())
	}
}
