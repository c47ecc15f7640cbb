// Package config loads and checks a cachesync configuration file.
//
// A config names PostgreSQL sources, one Redis target or several, and the caches (bindings)
// that map a table onto a family of Redis keys. Load parses YAML, expands
// ${ENV} references and applies defaults; Validate checks everything that can be
// checked without a database. Checks against the live schema live in
// internal/schema.
package config

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/robfig/cron/v3"
	"gopkg.in/yaml.v3"

	"github.com/cachesync/cachesync/internal/binding"
)

// Config is a whole cachesync configuration file.
type Config struct {
	// Name identifies this deployment; it names the replication slot and
	// publication (cachesync_NAME) and prefixes cachesync's own Redis keys.
	Name string `yaml:"name"`
	// Redis is the config's only target, or the first of several: the one
	// the API and the daemon's HTTP API serve (filled by Validate).
	Redis Redis `yaml:"-"`
	// Targets are the Redis servers the caches live in, each with its own
	// state: the redis section, one mapping or a list of named targets.
	// One change feed per source keeps them all in step.
	Targets Targets           `yaml:"redis"`
	Sources map[string]Source `yaml:"sources"`
	Caches  map[string]*Cache `yaml:"caches"`
	HTTP    HTTP              `yaml:"http"`
	// Consistency is the daemon's continuous check of the caches against
	// their tables.
	Consistency Consistency `yaml:"consistency"`
	// RateLimits are the HTTP API's named rate-limit policies (ratelimit.go).
	RateLimits map[string]RateLimit `yaml:"ratelimits"`
}

// DefaultSampleRate is how many keys a second the daemon checks when
// consistency.sample_rate is not set.
const DefaultSampleRate = 10

// Consistency tunes the daemon's continuous consistency check: it compares
// random keys with their rows, as cachesync check does, and exports what it
// found as metrics.
type Consistency struct {
	// SampleRate is how many keys a second are checked, all caches
	// together (DefaultSampleRate when unset; 0 turns the check off).
	SampleRate *int `yaml:"sample_rate"`
}

// Rate returns the keys a second to check: 0 when off.
func (c Consistency) Rate() int {
	if c.SampleRate == nil {
		return DefaultSampleRate
	}
	return *c.SampleRate
}

// HTTP is the daemon's HTTP API (served by cachesync run when Addr is set).
type HTTP struct {
	// Addr is host:port to listen on, e.g. 127.0.0.1:8080.
	Addr string `yaml:"addr"`
	// MaxBody bounds a request body in bytes (default 1 MiB).
	MaxBody int64 `yaml:"max_body"`
	// Keys are the API keys; with none, every request is allowed (a warning
	// is logged at start).
	Keys []APIKey `yaml:"keys"`
	// TLS makes the API HTTPS.
	TLS HTTPTLS `yaml:"tls"`
}

