package config

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/binding"
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
	if err != nil || opt.Username != "user" || opt.Password != "secret" || opt.SelectDB != 2 || opt.ClusterOption.ShardsRefreshInterval <= 0 {
		t.Fatalf("redis option %+v, %v", opt, err)
	}
	if p.Fingerprint() == s.Fingerprint() || p.Fingerprint() != c.Caches["prices"].Fingerprint() {
		t.Fatal("fingerprints do not tell caches apart")
	}
}

// TestTargets loads a config with two Redis targets: a cache holds all of
// them unless it lists some, and each target's view of the config has its
// Redis and its caches.
func TestTargets(t *testing.T) {
	c, err := Load(strings.NewReader(`name: shop
redis:
  - {name: eu, url: "redis://127.0.0.1:6379/0"}
  - {name: us, url: "rediss://127.0.0.1:6380/0", buffer: 5000}
sources:
  db: {url: "postgres://u:pw@127.0.0.1:5432/db"}
caches:
  prices: {table: inventory, key: "price:{item}"}
  stock: {table: inventory, key: "stock:{item}", targets: [us]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.TargetNames(); !slices.Equal(got, []string{"eu", "us"}) {
		t.Fatalf("targets %v", got)
	}
	if c.Redis.Name != "eu" || c.Targets[0].Buffer != DefaultBuffer || c.Targets[1].Buffer != 5000 {
		t.Fatalf("first target %+v, targets %+v", c.Redis, c.Targets)
	}
	if got := c.Caches["prices"].Targets; !slices.Equal(got, []string{"eu", "us"}) {
		t.Fatalf("prices targets %v", got)
	}
	us := c.ForTarget("us")
	if us.Redis.Name != "us" || !slices.Equal(us.CacheNames(), []string{"prices", "stock"}) {
		t.Fatalf("us sees %s and %v", us.Redis.Name, us.CacheNames())
	}
	if eu := c.ForTarget("eu"); eu.Redis.Name != "eu" || !slices.Equal(eu.CacheNames(), []string{"prices"}) {
		t.Fatalf("eu sees %s and %v", eu.Redis.Name, eu.CacheNames())
	}
	if opt, err := us.RedisOption(); err != nil || opt.TLSConfig == nil || opt.InitAddress[0] != "127.0.0.1:6380" {
		t.Fatalf("us option %+v, %v", opt, err)
	}
	if len(c.Caches) != 2 {
		t.Fatal("ForTarget changed the config")
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
		{"redis typo", strings.Replace(base, `{url:`, `{ulr: x, url:`, 1), "redis: unmarshal errors: line 2: field ulr not found"},
		{"target tls typo", strings.Replace(base, `redis: {url: "redis://127.0.0.1:6379/0"}`, "redis:\n  - {name: eu, url: \"rediss://127.0.0.1:6379/0\"}\n  - name: us\n    url: \"rediss://127.0.0.1:6380/0\"\n    tls: {ca: x}", 1), "redis: unmarshal errors: line 6: field ca not found"},
		{"redis scalar", strings.Replace(base, `{url: "redis://127.0.0.1:6379/0"}`, `redis://127.0.0.1:6379/0`, 1), "redis must be a mapping"},
		{"targets unnamed", strings.Replace(base, `redis: {url: "redis://127.0.0.1:6379/0"}`, "redis:\n  - {url: \"redis://127.0.0.1:6379/0\"}\n  - {name: us, url: \"redis://127.0.0.1:6380/0\"}", 1), "config: redis[0].name:"},
		{"targets same name", strings.Replace(base, `redis: {url: "redis://127.0.0.1:6379/0"}`, "redis:\n  - {name: eu, url: \"redis://127.0.0.1:6379/0\"}\n  - {name: eu, url: \"redis://127.0.0.1:6380/0\"}", 1), "config: redis.eu.name: \"eu\" names two targets"},
		{"targets same redis", strings.Replace(base, `redis: {url: "redis://127.0.0.1:6379/0"}`, "redis:\n  - {name: eu, url: \"redis://127.0.0.1:6379/0\"}\n  - {name: us, url: \"redis://127.0.0.1:6379/0\"}", 1), "config: redis.us.url: the same Redis as target \"eu\""},
		{"target url", strings.Replace(base, `redis: {url: "redis://127.0.0.1:6379/0"}`, "redis:\n  - {name: eu, url: \"redis://127.0.0.1:6379/0\"}\n  - {name: us, url: \"http://127.0.0.1:6380\"}", 1), "config: redis.us.url:"},
		{"target buffer", strings.Replace(base, `redis: {url: "redis://127.0.0.1:6379/0"}`, "redis:\n  - {name: eu, url: \"redis://127.0.0.1:6379/0\", buffer: -1}\n  - {name: us, url: \"redis://127.0.0.1:6380/0\"}", 1), "config: redis.eu.buffer:"},
		{"unknown target", strings.Replace(strings.Replace(base, `redis: {url: "redis://127.0.0.1:6379/0"}`, "redis:\n  - {name: eu, url: \"redis://127.0.0.1:6379/0\"}\n  - {name: us, url: \"redis://127.0.0.1:6380/0\"}", 1), "table: inventory", "table: inventory, targets: [ap]", 1), "config: caches.prices.targets: unknown target \"ap\" (targets: eu, us)"},
		{"target twice", strings.Replace(strings.Replace(base, `redis: {url: "redis://127.0.0.1:6379/0"}`, "redis:\n  - {name: eu, url: \"redis://127.0.0.1:6379/0\"}\n  - {name: us, url: \"redis://127.0.0.1:6380/0\"}", 1), "table: inventory", "table: inventory, targets: [us, us]", 1), "config: caches.prices.targets: target \"us\" is listed twice"},
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

// secretRE matches every password of TestURLErrorsHideSecrets: each run of
// letters and digits in one holds "Pw" and two digits, so a password shown
// whole or in part is found.
var secretRE = regexp.MustCompile(`Pw[0-9]{2}`)

// TestURLErrorsHideSecrets loads configs whose Redis or PostgreSQL URL holds a
// password and is wrong in some way, parsable or not: the error names the
// field, on one line, and shows no part of the password.
func TestURLErrorsHideSecrets(t *testing.T) {
	t.Setenv("CACHESYNC_TEST_REDIS_URL", "redis://:EnvPw31@127.0.0.1:99999x/0")
	t.Setenv("CACHESYNC_TEST_PG_URL", "postgres://u:PgEnvPw57@127.0.0.1:99999x/db")
	const redis, pg = "redis.url", "sources.db.url"
	tests := []struct{ name, field, url string }{
		{"bad port", redis, "redis://:BadPortPw11@127.0.0.1:99999x/0"},
		{"bad escape in password", redis, "redis://user:EscPw12%zzEscPw12@127.0.0.1:6379/0"},
		{"bad escape in host", redis, "redis://:HostEscPw13@127.0.0.%zz1:6379/0"},
		{"space in password", redis, "redis://:SpacePw14 SpacePw14@127.0.0.1:6379/0"},
		{"space in host", redis, "redis://:HostSpacePw15@127.0.0.1 :6379/0"},
		{"no host", redis, "redis://:NoHostPw16@/0"},
		{"nothing after the password", redis, "redis://:NoHostPw17@"},
		{"unix bad escape", redis, "unix://:UnixPw18%zz@/tmp/redis.sock"},
		{"unix bad db", redis, "unix://:UnixPw19@/tmp/redis.sock?db=x"},
		{"rediss bad port", redis, "rediss://user:TlsPw20@127.0.0.1:99999x/0"},
		{"at sign in password", redis, "redis://:AtPw21@AtPw21@127.0.0.1:99999x/0"},
		{"colon in password", redis, "redis://user:ColonPw22:ColonPw22@127.0.0.1:99999x/0"},
		{"slash in password", redis, "redis://:SlashPw23/SlashPw23@127.0.0.1:6379/0"},
		{"slash after a port-like password", redis, "redis://:1234/SlashPw24@127.0.0.1:6379/0"},
		{"hash after a port-like password", redis, "redis://user:1234#HashPw25@127.0.0.1:6379/0"},
		{"question mark after a port-like password", redis, "redis://user:1234?QueryPw26@127.0.0.1:6379/0"},
		{"unix slash after a port-like password", redis, "unix://:1234/UnixPw35@/tmp/redis.sock"},
		{"no scheme", redis, "user:NoSchemePw27@127.0.0.1:6379"},
		{"no slashes", redis, "redis:OpaquePw28@127.0.0.1:6379/0"},
		{"wrong scheme", redis, "http://user:HttpPw29@127.0.0.1:6379"},
		{"bad db", redis, "redis://:BadDbPw30@127.0.0.1:6379/x"},
		{"env var", redis, "${CACHESYNC_TEST_REDIS_URL}"},
		{"password without user", redis, "redis://OnlyPw32@127.0.0.1:99999x/0"},
		{"trailing percent", redis, "redis://:TrailPw33%@127.0.0.1:6379/0"},
		{"quote in password", redis, `redis://:QuotePw34"QuotePw34@127.0.0.1:99999x/0`},
		{"pg bad port", pg, "postgres://u:PgPortPw41@127.0.0.1:99999x/db"},
		{"pg bad escape in password", pg, "postgres://u:PgEscPw42%zzPgEscPw42@127.0.0.1:5432/db"},
		{"pg bad escape in host", pg, "postgres://u:PgHostPw43@127.0.0.%zz1:5432/db"},
		{"pg space in password", pg, "postgres://u:PgSpacePw44 PgSpacePw44@127.0.0.1:5432/db"},
		{"pg slash in password", pg, "postgres://u:PgSlashPw45/PgSlashPw45@127.0.0.1:5432/db"},
		{"pg at sign in password", pg, "postgres://u:PgAtPw46@PgAtPw46@127.0.0.1:5432/db"},
		{"pg colon in password, bad port", pg, "postgres://u:PgColonPw47:PgColonPw47@127.0.0.1:99999x/db"},
		{"pg slash after a port-like password", pg, "postgres://u:1234/PgSlashPw48@127.0.0.1:5432/db"},
		{"pg no host, bad port", pg, "postgres://u:PgNoHostPw49@:99999x/db"},
		{"pg question mark and slash in password", pg, "postgres://u:PgQPw50/x?PgQPw50@127.0.0.1/db"},
		{"postgresql bad sslmode", pg, "postgresql://u:PgPw51@127.0.0.1:5432/db?sslmode=bogus"},
		{"pg query password, bad timeout", pg, "postgres://127.0.0.1:5432/db?password=PgQueryPw52&connect_timeout=x"},
		{"pg query password with ampersand", pg, "postgres://127.0.0.1/db?password=PgAmpPw53&PgAmpPw53&sslmode=disable"},
		{"pg query password bad escape", pg, "postgres://127.0.0.1:5432/db?password=PgQueryPw54%zz"},
		{"pg unknown scheme", pg, "postgre://u:PgSchemePw55@127.0.0.1:5432/db"},
		{"pg backtick in password", pg, "postgres://u:PgTickPw56`PgTickPw56@127.0.0.1:99999x/db"},
		{"pg env var", pg, "${CACHESYNC_TEST_PG_URL}"},
		{"kv bad port", pg, "host=127.0.0.1 port=99999x user=u password=PgKvPw58 dbname=db"},
		{"kv unterminated quote", pg, "host=127.0.0.1 user=u password='PgKvPw59 dbname=db"},
		{"kv key without value", pg, "host=127.0.0.1 password=PgKvPw60 port"},
		{"kv space in password", pg, "host=127.0.0.1 password=PgKvPw61 PgKvPw61 port=5432"},
		{"kv backtick in password", pg, "host=127.0.0.1 password=PgTickPw62`PgTickPw62 port=x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			urls := map[string]string{redis: "redis://127.0.0.1:6379/0", pg: "postgres://u@127.0.0.1:5432/db"}
			urls[tt.field] = tt.url
			yaml := fmt.Sprintf("name: shop\nredis: {url: %s}\nsources:\n  db: {url: %s}\ncaches:\n  prices: {table: inventory, key: \"price:{item}\"}\n",
				yamlQuote(urls[redis]), yamlQuote(urls[pg]))
			_, err := Load(strings.NewReader(yaml))
			if err == nil {
				t.Fatalf("%s loads without an error", tt.url)
			}
			msg := err.Error()
			if secretRE.MatchString(msg) {
				t.Errorf("the error shows the password: %s", msg)
			}
			if !strings.HasPrefix(msg, "config: "+tt.field+": ") || strings.Contains(msg, "\n") {
				t.Errorf("the error is not one line naming %s: %q", tt.field, msg)
			}
		})
	}
}

// yamlQuote quotes s as a single-quoted YAML scalar.
func yamlQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"redis://user:secret@127.0.0.1:6379/0":    "redis://user:xxxxx@127.0.0.1:6379/0",
		"redis://:secret@127.0.0.1:99999x/0":      "redis://:xxxxx@127.0.0.1:99999x/0",
		"redis://secret@127.0.0.1:6379/0":         "redis://xxxxx@127.0.0.1:6379/0",
		"redis://user:se@c/r:et@127.0.0.1:6379/0": "redis://user:xxxxx@127.0.0.1:6379/0",
		"redis://us/er:secret@127.0.0.1:6379/0":   "redis://xxxxx@127.0.0.1:6379/0",
		"user:secret@127.0.0.1:6379":              "user:xxxxx@127.0.0.1:6379",
		"redis://127.0.0.1:99999x/0":              "redis://127.0.0.1:99999x/0",
		"postgres://h/db?password=se&cret&x=1":    "postgres://h/db?password=xxxxx&x=1",
		"host=h password='se cret' port=x":        "host=h password=xxxxx port=x",
		"host=h password=se cret port=x":          "host=h password=xxxxx port=x",
		"host=h PASSWORD=secret":                  "host=h PASSWORD=xxxxx",
		"postgres://h/db?sslpassword=secret&a=b":  "postgres://h/db?sslpassword=xxxxx&a=b",
		"postgres://h/db?pass%77ord=secret":       "postgres://h/db?pass%77ord=xxxxx",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
