// Package dashboard is the page the daemon serves at /: live charts of hit
// ratio, change-feed lag, throughput, write-behind queue depth and Redis
// memory over the last minutes, and the per-cache table. It reads
// /v1/status every two seconds; everything it needs is embedded, so it
// works without reaching any other site.
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
