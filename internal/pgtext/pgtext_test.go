package pgtext

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// Unnamed in pgtype: a custom type (e.g. an enum) is unknown to pgtext.
const enumOID = 16385

func TestAppendJSON(t *testing.T) {
	tests := []struct {
		name string
		oid  uint32
		text string
		want string
	}{
		{"int2", pgtype.Int2OID, "-32768", `-32768`},
		{"int4", pgtype.Int4OID, "42", `42`},
		{"int8", pgtype.Int8OID, "9223372036854775807", `9223372036854775807`},
		{"oid", pgtype.OIDOID, "4294967295", `4294967295`},
		{"float4", pgtype.Float4OID, "1.2345679e+11", `1.2345679e+11`},
		{"float8 exp", pgtype.Float8OID, "1e-07", `1e-07`},
		{"float8 negzero", pgtype.Float8OID, "-0", `-0`},
		{"float8 NaN", pgtype.Float8OID, "NaN", `"NaN"`},
		{"float4 Infinity", pgtype.Float4OID, "Infinity", `"Infinity"`},
		{"float8 -Infinity", pgtype.Float8OID, "-Infinity", `"-Infinity"`},
		{"numeric", pgtype.NumericOID, "1.10", `1.10`},
		{"numeric NaN", pgtype.NumericOID, "NaN", `"NaN"`},
		{"numeric Infinity", pgtype.NumericOID, "Infinity", `"Infinity"`},
		{"bool t", pgtype.BoolOID, "t", `true`},
		{"bool f", pgtype.BoolOID, "f", `false`},
		{"json", pgtype.JSONOID, `{"a":1}`, `{"a":1}`},
		{"json whitespace", pgtype.JSONOID, "{\"a\":\n 1}", "{\"a\":\n 1}"},
		{"jsonb", pgtype.JSONBOID, `{"a": [1, "x\"y"], "b": null}`, `{"a": [1, "x\"y"], "b": null}`},
		{"jsonb scalar", pgtype.JSONBOID, `"s"`, `"s"`},
		{"text", pgtype.TextOID, "hello", `"hello"`},
		{"text empty", pgtype.TextOID, "", `""`},
		{"text escapes", pgtype.TextOID, "q\"uo\\te\n\t\r\b\f\x01\x1f\x7f", `"q\"uo\\te\n\t\r\b\f\u0001\u001f` + "\x7f\""},
		{"text unicode", pgtype.TextOID, "ünï 日本 🎉", `"ünï 日本 🎉"`},
		{"text invalid utf8", pgtype.TextOID, "a\xffb\xc3", `"a\ufffdb\ufffd"`},
		{"text line separators", pgtype.TextOID, "a\u2028b\u2029", `"a\u2028b\u2029"`},
		{"text html stays", pgtype.TextOID, "<a&b>", `"<a&b>"`},
		{"varchar", pgtype.VarcharOID, "v", `"v"`},
		{"bpchar", pgtype.BPCharOID, "ab  ", `"ab  "`},
		{"name", pgtype.NameOID, "pg_class", `"pg_class"`},
		{"char", pgtype.QCharOID, "x", `"x"`},
		{"uuid", pgtype.UUIDOID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
		{"enum (unknown oid)", enumOID, "happy", `"happy"`},
		{"inet (string)", pgtype.InetOID, "10.0.0.1/8", `"10.0.0.1/8"`},
		{"date", pgtype.DateOID, "2024-03-01", `"2024-03-01"`},
		{"date BC", pgtype.DateOID, "0044-03-15 BC", `"0044-03-15 BC"`},
		{"date infinity", pgtype.DateOID, "infinity", `"infinity"`},
		{"time", pgtype.TimeOID, "10:00:00.5", `"10:00:00.5"`},
		{"timetz", pgtype.TimetzOID, "10:00:00+05:30", `"10:00:00+05:30"`},
		{"interval", pgtype.IntervalOID, "1 year 2 mons 3 days 04:05:06.7", `"1 year 2 mons 3 days 04:05:06.7"`},
		{"timestamptz", pgtype.TimestamptzOID, "2024-03-01 10:00:00+00", `"2024-03-01T10:00:00Z"`},
		{"timestamptz fraction", pgtype.TimestamptzOID, "2024-03-01 10:00:00.123456+00", `"2024-03-01T10:00:00.123456Z"`},
		{"timestamptz fraction zeros", pgtype.TimestamptzOID, "2024-03-01 10:00:00.120000+00", `"2024-03-01T10:00:00.12Z"`},
		{"timestamptz fraction all zero", pgtype.TimestamptzOID, "2024-03-01 10:00:00.000+00", `"2024-03-01T10:00:00Z"`},
		{"timestamptz offset", pgtype.TimestamptzOID, "2024-03-01 10:00:00.12345+05:30", `"2024-03-01T04:30:00.12345Z"`},
		{"timestamptz negative offset across midnight", pgtype.TimestamptzOID, "2024-02-29 22:00:00-03", `"2024-03-01T01:00:00Z"`},
		{"timestamptz LMT offset", pgtype.TimestamptzOID, "1850-01-01 00:19:32+00:19:32", `"1850-01-01T00:00:00Z"`},
		{"timestamptz year 10000", pgtype.TimestamptzOID, "10000-01-01 00:00:00+00", `"10000-01-01T00:00:00Z"`},
		{"timestamptz BC", pgtype.TimestamptzOID, "0044-03-15 10:00:00+00 BC", `"-0043-03-15T10:00:00Z"`},
		{"timestamptz infinity", pgtype.TimestamptzOID, "infinity", `"infinity"`},
		{"timestamptz -infinity", pgtype.TimestamptzOID, "-infinity", `"-infinity"`},
		{"timestamp", pgtype.TimestampOID, "2024-03-01 10:00:00.5", `"2024-03-01T10:00:00.5"`},
		{"timestamp whole", pgtype.TimestampOID, "2024-03-01 10:00:00", `"2024-03-01T10:00:00"`},
		{"timestamp BC", pgtype.TimestampOID, "0001-01-01 00:00:00 BC", `"0000-01-01T00:00:00"`},
		{"bytea", pgtype.ByteaOID, `\x0a0bff`, `"Cgv/"`},
		{"bytea upper hex", pgtype.ByteaOID, `\x0A0BFF`, `"Cgv/"`},
		{"bytea empty", pgtype.ByteaOID, `\x`, `""`},
		{"bytea escape format", pgtype.ByteaOID, `a\\\001`, `"YVwB"`},
		{"int4[]", pgtype.Int4ArrayOID, "{1,2,NULL}", `[1,2,null]`},
		{"int4[] empty", pgtype.Int4ArrayOID, "{}", `[]`},
		{"int4[] dims", pgtype.Int4ArrayOID, "[0:1]={5,6}", `[5,6]`},
		{"int4[][]", pgtype.Int4ArrayOID, "{{1,2},{3,4}}", `[[1,2],[3,4]]`},
		{"int4[][][]", pgtype.Int4ArrayOID, "[1:1][1:2][1:1]={{{1},{2}}}", `[[[1],[2]]]`},
		{"int4[] spaces", pgtype.Int4ArrayOID, " { 1 , NULL , 3 } ", `[1,null,3]`},
		{
			"text[] quotes and NULL", pgtype.TextArrayOID,
			`{"a b",c,"NULL",NULL,"q\"uo\\te","","x,y","{}","tab	here",ünï,null,"null"}`,
			`["a b","c","NULL",null,"q\"uo\\te","","x,y","{}","tab\there","ünï",null,"null"]`,
		},
		{"text[] escaped unquoted", pgtype.TextArrayOID, `{a\,b,c\"d}`, `["a,b","c\"d"]`},
		{"text[][]", pgtype.TextArrayOID, `{{a,"b c"},{NULL,""}}`, `[["a","b c"],[null,""]]`},
		{"varchar[]", pgtype.VarcharArrayOID, `{x}`, `["x"]`},
		{"bool[]", pgtype.BoolArrayOID, "{t,f,NULL}", `[true,false,null]`},
		{"float8[]", pgtype.Float8ArrayOID, "{1.5,NaN,1e+300,-Infinity}", `[1.5,"NaN",1e+300,"-Infinity"]`},
		{"numeric[]", pgtype.NumericArrayOID, "{1.10,NaN}", `[1.10,"NaN"]`},
		{"bytea[]", pgtype.ByteaArrayOID, `{"\\x00",NULL,"\\xdead"}`, `["AA==",null,"3q0="]`},
		{"jsonb[]", pgtype.JSONBArrayOID, `{"{\"a\": 1}","\"s\""}`, `[{"a": 1},"s"]`},
		{"json[]", pgtype.JSONArrayOID, `{"{\"a\":1}",NULL}`, `[{"a":1},null]`},
		{"timestamptz[]", pgtype.TimestamptzArrayOID, `{"2024-03-01 10:00:00+00",infinity}`, `["2024-03-01T10:00:00Z","infinity"]`},
		{"uuid[]", pgtype.UUIDArrayOID, `{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}`, `["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]`},
		{"box[] (semicolon delimiter)", pgtype.BoxArrayOID, `{(3,4),(1,2);(1,1),(0,0)}`, `["(3,4),(1,2)","(1,1),(0,0)"]`},
		{"unknown array oid is a string", enumOID + 1, `{happy,sad}`, `"{happy,sad}"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("prefix:")
			got, err := AppendJSON(prefix, tt.oid, []byte(tt.text))
			if err != nil {
				t.Fatalf("AppendJSON(%d, %q): %v", tt.oid, tt.text, err)
			}
			if !bytes.HasPrefix(got, prefix) {
				t.Fatalf("AppendJSON clobbered dst: %q", got)
			}
			got = got[len(prefix):]
			if string(got) != tt.want {
				t.Fatalf("AppendJSON(%d, %q)\n got %s\nwant %s", tt.oid, tt.text, got, tt.want)
			}
			if !json.Valid(got) {
				t.Fatalf("AppendJSON(%d, %q) = %s is not valid JSON", tt.oid, tt.text, got)
			}
		})
	}
}

func TestAppendPlain(t *testing.T) {
	tests := []struct {
		name string
		oid  uint32
		text string
		want string
	}{
		{"int4", pgtype.Int4OID, "-7", "-7"},
		{"numeric", pgtype.NumericOID, "1.10", "1.10"},
		{"numeric NaN", pgtype.NumericOID, "NaN", "NaN"},
		{"float8 -Infinity", pgtype.Float8OID, "-Infinity", "-Infinity"},
		{"bool t", pgtype.BoolOID, "t", "true"},
		{"bool f", pgtype.BoolOID, "f", "false"},
		{"json", pgtype.JSONOID, `{"a": 1}`, `{"a": 1}`},
		{"jsonb", pgtype.JSONBOID, `[1, "x"]`, `[1, "x"]`},
		{"text", pgtype.TextOID, "a \"b\"\n\\", "a \"b\"\n\\"},
		{"text empty", pgtype.TextOID, "", ""},
		{"text unicode", pgtype.TextOID, "日本", "日本"},
		{"text invalid utf8 kept", pgtype.TextOID, "a\xff", "a\xff"},
		{"uuid", pgtype.UUIDOID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{"enum", enumOID, "happy", "happy"},
		{"date", pgtype.DateOID, "2024-03-01", "2024-03-01"},
		{"interval", pgtype.IntervalOID, "01:00:00", "01:00:00"},
		{"timestamptz", pgtype.TimestamptzOID, "2024-03-01 10:00:00.123456+00", "2024-03-01T10:00:00.123456Z"},
		{"timestamptz offset", pgtype.TimestamptzOID, "2024-03-01 10:00:00+05:30", "2024-03-01T04:30:00Z"},
		{"timestamptz infinity", pgtype.TimestamptzOID, "infinity", "infinity"},
		{"timestamp", pgtype.TimestampOID, "2024-03-01 10:00:00.5", "2024-03-01T10:00:00.5"},
		{"bytea", pgtype.ByteaOID, `\x0a0bff`, "\x0a\x0b\xff"},
		{"bytea empty", pgtype.ByteaOID, `\x`, ""},
		{"bytea escape format", pgtype.ByteaOID, `a\\\001`, "a\\\x01"},
		{"int4[]", pgtype.Int4ArrayOID, "{1,NULL}", `[1,null]`},
		{"text[]", pgtype.TextArrayOID, `{"a b",NULL}`, `["a b",null]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := AppendPlain([]byte("p"), tt.oid, []byte(tt.text))
			if err != nil {
				t.Fatalf("AppendPlain(%d, %q): %v", tt.oid, tt.text, err)
			}
			if string(got[1:]) != tt.want || got[0] != 'p' {
				t.Fatalf("AppendPlain(%d, %q) = %q, want %q", tt.oid, tt.text, got[1:], tt.want)
			}
		})
	}
}

