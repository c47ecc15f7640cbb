// Package dashboard is the page the daemon serves at /, and the history
// it draws: the daemon samples its figures every 5 s (History, from its
// Prometheus registry and its status) and keeps the last 15 minutes in
// memory, served at /v1/history, so the page is full when it opens. The
// page charts hit ratios, change-feed lag in ms and bytes, throughput and
// Redis memory, then each cache's Gets, fills and refreshes and
// write-behind queue, on time axes with the events (rebuilds, takeovers,
// targets left behind or down, errors) as markers, and the per-cache table
// of /v1/status. Everything it needs is embedded, so it works without
// reaching any other site.
package dashboard

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// Handler serves the page and its script.
func Handler() http.Handler {
	sub, _ := fs.Sub(static, "static")
	return http.FileServerFS(sub)
}
