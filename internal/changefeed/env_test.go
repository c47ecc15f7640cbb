package changefeed_test

import (
	"testing"

	"github.com/cachesync/cachesync/internal/testenv/world"
)

// The package's tests share one PostgreSQL; each has a database, a Redis
// and a config name (slot names are cluster-wide) of its own.
func TestMain(m *testing.M) { world.Main(m) }

// lit returns a fixed expectation.
func lit(m map[string]string) func() map[string]string { return func() map[string]string { return m } }