func TestAppendErrors(t *testing.T) {
	tests := []struct {
		name string
		oid  uint32
		text string
	}{
		{"int garbage", pgtype.Int4OID, "12a"},
		{"int empty", pgtype.Int8OID, ""},
		{"int leading zero", pgtype.Int4OID, "01"},
		{"float garbage", pgtype.Float8OID, "1.e5"},
		{"numeric nan lowercase", pgtype.NumericOID, "nan"},
		{"bool", pgtype.BoolOID, "true"},
		{"bool empty", pgtype.BoolOID, ""},
		{"json empty", pgtype.JSONOID, ""},
		{"bytea odd hex", pgtype.ByteaOID, `\x0a0`},
		{"bytea bad hex", pgtype.ByteaOID, `\x0g`},
		{"bytea bad escape", pgtype.ByteaOID, `a\9`},
		{"bytea trailing backslash", pgtype.ByteaOID, `a\`},
		{"timestamptz no offset", pgtype.TimestamptzOID, "2024-03-01 10:00:00"},
		{"timestamptz bad month", pgtype.TimestamptzOID, "2024-13-01 10:00:00+00"},
		{"timestamptz Feb 30", pgtype.TimestamptzOID, "2024-02-30 10:00:00+00"},
		{"timestamptz garbage", pgtype.TimestamptzOID, "yesterday"},
		{"timestamptz T separator", pgtype.TimestamptzOID, "2024-03-01T10:00:00+00"},
		{"timestamptz trailing", pgtype.TimestamptzOID, "2024-03-01 10:00:00+00 AD"},
		{"timestamptz empty fraction", pgtype.TimestamptzOID, "2024-03-01 10:00:00.+00"},
		{"timestamp with offset", pgtype.TimestampOID, "2024-03-01 10:00:00+00"},
		{"timestamp short year", pgtype.TimestampOID, "24-03-01 10:00:00"},
		{"array unbalanced open", pgtype.Int4ArrayOID, "{1,2"},
		{"array unbalanced nested", pgtype.Int4ArrayOID, "{{1,2}"},
		{"array unbalanced close", pgtype.Int4ArrayOID, "{1,2}}"},
		{"array no braces", pgtype.Int4ArrayOID, "1,2"},
		{"array empty", pgtype.Int4ArrayOID, ""},
		{"array empty element", pgtype.Int4ArrayOID, "{1,,2}"},
		{"array unterminated quote", pgtype.TextArrayOID, `{"abc}`},
		{"array trailing backslash", pgtype.TextArrayOID, `{"abc\`},
		{"array bad element", pgtype.Int4ArrayOID, "{1,x}"},
		{"array bad dims", pgtype.Int4ArrayOID, "[0:1]{1}"},
		{"array junk after quote", pgtype.TextArrayOID, `{"a"b}`},
		{"array too deep", pgtype.Int4ArrayOID, strings.Repeat("{", 100) + strings.Repeat("}", 100)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := []byte("keep")
			got, err := AppendJSON(dst, tt.oid, []byte(tt.text))
			if err == nil {
				t.Fatalf("AppendJSON(%d, %q) = %q, want error", tt.oid, tt.text, got)
			}
			if string(got) != "keep" {
				t.Errorf("AppendJSON error returned dst %q, want it unchanged", got)
			}
			if !strings.Contains(err.Error(), "oid") {
				t.Errorf("error %q does not name the oid", err)
			}
			got, err = AppendPlain(dst, tt.oid, []byte(tt.text))
			plainOK := tt.oid == pgtype.JSONOID || tt.oid == pgtype.TimestampOID || tt.oid == pgtype.TimestamptzOID
			if err == nil && !plainOK {
				t.Fatalf("AppendPlain(%d, %q) = %q, want error", tt.oid, tt.text, got)
			}
			if err != nil && string(got) != "keep" {
				t.Errorf("AppendPlain error returned dst %q, want it unchanged", got)
			}
		})
	}
}

func TestErrorMessageTruncatesText(t *testing.T) {
	_, err := AppendJSON(nil, pgtype.Int4OID, []byte(strings.Repeat("x", 1000)))
	if err == nil || len(err.Error()) > 200 || !strings.Contains(err.Error(), "oid 23") {
		t.Fatalf("err = %v", err)
	}
}

// TestTimestampMatchesTime cross-checks the fast path against package time.
func TestTimestampMatchesTime(t *testing.T) {
	base := time.Date(1999, 12, 31, 23, 59, 58, 0, time.UTC)
	for i := range 2000 {
		ts := base.Add(time.Duration(i) * 7777777 * time.Microsecond)
		text := ts.Format("2006-01-02 15:04:05.999999-07")
		got, err := AppendPlain(nil, pgtype.TimestamptzOID, []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		if want := ts.Format(time.RFC3339Nano); string(got) != want {
			t.Fatalf("%s: got %s want %s", text, got, want)
		}
		loc := time.FixedZone("", -(3*3600 + 30*60))
		text = ts.In(loc).Format("2006-01-02 15:04:05.999999-07:00")
		got, err = AppendPlain(nil, pgtype.TimestamptzOID, []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		if want := ts.Format(time.RFC3339Nano); string(got) != want {
			t.Fatalf("%s: got %s want %s", text, got, want)
		}
	}
}

func TestAppendJSONString(t *testing.T) {
	got := AppendJSONString([]byte("x"), "a\"b\x00é\xfe")
	if want := `x"a\"b\u0000é\ufffd"`; string(got) != want {
		t.Fatalf("got %s want %s", got, want)
	}
}

func TestParseCopyLine(t *testing.T) {
	tests := []struct {
		name string
		line string
		want []any // string or nil for NULL
	}{
		{"simple", "1\tabc\t", []any{"1", "abc", ""}},
		{"empty line", "", []any{""}},
		{"single", "x", []any{"x"}},
		{"nulls", "\\N\t\\N", []any{nil, nil}},
		{"null-like", "\\\\N\t\\Nx\tN", []any{"\\N", "Nx", "N"}},
		{"empty fields", "\t\t", []any{"", "", ""}},
		{"escapes", `a\bb\fc\nd\re\tf\vg\\h`, []any{"a\bb\fc\nd\re\tf\vg\\h"}},
		{"octal", `\101\0\1010\777`, []any{"A\x00A0\xff"}},
		{"hex", `\x41\x4a\x4g\xzz\x`, []any{"AJ\x04gxzzx"}},
		{"other", `\q\"\.`, []any{`q".`}},
		{"escaped tab is data", "a\\\tb\tc", []any{"a\tb", "c"}},
		{"bytea", `\\x0a0b` + "\t" + `{"\\\\x00",NULL}`, []any{`\x0a0b`, `{"\\x00",NULL}`}},
		{"unicode", "ünï\t日本", []any{"ünï", "日本"}},
		{"trailing newline dropped", "a\tb\n", []any{"a", "b"}},
		{"real row", "line1\\nline2\\t\\\\back\x01\t\\N\t{\"a b\",c}", []any{"line1\nline2\t\\back\x01", nil, `{"a b",c}`}},
	}
	var dst [][]byte
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := []byte(tt.line)
			var err error
			dst, err = ParseCopyLine(line, dst)
			if err != nil {
				t.Fatal(err)
			}
			if len(dst) != len(tt.want) {
				t.Fatalf("got %d fields %q, want %d", len(dst), dst, len(tt.want))
			}
			for i, w := range tt.want {
				switch w := w.(type) {
				case nil:
					if dst[i] != nil {
						t.Errorf("field %d = %q, want NULL", i, dst[i])
					}
				case string:
					if dst[i] == nil || string(dst[i]) != w {
						t.Errorf("field %d = %q (nil=%v), want %q", i, dst[i], dst[i] == nil, w)
					}
					if cap(dst[i]) != len(dst[i]) {
						t.Errorf("field %d has spare capacity %d", i, cap(dst[i])-len(dst[i]))
					}
				}
			}
		})
	}
	if f, err := ParseCopyLine(nil, nil); err != nil || len(f) != 1 || f[0] == nil || len(f[0]) != 0 {
		t.Errorf("ParseCopyLine(nil) = %q, %v; want one empty non-nil field", f, err)
	}
}

func TestParseCopyLineErrors(t *testing.T) {
	for _, line := range []string{`abc\`, "a\t\\\\\\", `\`} {
		buf := []byte(line)
		if _, err := ParseCopyLine(buf, nil); err == nil {
			t.Errorf("ParseCopyLine(%q): want error", line)
		}
		if string(buf) != line {
			t.Errorf("ParseCopyLine(%q) modified line on error: %q", line, buf)
		}
	}
}

func TestParseCopyLineNoAlloc(t *testing.T) {
	line := []byte("1\tabc\t\\N\t2024-03-01 10:00:00+00")
	esc := []byte("a\\tb\t\\\\x0a0b\t\\N")
	dst := make([][]byte, 0, 8)
	scratch := make([]byte, len(esc))
	out := make([]byte, 0, 256)
	var err error
	allocs := testing.AllocsPerRun(100, func() {
		dst, _ = ParseCopyLine(line, dst)
		copy(scratch, esc)
		dst, _ = ParseCopyLine(scratch, dst)
		out, _ = AppendJSON(out[:0], pgtype.TextArrayOID, []byte(`{"a\"b",NULL,c}`))
		if out, err = AppendJSON(out[:0], pgtype.TimestamptzOID, line[9:]); err != nil {
			panic(err)
		}
		out, _ = AppendJSON(out[:0], pgtype.ByteaOID, dst[1])
		out, _ = AppendPlain(out[:0], pgtype.ByteaOID, dst[1])
	})
	if allocs != 0 {
		t.Fatalf("allocs per run = %v, want 0", allocs)
	}
}

// FuzzAppendJSON checks that no input panics and that successful output is valid JSON.
func FuzzAppendJSON(f *testing.F) {
	for _, s := range []string{"{1,2,NULL}", `{"a\"b",c}`, `\x0a0b`, "2024-03-01 10:00:00+05:30", "t", "1.5e3", "NaN", `{{"\\x00"}}`} {
		f.Add(s)
	}
	oids := []uint32{pgtype.Int4OID, pgtype.Float8OID, pgtype.BoolOID, pgtype.TextOID, pgtype.ByteaOID,
		pgtype.TimestamptzOID, pgtype.TimestampOID, pgtype.Int4ArrayOID, pgtype.TextArrayOID,
		pgtype.ByteaArrayOID, pgtype.TimestamptzArrayOID, pgtype.NumericArrayOID}
	f.Fuzz(func(t *testing.T, s string) {
		for _, oid := range oids {
			out, err := AppendJSON(nil, oid, []byte(s))
			if err == nil && !json.Valid(out) {
				t.Fatalf("oid %d %q: invalid JSON %q", oid, s, out)
			}
			_, _ = AppendPlain(nil, oid, []byte(s))
		}
		_, _ = ParseCopyLine([]byte(s), nil)
	})
}

func BenchmarkParseCopyLine(b *testing.B) {
	line := []byte("12345\tsome text value\t\\N\t2024-03-01 10:00:00.123456+00\t{1,2,3}\t\\\\x0a0b0c")
	scratch := make([]byte, len(line))
	var dst [][]byte
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		copy(scratch, line)
		dst, _ = ParseCopyLine(scratch, dst)
	}
}

func BenchmarkAppendJSON(b *testing.B) {
	vals := []struct {
		oid  uint32
		text string
	}{
		{pgtype.Int4OID, "12345"},
		{pgtype.TextOID, "some text value"},
		{pgtype.TimestamptzOID, "2024-03-01 10:00:00.123456+00"},
		{pgtype.Int4ArrayOID, "{1,2,3}"},
		{pgtype.NumericOID, "1234.5678"},
	}
	var out []byte
	for b.Loop() {
		out = out[:0]
		for _, v := range vals {
			out, _ = AppendJSON(out, v.oid, []byte(v.text))
		}
	}
}
