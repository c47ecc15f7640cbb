package engine_test

import (
	"context"
	"errors"
	"testing"

	"github.com/cachesync/cachesync/internal/engine"
)

// TestForeignKeysLeftAlone: a key given to a cache that is not its own
// (another cache's, whose template parses it too; cachesync's own) is never
// removed by Reload or Invalidate; a key of the cache's spelled otherwise
// than its row's key (left by an older version) is, by both.
func TestForeignKeysLeftAlone(t *testing.T) {
	e := newEnv(t, `CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a VALUES (1, 'a1');
		CREATE TABLE b (id int, n int, v text, PRIMARY KEY (id, n)); INSERT INTO b VALUES (1, 2, 'b12')`)
	cfg := e.Config(`  a: {table: a, key: "user:{id}", value: {format: string, column: v}, sync: none, ttl: 1h}
  b: {table: b, key: "user:{id}:{n}", value: {format: string, column: v}, sync: none, ttl: 1h}
`)
	c := e.Open(cfg)
	ctx := context.Background()
	state := "cachesync:state:" + e.Name
	for _, k := range []string{"user:1:2", state, "user:01", "user:1"} {
		if err := e.RC.Do(ctx, e.RC.B().Set().Key(k).Value("old").Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Reload(ctx, "a", []string{"user:1:2", state, "user:01", "user:1"}, true); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]bool{"user:1:2": true, state: true, "user:01": false, "user:1": true} {
		if _, ok := e.Get(k); ok != want {
			t.Errorf("after Reload of a: %s present %v, want %v", k, ok, want)
		}
	}
	if v, _ := e.Get("user:1"); v != "a1" {
		t.Errorf("user:1 = %q after its reload", v)
	}
	for _, k := range []string{"user:1:2", state} {
		if err := c.Invalidate(ctx, "a", k); !errors.Is(err, engine.ErrBadKey) {
			t.Errorf("Invalidate(a, %s) = %v, want ErrBadKey", k, err)
		}
		if _, ok := e.Get(k); !ok {
			t.Errorf("Invalidate(a, %s) removed it", k)
		}
	}
	e.RC.Do(ctx, e.RC.B().Set().Key("user:+1").Value("old").Build())
	if err := c.Invalidate(ctx, "a", "user:+1"); err != nil {
		t.Errorf("Invalidate(a, user:+1) = %v", err)
	}
	if _, ok := e.Get("user:+1"); ok {
		t.Error("Invalidate(a, user:+1) left it")
	}
	// A row's values name its key as the feed spells it.
	if k, err := c.KeyOf("a", map[string]any{"id": "007"}); err != nil || k != "user:7" {
		t.Errorf(`KeyOf(a, {"id": "007"}) = %q, %v; want user:7`, k, err)
	}
	// Each cache gets its own keys by their types.
	if _, err := c.ParseKey("b", "user:1:2"); err != nil {
		t.Errorf("ParseKey(b, user:1:2) = %v", err)
	}
	if _, err := c.ParseKey("a", "user:1:2"); !errors.Is(err, engine.ErrBadKey) {
		t.Errorf("ParseKey(a, user:1:2) = %v, want ErrBadKey", err)
	}
}
