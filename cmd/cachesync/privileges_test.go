package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// readmePrivileges returns the README's Redis ACL line (ACL SETUSER ...)
// and the statements of its PostgreSQL role block: what a user is told to
// give cachesync, read where the user reads it.
func readmePrivileges(t *testing.T) (acl []string, sql []string) {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	for _, line := range strings.Split(readme, "\n") {
		if strings.HasPrefix(line, "ACL SETUSER cachesync ") {
			acl = strings.Fields(line)
		}
	}
	block := regexp.MustCompile("(?s)```sql\n(CREATE ROLE cachesync .*?)```").FindStringSubmatch(readme)
	if acl == nil || block == nil {
		t.Fatal("README.md: no line beginning ACL SETUSER cachesync, or no ```sql block beginning CREATE ROLE cachesync")
	}
	for _, stmt := range strings.Split(block[1], ";") {
		var lines []string
		for _, l := range strings.Split(stmt, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "--") {
				lines = append(lines, l)
			}
		}
		if len(lines) > 0 {
			sql = append(sql, strings.Join(lines, " "))
		}
	}
	return acl, sql
}

// readmeRedisUser makes a Redis user on w's Redis with the README's ACL
// rules, a password of its own and the key patterns of the test's caches
// (as the README says to add), and returns a URL naming the user and the
// file holding the password (redis.password_file).
func readmeRedisUser(t *testing.T, w *world.World, keys ...string) (url, file string) {
	t.Helper()
	acl, _ := readmePrivileges(t)
	pw := newSecret(t)
	rules := append(slices.Clone(acl[3:]), keys...)
	for i, r := range rules {
		if r == ">SECRET" {
			rules[i] = ">" + pw
		}
	}
	w.Redis.SetUser(t, acl[2], rules...)
	file = filepath.Join(t.TempDir(), "redis-password")
	writeSecret(t, file, pw)
	return "redis://" + acl[2] + "@" + w.Redis.Addr + "/0", file
}

// requireNoACLRefusal fails the test if w's Redis refused anything: ACL
// LOG lists every command, key or channel a rule denied (and failed logins).
func requireNoACLRefusal(t *testing.T, w *world.World) {
	t.Helper()
	entries, err := w.RC.Do(context.Background(), w.RC.B().AclLog().Count(100).Build()).ToArray()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		m, _ := e.AsMap()
		field := func(k string) string { v := m[k]; s, _ := v.ToString(); return s }
		t.Errorf("ACL LOG: %s refused %s %q (user %s)", field("context"), field("reason"), field("object"), field("username"))
	}
}

// makeRole runs the README's statements that make the PostgreSQL role on
// w's database, with the password pw and the database's name (the
// publication is the config's: the tests name it shop).
func makeRole(w *world.World, statements []string, pw string) {
	w.T.Helper()
	for _, stmt := range statements {
		stmt = strings.ReplaceAll(stmt, "'SECRET'", "'"+pw+"'")
		stmt = strings.ReplaceAll(stmt, "DATABASE shop ", "DATABASE "+w.Name+" ")
		w.Exec(stmt)
	}
}

// newSecret is a random password.
func newSecret(t *testing.T) string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "Pw" + hex.EncodeToString(b)
}

