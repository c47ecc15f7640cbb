package config

import (
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// rateLimits decodes a ratelimits section as Load does and validates it.
func rateLimits(t *testing.T, section string) (map[string]RateLimit, error) {
	t.Helper()
	var c Config
	dec := yaml.NewDecoder(strings.NewReader("ratelimits:\n" + section))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("decode %q: %v", section, err)
	}
	return c.RateLimits, c.validateRateLimits()
}

func TestRateLimits(t *testing.T) {
	got, err := rateLimits(t, `  login: {algorithm: gcra, limit: 5, window: 1m, burst: 2}
  api: {algorithm: sliding, limit: 100, window: 1s}
  cheap: {algorithm: fixed, limit: 1000, window: 1h}
`)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]RateLimit{
		"login": {Algorithm: "gcra", Limit: 5, Window: time.Minute, Burst: 2},
		"api":   {Algorithm: "sliding", Limit: 100, Window: time.Second},
		"cheap": {Algorithm: "fixed", Limit: 1000, Window: time.Hour},
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s = %+v, want %+v", name, got[name], w)
		}
	}
	for _, tt := range []struct{ name, section, want string }{
		{"no algorithm", `  a: {limit: 5, window: 1m}`, "config: ratelimits.a.algorithm: missing"},
		{"unknown algorithm", `  a: {algorithm: leaky, limit: 5, window: 1m}`, `config: ratelimits.a.algorithm: "leaky" is not one of`},
		{"no limit", `  a: {algorithm: gcra, window: 1m}`, "config: ratelimits.a.limit: 0: want at least 1"},
		{"negative limit", `  a: {algorithm: gcra, limit: -3, window: 1m}`, "config: ratelimits.a.limit: -3"},
		{"no window", `  a: {algorithm: fixed, limit: 5}`, "config: ratelimits.a.window: 0s: want at least 1ms"},
		{"tiny window", `  a: {algorithm: fixed, limit: 5, window: 10us}`, "config: ratelimits.a.window: 10µs"},
		{"negative burst", `  a: {algorithm: gcra, limit: 5, window: 1m, burst: -1}`, "config: ratelimits.a.burst: must not be negative"},
		{"burst of fixed", `  a: {algorithm: fixed, limit: 5, window: 1m, burst: 2}`, "config: ratelimits.a.burst: only gcra has a burst"},
		{"bad name", `  Log-In: {algorithm: fixed, limit: 5, window: 1m}`, "config: ratelimits.Log-In: a policy's name"},
		{"name with a brace", `  "a{b": {algorithm: fixed, limit: 5, window: 1m}`, "config: ratelimits.a{b: a policy's name"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := rateLimits(t, tt.section+"\n")
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("%s: %v, want %q", tt.section, err, tt.want)
			}
		})
	}
}
