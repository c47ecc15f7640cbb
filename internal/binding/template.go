// Package binding is one cache's mapping of PostgreSQL rows onto Redis and
// every Redis write made under it:
//
//   - template.go: key templates, which turn column values into keys and
//     keys back into values; keyspace.go: which keys a cache owns, and
//     whether two caches' keyspaces overlap;
//   - encode.go: a row of PostgreSQL text values as the stored value;
//   - binding.go: a cache's binding (Binding) and the change feed's writes
//     (AppendSet; a deleted row's key goes by AppendInvalidate);
//   - fill.go: the lease-guarded fill scripts of read-through, and
//     invalidation; watch.go: the watched batch reload; record.go: the
//     expiry record refreshes read; queue.go: the write-behind queue's
//     scripts;
//   - names.go: the name of every key of cachesync's own (cachesync:*).
package binding

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// Template is a parsed key template such as "price:{item}" or
// "stock:{store}:{item}"; it renders keys from column values and parses keys back, so
// cachesync can map any Redis key to the row it came from.
//
// Syntax: "{name}" is a placeholder for a column (name: [A-Za-z_][A-Za-z0-9_]*);
// "{{" and "}}" are literal braces, so "{{shop}}:price:{item}" renders
// "{shop}:price:apple" (a Redis Cluster hash tag) and "{{{store}}}:{item}" puts the
// store value inside the hash tag. A Template is immutable and safe for concurrent use.
type Template struct {
	src     string
	lits    []string // lits[i] precedes placeholder i; lits[len(cols)] is the trailing literal
	cols    []string
	pattern string
}

// ParseTemplate parses a key template, rejecting templates whose keys could not be
// parsed back unambiguously.
func ParseTemplate(s string) (*Template, error) {
	t := &Template{src: s}
	offsets := []int{} // offset of each placeholder, for error messages
	var lit strings.Builder
	for i := 0; i < len(s); {
		switch c := s[i]; {
		case c == '{' && i+1 < len(s) && s[i+1] == '{':
			lit.WriteByte('{')
			i += 2
		case c == '}' && i+1 < len(s) && s[i+1] == '}':
			lit.WriteByte('}')
			i += 2
		case c == '}':
			return nil, templateErr(s, `unmatched "}" at offset %d (write "}}" for a literal "}")`, i)
		case c == '{':
			end := strings.IndexByte(s[i+1:], '}')
			if end < 0 {
				return nil, templateErr(s, `unterminated placeholder at offset %d (write "{{" for a literal "{")`, i)
			}
			name := s[i+1 : i+1+end]
			if name == "" {
				return nil, templateErr(s, "empty placeholder name at offset %d", i)
			}
			if !validName(name) {
				return nil, templateErr(s, "bad placeholder name %q at offset %d (want a letter or _ followed by letters, digits or _)", name, i)
			}
			if j := slices.Index(t.cols, name); j >= 0 {
				return nil, templateErr(s, "column %q is used twice (offsets %d and %d)", name, offsets[j], i)
			}
			if len(t.cols) > 0 && lit.Len() == 0 {
				return nil, templateErr(s, "placeholders {%s} and {%s} at offset %d have no literal text between them, so keys could not be parsed back", t.cols[len(t.cols)-1], name, i)
			}
			t.lits = append(t.lits, lit.String())
			lit.Reset()
			t.cols = append(t.cols, name)
			offsets = append(offsets, i)
			i += end + 2
		default:
			lit.WriteByte(c)
			i++
		}
	}
	if len(t.cols) == 0 {
		return nil, templateErr(s, "no {column} placeholder; a key template needs at least one")
	}
	if strings.HasPrefix(t.lits[0], Reserved) {
		return nil, templateErr(s, "keys beginning %q are cachesync's own", Reserved)
	}
	t.lits = append(t.lits, lit.String())
	t.pattern = buildPattern(t.lits)
	return t, nil
}

func templateErr(tmpl, format string, args ...any) error {
	return fmt.Errorf("binding: key template %q: %s", tmpl, fmt.Sprintf(format, args...))
}

func validName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return s != ""
}

