// Package pgtext converts PostgreSQL text-format values (as produced by COPY ... TO
// STDOUT and by pgoutput logical replication) into the JSON and plain forms that
// cachesync stores in Redis.
//
// Inputs are assumed to come from a session with DateStyle=ISO, TimeZone=UTC,
// extra_float_digits=3, IntervalStyle=postgres and bytea_output=hex. All functions
// are pure, safe for concurrent use, never panic on malformed input, and append to a
// caller-supplied buffer so that a hot loop can reuse one buffer for every row.
package pgtext

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"
)

// maxArrayDepth bounds array nesting (PostgreSQL allows 6 dimensions) so that
// hostile input cannot exhaust the stack.
const maxArrayDepth = 16

// arrayElem maps every built-in array type OID known to pgtype to its element type
// OID, and arrayDelim those arrays whose element delimiter is not ',' (box uses ';').
// Both are built once at init and only read afterwards.
var arrayElem, arrayDelim = buildArrayTables()

func buildArrayTables() (map[uint32]uint32, map[uint32]byte) {
	m := pgtype.NewMap()
	elem := make(map[uint32]uint32)
	delim := make(map[uint32]byte) // only delimiters other than ','
	// Built-in type OIDs are hand-assigned below 10000 (FirstGenbkiObjectId).
	for oid := uint32(1); oid < 10000; oid++ {
		t, ok := m.TypeForOID(oid)
		if !ok {
			continue
		}
		ac, ok := t.Codec.(*pgtype.ArrayCodec)
		if !ok || ac.ElementType == nil {
			continue
		}
		elem[oid] = ac.ElementType.OID
		if ac.Delimiter != 0 && ac.Delimiter != ',' {
			delim[oid] = ac.Delimiter
		}
	}
	return elem, delim
}

// AppendJSON appends the JSON form of one non-NULL text value of type oid to dst.
//
// Numbers stay numbers (NaN and ±Infinity become strings), bool becomes true/false,
// json/jsonb is embedded verbatim, timestamptz becomes an RFC 3339 string in UTC
// ("Z"), timestamp an RFC 3339 string without offset, bytea a base64 (standard, padded)
// string, built-in arrays JSON arrays, and every other type (including unknown OIDs
// such as enums, domains and custom types) a JSON string of the text. On error dst is
// returned with its original length.
func AppendJSON(dst []byte, oid uint32, text []byte) ([]byte, error) {
	out, err := appendJSON(dst, oid, text, 0)
	if err != nil {
		return dst, wrap(oid, text, err)
	}
	return out, nil
}

// AppendPlain appends the plain (unquoted) form used for Redis hash fields and string
// values: the JSON form without quotes for scalars (so "true", "NaN",
// "2024-03-01T10:00:00Z", raw text), the decoded raw bytes for bytea, and the full
// JSON form for arrays. On error dst is returned with its original length.
func AppendPlain(dst []byte, oid uint32, text []byte) ([]byte, error) {
	out, err := appendPlain(dst, oid, text)
	if err != nil {
		return dst, wrap(oid, text, err)
	}
	return out, nil
}

// AppendJSONString appends s as a quoted JSON string, escaping quotes, backslashes
// and control characters and replacing invalid UTF-8 with U+FFFD, so callers can
// write JSON object keys with the same rules as values.
func AppendJSONString(dst []byte, s string) []byte {
	return appendQuoted(dst, s)
}

func wrap(oid uint32, text []byte, err error) error {
	const max = 40
	// Converting to string copies, so text does not escape (keeps callers alloc-free).
	if len(text) > max {
		return fmt.Errorf("pgtext: bad value for type oid %d (%q...): %w", oid, string(text[:max]), err)
	}
	return fmt.Errorf("pgtext: bad value for type oid %d (%q): %w", oid, string(text), err)
}

var (
	errNumber    = errors.New("not a valid number")
	errBool      = errors.New(`bool is not "t" or "f"`)
	errEmptyJSON = errors.New("empty json")
	errTimestamp = errors.New("timestamp is not in ISO format YYYY-MM-DD HH:MM:SS[.frac][±HH[:MM[:SS]]][ BC]")
	errByteaHex  = errors.New("bytea hex has an odd length or a non-hex digit")
	errByteaEsc  = errors.New(`bytea escape format has a bad backslash sequence`)
	errArray     = errors.New("malformed array")
	errArrayDeep = errors.New("array nested too deeply")
)

