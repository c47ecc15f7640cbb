package world

import (
	"fmt"
	"strings"

	"github.com/cachesync/cachesync/internal/testenv"
)

// Target is the world seen through another Redis, rds: the same database
// and config name, for a config whose targets are w's Redis and rds
// (TargetsYAML).
func (w *World) Target(rds *testenv.Redis) *World {
	return &World{T: w.T, Name: w.Name, DB: w.DB, DBURL: w.DBURL, Redis: rds, Nodes: []*testenv.Redis{rds}, RC: rds.Client(w.T)}
}

// TargetsYAML is a whole config like YAML whose redis section lists
// targets, each a YAML mapping's body (name: a, url: ...); the first is
// usually w's Redis (URL).
func (w *World) TargetsYAML(caches string, targets ...string) string {
	var b strings.Builder
	for _, t := range targets {
		fmt.Fprintf(&b, "  - {%s}\n", t)
	}
	return fmt.Sprintf("name: %s\nredis:\n%ssources:\n  db: {url: %q}\ncaches:\n%s", w.Name, b.String(), w.DBURL, caches)
}
