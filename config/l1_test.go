package config

import (
	"strings"
	"testing"
)

// TestL1Config reads l1's defaults and refuses bad values.
func TestL1Config(t *testing.T) {
	for _, c := range []struct {
		l1, err string
		want    L1
	}{
		{l1: "{}", want: L1{Max: DefaultL1Max, TTL: DefaultL1TTL}},
		{l1: "{max: 512KiB, ttl: 5s}", want: L1{Max: 512 << 10, TTL: 5e9}},
		{l1: "{max: 2000}", want: L1{Max: 2000, TTL: DefaultL1TTL}},
		{l1: "{max: lots}", err: `"lots" is not a size like 64MiB`},
		{l1: "{ttl: -1s}", err: "caches.c.l1.ttl: must not be negative"},
	} {
		t.Run(c.l1, func(t *testing.T) {
			yaml := "name: t\nredis: {url: redis://127.0.0.1:1}\nsources: {db: {url: postgres://x}}\ncaches:\n  c: {table: t, key: \"k:{id}\", l1: " + c.l1 + "}\n"
			cfg, err := Load(strings.NewReader(yaml))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want one saying %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := *cfg.Caches["c"].L1; got != c.want {
				t.Fatalf("l1 = %+v, want %+v", got, c.want)
			}
		})
	}
}
