package config

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
)

// tlsYAML is a config whose redis and http sections are the arguments.
func tlsYAML(redis, http string) string {
	return fmt.Sprintf("name: shop\nredis: %s\nsources:\n  db: {url: \"postgres://u@127.0.0.1:5432/db\"}\ncaches:\n  prices: {table: inventory, key: \"price:{item}\"}\n%s", redis, http)
}

// TestRedisPasswordFile: password_file is read for every connection (a
// rotated password is used by the next one), without its line break, with
// the URL's user; a file missing at a connection fails that connection
// with an error that is not a config error (it is tried again).
func TestRedisPasswordFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(path, []byte("FilePw01\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(strings.NewReader(tlsYAML(fmt.Sprintf("{url: \"redis://app:UrlPw02@127.0.0.1:6379/0\", password_file: %q}", path), "")))
	if err != nil {
		t.Fatal(err)
	}
	opt, err := c.RedisOption()
	if err != nil || opt.Password != "" || opt.AuthCredentialsFn == nil {
		t.Fatalf("option %+v, %v: want no fixed password and an AuthCredentialsFn", opt, err)
	}
	for _, pw := range []string{"FilePw01", "FilePw03"} {
		if err := os.WriteFile(path, []byte(pw+"\r\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := opt.AuthCredentialsFn(rueidis.AuthCredentialsContext{})
		if err != nil || got.Username != "app" || got.Password != pw {
			t.Fatalf("credentials %+v, %v; want app and %s", got, err, pw)
		}
	}
	os.Remove(path)
	_, err = opt.AuthCredentialsFn(rueidis.AuthCredentialsContext{})
	if err == nil || !strings.HasPrefix(err.Error(), "redis.password_file: ") || errors.As(err, new(*Error)) {
		t.Fatalf("credentials without the file: %v; want a plain error naming redis.password_file", err)
	}
}

// TestRedisTLS: rediss:// with redis.tls verifies the server with ca_file
// and presents the client certificate, read at each handshake; without a
// client certificate it presents none.
func TestRedisTLS(t *testing.T) {
	certs := testenv.NewCerts(t, "app")
	// The client certificate's files, which the test replaces.
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	copyFile := func(from, to string) {
		t.Helper()
		b, err := os.ReadFile(from)
		if err == nil {
			err = os.WriteFile(to, b, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	copyFile(certs.ClientCert, certFile)
	copyFile(certs.ClientKey, keyFile)
	c, err := Load(strings.NewReader(tlsYAML(fmt.Sprintf("{url: \"rediss://127.0.0.1:6379/0\", tls: {ca_file: %q, cert_file: %q, key_file: %q}}",
		certs.CA, certFile, keyFile), "")))
	if err != nil {
		t.Fatal(err)
	}
	opt, err := c.RedisOption()
	if err != nil || opt.TLSConfig == nil || opt.TLSConfig.RootCAs == nil || opt.TLSConfig.ServerName != "127.0.0.1" {
		t.Fatalf("option %+v, %v: want TLS with the CA as root", opt.TLSConfig, err)
	}
	cert, err := opt.TLSConfig.GetClientCertificate(&tls.CertificateRequestInfo{})
	if err != nil || len(cert.Certificate) == 0 {
		t.Fatalf("client certificate %v, %v", cert, err)
	}
	// Renewed: the next handshake presents the new one.
	copyFile(certs.ServerCert, certFile)
	copyFile(certs.ServerKey, keyFile)
	renewed, err := opt.TLSConfig.GetClientCertificate(&tls.CertificateRequestInfo{})
	server, _ := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
	if err != nil || len(renewed.Certificate) == 0 || !bytes.Equal(renewed.Certificate[0], server.Certificate[0]) {
		t.Fatalf("client certificate after its files were replaced: %v: not the new one", err)
	}

	c, err = Load(strings.NewReader(tlsYAML(`{url: "rediss://127.0.0.1:6379/0"}`, "")))
	if err != nil {
		t.Fatal(err)
	}
	if opt, err = c.RedisOption(); err != nil || opt.TLSConfig == nil || opt.TLSConfig.RootCAs != nil {
		t.Fatalf("option %+v, %v: want TLS with the system's roots", opt.TLSConfig, err)
	}
	if cert, err := opt.TLSConfig.GetClientCertificate(&tls.CertificateRequestInfo{}); err != nil || len(cert.Certificate) != 0 {
		t.Fatalf("client certificate without cert_file: %v, %v; want none", cert, err)
	}
}

// TestTLSErrors: what the TLS and password file fields refuse, each
// with one line naming the field.
func TestTLSErrors(t *testing.T) {
	certs := testenv.NewCerts(t, "app")
	dir := t.TempDir()
	empty, notPEM, pw := filepath.Join(dir, "empty"), filepath.Join(dir, "not-pem"), filepath.Join(dir, "pw")
	for path, text := range map[string]string{empty: "\n", notPEM: "not a certificate", pw: "FilePw04"} {
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	missing := filepath.Join(dir, "missing")
	rediss := func(tls string) string { return fmt.Sprintf("{url: \"rediss://127.0.0.1:6379/0\", tls: %s}", tls) }
	http := func(tls string) string { return "http: {addr: \"127.0.0.1:8443\", tls: " + tls + "}\n" }
	tests := []struct{ name, redis, http, want string }{
		{"password and password_file", fmt.Sprintf("{url: \"redis://127.0.0.1:6379/0\", password: x, password_file: %q}", pw), "", "config: redis.password_file: set password or password_file, not both"},
		{"password_file missing", fmt.Sprintf("{url: \"redis://127.0.0.1:6379/0\", password_file: %q}", missing), "", "config: redis.password_file: open " + missing},
		{"password_file empty", fmt.Sprintf("{url: \"redis://127.0.0.1:6379/0\", password_file: %q}", empty), "", "config: redis.password_file: " + empty + " is empty"},
		{"tls without rediss", fmt.Sprintf("{url: \"redis://127.0.0.1:6379/0\", tls: {ca_file: %q}}", certs.CA), "", "config: redis.tls: needs a rediss:// URL (redis.url is redis://)"},
		{"ca_file missing", rediss(fmt.Sprintf("{ca_file: %q}", missing)), "", "config: redis.tls.ca_file: open " + missing},
		{"ca_file not PEM", rediss(fmt.Sprintf("{ca_file: %q}", notPEM)), "", "config: redis.tls.ca_file: " + notPEM + " holds no PEM certificate"},
		{"cert_file alone", rediss(fmt.Sprintf("{cert_file: %q}", certs.ClientCert)), "", "config: redis.tls.key_file: missing"},
		{"key_file alone", rediss(fmt.Sprintf("{key_file: %q}", certs.ClientKey)), "", "config: redis.tls.cert_file: missing"},
		{"key of another certificate", rediss(fmt.Sprintf("{cert_file: %q, key_file: %q}", certs.ClientCert, certs.ServerKey)), "", "config: redis.tls.cert_file: tls: private key does not match public key"},
		{"unknown tls field", rediss("{ca: x}"), "", "field ca not found"},
		{"http tls without addr", `{url: "redis://127.0.0.1:6379/0"}`, fmt.Sprintf("http: {tls: {cert_file: %q, key_file: %q}}\n", certs.ServerCert, certs.ServerKey), "config: http.tls: needs http.addr"},
		{"http cert_file alone", `{url: "redis://127.0.0.1:6379/0"}`, http(fmt.Sprintf("{cert_file: %q}", certs.ServerCert)), "config: http.tls.key_file: missing"},
		{"http key_file alone", `{url: "redis://127.0.0.1:6379/0"}`, http(fmt.Sprintf("{key_file: %q}", certs.ServerKey)), "config: http.tls.cert_file: missing"},
		{"http cert_file missing", `{url: "redis://127.0.0.1:6379/0"}`, http(fmt.Sprintf("{cert_file: %q, key_file: %q}", missing, certs.ServerKey)), "config: http.tls.cert_file: open " + missing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(strings.NewReader(tlsYAML(tt.redis, tt.http)))
			if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %v, want one line containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "FilePw04") {
				t.Fatalf("the error shows the password file's text: %v", err)
			}
		})
	}
	// And what they take.
	c, err := Load(strings.NewReader(tlsYAML(`{url: "redis://127.0.0.1:6379/0"}`, http(fmt.Sprintf("{cert_file: %q, key_file: %q}", certs.ServerCert, certs.ServerKey)))))
	if err != nil || !c.HTTP.TLS.Enabled() {
		t.Fatalf("http.tls: %v", err)
	}
}

// TestRedisSentinelURL: redis-sentinel://HOST:PORT/MASTER[/db] names the
// Sentinels (more with ?addr=) and the primary they watch; without a
// primary's name it is refused, and the error hides the password.
func TestRedisSentinelURL(t *testing.T) {
	tests := []struct {
		url     string
		addrs   []string
		master  string
		db      int
		user    string
		extra   string // more of the redis section
		wantErr string
	}{
		{url: "redis-sentinel://127.0.0.1:26379/mymaster", addrs: []string{"127.0.0.1:26379"}, master: "mymaster"},
		{url: "redis-sentinel://app:pw@10.0.0.1:26379/shop/3?addr=10.0.0.2:26379&addr=10.0.0.3:26379",
			addrs: []string{"10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"}, master: "shop", db: 3, user: "app"},
		{url: "rediss-sentinel://10.0.0.1:26379/shop", addrs: []string{"10.0.0.1:26379"}, master: "shop"},
		{url: "redis-sentinel://app:hunter2@10.0.0.1:26379/", wantErr: `config: redis.url: "redis-sentinel://app:xxxxx@10.0.0.1:26379/" names no primary`},
		{url: "redis-sentinel://10.0.0.1:26379/shop", extra: `, password_file: "/run/secret"`, wantErr: `config: redis.password_file: not with a redis-sentinel:// URL`},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			c, err := Load(strings.NewReader(tlsYAML(fmt.Sprintf("{url: %q%s}", tt.url, tt.extra), "")))
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("err = %v, want %s…", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			opt, err := c.RedisOption()
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(opt.InitAddress) != fmt.Sprint(tt.addrs) || opt.Sentinel.MasterSet != tt.master || opt.SelectDB != tt.db || opt.Username != tt.user {
				t.Fatalf("addresses %v, master %q, db %d, user %q", opt.InitAddress, opt.Sentinel.MasterSet, opt.SelectDB, opt.Username)
			}
			if strings.HasPrefix(tt.url, "rediss") != (opt.TLSConfig != nil) || opt.Sentinel.TLSConfig != opt.TLSConfig {
				t.Fatalf("TLS config %v, Sentinels' %v for %s", opt.TLSConfig, opt.Sentinel.TLSConfig, tt.url)
			}
		})
	}
}
