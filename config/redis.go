package config

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// Redis is the one Redis (single node or cluster) that holds the caches.
type Redis struct {
	// URL is redis://[user:password@]host:port[/db] or rediss:// for TLS;
	// redis-sentinel://[user:password@]host:port/MASTER[/db] (or
	// rediss-sentinel://) names a Sentinel and the primary it watches
	// (more Sentinels: ?addr=host:port, repeated).
	URL string `yaml:"url"`
	// Username and Password override the URL's credentials when set.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// PasswordFile names a file holding the password, read again for every
	// connection, so a rotated password (a managed identity's token) is
	// used from the next reconnection on. It overrides the URL's password.
	PasswordFile string   `yaml:"password_file"`
	TLS          RedisTLS `yaml:"tls"`
}

// RedisTLS is how a rediss:// URL's connections are verified and which
// client certificate they present.
type RedisTLS struct {
	// CAFile holds the PEM certificates of the CAs that verify the
	// server; without it, the system's roots do.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the client certificate (PEM, with its
	// chain) and its key, for servers that require one (mutual TLS). They
	// are read again for every connection, so a renewed certificate is
	// presented from the next reconnection on.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// clusterRescan is how often a client made from RedisOption asks a Redis
// Cluster for its topology. A rueidis Cluster client otherwise learns of a
// change only when a command of its own is redirected (MOVED, ASK) or
// fails, or a connection closes: an idle client would never see a primary
// added (resharding) or promoted (failover), whose keyspace events the
// refresher and the keymiss listener must subscribe to.
const clusterRescan = 5 * time.Second

// RedisClient opens a client of the redis section (RedisOption) without
// client-side caching: the daemon's and its commands' client.
func (c *Config) RedisClient() (rueidis.Client, error) {
	opt, err := c.RedisOption()
	if err != nil {
		return nil, err
	}
	opt.DisableCache = true
	rc, err := rueidis.NewClient(opt)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	return rc, nil
}

// RedisOption turns the redis section into a rueidis client option: the
// URL's address, database and credentials, the username and password that
// override them, the TLS of a rediss:// URL, and a password file read for
// every connection (AuthCredentialsFn); on a Redis Cluster the client
// rescans the topology every clusterRescan.
func (c *Config) RedisOption() (rueidis.ClientOption, error) {
	raw := c.Redis.URL
	if redisStrayAt(raw) {
		return rueidis.ClientOption{}, urlError("redis.url", raw, "%q is ambiguous: it has an '@' after the host; write '/', '?', '#' and '@' in a user name or password as %%2F, %%3F, %%23 and %%40", redactURL(raw))
	}
	u, err := url.Parse(raw)
	if err != nil || !slices.Contains([]string{"redis", "rediss", "unix", "redis-sentinel", "rediss-sentinel"}, u.Scheme) || (u.Scheme != "unix" && u.Host == "") {
		return rueidis.ClientOption{}, urlError("redis.url", raw, "%q is not a redis://host:port/db, rediss://, redis-sentinel://host:port/master or unix:// URL", redactURL(raw))
	}
	parse := raw
	if scheme, ok := strings.CutSuffix(u.Scheme, "-sentinel"); ok {
		// rueidis's own spelling: the Sentinel's address, master_set.
		master, db, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
		if master == "" {
			return rueidis.ClientOption{}, urlError("redis.url", raw, "%q names no primary: write %s://host:port/MASTER[/db]", redactURL(raw), u.Scheme)
		}
		q := u.Query()
		q.Set("master_set", master)
		r := *u
		r.Scheme, r.Path, r.RawPath, r.RawQuery = scheme, "", "", q.Encode()
		if db != "" {
			r.Path = "/" + db
		}
		parse = r.String()
	}
	opt, err := rueidis.ParseURL(parse)
	if err != nil {
		return rueidis.ClientOption{}, urlError("redis.url", raw, "%s", err)
	}
	opt.ClusterOption.ShardsRefreshInterval = clusterRescan
	// No CLIENT SETINFO: a user with the README's ACL may not send it
	// (Redis 7.2 and later would log every refusal), and 7.0 lacks it.
	opt.ClientSetInfo = rueidis.DisableClientSetInfo
	if c.Redis.Username != "" {
		opt.Username = c.Redis.Username
	}
	if c.Redis.Password != "" {
		opt.Password = c.Redis.Password
	}
	if err := c.Redis.TLS.apply(&opt, u.Scheme); err != nil {
		return rueidis.ClientOption{}, err
	}
	if opt.Sentinel.MasterSet != "" {
		// The Sentinels are reached as the URL says: over TLS for
		// rediss-sentinel://, with the same CA and certificate.
		opt.Sentinel.TLSConfig = opt.TLSConfig
	}
	if path := c.Redis.PasswordFile; path != "" {
		if opt.Sentinel.MasterSet != "" {
			// (The client would send the Sentinels the primary's password.)
			return rueidis.ClientOption{}, FieldError("redis.password_file", "not with a redis-sentinel:// URL; give the password in the URL or redis.password")
		}
		if c.Redis.Password != "" {
			return rueidis.ClientOption{}, FieldError("redis.password_file", "set password or password_file, not both")
		}
		if _, err := readSecret(path); err != nil {
			return rueidis.ClientOption{}, FieldError("redis.password_file", "%v", err)
		}
		user := opt.Username
		opt.Password = ""
		// Not a config *Error: a file missing for a moment while it is
		// replaced fails one connection, which is tried again.
		opt.AuthCredentialsFn = func(rueidis.AuthCredentialsContext) (rueidis.AuthCredentials, error) {
			password, err := readSecret(path)
			if err != nil {
				return rueidis.AuthCredentials{}, fmt.Errorf("redis.password_file: %w", err)
			}
			return rueidis.AuthCredentials{Username: user, Password: password}, nil
		}
	}
	return opt, nil
}

// readSecret reads a password from path: the file's text without the line
// break that ends it.
func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}

