package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestTLS runs the binary against a Redis that speaks only TLS and wants a
// client certificate, and a PostgreSQL that lets the role in only over
// TLS with its client certificate, every certificate signed by a CA of the
// test's own. Without the CA, or without a client certificate, a command
// fails with one line saying why. With them, verify-full and the HTTP API
// on HTTPS, the daemon streams (its replication connection over TLS too),
// fills, takes a PUT over HTTPS, and cachesync status asks it over HTTPS.
func TestTLS(t *testing.T) {
	certs := testenv.NewCerts(t, "cachesync")
	pg := testenv.StartPostgres(t, testenv.WithPostgresTLS(certs), testenv.WithPostgresHBA("hostssl all all 127.0.0.1/32 cert"))
	w := world.NewOnServers(t, pg, testenv.StartRedis(t, testenv.WithRedisTLS(certs)), itemsSchema(10))
	// This test is about TLS; TestLeastPrivilege is about privileges.
	w.Exec(`CREATE ROLE cachesync LOGIN SUPERUSER`)
	ctx := context.Background()

	pgURL := fmt.Sprintf("postgres://cachesync@127.0.0.1:%d/%s?sslmode=verify-full&sslrootcert=%s&sslcert=%s&sslkey=%s",
		pg.Port, w.Name, certs.CA, certs.ClientCert, certs.ClientKey)
	redisTLS := fmt.Sprintf("{ca_file: %q, cert_file: %q, key_file: %q}", certs.CA, certs.ClientCert, certs.ClientKey)
	config := func(redisTLS, pgURL, more string) string {
		yaml := fmt.Sprintf("name: %s\nredis: {url: %q%s}\nsources:\n  db: {url: %q}\ncaches:\n%s%s", w.Name, w.Redis.URL(), redisTLS, pgURL, itemsCaches, more)
		return w.WriteYAML(yaml)
	}
	// What a user sees when something is missing: one line, naming it.
	for _, c := range []struct {
		name, redisTLS, pgURL string
		want                  []string
	}{
		{"redis without the CA", "", pgURL, []string{"cachesync: redis: ", "certificate signed by unknown authority"}},
		{"redis without a client certificate", fmt.Sprintf(", tls: {ca_file: %q}", certs.CA), pgURL, []string{"cachesync: redis: ", "the server asked for a client certificate"}},
		{"postgres without sslrootcert", ", tls: " + redisTLS, strings.Replace(pgURL, "sslrootcert="+certs.CA+"&", "", 1),
			[]string{"cachesync: sources.db.url: ", "certificate signed by unknown authority"}},
	} {
		path := config(c.redisTLS, c.pgURL, "")
		for _, command := range []string{"run", "check"} {
			code, _, stderr := world.CLI(t, nil, command, "--config", path)
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			t.Logf("%s, cachesync %s: exit %d: %s", c.name, command, code, stderr)
			if code != 1 || len(lines) != 1 {
				t.Errorf("%s, cachesync %s: exit %d, stderr %q; want 1 and one line", c.name, command, code, stderr)
			}
			for _, s := range c.want {
				if !strings.Contains(stderr, s) {
					t.Errorf("%s, cachesync %s: stderr %q does not say %q", c.name, command, stderr, s)
				}
			}
		}
	}

	// Everything over TLS, the HTTP API too.
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := config(", tls: "+redisTLS, pgURL, fmt.Sprintf("http:\n  addr: 127.0.0.1:%d\n  tls: {cert_file: %q, key_file: %q}\n", port, certs.ServerCert, certs.ServerKey))
	d := w.Daemon(cfg)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: certs.Client}}
	base := fmt.Sprintf("https://127.0.0.1:%d", port)
	do := func(method, path, body string) (int, string) { return httpDoWith(t, client, method, base+path, body) }
	d.WaitFor("GET /readyz over HTTPS = 200", func() bool { code, _ := do("GET", "/readyz", ""); return code == 200 })
	waitItems(w)
	w.Exec(`UPDATE items SET val = 31 WHERE id = 3`)
	waitItems(w)
	w.Do(w.RC.B().Del().Key("item:4").Build())
	if code, body := do("GET", "/v1/caches/items/item:4", ""); code != 200 || body != `{"id":4,"val":40,"note":"note 4"}` {
		t.Fatalf("GET item:4 over HTTPS: %d %s", code, body)
	}
	if code, body := do("PUT", "/v1/caches/items/item:5", `{"val": 55, "note": "over tls"}`); code != 204 {
		t.Fatalf("PUT item:5 over HTTPS: %d %s", code, body)
	}
	if v, _ := w.Get("item:5"); v != `{"id":5,"val":55,"note":"over tls"}` {
		t.Fatalf("redis item:5 = %s after the PUT", v)
	}
	if code, body := httpDo(t, "GET", fmt.Sprintf("http://127.0.0.1:%d/healthz", port), ""); code == 200 {
		t.Fatalf("plain HTTP answered: %d %s", code, body)
	}
	// Every session of the role is TLS (pg_hba.conf lets it in no other
	// way), the change feed's replication connection among them.
	var plain, walsenders int
	err = w.DB.QueryRow(ctx, `SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FILTER (WHERE a.backend_type = 'walsender')
		FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'cachesync'`).Scan(&plain, &walsenders)
	if err != nil || plain != 0 || walsenders == 0 {
		t.Fatalf("sessions of cachesync: %d without TLS, %d replication ones (%v)", plain, walsenders, err)
	}
	// status asks the daemon over HTTPS; once it is gone, it reads Redis
	// and PostgreSQL itself, over TLS.
	live := func() bool {
		code, stdout, stderr := world.CLI(t, nil, "status", "--config", cfg, "--json")
		var r struct {
			Live  bool `json:"live"`
			Redis struct {
				Up bool `json:"up"`
			} `json:"redis"`
		}
		if err := json.Unmarshal([]byte(stdout), &r); code != 0 || err != nil || !r.Redis.Up {
			t.Fatalf("cachesync status: exit %d, redis up %v, %v\n%s%s", code, r.Redis.Up, err, stdout, stderr)
		}
		return r.Live
	}
	if !live() {
		t.Fatal("cachesync status did not get the daemon's report over HTTPS")
	}
	d.Stop()
	if live() {
		t.Fatal("cachesync status says live with the daemon stopped")
	}
}
