package testenv

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"
)

// TestRedisTLS: a Redis started WithRedisTLS has no plain port, answers
// the test bed's clients over TLS after a restart too, and refuses a
// client without a certificate.
func TestRedisTLS(t *testing.T) {
	certs := NewCerts(t, "cachesync")
	r := StartRedis(t, WithRedisTLS(certs))
	if want := "rediss://" + r.Addr + "/0"; r.URL() != want {
		t.Fatalf("URL() = %q, want %q", r.URL(), want)
	}
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c := r.Client(t)
	if err := c.Do(ctx, c.B().Set().Key("k").Value("v").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := rawPing(r.Addr); err == nil {
		t.Error("a plain PING was answered")
	}
	noCert := certs.Client.Clone()
	noCert.Certificates = nil
	if _, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{r.Addr}, DisableCache: true, TLSConfig: noCert}); err == nil {
		t.Error("a client without a certificate was let in")
	} else {
		t.Logf("without a client certificate: %v", err)
	}
	if _, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{r.Addr}, DisableCache: true, TLSConfig: &tls.Config{}}); err == nil {
		t.Error("a client without the CA took the server's certificate")
	} else {
		t.Logf("without the CA: %v", err)
	}
}

// TestPostgresTLS: a PostgreSQL started WithPostgresTLS and
// WithPostgresHBA lets a role in over TLS with its client certificate,
// verify-full against the test CA, and refuses a client that does not
// know the CA; the test bed's own connections still work, after a restart
// too.
func TestPostgresTLS(t *testing.T) {
	certs := NewCerts(t, "app")
	p := StartPostgres(t, WithPostgresTLS(certs), WithPostgresHBA("hostssl all all 127.0.0.1/32 cert"))
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, p.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE ROLE app LOGIN`); err != nil {
		t.Fatal(err)
	}
	if err := p.Restart(); err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"127.0.0.1", "localhost"} {
		url := fmt.Sprintf("postgres://app@%s:%d/postgres?sslmode=verify-full&sslrootcert=%s&sslcert=%s&sslkey=%s",
			host, p.Port, certs.CA, certs.ClientCert, certs.ClientKey)
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		app, err := pgx.Connect(cctx, url)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		var ssl bool
		if err := app.QueryRow(ctx, `SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&ssl); err != nil || !ssl {
			t.Errorf("%s: ssl = %v, %v", host, ssl, err)
		}
		app.Close(ctx)
	}
	url := fmt.Sprintf("postgres://app@127.0.0.1:%d/postgres?sslmode=verify-full&sslcert=%s&sslkey=%s", p.Port, certs.ClientCert, certs.ClientKey)
	if _, err := pgx.Connect(ctx, url); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without sslrootcert: %v, want an error about the certificate", err)
	} else {
		t.Logf("without sslrootcert: %v", err)
	}
}