// apply adds the section to opt's TLS config (nil but for a rediss://
// URL, which the section needs): the CAs that verify the server, and a
// client certificate loaded for every handshake. Without a client
// certificate, a connection to a server that asked for one explains the
// error that ends it (explainNoCert).
func (t RedisTLS) apply(opt *rueidis.ClientOption, scheme string) error {
	tc := opt.TLSConfig
	if t != (RedisTLS{}) && tc == nil {
		return FieldError("redis.tls", "needs a rediss:// URL (redis.url is %s://)", scheme)
	}
	if tc == nil {
		return nil
	}
	if t.CAFile != "" {
		pool, err := readCAs(t.CAFile)
		if err != nil {
			return FieldError("redis.tls.ca_file", "%v", err)
		}
		tc.RootCAs = pool
	}
	switch {
	case t.CertFile == "" && t.KeyFile == "":
		tc.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if ctx := cri.Context(); ctx != nil {
				if asked, ok := ctx.Value(certAskedKey{}).(*atomic.Bool); ok {
					asked.Store(true)
				}
			}
			return &tls.Certificate{}, nil // none
		}
		opt.DialCtxFn = explainNoCert
	default:
		if _, err := loadPair("redis.tls", t.CertFile, t.KeyFile); err != nil {
			return err
		}
		cert, key := t.CertFile, t.KeyFile
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			pair, err := tls.LoadX509KeyPair(cert, key)
			if err != nil {
				return nil, fmt.Errorf("redis.tls.cert_file: %w", err)
			}
			return &pair, nil
		}
	}
	return nil
}

// certAskedKey is the context key under which a TLS handshake of
// explainNoCert notes that the server asked for a client certificate.
type certAskedKey struct{}

// explainNoCert dials dst with TLS, as the client does by default, for a
// config without a client certificate. When the server asked for one, an
// error before the server's first byte says so: under TLS 1.3 a server
// refuses a missing certificate after the handshake, and the client sees
// only "connection reset by peer" or "tls: certificate required".
func explainNoCert(ctx context.Context, dst string, d *net.Dialer, tc *tls.Config) (net.Conn, error) {
	asked := new(atomic.Bool)
	conn, err := (&tls.Dialer{NetDialer: d, Config: tc}).DialContext(context.WithValue(ctx, certAskedKey{}, asked), "tcp", dst)
	if err != nil || !asked.Load() {
		return conn, err
	}
	return &noCertConn{Conn: conn}, nil
}

// noCertConn is a connection on which the server asked for a client
// certificate and got none: until the server's first byte arrives (it
// accepted the connection then), its errors say so.
type noCertConn struct {
	net.Conn
	answered atomic.Bool
}

func (c *noCertConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.answered.Store(true)
	}
	return n, c.explain(err)
}

func (c *noCertConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	return n, c.explain(err)
}

func (c *noCertConn) explain(err error) error {
	if err == nil || c.answered.Load() {
		return err
	}
	return &noCertError{err}
}

// noCertError is an error of a noCertConn before the server answered.
type noCertError struct{ err error }

func (e *noCertError) Error() string {
	return e.err.Error() + " (the server asked for a client certificate, and redis.tls has no cert_file)"
}
func (e *noCertError) Unwrap() error { return e.err }

// readCAs reads the PEM certificates in path into a pool.
func readCAs(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, errors.New(path + " holds no PEM certificate")
	}
	return pool, nil
}
