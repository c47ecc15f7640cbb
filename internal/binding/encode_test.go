package binding

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

func TestFormat(t *testing.T) {
	for _, tt := range []struct {
		s string
		f Format
	}{{"json", FormatJSON}, {"hash", FormatHash}, {"string", FormatString}, {"JSON", FormatJSON}} {
		f, err := ParseFormat(tt.s)
		if err != nil || f != tt.f {
			t.Errorf("ParseFormat(%q) = %v, %v; want %v", tt.s, f, err, tt.f)
		}
		if !strings.EqualFold(f.String(), tt.s) {
			t.Errorf("%v.String() = %q", f, f.String())
		}
		var u Format
		if err := u.UnmarshalText([]byte(tt.s)); err != nil || u != tt.f {
			t.Errorf("UnmarshalText(%q) = %v, %v", tt.s, u, err)
		}
		if b, err := tt.f.MarshalText(); err != nil || string(b) != strings.ToLower(tt.s) {
			t.Errorf("MarshalText(%v) = %q, %v", tt.f, b, err)
		}
	}
	for _, s := range []string{"", "yaml", "hashes"} {
		if _, err := ParseFormat(s); err == nil {
			t.Errorf("ParseFormat(%q): want error", s)
		}
	}
	if Format(0).String() != "Format(0)" {
		t.Errorf("Format(0).String() = %q", Format(0).String())
	}
	if _, err := Format(0).MarshalText(); err == nil {
		t.Error("MarshalText(0): want error")
	}
}

// row is a text-format row covering every supported type; columns are referenced by
// index from fields below.
var (
	row = [][]byte{
		[]byte("42"),                  // 0 int4
		[]byte("9223372036854775807"), // 1 int8
		[]byte("NaN"),                 // 2 numeric
		[]byte("1.5e+300"),            // 3 float8
		[]byte("t"),                   // 4 bool
		[]byte("ünï \"q\"\n\\ 日本"),    // 5 text
		[]byte(""),                    // 6 text (empty)
		nil,                           // 7 text NULL
		[]byte(`{"a": [1, "x"]}`),     // 8 jsonb
		[]byte(`{"b":2}`),             // 9 json
		[]byte("2024-03-01 10:00:00.123456+05:30"),     // 10 timestamptz
		[]byte("2024-03-01 10:00:00.5"),                // 11 timestamp
		[]byte("2024-03-01"),                           // 12 date
		[]byte(`\x0a0bff`),                             // 13 bytea
		[]byte("{1,2,NULL}"),                           // 14 int4[]
		[]byte(`{{"a b",NULL},{"q\"x","NULL"}}`),       // 15 text[][]
		[]byte("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), // 16 uuid
		[]byte("happy"),                                // 17 enum (unknown oid)
		[]byte("1 day 02:00:00"),                       // 18 interval
	}
	fields = []Field{
		{"id", 0, pgtype.Int4OID},
		{"big", 1, pgtype.Int8OID},
		{"num", 2, pgtype.NumericOID},
		{"f8", 3, pgtype.Float8OID},
		{"ok", 4, pgtype.BoolOID},
		{"name", 5, pgtype.TextOID},
		{"empty", 6, pgtype.TextOID},
		{"gone", 7, pgtype.TextOID},
		{"doc", 8, pgtype.JSONBOID},
		{"js", 9, pgtype.JSONOID},
		{"at", 10, pgtype.TimestamptzOID},
		{"local", 11, pgtype.TimestampOID},
		{"day", 12, pgtype.DateOID},
		{"blob", 13, pgtype.ByteaOID},
		{"ints", 14, pgtype.Int4ArrayOID},
		{"grid", 15, pgtype.TextArrayOID},
		{"uid", 16, pgtype.UUIDOID},
		{"mood", 17, 16385},
		{"span", 18, pgtype.IntervalOID},
	}
)

func TestEncoderAppendJSON(t *testing.T) {
	e := &Encoder{Format: FormatJSON, Fields: fields}
	got, err := e.AppendJSON([]byte("x"), row)
	if err != nil {
		t.Fatal(err)
	}
	want := `x{"id":42,"big":9223372036854775807,"num":"NaN","f8":1.5e+300,"ok":true,` +
		`"name":"ünï \"q\"\n\\ 日本","empty":"","gone":null,"doc":{"a": [1, "x"]},"js":{"b":2},` +
		`"at":"2024-03-01T04:30:00.123456Z","local":"2024-03-01T10:00:00.5","day":"2024-03-01",` +
		`"blob":"Cgv/","ints":[1,2,null],"grid":[["a b",null],["q\"x","NULL"]],` +
		`"uid":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","mood":"happy","span":"1 day 02:00:00"}`
	if string(got) != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if !json.Valid(got[1:]) {
		t.Fatal("invalid JSON")
	}

	// Field names are JSON-escaped; an empty field list is an empty object.
	e = &Encoder{Fields: []Field{{`we"ird`, 0, pgtype.Int4OID}}}
	if got, _ := e.AppendJSON(nil, row); string(got) != `{"we\"ird":42}` {
		t.Errorf("got %s", got)
	}
	if got, _ := (&Encoder{}).AppendJSON(nil, row); string(got) != `{}` {
		t.Errorf("got %s", got)
	}
}

func TestEncoderHashFields(t *testing.T) {
	e := &Encoder{Format: FormatHash, Fields: fields}
	got, err := e.HashFields(row)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"id", "42", "big", "9223372036854775807", "num", "NaN", "f8", "1.5e+300", "ok", "true",
		"name", "ünï \"q\"\n\\ 日本", "empty", "",
		// "gone" is NULL and omitted
		"doc", `{"a": [1, "x"]}`, "js", `{"b":2}`,
		"at", "2024-03-01T04:30:00.123456Z", "local", "2024-03-01T10:00:00.5", "day", "2024-03-01",
		"blob", "\x0a\x0b\xff", "ints", "[1,2,null]", "grid", `[["a b",null],["q\"x","NULL"]]`,
		"uid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "mood", "happy", "span", "1 day 02:00:00",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	if got, err := (&Encoder{Fields: fields[7:8]}).HashFields(row); err != nil || len(got) != 0 {
		t.Errorf("all-NULL row: got %q, %v", got, err)
	}
}

