package binding

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cachesync/cachesync/internal/pgtext"
)

// ErrKeySpelling is ParseKey's refusal of a key that names a row under a
// spelling other than the change feed's: "x:01" for the row whose key is
// "x:1". Such a key would be a second, stale copy of the row.
var ErrKeySpelling = errors.New("spelled otherwise than its row's key")

// ParseKey returns the key column values of key, or why key is not one
// of this binding's keys: it does not fit the template, or a value is no
// value of its column's type, or is not spelled as PostgreSQL prints it
// (ErrKeySpelling, naming the key as it is spelled).
func (b *Binding) ParseKey(key string) ([]string, error) {
	values, ok := b.Spec.Key.Parse(key)
	switch {
	case strings.HasPrefix(key, Reserved):
		return nil, fmt.Errorf("key %q is one of cachesync's own (%s*)", key, Reserved)
	case !ok:
		return nil, fmt.Errorf("key %q does not fit the template %s", key, b.Spec.Key)
	}
	respelled := false
	for i, v := range values {
		c, err := pgtext.Canonical(b.keyTypes[i].TypeOID, b.keyTypes[i].Typmod, v)
		if err != nil { // first: a key with no row's values names no row
			return nil, fmt.Errorf("key %q: column %s: %q: %v", key, b.keyTypes[i].Name, v, err)
		}
		respelled = respelled || c != v
	}
	if respelled {
		return nil, b.misspelled(key, values)
	}
	return values, nil
}

// misspelled is ParseKey's error for key, whose values are all values of
// their columns, one spelled otherwise than PostgreSQL prints it: it
// names the key the row has.
func (b *Binding) misspelled(key string, values []string) error {
	canon := make([][]byte, len(values))
	for i, v := range values {
		c, _ := pgtext.Canonical(b.keyTypes[i].TypeOID, b.keyTypes[i].Typmod, v)
		canon[i] = []byte(c)
	}
	if k, err := b.Spec.Key.Render(nil, canon); err == nil {
		return fmt.Errorf("key %q is %w: it is %q", key, ErrKeySpelling, k)
	}
	return fmt.Errorf("key %q is %w", key, ErrKeySpelling)
}

// ExactKeys tells a binding whose every key column has one spelling per
// value (pgtext.Exact: integers, text, uuid, numeric with a scale...), so
// that ParseKey alone tells a row's key from another spelling of it; for a
// column such as a numeric without a scale (1.5 and 1.50 are one value)
// only the row can.
func (b *Binding) ExactKeys() bool { return b.exact }

// exactKeys computes ExactKeys, once.
func exactKeys(types []Column) bool {
	for _, c := range types {
		if !pgtext.Exact(c.TypeOID, c.Typmod) {
			return false
		}
	}
	return true
}

// Owns tells a key of this binding's template whose every value is a
// value of its column, spelled as the change feed writes it or not
// ("x:01" too): a key this cache, and no other (CheckKeyspaces), may
// remove, such as a second spelling of a row's key an older version left.
func (b *Binding) Owns(key string) bool {
	values, ok := b.Spec.Key.Parse(key)
	if !ok {
		return false
	}
	for i, v := range values {
		if _, err := pgtext.Canonical(b.keyTypes[i].TypeOID, b.keyTypes[i].Typmod, v); err != nil {
			return false
		}
	}
	return true
}

// Overlap returns a key that the bindings a and b can both own (Owns), or
// false when none exists: each placeholder stands for any text a value of
// its column's type can be spelled with (pgtext.KeyBytes), so "user:{id}"
// (an integer) and "user:{id}:orders" cannot meet, while with a text id
// they can.
func Overlap(a, b *Binding) (string, bool) {
	return intersect(globOf(a.Spec.Key, a.keyTypes), globOf(b.Spec.Key, b.keyTypes))
}