// HTTPTLS is the certificate the HTTP API serves HTTPS with.
type HTTPTLS struct {
	// CertFile is the server's certificate (PEM, with its chain) and
	// KeyFile its key, read at start.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Enabled tells whether the API serves HTTPS.
func (t HTTPTLS) Enabled() bool { return t != (HTTPTLS{}) }

// APIKey is one API key and what it may do.
type APIKey struct {
	Name   string   `yaml:"name"`   // shown in logs instead of the key
	Key    string   `yaml:"key"`    // the secret; use ${ENV}
	Scopes []string `yaml:"scopes"` // read, write
}

// Source is a named PostgreSQL database that caches read from.
type Source struct {
	URL string `yaml:"url"`
}

// Sync modes of a cache.
const (
	SyncChangefeed = "changefeed" // keep Redis in step with every committed change
	SyncNone       = "none"       // no change feed
)

// Write modes of a cache.
const (
	WritesThrough = "through" // Put writes PostgreSQL, then Redis agrees
	WritesBehind  = "behind"  // PutBehind writes Redis and a queue; the daemon drains it
)

// Fill modes of a cache.
const (
	FillNone   = "none"    // only Get fills
	FillOnMiss = "on-miss" // the daemon fills what plain Redis clients miss
)

// Refresh modes of a cache.
const (
	RefreshNone     = "none"      // keys expire and stay gone until read
	RefreshOnExpiry = "on-expiry" // a key is reloaded as soon as it expires
	RefreshAhead    = "ahead"     // a key is reloaded before it expires
)

// What a refresh does with a key whose row no longer exists.
const (
	NotFoundDelete   = "delete"   // the key is removed
	NotFoundNegative = "negative" // a "not found" marker is kept for negative_ttl
)

// Schedule reloads a set of a cache's keys on a cron schedule: the listed
// keys, or the keys of every row matching a SQL condition.
type Schedule struct {
	// Cron has six fields, seconds first ("0 */5 * * * *"), or a descriptor
	// such as @hourly or @every 30s.
	Cron string `yaml:"cron"`
	// Keys are Redis keys of the cache.
	Keys []string `yaml:"keys"`
	// Where is a SQL condition over the cache's table ("price > 0"); every
	// row it matches is reloaded.
	Where string `yaml:"where"`

	// Filled by Validate.
	Every cron.Schedule `yaml:"-"`
}

// Cache (a binding) says how one table corresponds to a family of Redis keys.
type Cache struct {
	// Name is the key of this cache in the config's caches map.
	Name   string `yaml:"-"`
	Source string `yaml:"source"`
	// Table is schema.table; a bare name means public.NAME.
	Table string `yaml:"table"`
	// Key is the key template, e.g. "price:{item}".
	Key   string `yaml:"key"`
	Value Value  `yaml:"value"`
	// TTL of each written key; zero means no expiry.
	TTL time.Duration `yaml:"ttl"`
	// TTLJitter shortens each TTL by a random part up to this fraction, so
	// keys written together do not expire together.
	TTLJitter Fraction `yaml:"ttl_jitter"`
	// NegativeTTL is how long a read-through remembers that a key's row does
	// not exist (default 10s), so misses for absent rows do not each query.
	NegativeTTL time.Duration `yaml:"negative_ttl"`
	// StaleWhileRevalidate serves a value up to this long after it expired
	// while one refresh runs; StaleIfError serves it up to this long after
	// it expired when PostgreSQL cannot be reached. Both read a stale copy
	// cachesync keeps beside the key (cachesync:stale:{KEY}).
	StaleWhileRevalidate time.Duration `yaml:"stale_while_revalidate"`
	StaleIfError         time.Duration `yaml:"stale_if_error"`
	Sync                 string        `yaml:"sync"`
	// Writes behind lets PutBehind (PUT ?mode=behind) write Redis first and
	// has the daemon drain those writes into the table; through (default)
	// allows only write-through.
	Writes string `yaml:"writes"`
	// Fill on-miss makes the daemon fill keys that plain Redis clients miss
	// (it listens for keymiss events); none (default) leaves that to Get.
	Fill string `yaml:"fill"`
	// Refresh on-expiry reloads a key from the table when it expires; ahead
	// reloads it before, after RefreshAhead of its TTL; none (default) lets
	// keys expire. Both need a ttl.
	Refresh string `yaml:"refresh"`
	// RefreshAhead is the part of a key's TTL after which ahead reloads it
	// (default 0.8).
	RefreshAhead Fraction `yaml:"refresh_ahead"`
	// NotFound says what a refresh does with a key whose row is gone:
	// delete it (default), or keep a "not found" marker for negative_ttl.
	NotFound string `yaml:"not_found"`
	// Schedule lists cron-scheduled reloads.
	Schedule []Schedule `yaml:"schedule"`
	// Targets names the Redis targets that hold the cache (default: all).
	Targets []string `yaml:"targets"`
	// L1 keeps the cache's hits in the memory of each process that reads
	// them (Get, the HTTP API), kept exact by Redis's invalidation pushes;
	// nil (default) reads Redis on every Get.
	L1 *L1 `yaml:"l1"`

	// Filled by Validate.
	Template *binding.Template `yaml:"-"`
	Format   binding.Format    `yaml:"-"`
}

// Value is the DTO mapping of a cache: which columns, under which names.
type Value struct {
	Format string `yaml:"format"`
	// Columns maps output field names to table columns, in order. Written as
	// a mapping {field: column} or a list of column names; empty means all.
	Columns Columns `yaml:"columns"`
	// Column is the one column of format string (same as a one-entry Columns).
	Column string `yaml:"column"`
}

// Columns is an ordered field-to-column mapping.
type Columns []FieldColumn

// FieldColumn maps one output field to one table column.
type FieldColumn struct {
	Field  string
	Column string
}

// UnmarshalYAML accepts a mapping (field: column, order kept) or a list of columns.
func (c *Columns) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			*c = append(*c, FieldColumn{Field: n.Content[i].Value, Column: n.Content[i+1].Value})
		}
	case yaml.SequenceNode:
		for _, e := range n.Content {
			*c = append(*c, FieldColumn{Field: e.Value, Column: e.Value})
		}
	default:
		return fmt.Errorf("line %d: columns must be a mapping {field: column} or a list of columns", n.Line)
	}
	return nil
}