func buildPattern(lits []string) string {
	var b strings.Builder
	for i, l := range lits {
		if i > 0 {
			b.WriteByte('*')
		}
		for j := 0; j < len(l); j++ {
			switch l[j] {
			case '*', '?', '[', ']', '\\':
				b.WriteByte('\\')
			}
			b.WriteByte(l[j])
		}
	}
	return b.String()
}

// String returns the template source text as it was given to ParseTemplate.
func (t *Template) String() string { return t.src }

// Columns returns the placeholder (column) names in template order, which is the
// order Render takes values in and Parse returns them in; the slice is a copy.
func (t *Template) Columns() []string { return slices.Clone(t.cols) }

// Pattern returns a Redis SCAN MATCH glob selecting candidate keys: the literal text
// with glob specials escaped and each placeholder as "*". Every key Render produces
// matches it, but matching keys must still be checked with Parse.
func (t *Template) Pattern() string { return t.pattern }

// Render appends the key for values (one per column, in Columns order) to dst.
//
// It rejects a NULL (nil) value, and a value that contains the literal text that
// follows its placeholder, or that ends with a prefix of that text in a way that
// would make Parse split the key earlier (for "{a}::{b}", a="x:" is rejected because
// "x:::y" parses as a="x"). The last placeholder's value may contain anything.
// Empty values are allowed. A key of cachesync's own (Reserved) is refused.
// On error dst is returned with its original length.
func (t *Template) Render(dst []byte, values [][]byte) ([]byte, error) {
	if len(values) != len(t.cols) {
		return dst, fmt.Errorf("binding: key template %q: got %d values for %d columns", t.src, len(values), len(t.cols))
	}
	orig := len(dst)
	dst = append(dst, t.lits[0]...)
	last := len(values) - 1
	for i, v := range values {
		if v == nil {
			return dst[:orig], fmt.Errorf("binding: key template %q: column %q is NULL", t.src, t.cols[i])
		}
		start := len(dst)
		dst = append(dst, v...)
		next := t.lits[i+1]
		dst = append(dst, next...)
		// Parse takes the first occurrence of next after the previous part; it must
		// be exactly the one we just wrote.
		if i < last && bytes.Index(dst[start:], []byte(next)) != len(v) {
			return dst[:orig], fmt.Errorf("binding: key template %q: value %s of column %q runs into the separator %q that follows it, so the key could not be parsed back",
				t.src, quoteShort(v), t.cols[i], next)
		}
	}
	if bytes.HasPrefix(dst[orig:], []byte(Reserved)) {
		return dst[:orig], fmt.Errorf("binding: key template %q: the key %s would be one of cachesync's own (%s*)", t.src, quoteShort(dst[orig:]), Reserved)
	}
	return dst, nil
}

func quoteShort(v []byte) string {
	const max = 64
	if len(v) > max {
		return fmt.Sprintf("%q...", v[:max])
	}
	return fmt.Sprintf("%q", v)
}

// Parse inverts Render: it returns the column values (in Columns order) encoded in
// key, or false if key does not match the template or is one of cachesync's
// own (Reserved). Each placeholder but the last
// takes the text up to the first occurrence of the literal after it; the last takes
// the rest minus the trailing literal. For every key Render produced, Parse returns
// exactly the rendered values, and Render of a successful Parse yields key again.
func (t *Template) Parse(key string) ([]string, bool) {
	if !strings.HasPrefix(key, t.lits[0]) || strings.HasPrefix(key, Reserved) {
		return nil, false
	}
	pos := len(t.lits[0])
	last := len(t.cols) - 1
	out := make([]string, len(t.cols))
	for i := range last {
		next := t.lits[i+1]
		j := strings.Index(key[pos:], next)
		if j < 0 {
			return nil, false
		}
		out[i] = key[pos : pos+j]
		pos += j + len(next)
	}
	rest, trail := key[pos:], t.lits[last+1]
	if !strings.HasSuffix(rest, trail) {
		return nil, false
	}
	out[last] = rest[:len(rest)-len(trail)]
	return out, true
}

// HashTag returns the Redis Cluster hash tag every key of the template
// has, when its text before the first placeholder fixes one ("{shop}" in
// "{{shop}}:price:{item}"); ok is false when a key's tag (or slot)
// depends on its values.
func (t *Template) HashTag() (tag string, ok bool) { return hashTag(t.lits[0]) }