// writeSecret replaces the file at path with text, as a secret store
// does: a new file renamed over the old one.
func writeSecret(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path+".new", []byte(text+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// privilegeCaches are the grocery example's tables as caches that use
// every privilege: prices streams, fills what plain clients miss, takes
// Put and PutBehind and keeps its hits in an l1, stock streams and
// refreshes on expiry.
const privilegeCaches = `  prices: {table: public.inventory, key: "price:{item}", value: {format: json, columns: {item: item, price: price}}, writes: behind, fill: on-miss, l1: {}}
  stock: {table: public.store_stock, key: "stock:{store}:{item}", value: {format: hash, columns: {qty: qty}}, ttl: 2s, refresh: on-expiry}
`

// TestLeastPrivilege runs the daemon as a Redis user with exactly the
// README's ACL rules and a PostgreSQL role with exactly its grants, both
// passwords read from files, and shows the main job works: the change
// feed, a read-through fill, a fill of a plain client's miss, Put, the
// write-behind drain and refresh on expiry, and check and status after,
// with no command refused (ACL LOG). Then both passwords are rotated (the
// file replaced, the old password revoked, the daemon's connections
// killed) and it keeps working on the new ones; no output shows a
// password.
func TestLeastPrivilege(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.WithPostgresHBA("host all all 127.0.0.1/32 scram-sha-256"))
	schema, err := os.ReadFile("../../examples/grocery.sql")
	if err != nil {
		t.Fatal(err)
	}
	w := world.NewOnServers(t, pg, testenv.StartRedis(t), string(schema))
	ctx := context.Background()
	acl, grants := readmePrivileges(t)
	dir := t.TempDir()
	redisPw, pgPw := newSecret(t), newSecret(t)
	secrets := []string{redisPw, pgPw}

	// The Redis user, with the README's rules but the password.
	user := acl[2]
	rules := acl[3:]
	for i, r := range rules {
		if r == ">SECRET" {
			rules[i] = ">" + redisPw
		}
	}
	w.Redis.SetUser(t, user, rules...)
	redisFile := filepath.Join(dir, "redis-password")
	writeSecret(t, redisFile, redisPw)

	makeRole(w, grants, pgPw)
	pgFile := filepath.Join(dir, "pgpass")
	writePass := func(pw string) {
		writeSecret(t, pgFile, fmt.Sprintf("127.0.0.1:%d:%s:cachesync:%s", pg.Port, w.Name, pw))
	}
	writePass(pgPw)

	yaml := fmt.Sprintf("name: shop\nredis: {url: %q, password_file: %q}\nsources:\n  catalog: {url: %q}\ncaches:\n%s",
		"redis://"+user+"@"+w.Redis.Addr+"/0", redisFile,
		fmt.Sprintf("postgres://cachesync@127.0.0.1:%d/%s?sslmode=disable&passfile=%s", pg.Port, w.Name, pgFile), privilegeCaches)
	const key = "privilege-test-key-0123456789"
	d, base, cfg := serve(w, yaml, fmt.Sprintf("  keys:\n    - {name: t, key: %q, scopes: [read, write]}\n", key))
	do := func(method, path, body string) (int, string) { return httpDo(t, method, base+path, body, key) }

	// The main job, run before and after the rotation; n tells the rounds
	// apart.
	mainJob := func(n int) {
		t.Helper()
		// Change feed.
		w.Exec(`UPDATE inventory SET price = $1 WHERE item = 'apple'`, fmt.Sprintf("1.%02d", n))
		want := fmt.Sprintf(`{"item":"apple","price":1.%02d}`, n)
		d.WaitFor("the feed's price:apple = "+want, func() bool { v, _ := w.Get("price:apple"); return v == want })
		// Read-through: a key gone from Redis is filled by a GET.
		w.Do(w.RC.B().Del().Key("price:banana").Build())
		var status int
		var body string
		d.WaitFor("GET price:banana = 200", func() bool { status, body = do("GET", "/v1/caches/prices/price:banana", ""); return status == 200 })
		if body != `{"item":"banana","price":0.59}` {
			t.Fatalf("GET price:banana = %s", body)
		}
		if v, _ := w.Get("price:banana"); v != body {
			t.Fatalf("after the read-through, redis price:banana = %q, want %s", v, body)
		}
		// A plain client's miss, filled by the daemon (fill: on-miss).
		w.Do(w.RC.B().Del().Key("price:lemon").Build())
		d.WaitFor("price:lemon filled after a plain client's miss", func() bool {
			_, ok := w.Get("price:lemon")
			return ok
		})
		// Put (write-through).
		price := fmt.Sprintf("4.%02d", n)
		d.WaitFor("PUT price:cherry = 204", func() bool {
			status, body = do("PUT", "/v1/caches/prices/price:cherry", `{"price": `+price+`, "category": "fruit"}`)
			return status == 204
		})
		if v, _ := w.Get("price:cherry"); v != `{"item":"cherry","price":`+price+`}` {
			t.Fatalf("after the PUT, redis price:cherry = %s", v)
		}
		// Write-behind, drained into the table.
		price = fmt.Sprintf("3.%02d", n)
		d.WaitFor("PUT price:grape ?mode=behind = 204", func() bool {
			status, body = do("PUT", "/v1/caches/prices/price:grape?mode=behind", `{"price": `+price+`, "category": "fruit"}`)
			return status == 204
		})
		d.WaitFor("grape's price drained into the table", func() bool {
			var got string
			err := w.DB.QueryRow(ctx, `SELECT price::text FROM inventory WHERE item = 'grape'`).Scan(&got)
			return err == nil && got == price
		})
		// Refresh on expiry: stock's keys expire every 2s and come back.
		before := scrape(t, base)[`cachesync_refresh_keys_total{cache="stock",result="refreshed",target=""}`]
		d.WaitFor("stock keys refreshed on expiry", func() bool {
			return scrape(t, base)[`cachesync_refresh_keys_total{cache="stock",result="refreshed",target=""}`] > before
		})
		if m := scrape(t, base); m[`cachesync_keyspace_events_ok{feature="refresh",target=""}`] != 1 {
			t.Fatalf("cachesync_keyspace_events_ok{feature=\"refresh\",target=\"\"} = %v, want 1", m[`cachesync_keyspace_events_ok{feature="refresh",target=""}`])
		}
	}
	mainJob(1)

	// Rotation: the new password in the file, the old one revoked, the
	// daemon's connections ended. Its new connections must read the files.
	redisPw2, pgPw2 := newSecret(t), newSecret(t)
	secrets = append(secrets, redisPw2, pgPw2)
	writeSecret(t, redisFile, redisPw2)
	writePass(pgPw2)
	w.Redis.SetUser(t, user, "resetpass", ">"+redisPw2)
	w.Do(w.RC.B().ClientKill().User(user).Build())
	w.Exec(`ALTER ROLE cachesync PASSWORD '` + pgPw2 + `'`)
	w.Exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'cachesync'`)
	mainJob(2)
	world.WaitSession(t, w.DB, "a change-feed session after the rotation", `usename = 'cachesync' AND backend_type = 'walsender'`)
	// check and status, with the same privileges.
	for _, args := range [][]string{{"check", "--config", cfg}, {"status", "--config", cfg}} {
		if code, stdout, stderr := world.CLI(t, nil, args...); code != 0 {
			t.Fatalf("cachesync %s: exit %d\n%s%s", args[0], code, stdout, stderr)
		}
	}

	d.Stop()
	// status without the daemon reads Redis and PostgreSQL itself.
	if code, stdout, stderr := world.CLI(t, nil, "status", "--config", cfg); code != 0 {
		t.Fatalf("cachesync status: exit %d\n%s%s", code, stdout, stderr)
	}

	// Nothing was refused, shutting down included.
	requireNoACLRefusal(t, w)
	out := d.Stderr.String()
	if strings.Contains(out, "FOR SHARE") {
		t.Errorf("the daemon could not read FOR SHARE with the README's grants")
	}
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("the daemon's log shows a password")
		}
	}
}

// TestPublicationByOwner: with the README's grants the role may not
// publish the tables; until their owner does, the change feed retries,
// logging the statement to run, and again when the publication lacks a
// table. Once the owner ran it, the feed streams.
func TestPublicationByOwner(t *testing.T) {
	pg := testenv.StartPostgres(t)
	schema, err := os.ReadFile("../../examples/grocery.sql")
	if err != nil {
		t.Fatal(err)
	}
	w := world.NewOnServers(t, pg, testenv.StartRedis(t), string(schema))
	_, grants := readmePrivileges(t)
	makeRole(w, slices.DeleteFunc(grants, func(s string) bool { return strings.HasPrefix(s, "CREATE PUBLICATION") }), newSecret(t))
	caches := `  prices: {table: public.inventory, key: "price:{item}", value: {format: json, columns: {item: item, price: price}}}
  stock: {table: public.store_stock, key: "stock:{store}:{item}", value: {format: hash, columns: {qty: qty}}}
`
	d := w.Daemon(w.WriteYAML(fmt.Sprintf("name: shop\nredis: {url: %q}\nsources:\n  catalog: {url: %q}\ncaches:\n%s",
		w.Redis.URL(), fmt.Sprintf("postgres://cachesync@127.0.0.1:%d/%s?sslmode=disable", pg.Port, w.Name), caches)))
	d.WaitLog("as the tables' owner run: CREATE PUBLICATION cachesync_shop FOR TABLE public.inventory, public.store_stock WITH (publish_via_partition_root = true)")
	w.Exec(`CREATE PUBLICATION cachesync_shop FOR TABLE public.inventory WITH (publish_via_partition_root = true)`)
	alter := "ALTER PUBLICATION cachesync_shop SET TABLE public.inventory, public.store_stock"
	d.WaitLog("as its owner (and the tables') run: " + alter)
	w.Exec(alter)
	d.WaitLog("streaming changes")
	w.Exec(`UPDATE inventory SET price = 2.22 WHERE item = 'apple'`)
	d.WaitFor("the feed's price:apple", func() bool { v, _ := w.Get("price:apple"); return v == `{"item":"apple","price":2.22}` })
	d.Stop()
}