// Fraction is a ratio in [0, 1), written as 0.1 or "10%".
type Fraction float64

// UnmarshalYAML parses "10%" or 0.1.
func (f *Fraction) UnmarshalYAML(n *yaml.Node) error {
	s := strings.TrimSpace(n.Value)
	scale := 1.0
	if strings.HasSuffix(s, "%") {
		s, scale = strings.TrimSuffix(s, "%"), 100
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a fraction like 0.1 or 10%%", n.Line, n.Value)
	}
	*f = Fraction(v / scale)
	return nil
}

// Error is a configuration problem in one field; it prints as one line.
type Error struct {
	Field string // dotted path, e.g. caches.prices.key
	Err   error
}

func (e *Error) Error() string { return fmt.Sprintf("config: %s: %v", e.Field, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// FieldError returns an *Error for field, formatted like fmt.Errorf.
func FieldError(field, format string, args ...any) error {
	return &Error{Field: field, Err: fmt.Errorf(format, args...)}
}

// LoadFile reads, expands, parses and validates the config at path.
func LoadFile(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	return Load(f)
}

// Load parses YAML from r, expands ${ENV} references, applies defaults and validates.
func Load(r io.Reader) (*Config, error) {
	raw, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("config: read: %w", err)
	}
	expanded, err := expandEnv(raw)
	if err != nil {
		return nil, err
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(expanded))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("config: the file is empty")
		}
		return nil, fmt.Errorf("config: %s", oneLine(err.Error()))
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// expandEnv replaces ${NAME} and ${NAME:-default}; an unset NAME without a
// default is an error, so a missing secret is not silently an empty string.
func expandEnv(raw []byte) ([]byte, error) {
	var missing []string
	out := envRef.ReplaceAllFunc(raw, func(m []byte) []byte {
		sub := envRef.FindSubmatch(m)
		if v, ok := os.LookupEnv(string(sub[1])); ok {
			return []byte(v)
		}
		if sub[2] != nil {
			return sub[3]
		}
		missing = append(missing, string(sub[1]))
		return m
	})
	if len(missing) > 0 {
		return nil, fmt.Errorf("config: environment variable %s is not set", strings.Join(missing, ", "))
	}
	return out, nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// Validate checks the config without touching any server and fills derived fields.
func (c *Config) Validate() error {
	if !nameRE.MatchString(c.Name) || len(c.Name) > 40 {
		return FieldError("name", "%q must be lower-case letters, digits and _ (at most 40), starting with a letter: it names the replication slot", c.Name)
	}
	if err := c.validateTargets(); err != nil {
		return err
	}
	if len(c.Sources) == 0 {
		return FieldError("sources", "at least one PostgreSQL source is needed")
	}
	for _, name := range sortedKeys(c.Sources) {
		if !nameRE.MatchString(name) {
			return FieldError("sources."+name, "source names must be lower-case letters, digits and _")
		}
		raw, field := c.Sources[name].URL, "sources."+name+".url"
		if raw == "" {
			return FieldError(field, "missing")
		}
		if pgStrayAt(raw) {
			return urlError(field, raw, "%q is ambiguous: it has an '@' in the host or database name; write '/' and '@' in a user name or password as %%2F and %%40", redactURL(raw))
		}
		if _, err := pgconn.ParseConfig(raw); err != nil {
			return urlError(field, raw, "%s", stripURL(err.Error()))
		}
	}
	if len(c.Caches) == 0 {
		return FieldError("caches", "at least one cache is needed")
	}
	if err := c.HTTP.validate(); err != nil {
		return err
	}
	if err := c.validateRateLimits(); err != nil {
		return err
	}
	if r := c.Consistency.Rate(); r < 0 || r > 100_000 {
		return FieldError("consistency.sample_rate", "%d keys a second: want 0 (off) to 100000", r)
	}
	for _, name := range c.CacheNames() {
		if err := c.validateCache(name, c.Caches[name]); err != nil {
			return err
		}
	}
	return nil
}

func (c *Config) validateCache(name string, cc *Cache) error {
	field := "caches." + name
	if cc == nil {
		return FieldError(field, "empty cache")
	}
	cc.Name = name
	if cc.Source == "" && len(c.Sources) == 1 {
		cc.Source = sortedKeys(c.Sources)[0]
	}
	if _, ok := c.Sources[cc.Source]; !ok {
		return FieldError(field+".source", "unknown source %q (sources: %s)", cc.Source, strings.Join(sortedKeys(c.Sources), ", "))
	}
	if err := c.validateCacheTargets(field, cc); err != nil {
		return err
	}
	if cc.Table == "" {
		return FieldError(field+".table", "missing")
	}
	if !strings.Contains(cc.Table, ".") {
		cc.Table = "public." + cc.Table
	}
	t, err := binding.ParseTemplate(cc.Key)
	if err != nil {
		return FieldError(field+".key", "%v", err)
	}
	cc.Template = t
	if cc.Value.Format == "" {
		cc.Value.Format = "json"
	}
	cc.Format, err = binding.ParseFormat(cc.Value.Format)
	if err != nil {
		return FieldError(field+".value.format", "%v", err)
	}
	if cc.Value.Column != "" {
		if len(cc.Value.Columns) > 0 {
			return FieldError(field+".value", "set column or columns, not both")
		}
		cc.Value.Columns = Columns{{Field: cc.Value.Column, Column: cc.Value.Column}}
	}
	if cc.Format == binding.FormatString && len(cc.Value.Columns) != 1 {
		return FieldError(field+".value.column", "format string stores exactly one column; name it with column:")
	}
	seen := map[string]bool{}
	for _, fc := range cc.Value.Columns {
		if fc.Field == "" || fc.Column == "" {
			return FieldError(field+".value.columns", "empty field or column name")
		}
		if seen[fc.Field] {
			return FieldError(field+".value.columns", "field %q appears twice", fc.Field)
		}
		seen[fc.Field] = true
	}
	if cc.TTL < 0 {
		return FieldError(field+".ttl", "must not be negative")
	}
	if cc.TTLJitter < 0 || cc.TTLJitter >= 1 {
		return FieldError(field+".ttl_jitter", "must be in [0, 1), e.g. 10%%")
	}
	switch {
	case cc.NegativeTTL < 0:
		return FieldError(field+".negative_ttl", "must not be negative")
	case cc.NegativeTTL == 0:
		cc.NegativeTTL = 10 * time.Second
	}
	if cc.StaleWhileRevalidate < 0 {
		return FieldError(field+".stale_while_revalidate", "must not be negative")
	}
	if cc.StaleIfError < 0 {
		return FieldError(field+".stale_if_error", "must not be negative")
	}
	if err := validateL1(field, cc.L1); err != nil {
		return err
	}
	if cc.TTLJitter > 0 && cc.TTL == 0 {
		return FieldError(field+".ttl_jitter", "needs a ttl")
	}
	switch cc.Writes {
	case "", WritesThrough:
		cc.Writes = WritesThrough
	case WritesBehind:
	default:
		return FieldError(field+".writes", "%q is not one of through, behind", cc.Writes)
	}
	switch cc.Fill {
	case "", FillNone:
		cc.Fill = FillNone
	case FillOnMiss:
	default:
		return FieldError(field+".fill", "%q is not one of on-miss, none", cc.Fill)
	}
	switch cc.Sync {
	case "":
		cc.Sync = SyncChangefeed
	case SyncChangefeed, SyncNone:
	default:
		return FieldError(field+".sync", "%q is not one of changefeed, none", cc.Sync)
	}
	return cc.validateRefresh(field)
}

// leadsDatabase tells a cache whose Redis values may be newer than the
// table's rows (queued write-behind writes, no change feed): reloading a
// present key from the table could bring back an older value.
func (cc *Cache) leadsDatabase() bool {
	return cc.Writes == WritesBehind && cc.Sync == SyncNone
}

func (cc *Cache) validateRefresh(field string) error {
	switch cc.Refresh {
	case "":
		cc.Refresh = RefreshNone
	case RefreshNone:
	case RefreshOnExpiry, RefreshAhead:
		if cc.TTL == 0 {
			return FieldError(field+".refresh", "%s needs a ttl: keys without one never expire", cc.Refresh)
		}
		if cc.Refresh == RefreshAhead && cc.leadsDatabase() {
			return FieldError(field+".refresh", "ahead would reload keys whose write-behind writes are not in the table yet (writes: behind without sync: changefeed); use on-expiry")
		}
	default:
		return FieldError(field+".refresh", "%q is not one of on-expiry, ahead, none", cc.Refresh)
	}
	switch {
	case cc.RefreshAhead == 0:
		cc.RefreshAhead = 0.8
	case cc.RefreshAhead < 0 || cc.RefreshAhead >= 1:
		return FieldError(field+".refresh_ahead", "must be in (0, 1), e.g. 0.8")
	}
	switch cc.NotFound {
	case "":
		cc.NotFound = NotFoundDelete
	case NotFoundDelete, NotFoundNegative:
	default:
		return FieldError(field+".not_found", "%q is not one of delete, negative", cc.NotFound)
	}
	parser := cron.NewParser(cron.Second | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
	for i := range cc.Schedule {
		s := &cc.Schedule[i]
		f := fmt.Sprintf("%s.schedule[%d]", field, i)
		every, err := parser.Parse(s.Cron)
		if err != nil {
			return FieldError(f+".cron", "%q: %v (six fields, seconds first: \"0 */5 * * * *\")", s.Cron, err)
		}
		s.Every = every
		if (len(s.Keys) == 0) == (s.Where == "") {
			return FieldError(f, "give keys or where, one of them")
		}
		for _, k := range s.Keys {
			if _, ok := cc.Template.Parse(k); !ok {
				return FieldError(f+".keys", "%q does not fit the key template %s", k, cc.Template)
			}
		}
		if cc.leadsDatabase() {
			return FieldError(f, "a reload would overwrite write-behind writes that are not in the table yet (writes: behind without sync: changefeed)")
		}
	}
	return nil
}

// Refreshes tells a cache whose keys cachesync tracks to reload them.
func (cc *Cache) Refreshes() bool { return cc.Refresh != RefreshNone }

// Lead is how long before its expiry refresh: ahead reloads a key (0 for
// the other modes): the last part of the TTL after RefreshAhead.
func (cc *Cache) Lead() time.Duration {
	if cc.Refresh != RefreshAhead {
		return 0
	}
	return time.Duration(float64(cc.TTL) * (1 - float64(cc.RefreshAhead)))
}

// CacheNames returns the cache names in sorted order.
func (c *Config) CacheNames() []string { return sortedKeys(c.Caches) }

// SourceNames returns the source names in sorted order.
func (c *Config) SourceNames() []string { return sortedKeys(c.Sources) }

// SlotName is the replication slot (and publication) name of a source:
// cachesync_NAME, with _SOURCE appended when the config has several sources.
func (c *Config) SlotName(source string) string {
	if len(c.Sources) == 1 {
		return "cachesync_" + c.Name
	}
	return "cachesync_" + c.Name + "_" + source
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// urlError is an *Error for field, whose connection string is raw: the
// message formatted like fmt.Errorf, on one line, with whatever in it may
// be part of raw's password hidden (see hideSecrets).
func urlError(field, raw, format string, args ...any) error {
	return FieldError(field, "%s", hideSecrets(oneLine(fmt.Sprintf(format, args...)), raw))
}

// redactURL hides whatever in s, a Redis or PostgreSQL URL or a key=value
// connection string, may be a password, whether s parses or not: every
// part secretSpans finds becomes xxxxx.
func redactURL(s string) string {
	var b strings.Builder
	last := 0
	for _, sp := range secretSpans(s) {
		b.WriteString(s[last:sp[0]])
		b.WriteString("xxxxx")
		last = sp[1]
	}
	b.WriteString(s[last:])
	return b.String()
}

// hideSecrets hides in msg, a parser's error about the connection string s,
// every part of s that secretSpans finds, and every run of three or more
// letters and digits in such a part: a parser that cut a malformed password
// at a '/', '&' or space quotes the pieces (a "port", a "key", a "host").
func hideSecrets(msg, s string) string {
	notAlnum := func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) }
	for _, sp := range secretSpans(s) {
		secret := s[sp[0]:sp[1]]
		if secret == "" {
			continue
		}
		msg = strings.ReplaceAll(msg, secret, "xxxxx")
		for _, piece := range strings.FieldsFunc(secret, notAlnum) {
			if len(piece) >= 3 {
				msg = strings.ReplaceAll(msg, piece, "xxxxx")
			}
		}
	}
	return msg
}

var (
	// plainUser is a user name that redactURL shows.
	plainUser = regexp.MustCompile(`^[A-Za-z0-9._~%-]*$`)
	// connKey is a key of a key=value connection string or of a URL's query.
	connKey = regexp.MustCompile(`(?:^|[\s?&])([^\s?&=]+)=`)
)

// secretSpans returns the parts of s, a URL or key=value connection string,
// that may be a password, sorted and apart. They are found by hand, so that
// a string no parser takes (a typo in the port, a bad % escape, a password
// holding '@', ':', '/' or a space) is covered, and when in doubt a span
// takes more:
//   - the user information: everything from "://" (or the start, without
//     one) to the last '@'; only a plain user name before a ':' is left out
//     (without a ':' the whole of it is taken: some Redis clients read
//     redis://SECRET@host as a password);
//   - the value of a password or sslpassword key (in any case, the key
//     percent-decoded): a quoted one up to its closing quote, else up to
//     the next " key=" or "&key=" or the end.
func secretSpans(s string) [][2]int {
	var spans [][2]int
	start := 0
	if i := strings.Index(s, "://"); i >= 0 {
		start = i + 3
	}
	if at := strings.LastIndexByte(s, '@'); at >= start {
		from := start
		if user, _, ok := strings.Cut(s[start:at], ":"); ok && plainUser.MatchString(user) {
			from += len(user) + 1
		}
		spans = append(spans, [2]int{from, at})
	}
	keys := connKey.FindAllStringSubmatchIndex(s, -1)
	for i, k := range keys {
		key := s[k[2]:k[3]]
		if dec, err := url.PathUnescape(key); err == nil {
			key = dec
		}
		if key = strings.ToLower(key); key != "password" && key != "sslpassword" {
			continue
		}
		from, to := k[1], len(s)
		if from < len(s) && s[from] == '\'' {
			to = quotedEnd(s, from)
		} else if i+1 < len(keys) {
			to = keys[i+1][0]
		}
		spans = append(spans, [2]int{from, to})
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i][0] < spans[j][0] })
	merged := spans[:0]
	for _, sp := range spans {
		if n := len(merged); n > 0 && sp[0] <= merged[n-1][1] {
			merged[n-1][1] = max(merged[n-1][1], sp[1])
			continue
		}
		merged = append(merged, sp)
	}
	return merged
}

