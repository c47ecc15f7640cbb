package httpapi_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/dashboard"
	"github.com/cachesync/cachesync/internal/httpapi"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestHistoryScope: /v1/history, as /v1/status, needs a key with the read
// scope when keys are configured.
func TestHistoryScope(t *testing.T) {
	keys := config.HTTP{Keys: []config.APIKey{{Name: "ro", Key: roKey, Scopes: []string{"read"}}, {Name: "wo", Key: rwKey, Scopes: []string{"write"}}}}
	history := dashboard.NewHistory(prometheus.NewRegistry(), nil)
	history.Sample(t.Context(), time.Now())
	srv := httpapi.New(nil, keys, world.Logger())
	srv.Observe(http.NotFoundHandler(), nil, http.NotFoundHandler(), history)
	for _, tc := range []struct {
		key  string
		code int
	}{{"", 401}, {"nope", 401}, {rwKey, 403}, {roKey, 200}} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/v1/history", nil)
		if tc.key != "" {
			req.Header.Set("X-API-Key", tc.key)
		}
		srv.Handler().ServeHTTP(rec, req)
		if rec.Code != tc.code {
			t.Errorf("key %q: %d %s, want %d", tc.key, rec.Code, rec.Body, tc.code)
		}
	}
}
