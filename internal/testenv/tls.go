package testenv

// TLS for the private servers: a throw-away CA and the certificates it
// signs, a redis-server that speaks only TLS (WithRedisTLS), a PostgreSQL
// with ssl on (WithPostgresTLS) and rules of its own for pg_hba.conf
// (WithPostgresHBA).

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Certs are a test CA and the certificates it signed, as PEM files.
type Certs struct {
	// CA is the CA's certificate: what verifies the server and the client.
	CA string
	// ServerCert and ServerKey are the servers' certificate, for 127.0.0.1,
	// ::1 and localhost, and its key.
	ServerCert, ServerKey string
	// ClientCert and ClientKey are a client certificate whose common name
	// is the client's name (PostgreSQL's cert authentication takes it as
	// the role), and its key.
	ClientCert, ClientKey string
	// Client is what the test bed's own clients of a TLS server present:
	// the CA as their only root, and the client certificate.
	Client *tls.Config
}

// NewCerts makes a CA, a server certificate and a client certificate for
// client (its common name), valid from an hour ago for a day, written
// under tb.TempDir().
func NewCerts(tb testing.TB, client string) *Certs {
	tb.Helper()
	c, err := newCerts(tb.TempDir(), client)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func newCerts(dir, client string) (*Certs, error) {
	c := &Certs{}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cachesync test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		return nil, err
	}
	c.CA = filepath.Join(dir, "ca.pem")
	if err := writePEM(c.CA, "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	leaf := func(name string, serial int64, template *x509.Certificate) (certFile, keyFile string, err error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", "", err
		}
		template.SerialNumber = big.NewInt(serial)
		template.NotBefore, template.NotAfter = now.Add(-time.Hour), now.Add(24*time.Hour)
		template.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, template, ca, &key.PublicKey, caKey)
		if err != nil {
			return "", "", err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return "", "", err
		}
		certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		if err := writePEM(certFile, "CERTIFICATE", der); err != nil {
			return "", "", err
		}
		return certFile, keyFile, writePEM(keyFile, "PRIVATE KEY", keyDER)
	}
	if c.ServerCert, c.ServerKey, err = leaf("server", 2, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, err
	}
	if c.ClientCert, c.ClientKey, err = leaf("client", 3, &x509.Certificate{
		Subject:     pkix.Name{CommonName: client},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(c.ClientCert, c.ClientKey)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	c.Client = &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	return c, nil
}

// writePEM writes one PEM block to path, readable by its owner only.
func writePEM(path, kind string, der []byte) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// WithRedisTLS makes the server speak TLS only (port 0, tls-port), with
// c's server certificate, and require a client certificate signed by c's
// CA (tls-auth-clients yes). Its URL is then rediss://, and the test bed's
// clients and readiness checks use c.Client.
func WithRedisTLS(c *Certs) RedisOption {
	return func(r *Redis) {
		r.TLS = c.Client
		r.args = append(r.args, "--tls-cert-file", c.ServerCert, "--tls-key-file", c.ServerKey,
			"--tls-ca-cert-file", c.CA, "--tls-auth-clients", "yes")
	}
}

// listenArgs are the arguments that make the server listen on r.Port:
// plain, or (WithRedisTLS) with TLS and no plain port.
func (r *Redis) listenArgs() []string {
	if r.TLS != nil {
		return []string{"--port", "0", "--tls-port", strconv.Itoa(r.Port)}
	}
	return []string{"--port", strconv.Itoa(r.Port)}
}

// dial opens a connection to r for its readiness check: TLS with
// r.TLS when set.
func (r *Redis) dial() (net.Conn, error) {
	d := &net.Dialer{Timeout: time.Second}
	if r.TLS != nil {
		return tls.DialWithDialer(d, "tcp", r.Addr, r.TLS)
	}
	return d.Dial("tcp", r.Addr)
}

// WithPostgresTLS turns ssl on with c's server certificate, and c's CA as
// the one that verifies client certificates (ssl_ca_file), for hostssl
// rules with cert authentication or clientcert=verify-full
// (WithPostgresHBA). The files are copied into the cluster's dir, owned by
// the user PostgreSQL runs as, the key with mode 0600 as it requires.
func WithPostgresTLS(c *Certs) PostgresOption {
	return func(p *Postgres) { p.tls = c }
}

// WithPostgresHBA makes pg_hba.conf these rules, one a line, after one
// that lets the test bed's own connections in (the superuser postgres,
// without TLS, as URL connects): e.g. "hostssl all all 127.0.0.1/32 cert".
func WithPostgresHBA(rules ...string) PostgresOption {
	return func(p *Postgres) { p.hba = append(p.hba, rules...) }
}

// fileSettings writes the files WithPostgresTLS and WithPostgresHBA need
// into the cluster's dir, once after initdb, and returns the settings
// that name them.
func (p *Postgres) fileSettings() ([]string, error) {
	var settings []string
	write := func(name string, data []byte) (string, error) {
		path := filepath.Join(p.Dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return "", fmt.Errorf("postgres %s: %w", name, err)
		}
		if p.cred != nil {
			if err := os.Chown(path, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
				return "", fmt.Errorf("postgres %s: %w", name, err)
			}
		}
		return path, nil
	}
	if p.tls != nil {
		for _, f := range []struct{ setting, from, name string }{
			{"ssl_cert_file", p.tls.ServerCert, "server.pem"},
			{"ssl_key_file", p.tls.ServerKey, "server-key.pem"},
			{"ssl_ca_file", p.tls.CA, "ca.pem"},
		} {
			data, err := os.ReadFile(f.from)
			if err != nil {
				return nil, fmt.Errorf("postgres tls: %w", err)
			}
			path, err := write(f.name, data)
			if err != nil {
				return nil, err
			}
			settings = append(settings, f.setting+"="+path)
		}
		settings = append(settings, "ssl=on")
	}
	if len(p.hba) > 0 {
		rules := append([]string{"hostnossl all postgres 127.0.0.1/32 trust"}, p.hba...)
		path, err := write("pg_hba.conf", []byte(strings.Join(rules, "\n")+"\n"))
		if err != nil {
			return nil, err
		}
		settings = append(settings, "hba_file="+path)
	}
	return settings, nil
}