// quotedEnd returns the end of the single-quoted value that starts at s[i]
// (a backslash escapes the byte after it), or len(s) when no quote closes it.
func quotedEnd(s string, i int) int {
	for j := i + 1; j < len(s); j++ {
		switch s[j] {
		case '\\':
			j++
		case '\'':
			return j + 1
		}
	}
	return len(s)
}

// redisStrayAt reports an '@' in the Redis URL s after the end of its host
// (the first '/', '?' or '#' after "://") when something comes before that
// end: a password holding '/', '?' or '#' was cut short there, its first part
// read as a host or port and the rest as a path, query or fragment.
func redisStrayAt(s string) bool {
	_, rest, ok := strings.Cut(s, "://")
	end := strings.IndexAny(rest, "/?#")
	return ok && end > 0 && strings.Contains(rest[end:], "@")
}

// pgStrayAt reports an '@' in the PostgreSQL URL s that pgconn takes as part
// of the host or database name: pgconn ends the user information at the first
// '@' before the first '/', so a password holding '@' or '/' turns into a host
// or database name, which connection errors show.
func pgStrayAt(s string) bool {
	rest, ok := strings.CutPrefix(s, "postgres://")
	if !ok {
		rest, ok = strings.CutPrefix(s, "postgresql://")
	}
	if !ok {
		return false
	}
	if i := strings.IndexAny(rest, "@/"); i >= 0 && rest[i] == '@' {
		rest = rest[i+1:]
	}
	rest, _, _ = strings.Cut(rest, "?")
	return strings.Contains(rest, "@")
}