func TestEncoderAppendString(t *testing.T) {
	tests := []struct {
		f    Field
		want string
	}{
		{Field{"v", 0, pgtype.Int4OID}, "42"},
		{Field{"v", 2, pgtype.NumericOID}, "NaN"},
		{Field{"v", 4, pgtype.BoolOID}, "true"},
		{Field{"v", 5, pgtype.TextOID}, "ünï \"q\"\n\\ 日本"},
		{Field{"v", 6, pgtype.TextOID}, ""},
		{Field{"v", 8, pgtype.JSONBOID}, `{"a": [1, "x"]}`},
		{Field{"v", 10, pgtype.TimestamptzOID}, "2024-03-01T04:30:00.123456Z"},
		{Field{"v", 13, pgtype.ByteaOID}, "\x0a\x0b\xff"},
		{Field{"v", 15, pgtype.TextArrayOID}, `[["a b",null],["q\"x","NULL"]]`},
	}
	for _, tt := range tests {
		e := &Encoder{Format: FormatString, Fields: []Field{tt.f}}
		got, err := e.AppendString([]byte("p"), row)
		if err != nil || string(got) != "p"+tt.want {
			t.Errorf("column %d: got %q, %v; want %q", tt.f.Column, got, err, tt.want)
		}
	}
}

func TestEncoderErrors(t *testing.T) {
	bad := [][]byte{[]byte("x1"), nil, []byte(`\xZZ`), []byte("{1,2")}
	tests := []struct {
		name string
		e    Encoder
		call string // json, hash, string
		want string
	}{
		{"json bad int", Encoder{Fields: []Field{{"n", 0, pgtype.Int4OID}}}, "json", `field "n" (column 0)`},
		{"json bad bytea", Encoder{Fields: []Field{{"b", 2, pgtype.ByteaOID}}}, "json", `field "b" (column 2)`},
		{"json bad array", Encoder{Fields: []Field{{"a", 3, pgtype.Int4ArrayOID}}}, "json", `field "a" (column 3)`},
		{"json column range", Encoder{Fields: []Field{{"z", 9, pgtype.TextOID}}}, "json", `field "z": column index 9 out of range`},
		{"hash bad bytea", Encoder{Fields: []Field{{"b", 2, pgtype.ByteaOID}}}, "hash", `field "b" (column 2)`},
		{"hash column range", Encoder{Fields: []Field{{"z", -1, pgtype.TextOID}}}, "hash", `column index -1 out of range`},
		{"string NULL", Encoder{Fields: []Field{{"v", 1, pgtype.TextOID}}}, "string", `column 1 (field "v") is NULL`},
		{"string bad", Encoder{Fields: []Field{{"v", 0, pgtype.BoolOID}}}, "string", `field "v" (column 0)`},
		{"string two fields", Encoder{Fields: []Field{{"a", 0, pgtype.TextOID}, {"b", 0, pgtype.TextOID}}}, "string", "exactly one field, have 2"},
		{"string no fields", Encoder{}, "string", "exactly one field, have 0"},
	}
	for _, tt := range tests {
		var err error
		var out []byte
		switch tt.call {
		case "json":
			out, err = tt.e.AppendJSON([]byte("keep"), bad)
		case "hash":
			_, err = tt.e.HashFields(bad)
			out = []byte("keep")
		case "string":
			out, err = tt.e.AppendString([]byte("keep"), bad)
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
		if string(out) != "keep" {
			t.Errorf("%s: dst = %q, want unchanged", tt.name, out)
		}
	}
}

func TestEncoderAllocs(t *testing.T) {
	e := &Encoder{Fields: fields}
	dst := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() { dst, _ = e.AppendJSON(dst[:0], row) }); n != 0 {
		t.Errorf("AppendJSON allocs = %v, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = e.HashFields(row) }); n > 2 {
		t.Errorf("HashFields allocs = %v, want <= 2", n)
	}
}

func BenchmarkEncoderAppendJSON(b *testing.B) {
	e := &Encoder{Fields: fields}
	var dst []byte
	for b.Loop() {
		dst, _ = e.AppendJSON(dst[:0], row)
	}
}

func BenchmarkEncoderHashFields(b *testing.B) {
	e := &Encoder{Fields: fields}
	for b.Loop() {
		_, _ = e.HashFields(row)
	}
}