func appendJSON(dst []byte, oid uint32, text []byte, depth int) ([]byte, error) {
	switch oid {
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID, pgtype.QCharOID,
		pgtype.UUIDOID, pgtype.DateOID, pgtype.TimeOID, pgtype.TimetzOID, pgtype.IntervalOID:
		return appendQuoted(dst, text), nil
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID:
		if !isJSONNumber(text) {
			return dst, errNumber
		}
		return append(dst, text...), nil
	case pgtype.Float4OID, pgtype.Float8OID, pgtype.NumericOID:
		if isNonFinite(text) {
			return appendQuoted(dst, text), nil
		}
		if !isJSONNumber(text) {
			return dst, errNumber
		}
		return append(dst, text...), nil
	case pgtype.BoolOID:
		return appendBool(dst, text)
	case pgtype.JSONOID, pgtype.JSONBOID:
		if len(text) == 0 {
			return dst, errEmptyJSON
		}
		return append(dst, text...), nil
	case pgtype.TimestamptzOID, pgtype.TimestampOID:
		out, err := appendTimestamp(append(dst, '"'), text, oid == pgtype.TimestamptzOID)
		if err != nil {
			return dst, err
		}
		return append(out, '"'), nil
	case pgtype.ByteaOID:
		return appendByteaBase64(dst, text)
	}
	if elem, ok := arrayElem[oid]; ok {
		return appendArray(dst, elem, delimOf(oid), text, depth)
	}
	return appendQuoted(dst, text), nil
}

func appendPlain(dst []byte, oid uint32, text []byte) ([]byte, error) {
	switch oid {
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID, pgtype.QCharOID,
		pgtype.UUIDOID, pgtype.DateOID, pgtype.TimeOID, pgtype.TimetzOID, pgtype.IntervalOID:
		return append(dst, text...), nil
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID:
		if !isJSONNumber(text) {
			return dst, errNumber
		}
		return append(dst, text...), nil
	case pgtype.Float4OID, pgtype.Float8OID, pgtype.NumericOID:
		if !isNonFinite(text) && !isJSONNumber(text) {
			return dst, errNumber
		}
		return append(dst, text...), nil
	case pgtype.BoolOID:
		return appendBool(dst, text)
	case pgtype.JSONOID, pgtype.JSONBOID:
		if len(text) == 0 {
			return dst, errEmptyJSON
		}
		return append(dst, text...), nil
	case pgtype.TimestamptzOID, pgtype.TimestampOID:
		return appendTimestamp(dst, text, oid == pgtype.TimestamptzOID)
	case pgtype.ByteaOID:
		return appendByteaRaw(dst, text)
	}
	if elem, ok := arrayElem[oid]; ok {
		return appendArray(dst, elem, delimOf(oid), text, 0)
	}
	return append(dst, text...), nil
}

func delimOf(arrayOID uint32) byte {
	if len(arrayDelim) > 0 {
		if d, ok := arrayDelim[arrayOID]; ok {
			return d
		}
	}
	return ','
}

func appendBool(dst, text []byte) ([]byte, error) {
	if len(text) == 1 {
		switch text[0] {
		case 't':
			return append(dst, "true"...), nil
		case 'f':
			return append(dst, "false"...), nil
		}
	}
	return dst, errBool
}

func isNonFinite(b []byte) bool {
	switch string(b) { // no allocation: the compiler special-cases this
	case "NaN", "Infinity", "-Infinity":
		return true
	}
	return false
}

// isJSONNumber reports whether b matches the JSON number grammar
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func isJSONNumber(b []byte) bool {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i == len(b):
		return false
	case b[i] == '0':
		i++
	case b[i] >= '1' && b[i] <= '9':
		i = skipDigits(b, i+1)
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return false
		}
		i = j
	}
	return i == len(b)
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// jsonSafe[c] is true for ASCII bytes that appear unescaped inside a JSON string.
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

const hexDigits = "0123456789abcdef"

