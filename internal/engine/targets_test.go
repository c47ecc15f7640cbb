package engine_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/testenv"
)

// TestOpenServesItsTarget: of a config with two targets, an engine serves
// the caches of the target its config names first, in that target's
// Redis: the first by default, another through ForTarget.
func TestOpenServesItsTarget(t *testing.T) {
	w := newEnv(t, `CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'one')`)
	b := w.Target(testenv.StartRedis(t))
	cfg, err := config.Load(strings.NewReader(w.TargetsYAML(`  both: {table: items, key: "both:{id}", value: {format: string, column: v}, sync: none}
  onlyb: {table: items, key: "onlyb:{id}", value: {format: string, column: v}, sync: none, targets: [b]}
`, fmt.Sprintf("name: a, url: %q", w.Redis.URL()), fmt.Sprintf("name: b, url: %q", b.Redis.URL()))))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ea := w.Open(cfg)
	if v, err := ea.Get(ctx, "both", "both:1"); err != nil || string(v) != "one" {
		t.Fatalf("a: Get both:1 = %q, %v", v, err)
	}
	if _, err := ea.Get(ctx, "onlyb", "onlyb:1"); !errors.Is(err, engine.ErrUnknownCache) {
		t.Fatalf("a: Get of a cache only b holds: %v, want ErrUnknownCache", err)
	}
	eb := w.Open(cfg.ForTarget("b"))
	if v, err := eb.Get(ctx, "onlyb", "onlyb:1"); err != nil || string(v) != "one" {
		t.Fatalf("b: Get onlyb:1 = %q, %v", v, err)
	}
	if got, want := w.Snapshot("*"), map[string]string{"both:1": "one"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("a's Redis holds %v, want %v", got, want)
	}
	if got, want := b.Snapshot("*"), map[string]string{"onlyb:1": "one"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("b's Redis holds %v, want %v", got, want)
	}
}
