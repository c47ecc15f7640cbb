package pgtext

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

// The spellings of issue 13 and their kin: each is either the one spelling
// PostgreSQL's output gives (canon == in), another spelling of a value
// (canon is the one), or no value of the type (err). The agreement of
// these with PostgreSQL itself is TestKeySpelling in package schema.
func TestCanonical(t *testing.T) {
	const varchar3, char4, num52, ts0 = 3 + 4, 4 + 4, (5<<16 | 2) + 4, 0
	tests := []struct {
		oid     uint32
		typmod  int32
		in      string
		canon   string // "" with bad
		bad     bool
		inexact bool
	}{
		{pgtype.Int4OID, -1, "1", "1", false, false},
		{pgtype.Int4OID, -1, "01", "1", false, false},
		{pgtype.Int4OID, -1, "+1", "1", false, false},
		{pgtype.Int4OID, -1, " 1", "1", false, false},
		{pgtype.Int4OID, -1, "1 ", "1", false, false},
		{pgtype.Int4OID, -1, "0001", "1", false, false},
		{pgtype.Int4OID, -1, "-0", "0", false, false},
		{pgtype.Int4OID, -1, "99999999999", "", true, false},
		{pgtype.Int2OID, -1, "40000", "", true, false},
		{pgtype.Int8OID, -1, "9223372036854775807", "9223372036854775807", false, false},
		{pgtype.Int8OID, -1, "1_000", "", true, false},
		{pgtype.Int8OID, -1, "0x10", "", true, false},
		{pgtype.Int4OID, -1, "a\x00b", "", true, false},
		{pgtype.TextOID, -1, "a\x00b", "", true, false},
		{pgtype.TextOID, -1, "a\xffb", "", true, false},
		{pgtype.TextOID, -1, " two words ", " two words ", false, false},
		{pgtype.VarcharOID, varchar3, "abc", "abc", false, false},
		{pgtype.VarcharOID, varchar3, "abcd", "", true, false},
		{pgtype.BPCharOID, char4, "ab", "ab  ", false, false},
		{pgtype.BPCharOID, char4, "ab  ", "ab  ", false, false},
		{pgtype.BPCharOID, char4, "ab   ", "ab  ", false, false},
		{pgtype.BPCharOID, char4, "abcde", "", true, false},
		{pgtype.BPCharOID, -1, "ab ", "ab ", false, true},
		{pgtype.BoolOID, -1, "t", "t", false, false},
		{pgtype.BoolOID, -1, "true", "t", false, false},
		{pgtype.BoolOID, -1, "0", "f", false, false},
		{pgtype.BoolOID, -1, "maybe", "", true, false},
		{pgtype.UUIDOID, -1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", false, false},
		{pgtype.UUIDOID, -1, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", false, false},
		{pgtype.UUIDOID, -1, "{a0eebc999c0b4ef8bb6d6bb9bd380a11}", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", false, false},
		{pgtype.UUIDOID, -1, "a0eebc99", "", true, false},
		{pgtype.NumericOID, num52, "1.50", "1.50", false, false},
		{pgtype.NumericOID, num52, "1.5", "1.50", false, false},
		{pgtype.NumericOID, num52, "1.505", "1.51", false, false},
		{pgtype.NumericOID, num52, "-1.505", "-1.51", false, false},
		{pgtype.NumericOID, num52, "-0.001", "0.00", false, false},
		{pgtype.NumericOID, num52, "1e2", "100.00", false, false},
		{pgtype.NumericOID, num52, "1000.00", "", true, false},
		{pgtype.NumericOID, num52, "nan", "NaN", false, false},
		{pgtype.NumericOID, num52, "1/2", "", true, false},
		{pgtype.NumericOID, num52, "1p3", "", true, false},       // big.Rat's binary exponent: no numeric
		{pgtype.NumericOID, num52, "1p9999999", "", true, false}, // (which took 20 s to compute)
		{pgtype.UUIDOID, -1, " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "", true, false},
		{pgtype.UUIDOID, -1, "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "", true, false},
		{pgtype.DateOID, -1, "2026-01-02 03:04:05,5", "", true, false},
		{pgtype.NumericOID, -1, "1.50", "1.50", false, true},
		{pgtype.DateOID, -1, "2026-01-02", "2026-01-02", false, false},
		{pgtype.DateOID, -1, "2026-1-2", "2026-01-02", false, false},
		{pgtype.DateOID, -1, "2026-02-29", "", true, false},
		{pgtype.DateOID, -1, "2024-02-29", "2024-02-29", false, false},
		{pgtype.DateOID, -1, "0001-02-29 BC", "0001-02-29 BC", false, false},
		{pgtype.DateOID, -1, "infinity", "infinity", false, false},
		{pgtype.TimestamptzOID, -1, "2026-01-02 03:04:05+00", "2026-01-02 03:04:05+00", false, false},
		{pgtype.TimestamptzOID, -1, "2026-01-02 03:04:05.5+00", "2026-01-02 03:04:05.5+00", false, false},
		{pgtype.TimestamptzOID, -1, "2026-01-02 03:04:05.50+00", "2026-01-02 03:04:05.5+00", false, false},
		{pgtype.TimestamptzOID, -1, "2026-01-02T03:04:05Z", "2026-01-02 03:04:05+00", false, false},
		{pgtype.TimestamptzOID, -1, "2026-01-02 03:04:05+01", "2026-01-02 02:04:05+00", false, false},
		{pgtype.TimestamptzOID, -1, "2026-01-02 24:00:00+00", "", true, false},
		{pgtype.TimestamptzOID, ts0, "2026-01-02 03:04:05.5+00", "", true, false},
		{pgtype.TimestampOID, -1, "2026-01-02 03:04:05", "2026-01-02 03:04:05", false, false},
		{pgtype.TimestampOID, -1, "2026-01-02 03:04:05+00", "", true, false},
		{pgtype.TimestampOID, -1, "2026-01-02T03:04:05.000", "2026-01-02 03:04:05", false, false},
		{pgtype.TimestamptzOID, -1, "2026-01-02 03:04:05.1234567+00", "", true, false},
		{pgtype.TimestamptzOID, -1, "0001-01-01T00:30:00+01:00", "", true, false},
		{pgtype.Float8OID, -1, "1.5", "1.5", false, true},
	}
	for _, tt := range tests {
		canon, err := Canonical(tt.oid, tt.typmod, tt.in)
		exact := Exact(tt.oid, tt.typmod)
		switch {
		case tt.bad && err == nil:
			t.Errorf("Canonical(%d, %d, %q) = %q, want an error", tt.oid, tt.typmod, tt.in, canon)
		case !tt.bad && err != nil:
			t.Errorf("Canonical(%d, %d, %q): %v", tt.oid, tt.typmod, tt.in, err)
		case !tt.bad && (canon != tt.canon || exact == tt.inexact):
			t.Errorf("Canonical(%d, %d, %q) = %q, exact %v; want %q, exact %v", tt.oid, tt.typmod, tt.in, canon, exact, tt.canon, !tt.inexact)
		}
	}
}

// FuzzCanonical: a canonical spelling is its own canonical spelling, and
// every spelling taken holds only bytes KeyBytes allows. Seeded with TestCanonical's cases;
// longer: go test -run '^$' -fuzz FuzzCanonical -fuzztime 2m ./pgtext
func FuzzCanonical(f *testing.F) {
	oids := []uint32{pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID, pgtype.BoolOID, pgtype.UUIDOID,
		pgtype.TextOID, pgtype.VarcharOID, pgtype.NameOID, pgtype.BPCharOID, pgtype.NumericOID, pgtype.DateOID,
		pgtype.TimestampOID, pgtype.TimestamptzOID}
	for _, s := range []string{"01", "+1", " 1", "99999999999", "a\x00b", "a\xffb", "1.505", "2026-02-29",
		"2026-01-02 03:04:05.50+00", "0001-02-29 BC", "{A0EEBC999C0B4EF8BB6D6BB9BD380A11}", "nan", "1e2",
		"1p3", "0x1p3", "2026-01-02 03:04:05,5", " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
		"a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11", "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "\t7 ", "1p9999999"} {
		for i := range oids {
			f.Add(uint8(i), int32(-1), s)
			f.Add(uint8(i), int32(8), s)
			f.Add(uint8(i), int32(5<<16|2+4), s)
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, typmod int32, s string) {
		oid := oids[int(which)%len(oids)]
		canon, err := Canonical(oid, typmod, s)
		if err != nil || !Exact(oid, typmod) {
			return
		}
		again, err := Canonical(oid, typmod, canon)
		if err != nil || again != canon {
			t.Fatalf("Canonical(%d, %d, %q) = %q, whose own is %q, %v", oid, typmod, s, canon, again, err)
		}
		// Both the spelling taken and the one given back hold only bytes
		// KeyBytes allows, blanks aside at either end: what the templates'
		// overlap check relies on.
		if allowed := KeyBytes(oid, typmod); allowed != nil {
			for _, sp := range []string{s, canon} {
				core := strings.Trim(sp, Blanks)
				for i := 0; i < len(core); i++ {
					if !allowed[core[i]] {
						t.Fatalf("Canonical(%d, %d, %q) = %q: %q holds %q, which KeyBytes leaves out", oid, typmod, s, canon, sp, core[i])
					}
				}
			}
		}
	})
}

// TestKeyBytesCoverSpellings: every spelling Canonical takes, among all
// one- and two-byte strings and every one-byte change to a value of each
// type, holds only bytes KeyBytes allows (blanks at either end aside): a
// byte left out would let one cache remove another's key.
func TestKeyBytesCoverSpellings(t *testing.T) {
	types := []struct {
		oid    uint32
		typmod int32
		values []string
	}{
		{pgtype.Int4OID, -1, []string{"-12", "7"}},
		{pgtype.OIDOID, -1, []string{"12"}},
		{pgtype.BoolOID, -1, []string{"t", "false", " yes "}},
		{pgtype.UUIDOID, -1, []string{"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "{A0EEBC999C0B4EF8BB6D6BB9BD380A11}"}},
		{pgtype.NumericOID, 10<<16 | 2 + 4, []string{"-1.50", "1e2", "NaN"}},
		{pgtype.DateOID, -1, []string{"2026-01-02", "0044-03-15 BC", "2026-1-2", "2026-01-02T03:04:05Z", "infinity"}},
		{pgtype.TimestampOID, 3, []string{"2026-01-02 03:04:05.12", "2026-01-02T03:04:05"}},
		{pgtype.TimestamptzOID, -1, []string{"2026-01-02 03:04:05+00", "2026-01-02T03:04:05.5+01:00", "2026-01-02 03:04:05 BC"}},
	}
	check := func(oid uint32, typmod int32, s string) {
		if _, err := Canonical(oid, typmod, s); err != nil {
			return
		}
		allowed, core := KeyBytes(oid, typmod), strings.Trim(s, Blanks)
		for i := 0; i < len(core); i++ {
			if !allowed[core[i]] {
				t.Errorf("Canonical(%d, %d) takes %q, whose %q KeyBytes leaves out", oid, typmod, s, core[i])
				return
			}
		}
	}
	for _, ty := range types {
		for a := 0; a < 256; a++ {
			check(ty.oid, ty.typmod, string([]byte{byte(a)}))
			for b := 0; b < 256; b++ {
				check(ty.oid, ty.typmod, string([]byte{byte(a), byte(b)}))
			}
		}
		for _, v := range ty.values {
			for i := 0; i <= len(v); i++ {
				for c := 0; c < 256; c++ {
					check(ty.oid, ty.typmod, v[:i]+string([]byte{byte(c)})+v[i:])
					if i < len(v) {
						check(ty.oid, ty.typmod, v[:i]+string([]byte{byte(c)})+v[i+1:])
					}
				}
			}
		}
	}
}