// appendQuoted appends s as a JSON string. Invalid UTF-8 becomes U+FFFD; U+2028 and
// U+2029 are escaped so the output is also safe inside JavaScript source.
func appendQuoted[S ~string | ~[]byte](dst []byte, s S) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if jsonSafe[c] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		var buf [utf8.UTFMax]byte
		r, size := utf8.DecodeRune(buf[:copy(buf[:], s[i:])])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendTimestamp appends the RFC 3339 form (without quotes) of a PostgreSQL ISO
// timestamp. With tz the value must carry an offset and is converted to UTC ("Z").
// "infinity" and "-infinity" are copied as is.
func appendTimestamp(dst, text []byte, tz bool) ([]byte, error) {
	if string(text) == "infinity" || string(text) == "-infinity" {
		return append(dst, text...), nil
	}
	p := text
	year, n := leadingInt(p, 9)
	if n < 4 {
		return dst, errTimestamp
	}
	p = p[n:]
	var month, day, hour, minute, sec int
	var ok bool
	if month, p, ok = field2(p, '-'); !ok || month < 1 || month > 12 {
		return dst, errTimestamp
	}
	if day, p, ok = field2(p, '-'); !ok || day < 1 || day > 31 {
		return dst, errTimestamp
	}
	if hour, p, ok = field2(p, ' '); !ok || hour > 23 {
		return dst, errTimestamp
	}
	if minute, p, ok = field2(p, ':'); !ok || minute > 59 {
		return dst, errTimestamp
	}
	if sec, p, ok = field2(p, ':'); !ok || sec > 59 {
		return dst, errTimestamp
	}
	var frac []byte // fraction digits, trailing zeros trimmed
	nsec := 0
	if len(p) > 0 && p[0] == '.' {
		d := skipDigits(p, 1)
		if d == 1 || d > 10 {
			return dst, errTimestamp
		}
		frac = bytes.TrimRight(p[1:d], "0")
		for i := 1; i < 10; i++ {
			nsec *= 10
			if i < d {
				nsec += int(p[i] - '0')
			}
		}
		p = p[d:]
	}
	offset := 0 // seconds east of UTC
	if tz {
		if len(p) == 0 || (p[0] != '+' && p[0] != '-') {
			return dst, errTimestamp
		}
		sign := 1
		if p[0] == '-' {
			sign = -1
		}
		oh, rest, ok := field2(p, p[0])
		if !ok || oh > 15 {
			return dst, errTimestamp
		}
		p = rest
		offset = oh * 3600
		for unit := 60; unit >= 1 && len(p) > 0 && p[0] == ':'; unit /= 60 {
			v, rest, ok := field2(p, ':')
			if !ok || v > 59 {
				return dst, errTimestamp
			}
			p = rest
			offset += v * unit
		}
		offset *= sign
	}
	bc := false
	if len(p) == 3 && string(p) == " BC" {
		bc, p = true, nil
	}
	if len(p) != 0 {
		return dst, errTimestamp
	}
	if bc {
		year = 1 - year // 1 BC is astronomical year 0
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC)
	if t.Day() != day {
		return dst, errTimestamp // e.g. February 30
	}
	if offset == 0 && !bc && n == 4 {
		// Fast path: the ISO text is already RFC 3339 apart from 'T' and 'Z'.
		dst = append(dst, text[:10]...)
		dst = append(dst, 'T')
		dst = append(dst, text[11:19]...)
		if len(frac) > 0 {
			dst = append(dst, '.')
			dst = append(dst, frac...)
		}
		if tz {
			dst = append(dst, 'Z')
		}
		return dst, nil
	}
	if !tz {
		return t.AppendFormat(dst, "2006-01-02T15:04:05.999999999"), nil
	}
	return t.Add(-time.Duration(offset)*time.Second).AppendFormat(dst, time.RFC3339Nano), nil
}

// leadingInt parses up to max leading decimal digits and returns the value and the
// number of digits consumed.
func leadingInt(b []byte, max int) (v, n int) {
	for n < len(b) && n < max && b[n] >= '0' && b[n] <= '9' {
		v = v*10 + int(b[n]-'0')
		n++
	}
	return v, n
}

