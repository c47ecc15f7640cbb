package config

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
	"gopkg.in/yaml.v3"
)

// Redis is one Redis (a node, a Cluster, or a primary a Sentinel watches)
// that holds caches: a target.
type Redis struct {
	// Name names a target when the config has several (redis: is then a
	// list); it is empty for a config's only target.
	Name string `yaml:"name"`
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
	// Buffer bounds the changes held for this target, when the config has
	// several, while it cannot keep up or cannot be reached: past it the
	// target is left behind and rebuilt when it answers again, and the
	// others go on (default DefaultBuffer).
	Buffer int `yaml:"buffer"`
}

// DefaultBuffer is a target's buffer when redis.buffer is not set.
const DefaultBuffer = 100_000

// field names r in an error message: redis, or redis.NAME for one of
// several targets.
func (r Redis) field() string {
	if r.Name == "" {
		return "redis"
	}
	return "redis." + r.Name
}

// Targets is the redis section: one Redis, written as a mapping, or a list
// of named ones.
type Targets []Redis

// UnmarshalYAML accepts a mapping (one target) or a list of mappings.
func (t *Targets) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.MappingNode:
		var r Redis
		if err := strictDecode(n, &r); err != nil {
			return err
		}
		*t = Targets{r}
	case yaml.SequenceNode:
		for _, e := range n.Content {
			var r Redis
			if err := strictDecode(e, &r); err != nil {
				return err
			}
			*t = append(*t, r)
		}
	default:
		return fmt.Errorf("line %d: redis must be a mapping {url: ...} or a list of named targets [{name: ..., url: ...}]", n.Line)
	}
	return nil
}

// strictDecode decodes n into v refusing unknown fields, as Load does for
// the whole file (a Node's own Decode would accept them).
func strictDecode(n *yaml.Node, v any) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a redis target must be a mapping {url: ...}", n.Line)
	}
	b, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		// The decoder numbers the lines of n re-encoded: name the line
		// of the field it did not know, or else the target's.
		msg := fieldRE.ReplaceAllStringFunc(oneLine(err.Error()), func(m string) string {
			field := fieldRE.FindStringSubmatch(m)[1]
			line := n.Line
			if k := findKey(n, field); k != nil {
				line = k.Line
			}
			return fmt.Sprintf("line %d: field %s not found", line, field)
		})
		return fmt.Errorf("redis: %s", strings.TrimPrefix(msg, "yaml: "))
	}
	return nil
}

var fieldRE = regexp.MustCompile(`line [0-9]+: field (\S+) not found`)

// findKey returns the first mapping key named name in n's tree.
func findKey(n *yaml.Node, name string) *yaml.Node {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == name {
				return n.Content[i]
			}
		}
	}
	for _, c := range n.Content {
		if k := findKey(c, name); k != nil {
			return k
		}
	}
	return nil
}

// TargetNames returns the names of the config's targets, in the order
// written: the first is the one the API serves.
func (c *Config) TargetNames() []string {
	names := make([]string, len(c.Targets))
	for i, t := range c.Targets {
		names[i] = t.Name
	}
	return names
}

// ForTarget returns the config as seen by the target named name (one of
// TargetNames): its Redis, and only the caches that list it. The copy
// shares the caches.
func (c *Config) ForTarget(name string) *Config {
	d := *c
	d.Caches = map[string]*Cache{}
	for _, t := range c.Targets {
		if t.Name == name {
			d.Redis, d.Targets = t, Targets{t}
		}
	}
	for n, cc := range c.Caches {
		if len(cc.Targets) == 0 || slices.Contains(cc.Targets, name) { // (none listed: not validated, every target)
			d.Caches[n] = cc
		}
	}
	return &d
}

// validateTargets checks the redis section and sets Redis to the first
// target.
func (c *Config) validateTargets() error {
	if len(c.Targets) == 0 {
		c.Targets = Targets{c.Redis} // a config built in Go
	}
	several := len(c.Targets) > 1
	names, urls := map[string]bool{}, map[string]string{}
	for i := range c.Targets {
		t := &c.Targets[i]
		if several && !nameRE.MatchString(t.Name) {
			return FieldError(fmt.Sprintf("redis[%d].name", i), "%q: several targets each need a name of lower-case letters, digits and _", t.Name)
		}
		if names[t.Name] {
			return FieldError(t.field()+".name", "%q names two targets", t.Name)
		}
		names[t.Name] = true
		if t.URL == "" {
			return FieldError(t.field()+".url", "missing")
		}
		if other, ok := urls[t.URL]; ok {
			return FieldError(t.field()+".url", "the same Redis as target %q: targets keep their own state in their Redis, so each must be a Redis of its own", other)
		}
		urls[t.URL] = t.Name
		if t.Buffer < 0 {
			return FieldError(t.field()+".buffer", "must not be negative")
		}
		if t.Buffer == 0 {
			t.Buffer = DefaultBuffer
		}
		if _, err := t.Option(); err != nil {
			return err
		}
	}
	c.Redis = c.Targets[0]
	return nil
}

