package config

import (
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binding"
)

func TestLoadValid(t *testing.T) {
	t.Setenv("REDIS_URL", "redis://user:secret@127.0.0.1:6390/2")
	t.Setenv("DATABASE_URL", "postgres://postgres@127.0.0.1:5499/shop")
	c, err := LoadFile("testdata/valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p := c.Caches["prices"]
	if p.Table != "public.inventory" || p.TTL != 10*time.Minute || p.TTLJitter != 0.1 || p.Format != binding.FormatJSON || p.Sync != SyncChangefeed {
		t.Fatalf("prices = %+v", p)
	}
	if got := p.Value.Columns; len(got) != 2 || got[0] != (FieldColumn{"item", "item"}) || got[1] != (FieldColumn{"price", "price"}) {
		t.Fatalf("prices columns = %v", got)
	}
	s := c.Caches["stock"]
	if s.Source != "catalog" || s.Table != "public.store_stock" || s.Format != binding.FormatHash || len(s.Value.Columns) != 2 || s.Value.Columns[1].Field != "updated_at" {
		t.Fatalf("stock = %+v", s)
	}
	if n := c.Caches["names"]; n.Format != binding.FormatString || n.Value.Columns[0].Column != "category" || n.TTLJitter != 0.2 {
		t.Fatalf("names = %+v", n)
	}
	if c.SlotName("catalog") != "cachesync_shop" {
		t.Fatalf("slot = %s", c.SlotName("catalog"))
	}
	opt, err := c.RedisOption()
	if err != nil || opt.Username != "user" || opt.Password != "secret" || opt.SelectDB != 2 {
		t.Fatalf("redis option %+v, %v", opt, err)
	}
	if p.Fingerprint() == s.Fingerprint() || p.Fingerprint() != c.Caches["prices"].Fingerprint() {
		t.Fatal("fingerprints do not tell caches apart")
	}
}

func TestLoadErrors(t *testing.T) {
	t.Setenv("SET_VAR", "x")
	const base = `name: shop
redis: {url: "redis://127.0.0.1:6379/0"}
sources:
  db: {url: "postgres://u:pw@127.0.0.1:5432/db"}
caches:
  prices: {table: inventory, key: "price:{item}"}
`
	tests := []struct {
		name, yaml, want string
	}{
		{"empty", ``, "config: the file is empty"},
		{"bad name", strings.Replace(base, "name: shop", "name: Shop-1", 1), "config: name:"},
		{"no redis", strings.Replace(base, `redis: {url: "redis://127.0.0.1:6379/0"}`, `redis: {}`, 1), "config: redis.url: missing"},
		{"http redis", strings.Replace(base, "redis://127.0.0.1:6379/0", "http://127.0.0.1:6379", 1), "config: redis.url:"},
		{"redis db", strings.Replace(base, "6379/0", "6379/notanumber", 1), "config: redis.url:"},
		{"bad pg url", strings.Replace(base, "postgres://u:pw@127.0.0.1:5432/db", "postgres://u:pw@127.0.0.1:99999999/db", 1), "config: sources.db.url:"},
		{"unknown field", base + "colour: red\n", "field colour not found"},
		{"unset env", strings.Replace(base, "127.0.0.1:6379", "${NOT_SET_ANYWHERE}", 1), "config: environment variable NOT_SET_ANYWHERE is not set"},
		{"no caches", strings.Split(base, "caches:")[0], "config: caches: at least one cache"},
		{"unknown source", strings.Replace(base, "table: inventory", "source: other, table: inventory", 1), "config: caches.prices.source: unknown source"},
		{"no table", strings.Replace(base, "table: inventory, ", "", 1), "config: caches.prices.table: missing"},
		{"adjacent placeholders", strings.Replace(base, "price:{item}", "{a}{b}", 1), "config: caches.prices.key:"},
		{"no placeholder", strings.Replace(base, "price:{item}", "price", 1), "config: caches.prices.key:"},
		{"bad format", strings.Replace(base, `key: "price:{item}"`, `key: "price:{item}", value: {format: xml}`, 1), "config: caches.prices.value.format:"},
		{"string of two", strings.Replace(base, `key: "price:{item}"`, `key: "price:{item}", value: {format: string, columns: [a, b]}`, 1), "config: caches.prices.value.column:"},
		{"dup field", strings.Replace(base, `key: "price:{item}"`, `key: "price:{item}", value: {columns: {a: x, a: y}}`, 1), "config:"},
		{"negative ttl", strings.Replace(base, `key: "price:{item}"`, `key: "price:{item}", ttl: -1s`, 1), "config: caches.prices.ttl:"},
		{"jitter too big", strings.Replace(base, `key: "price:{item}"`, `key: "price:{item}", ttl: 1m, ttl_jitter: 150%`, 1), "config: caches.prices.ttl_jitter:"},
		{"jitter no ttl", strings.Replace(base, `key: "price:{item}"`, `key: "price:{item}", ttl_jitter: 10%`, 1), "config: caches.prices.ttl_jitter: needs a ttl"},
		{"refresh no ttl", strings.Replace(base, `key: "price:{item}"`, `key: "price:{item}", refresh: on-expiry`, 1), "config: caches.prices.refresh: on-expiry needs a ttl"},
		{"refresh unknown", strings.Replace(base, `key: "price:{item}"`, `key: "price:{item}", ttl: 1m, refresh: sometimes`, 1), "config: caches.prices.refresh: \"sometimes\" is not one of"},
		{"refresh ahead leads", strings.Replace(base, `key: "price:{item}"`, `key: "price:{item}", ttl: 1m, refresh: ahead, sync: none, writes: behind`, 1), "config: caches.prices.refresh: ahead would reload"},
		{"refresh fraction", strings.Replace(base, `key: "price:{item}"`, `key: "price:{item}", ttl: 1m, refresh: ahead, refresh_ahead: 1.5`, 1), "config: caches.prices.refresh_ahead:"},
		{"not found", strings.Replace(base, `key: "price:{item}"`, `key: "price:{item}", not_found: keep`, 1), "config: caches.prices.not_found:"},
		{"cron", strings.Replace(base, `key: "price:{item}"`, `key: "price:{item}", schedule: [{cron: "*/5 * * * *", keys: [price:apple]}]`, 1), "config: caches.prices.schedule[0].cron:"},
		{"schedule both", strings.Replace(base, `key: "price:{item}"`, `key: "price:{item}", schedule: [{cron: "0 */5 * * * *", keys: [price:apple], where: "price > 0"}]`, 1), "config: caches.prices.schedule[0]: give keys or where"},
		{"schedule key", strings.Replace(base, `key: "price:{item}"`, `key: "price:{item}", schedule: [{cron: "0 */5 * * * *", keys: [fruit:apple]}]`, 1), "config: caches.prices.schedule[0].keys:"},
		{"bad sync", strings.Replace(base, `key: "price:{item}"`, `key: "price:{item}", sync: sometimes`, 1), "config: caches.prices.sync:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(strings.NewReader(tt.yaml))
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Fatalf("error %q, want it to contain %q", msg, tt.want)
			}
			if strings.Contains(msg, "\n") {
				t.Fatalf("error has several lines: %q", msg)
			}
			if strings.Contains(msg, ":pw@") {
				t.Fatalf("error shows a password: %q", msg)
			}
		})
	}
}