// stripURL drops any quoted connection string from a parse error, which may hold a password.
func stripURL(s string) string {
	if i := strings.Index(s, "cannot parse `"); i >= 0 {
		if j := strings.Index(s[i+14:], "`"); j >= 0 {
			return s[:i] + "cannot parse the URL" + s[i+14+j+1:]
		}
	}
	return s
}

// Complete tells a cache whose Redis holds a key for every row (a change
// feed and no TTL): there a missing key is a fault, not a key that expired
// or was never read.
func (c *Cache) Complete() bool { return c.Sync == SyncChangefeed && c.TTL == 0 }

// Spec is the cache's binding spec: what binding.New resolves against a table.
func (c *Cache) Spec() binding.Spec {
	s := binding.Spec{Name: c.Name, Table: c.Table, Key: c.Template, Format: c.Format, TTL: c.TTL, Jitter: float64(c.TTLJitter),
		Stale: max(c.StaleWhileRevalidate, c.StaleIfError), Queued: c.Writes == WritesBehind, Feed: c.Sync == SyncChangefeed}
	if c.Refreshes() {
		s.Record = binding.RecordKey(c.Name)
	}
	for _, f := range c.Value.Columns {
		s.Fields = append(s.Fields, binding.FieldSpec{Name: f.Field, Column: f.Column})
	}
	return s
}