// validateCacheTargets checks which targets a cache lists: all of them
// when it names none.
func (c *Config) validateCacheTargets(field string, cc *Cache) error {
	all := c.TargetNames()
	if len(cc.Targets) == 0 {
		cc.Targets = slices.Clone(all)
		return nil
	}
	for i, name := range cc.Targets {
		if !slices.Contains(all, name) {
			return FieldError(field+".targets", "unknown target %q (targets: %s)", name, strings.Join(all, ", "))
		}
		if slices.Contains(cc.Targets[:i], name) {
			return FieldError(field+".targets", "target %q is listed twice", name)
		}
	}
	return nil
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

// RedisClient opens a client of the config's first target (Redis.Client):
// the daemon's and its commands' client.
func (c *Config) RedisClient() (rueidis.Client, error) { return c.Redis.Client() }

// RedisOption is the client option of the config's first target (Redis.Option).
func (c *Config) RedisOption() (rueidis.ClientOption, error) { return c.Redis.Option() }

// Client opens a client of r (Option) without client-side caching.
func (r Redis) Client() (rueidis.Client, error) {
	opt, err := r.Option()
	if err != nil {
		return nil, err
	}
	opt.DisableCache = true
	rc, err := rueidis.NewClient(opt)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.field(), err)
	}
	return rc, nil
}

// Option turns r into a rueidis client option: the URL's address, database
// and credentials, the username and password that override them, the TLS of
// a rediss:// URL, and a password file read for every connection
// (AuthCredentialsFn); on a Redis Cluster the client rescans the topology
// every clusterRescan.
func (r Redis) Option() (rueidis.ClientOption, error) {
	raw, f := r.URL, r.field()
	if redisStrayAt(raw) {
		return rueidis.ClientOption{}, urlError(f+".url", raw, "%q is ambiguous: it has an '@' after the host; write '/', '?', '#' and '@' in a user name or password as %%2F, %%3F, %%23 and %%40", redactURL(raw))
	}
	u, err := url.Parse(raw)
	if err != nil || !slices.Contains([]string{"redis", "rediss", "unix", "redis-sentinel", "rediss-sentinel"}, u.Scheme) || (u.Scheme != "unix" && u.Host == "") {
		return rueidis.ClientOption{}, urlError(f+".url", raw, "%q is not a redis://host:port/db, rediss://, redis-sentinel://host:port/master or unix:// URL", redactURL(raw))
	}
	parse := raw
	if scheme, ok := strings.CutSuffix(u.Scheme, "-sentinel"); ok {
		// rueidis's own spelling: the Sentinel's address, master_set.
		master, db, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
		if master == "" {
			return rueidis.ClientOption{}, urlError(f+".url", raw, "%q names no primary: write %s://host:port/MASTER[/db]", redactURL(raw), u.Scheme)
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
		return rueidis.ClientOption{}, urlError(f+".url", raw, "%s", err)
	}
	opt.ClusterOption.ShardsRefreshInterval = clusterRescan
	// No CLIENT SETINFO: a user with the README's ACL may not send it
	// (Redis 7.2 and later would log every refusal), and 7.0 lacks it.
	opt.ClientSetInfo = rueidis.DisableClientSetInfo
	if r.Username != "" {
		opt.Username = r.Username
	}
	if r.Password != "" {
		opt.Password = r.Password
	}
	if err := r.TLS.apply(&opt, u.Scheme, f); err != nil {
		return rueidis.ClientOption{}, err
	}
	if opt.Sentinel.MasterSet != "" {
		// The Sentinels are reached as the URL says: over TLS for
		// rediss-sentinel://, with the same CA and certificate.
		opt.Sentinel.TLSConfig = opt.TLSConfig
	}
	if path := r.PasswordFile; path != "" {
		if opt.Sentinel.MasterSet != "" {
			// (The client would send the Sentinels the primary's password.)
			return rueidis.ClientOption{}, FieldError(f+".password_file", "not with a redis-sentinel:// URL; give the password in the URL or redis.password")
		}
		if r.Password != "" {
			return rueidis.ClientOption{}, FieldError(f+".password_file", "set password or password_file, not both")
		}
		if _, err := readSecret(path); err != nil {
			return rueidis.ClientOption{}, FieldError(f+".password_file", "%v", err)
		}
		user := opt.Username
		opt.Password = ""
		// Not a config *Error: a file missing for a moment while it is
		// replaced fails one connection, which is tried again.
		opt.AuthCredentialsFn = func(rueidis.AuthCredentialsContext) (rueidis.AuthCredentials, error) {
			password, err := readSecret(path)
			if err != nil {
				return rueidis.AuthCredentials{}, fmt.Errorf("%s.password_file: %w", f, err)
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
func (t RedisTLS) apply(opt *rueidis.ClientOption, scheme, f string) error {
	tc := opt.TLSConfig
	if t != (RedisTLS{}) && tc == nil {
		return FieldError(f+".tls", "needs a rediss:// URL (redis.url is %s://)", scheme)
	}
	if tc == nil {
		return nil
	}
	if t.CAFile != "" {
		pool, err := readCAs(t.CAFile)
		if err != nil {
			return FieldError(f+".tls.ca_file", "%v", err)
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
		if _, err := loadPair(f+".tls", t.CertFile, t.KeyFile); err != nil {
			return err
		}
		cert, key := t.CertFile, t.KeyFile
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			pair, err := tls.LoadX509KeyPair(cert, key)
			if err != nil {
				return nil, fmt.Errorf("%s.tls.cert_file: %w", f, err)
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