// field2 parses sep followed by exactly two digits.
func field2(b []byte, sep byte) (int, []byte, bool) {
	if len(b) < 3 || b[0] != sep || b[1] < '0' || b[1] > '9' || b[2] < '0' || b[2] > '9' {
		return 0, b, false
	}
	return int(b[1]-'0')*10 + int(b[2]-'0'), b[3:], true
}

// byteaChunk is the stack buffer size for streaming bytea through base64; it is a
// multiple of 3 so that intermediate chunks encode without padding.
const byteaChunk = 3 * 256

// isHexBytea reports whether text uses the hex bytea format ("\x..."); a value in the
// legacy escape format never starts with a backslash followed by 'x'.
func isHexBytea(text []byte) bool {
	return len(text) >= 2 && text[0] == '\\' && text[1] == 'x'
}

func appendByteaBase64(dst, text []byte) ([]byte, error) {
	n := len(dst)
	dst = append(dst, '"')
	var buf [byteaChunk]byte
	if isHexBytea(text) {
		h := text[2:]
		if len(h)%2 != 0 {
			return dst[:n], errByteaHex
		}
		for len(h) > 0 {
			k := min(len(h)/2, len(buf))
			if !decodeHex(buf[:k], h[:2*k]) {
				return dst[:n], errByteaHex
			}
			dst = base64.StdEncoding.AppendEncode(dst, buf[:k])
			h = h[2*k:]
		}
		return append(dst, '"'), nil
	}
	k := 0
	for i := 0; i < len(text); {
		b, size := escapedByteaByte(text[i:])
		if size == 0 {
			return dst[:n], errByteaEsc
		}
		i += size
		buf[k] = b
		if k++; k == len(buf) {
			dst = base64.StdEncoding.AppendEncode(dst, buf[:])
			k = 0
		}
	}
	dst = base64.StdEncoding.AppendEncode(dst, buf[:k])
	return append(dst, '"'), nil
}

func appendByteaRaw(dst, text []byte) ([]byte, error) {
	n := len(dst)
	if isHexBytea(text) {
		h := text[2:]
		if len(h)%2 != 0 {
			return dst, errByteaHex
		}
		dst = growLen(dst, len(h)/2)
		if !decodeHex(dst[n:], h) {
			return dst[:n], errByteaHex
		}
		return dst, nil
	}
	for i := 0; i < len(text); {
		b, size := escapedByteaByte(text[i:])
		if size == 0 {
			return dst[:n], errByteaEsc
		}
		i += size
		dst = append(dst, b)
	}
	return dst, nil
}

// growLen extends dst by n bytes whose contents are unspecified.
func growLen(dst []byte, n int) []byte {
	if cap(dst)-len(dst) >= n {
		return dst[:len(dst)+n]
	}
	return append(dst, make([]byte, n)...)
}

// decodeHex decodes len(out) bytes from the 2*len(out) hex digits in h.
func decodeHex(out, h []byte) bool {
	for i := range out {
		hi, lo := hexVal[h[2*i]], hexVal[h[2*i+1]]
		if hi|lo > 0xf {
			return false
		}
		out[i] = hi<<4 | lo
	}
	return true
}

// escapedByteaByte decodes one byte of the bytea escape format (a plain byte, a
// doubled backslash, or a backslash and three octal digits), returning size 0 for a
// malformed sequence.
func escapedByteaByte(p []byte) (b byte, size int) {
	if p[0] != '\\' {
		return p[0], 1
	}
	if len(p) >= 2 && p[1] == '\\' {
		return '\\', 2
	}
	if len(p) >= 4 && p[1] >= '0' && p[1] <= '3' && isOctal(p[2]) && isOctal(p[3]) {
		return (p[1]-'0')<<6 | (p[2]-'0')<<3 | (p[3] - '0'), 4
	}
	return 0, 0
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

var hexVal = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i := byte(0); i < 10; i++ {
		t['0'+i] = i
	}
	for i := byte(0); i < 6; i++ {
		t['a'+i] = 10 + i
		t['A'+i] = 10 + i
	}
	return t
}()

// ArrayElem returns the element type and delimiter of the built-in array
// type oid; ok is false for any other type.
func ArrayElem(oid uint32) (elem uint32, delim byte, ok bool) {
	elem, ok = arrayElem[oid]
	delim = ','
	if d, has := arrayDelim[oid]; has {
		delim = d
	}
	return elem, delim, ok
}