// Fingerprint identifies what a cache's keys and values look like; when it
// changes, the keys in Redis were written under another mapping and the cache
// is rebuilt.
func (c *Cache) Fingerprint() string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%d\x00%g", c.Table, c.Key, c.Format, c.TTL, float64(c.TTLJitter))
	if c.Refreshes() {
		h.Write([]byte("\x00refresh")) // a rebuild records every key's expiry
	}
	for _, f := range c.Value.Columns {
		fmt.Fprintf(h, "\x00%s=%s", f.Field, f.Column)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

func (h *HTTP) validate() error {
	if h.MaxBody < 0 {
		return FieldError("http.max_body", "must not be negative")
	}
	if h.MaxBody == 0 {
		h.MaxBody = 1 << 20
	}
	if h.Addr != "" {
		if _, _, err := net.SplitHostPort(h.Addr); err != nil {
			return FieldError("http.addr", "%q is not host:port", h.Addr)
		}
	}
	if err := h.TLS.validate(h.Addr); err != nil {
		return err
	}
	for i, k := range h.Keys {
		field := fmt.Sprintf("http.keys[%d]", i)
		if len(k.Key) < 16 {
			return FieldError(field+".key", "an API key needs at least 16 characters")
		}
		if len(k.Scopes) == 0 {
			return FieldError(field+".scopes", "give read, write or both")
		}
		for _, s := range k.Scopes {
			if s != "read" && s != "write" {
				return FieldError(field+".scopes", "%q is not read or write", s)
			}
		}
	}
	return nil
}

func (t HTTPTLS) validate(addr string) error {
	switch {
	case !t.Enabled():
		return nil
	case addr == "":
		return FieldError("http.tls", "needs http.addr")
	}
	_, err := loadPair("http.tls", t.CertFile, t.KeyFile)
	return err
}

// loadPair loads the certificate and key of section (cert_file and
// key_file), which must be given together.
func loadPair(section, cert, key string) (tls.Certificate, error) {
	switch {
	case cert == "":
		return tls.Certificate{}, FieldError(section+".cert_file", "missing: key_file needs it")
	case key == "":
		return tls.Certificate{}, FieldError(section+".key_file", "missing: cert_file needs it")
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return tls.Certificate{}, FieldError(section+".cert_file", "%v", err)
	}
	return pair, nil
}
