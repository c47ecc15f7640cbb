package config

import (
	"fmt"
	"time"
)

// RateLimit is a named rate-limit policy the daemon's HTTP API decides
// requests against (POST /v1/ratelimits/NAME/ID): see the ratelimit
// package and docs/recipes/ratelimit.md.
type RateLimit struct {
	// Algorithm is fixed, sliding or gcra.
	Algorithm string `yaml:"algorithm"`
	// Limit is how many requests an id may make per Window.
	Limit int `yaml:"limit"`
	// Window is the length of the window, e.g. 1m (at least 1ms).
	Window time.Duration `yaml:"window"`
	// Burst is gcra's: how many requests it admits at once (Limit when 0).
	Burst int `yaml:"burst"`
}

// validateRateLimits checks c.RateLimits, naming the field at fault.
func (c *Config) validateRateLimits() error {
	for _, name := range sortedKeys(c.RateLimits) {
		field := "ratelimits." + name
		if !nameRE.MatchString(name) || len(name) > 64 {
			return FieldError(field, "a policy's name must be lower-case letters, digits and _ (at most 64), starting with a letter: it is part of a URL and of a Redis key")
		}
		if err := c.RateLimits[name].validate(field); err != nil {
			return err
		}
	}
	return nil
}

func (r RateLimit) validate(field string) error {
	switch r.Algorithm {
	case "fixed", "sliding", "gcra":
	case "":
		return FieldError(field+".algorithm", "missing: give fixed, sliding or gcra")
	default:
		return FieldError(field+".algorithm", "%q is not one of fixed, sliding, gcra", r.Algorithm)
	}
	if r.Limit < 1 {
		return FieldError(field+".limit", "%d: want at least 1 request per window", r.Limit)
	}
	if r.Window < time.Millisecond {
		return FieldError(field+".window", "%v: want at least 1ms, e.g. 1m", r.Window)
	}
	if r.Burst < 0 {
		return FieldError(field+".burst", "must not be negative")
	}
	if r.Burst > 0 && r.Algorithm != "gcra" {
		return FieldError(field+".burst", "only gcra has a burst, not %s", r.Algorithm)
	}
	return nil
}

// String describes r in one line, e.g. "gcra 100/1m0s".
func (r RateLimit) String() string { return fmt.Sprintf("%s %d/%v", r.Algorithm, r.Limit, r.Window) }