// OverlapReserved returns a key of cachesync's own (Reserved) that b's
// template would produce were Parse not to refuse it, or false.
func OverlapReserved(b *Binding) (string, bool) {
	return intersect(globOf(b.Spec.Key, b.keyTypes), append(literal(Reserved), token{any: true}))
}

// token is one step of a key pattern: a literal byte, or any number of
// bytes from a set (nil: any byte).
type token struct {
	lit  byte
	star bool
	any  bool
	set  *[256]bool
}

func (t token) accepts(c byte) bool { return t.any || t.set != nil && t.set[c] }

func literal(s string) []token {
	out := make([]token, len(s))
	for i := range len(s) {
		out[i] = token{lit: s[i]}
	}
	return out
}

// globOf is the pattern of t's keys: its literals, and for each placeholder
// the bytes its column can be spelled with (one at least), with blanks at
// either end (an empty text is a value, so a placeholder of any byte may be
// empty).
func globOf(t *Template, types []Column) []token {
	var out []token
	for i, l := range t.lits {
		out = append(out, literal(l)...)
		if i == len(t.cols) {
			break
		}
		set := pgtext.KeyBytes(types[i].TypeOID, types[i].Typmod)
		if set == nil {
			out = append(out, token{star: true, any: true})
			continue
		}
		out = append(out, token{star: true, set: blankBytes}, token{set: set}, token{star: true, set: set}, token{star: true, set: blankBytes})
	}
	return out
}

// blankBytes are pgtext.Blanks as a set.
var blankBytes = func() *[256]bool {
	var b [256]bool
	for _, c := range []byte(pgtext.Blanks) {
		b[c] = true
	}
	return &b
}()

// intersect finds a string both patterns match, by a breadth-first walk of
// the pairs of their positions; it returns the first it finds.
func intersect(p, q []token) (string, bool) {
	type pos struct{ i, j int }
	type step struct {
		from pos
		c    byte
		eps  bool
	}
	prev := map[pos]step{}
	start := pos{}
	seen := map[pos]bool{start: true}
	queue := []pos{start}
	visit := func(to, from pos, c byte, eps bool) {
		if !seen[to] {
			seen[to] = true
			prev[to] = step{from, c, eps}
			queue = append(queue, to)
		}
	}
	for len(queue) > 0 {
		at := queue[0]
		queue = queue[1:]
		if at.i == len(p) && at.j == len(q) {
			var b []byte
			for at != start {
				s := prev[at]
				if !s.eps {
					b = append(b, s.c)
				}
				at = s.from
			}
			for l, r := 0, len(b)-1; l < r; l, r = l+1, r-1 {
				b[l], b[r] = b[r], b[l]
			}
			return string(b), true
		}
		// A star may match nothing.
		if at.i < len(p) && p[at.i].star {
			visit(pos{at.i + 1, at.j}, at, 0, true)
		}
		if at.j < len(q) && q[at.j].star {
			visit(pos{at.i, at.j + 1}, at, 0, true)
		}
		if at.i == len(p) || at.j == len(q) {
			continue
		}
		for _, c := range byteOrder {
			pi, ok := advance(p[at.i], at.i, c)
			if !ok {
				continue
			}
			qj, ok := advance(q[at.j], at.j, c)
			if ok {
				visit(pos{pi, qj}, at, c, false)
			}
		}
	}
	return "", false
}

// advance is where a pattern at token t (position i) goes on byte c.
func advance(t token, i int, c byte) (int, bool) {
	switch {
	case t.star && t.accepts(c):
		return i, true
	case t.star:
		return 0, false
	case t.any || t.set != nil:
		return i + 1, t.accepts(c)
	}
	return i + 1, t.lit == c
}

// byteOrder tries readable bytes first, so an example key reads well.
var byteOrder = func() []byte {
	var out []byte
	readable := "abcdefghijklmnopqrstuvwxyz0123456789"
	out = append(out, readable...)
	for c := 0; c < 256; c++ {
		if !strings.ContainsRune(readable, rune(c)) {
			out = append(out, byte(c))
		}
	}
	return out
}()
