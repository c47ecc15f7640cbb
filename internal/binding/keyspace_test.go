package binding

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

// bind is a binding of template over columns named by its placeholders,
// each of type oid (modifier -1).
func bind(t *testing.T, template string, oid uint32) *Binding {
	t.Helper()
	tmpl, err := ParseTemplate(template)
	if err != nil {
		t.Fatal(err)
	}
	var cols []Column
	for _, c := range tmpl.Columns() {
		cols = append(cols, Column{Name: c, TypeOID: oid, Typmod: -1})
	}
	b, err := New(Spec{Name: "c", Table: "t", Key: tmpl}, cols)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOverlap(t *testing.T) {
	const text, integer, uuid = pgtype.TextOID, pgtype.Int4OID, pgtype.UUIDOID
	tests := []struct {
		a    string
		aOID uint32
		b    string
		bOID uint32
		want bool
	}{
		{"user:{id}", integer, "user:{id}:orders", integer, false},
		{"user:{id}", text, "user:{id}:orders", integer, true},
		{"{k}", text, "price:{item}", text, true},
		{"{k}", integer, "price:{item}", text, false},
		{"{k}", integer, "{k}:x", integer, false},
		{"price:{item}", text, "stock:{item}", text, false},
		{"a{x}", text, "{y}b", text, true},
		{"{{t}}:{id}", uuid, "{{t}}:{id}", integer, true}, // "1" is both
		{"{{t}}:{id}", uuid, "{{t}}:{id}", pgtype.BoolOID, true},
		{"x:{id}", pgtype.BoolOID, "x:{id}", integer, true},           // "x:1": 1 is also a boolean, spelled otherwise
		{"x:{id}", pgtype.BoolOID, "x:{id}", uuid, true},              // "x:0"
		{"n:{x}", pgtype.NumericOID, "n:{x}:{y}", integer, true},      // numeric without a scale: any text
		{"n:{x}", pgtype.UUIDOID, "n:{x}", pgtype.TimestampOID, true}, // digits
		{"u:{x}", pgtype.UUIDOID, "u:{x}:{y}", pgtype.UUIDOID, false},
		{"k:{id}", integer, "k:{id} {n}", integer, false}, // blanks only around a value: "k:0 0" is no integer
		{"ev:{at}", pgtype.TimestampOID, "ev:{at},{seq}", integer, false},
		{"n:{x}", pgtype.NumericOID, "n:{a}p{b}", integer, true}, // numeric without a scale: any text

		{"{a}.{b}", integer, "{a}", pgtype.NumericOID, true},
	}
	for _, tt := range tests {
		a, b := bind(t, tt.a, tt.aOID), bind(t, tt.b, tt.bOID)
		k, ok := Overlap(a, b)
		if ok != tt.want {
			t.Errorf("Overlap(%s, %s) = %q, %v; want %v", tt.a, tt.b, k, ok, tt.want)
			continue
		}
		k2, ok2 := Overlap(b, a)
		if ok2 != ok {
			t.Errorf("Overlap(%s, %s) is not symmetric", tt.a, tt.b)
		}
		// The key given is one both templates parse (typed values aside).
		for _, x := range []*Binding{a, b} {
			for _, key := range []string{k, k2} {
				if _, parsed := x.Spec.Key.Parse(key); ok && !parsed {
					t.Errorf("Overlap(%s, %s) = %q, which %s does not parse", tt.a, tt.b, key, x.Spec.Key)
				}
			}
		}
	}
}

// TestReserved: no template reaches cachesync's own keys: one that could
// only produce them is refused, Parse refuses them, Render refuses a row
// that would give one, and OverlapReserved tells which templates could.
func TestReserved(t *testing.T) {
	if _, err := ParseTemplate("cachesync:state:{x}"); err == nil || !strings.Contains(err.Error(), "cachesync's own") {
		t.Errorf("ParseTemplate(cachesync:state:{x}) = %v, want a refusal", err)
	}
	bare := bind(t, "{k}", pgtype.TextOID)
	for _, k := range []string{"cachesync:state:bare", "cachesync:lease:apple", "cachesync:"} {
		if _, ok := bare.Spec.Key.Parse(k); ok {
			t.Errorf("{k} parses %q", k)
		}
		if _, err := bare.ParseKey(k); err == nil {
			t.Errorf("{k}: ParseKey(%q) = nil", k)
		}
	}
	if _, err := bare.Key([][]byte{[]byte("cachesync:state:bare")}); err == nil {
		t.Error("{k} renders cachesync:state:bare")
	}
	if _, ok := bare.Spec.Key.Parse("apple"); !ok {
		t.Error("{k} does not parse apple")
	}
	for _, tt := range []struct {
		tmpl string
		oid  uint32
		want bool
	}{
		{"{k}", pgtype.TextOID, true},
		{"{k}:x", pgtype.TextOID, true},
		{"cache{k}", pgtype.TextOID, true},
		{"{k}", pgtype.Int8OID, false},
		{"kv:{k}", pgtype.TextOID, false},
		{"c{k}", pgtype.UUIDOID, false},
	} {
		if k, got := OverlapReserved(bind(t, tt.tmpl, tt.oid)); got != tt.want {
			t.Errorf("OverlapReserved(%s over oid %d) = %q, %v; want %v", tt.tmpl, tt.oid, k, got, tt.want)
		}
	}
}

// TestOwns: a cache owns its keys in any spelling of their values, and
// nothing else: what a rebuild, a TRUNCATE or an invalidation may remove.
func TestOwns(t *testing.T) {
	b := bind(t, "x:{id}", pgtype.Int4OID)
	for k, want := range map[string]bool{"x:1": true, "x:01": true, "x: 1": true, "x:abc": false, "x:1:2": false,
		"x:99999999999": false, "y:1": false} {
		if b.Owns(k) != want {
			t.Errorf("x:{id} owns %q: %v, want %v", k, !want, want)
		}
	}
	if bind(t, "{k}", pgtype.TextOID).Owns("cachesync:state:x") {
		t.Error("{k} owns cachesync:state:x")
	}
}

// TestParseKey: a key is accepted in its row's spelling only, and a value
// given by a writer is respelled so.
func TestParseKey(t *testing.T) {
	b := bind(t, "x:{id}", pgtype.Int4OID)
	if v, err := b.ParseKey("x:1"); err != nil || v[0] != "1" {
		t.Errorf(`ParseKey("x:1") = %q, %v`, v, err)
	}
	for _, k := range []string{"x:01", "x:+1", "x: 1", "x:1 ", "x:0001"} {
		_, err := b.ParseKey(k)
		if !errors.Is(err, ErrKeySpelling) || !strings.Contains(err.Error(), `"x:1"`) {
			t.Errorf("ParseKey(%q) = %v, want ErrKeySpelling naming x:1", k, err)
		}
	}
	for _, k := range []string{"x:99999999999", "x:a\x00b", "x:\xff", "x:one", "y:1"} {
		if _, err := b.ParseKey(k); err == nil || errors.Is(err, ErrKeySpelling) {
			t.Errorf("ParseKey(%q) = %v, want it refused as no key", k, err)
		}
	}
}

// FuzzParseKey: a key ParseKey accepts is the key Render gives for its
// values, never one of cachesync's own; one it refuses for its spelling
// names a key that it accepts. Seeded with issue 13's keys; longer:
// go test -run '^$' -fuzz FuzzParseKey -fuzztime 2m ./binding
func FuzzParseKey(f *testing.F) {
	templates := []string{"x:{id}", "{k}", "{{t}}:{a}:{b}", "d:{day}", "ts:{at}", "u:{u}", "n:{n}", "c:{c}"}
	types := []Column{{TypeOID: pgtype.Int4OID, Typmod: -1}, {TypeOID: pgtype.TextOID, Typmod: -1},
		{TypeOID: pgtype.UUIDOID, Typmod: -1}, {TypeOID: pgtype.DateOID, Typmod: -1},
		{TypeOID: pgtype.TimestamptzOID, Typmod: -1}, {TypeOID: pgtype.NumericOID, Typmod: 10<<16 | 2 + 4},
		{TypeOID: pgtype.BPCharOID, Typmod: 4 + 4}, {TypeOID: pgtype.BoolOID, Typmod: -1}}
	for _, k := range []string{"x:01", "x:+1", "x: 1", "x:1 ", "x:0001", "x:99999999999", "x:a\x00b", "x:\xff",
		"cachesync:state:x", "{t}:1:2", "d:2026-1-2", "ts:2026-01-02T03:04:05Z", "n:1.5", "c:ab", "u:A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"} {
		for i := range templates {
			f.Add(uint8(i), uint8(i), k)
		}
	}
	f.Fuzz(func(t *testing.T, which, typ uint8, key string) {
		tmpl, _ := ParseTemplate(templates[int(which)%len(templates)])
		var cols []Column
		for i, c := range tmpl.Columns() {
			ty := types[(int(typ)+i)%len(types)]
			ty.Name = c
			cols = append(cols, ty)
		}
		b, err := New(Spec{Name: "c", Table: "t", Key: tmpl}, cols)
		if err != nil {
			t.Fatal(err)
		}
		values, err := b.ParseKey(key)
		if errors.Is(err, ErrKeySpelling) {
			if _, own, ok := strings.Cut(err.Error(), `: it is "`); ok {
				own, _ = strconv.Unquote(`"` + own)
				if _, err := b.ParseKey(own); err != nil {
					t.Fatalf("ParseKey(%q) names %q, which it refuses: %v", key, own, err)
				}
			}
			return
		}
		if err != nil {
			return
		}
		if strings.HasPrefix(key, Reserved) {
			t.Fatalf("ParseKey accepts %q", key)
		}
		raw := make([][]byte, len(values))
		for i, v := range values {
			raw[i] = []byte(v)
		}
		if k, err := tmpl.Render(nil, raw); err != nil || string(k) != key {
			t.Fatalf("ParseKey(%q) = %q, which renders %q, %v", key, values, k, err)
		}
	})
}
