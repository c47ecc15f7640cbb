package pgtext

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"
)

// Key values. A key holds its columns' values as the change feed writes
// them: PostgreSQL's output text (in the session of the package doc). A
// value spelled another way ("01" for the integer 1) names the same row
// under another key, so a key must spell each value exactly as output.

// maxChars is the longest character(n) PostgreSQL allows.
const maxChars = 10 * 1024 * 1024

// ErrSpelling reports a value that PostgreSQL would read as a value of its
// type, but that its output spells differently (Canonical says how).
var ErrSpelling = errors.New("spelled otherwise by PostgreSQL")

// Canonical returns how PostgreSQL's output spells s, a value of a column
// of type oid with modifier typmod (-1 for none). For a type that is not
// Exact, s is returned as it is. The error says why s is no value of the
// type: NUL, invalid UTF-8, out of range, not a number...
func Canonical(oid uint32, typmod int32, s string) (string, error) {
	canon, _, err := canonical(oid, typmod, s)
	return canon, err
}

// Exact tells a type whose equal values PostgreSQL prints one way only, so
// that Canonical gives the one spelling of a value. Not exact: numeric
// without a scale (1.5 and 1.50 are one value), character without a
// length, float (-0 and 0), and types pgtext does not know (enums,
// citext...).
func Exact(oid uint32, typmod int32) bool {
	_, exact, _ := canonical(oid, typmod, "")
	return exact
}

// canonical is Canonical, and whether the type is Exact (told even when s
// is no value of it).
func canonical(oid uint32, typmod int32, s string) (canon string, exact bool, err error) {
	if strings.IndexByte(s, 0) >= 0 {
		return "", true, errors.New("a NUL byte is no PostgreSQL text")
	}
	if !utf8.ValidString(s) {
		return "", true, errors.New("invalid UTF-8")
	}
	switch oid {
	case pgtype.Int2OID:
		return canonicalInt(s, 16)
	case pgtype.Int4OID:
		return canonicalInt(s, 32)
	case pgtype.Int8OID:
		return canonicalInt(s, 64)
	case pgtype.OIDOID:
		n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
		if err != nil {
			return "", true, numErr(err, "an oid")
		}
		return strconv.FormatUint(n, 10), true, nil
	case pgtype.BoolOID:
		return canonicalBool(s)
	case pgtype.UUIDOID:
		return canonicalUUID(s)
	case pgtype.TextOID, pgtype.VarcharOID:
		if n := typmod - 4; typmod >= 4 && int32(utf8.RuneCountInString(s)) > n {
			return "", true, fmt.Errorf("longer than the column's %d characters", n)
		}
		return s, true, nil
	case pgtype.NameOID:
		if len(s) > 63 {
			return "", true, errors.New("longer than a name's 63 bytes")
		}
		return s, true, nil
	case pgtype.BPCharOID:
		if typmod < 4 || typmod-4 > maxChars {
			return s, false, nil // no length: trailing blanks are kept but do not count
		}
		n := int(typmod - 4)
		t := strings.TrimRight(s, " ")
		if utf8.RuneCountInString(t) > n {
			return "", true, fmt.Errorf("longer than the column's %d characters", n)
		}
		return t + strings.Repeat(" ", n-utf8.RuneCountInString(t)), true, nil
	case pgtype.NumericOID:
		if typmod < 4 || (typmod-4)&0x400 != 0 {
			return s, false, nil // no scale, or a negative one
		}
		return canonicalNumeric(s, int((typmod-4)>>16&0xffff), int((typmod-4)&0x7ff))
	case pgtype.DateOID:
		return canonicalDate(s)
	case pgtype.TimestampOID:
		return canonicalTimestamp(s, typmod, "")
	case pgtype.TimestamptzOID:
		return canonicalTimestamp(s, typmod, "+00")
	}
	return s, false, nil
}

func canonicalInt(s string, bits int) (string, bool, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, bits)
	if err != nil {
		return "", true, numErr(err, fmt.Sprintf("a %d-bit integer", bits))
	}
	return strconv.FormatInt(n, 10), true, nil
}

func numErr(err error, what string) error {
	if errors.Is(err, strconv.ErrRange) {
		return fmt.Errorf("out of range for %s", what)
	}
	return fmt.Errorf("not %s", what)
}

func canonicalBool(s string) (string, bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "t", "true", "y", "yes", "on", "1":
		return "t", true, nil
	case "f", "false", "n", "no", "off", "0":
		return "f", true, nil
	}
	return "", true, errors.New("not a boolean (t or f)")
}

func canonicalUUID(s string) (string, bool, error) {
	h := strings.ToLower(strings.TrimSpace(s))
	h = strings.TrimSuffix(strings.TrimPrefix(h, "{"), "}")
	h = strings.ReplaceAll(h, "-", "")
	if len(h) != 32 || strings.Trim(h, "0123456789abcdef") != "" {
		return "", true, errors.New("not a UUID")
	}
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], true, nil
}

// canonicalNumeric spells s as numeric(precision, scale) prints it:
// rounded half away from zero to scale digits, no exponent, no "+".
func canonicalNumeric(s string, precision, scale int) (string, bool, error) {
	t := strings.TrimSpace(s)
	if strings.EqualFold(t, "nan") {
		return "NaN", true, nil
	}
	if strings.ContainsAny(t, "_xXoObB") || t == "" {
		return "", true, errors.New("not a number")
	}
	if _, exp, ok := strings.Cut(strings.ToLower(t), "e"); ok {
		// Bound the work: PostgreSQL refuses such exponents too.
		if e, err := strconv.Atoi(exp); err != nil || e > 1000 || e < -1000 {
			return "", true, errors.New("not a number in numeric's range")
		}
	}
	if len(t) > 1000 {
		return "", true, errors.New("not a number in numeric's range")
	}
	r, ok := new(big.Rat).SetString(t)
	if !ok || strings.ContainsAny(t, "/") {
		return "", true, errors.New("not a number")
	}
	out := r.FloatString(scale) // rounds half away from zero
	if strings.HasPrefix(out, "-") && strings.Trim(out, "-0.") == "" {
		out = out[1:] // numeric has no negative zero
	}
	digits := strings.TrimLeft(strings.SplitN(strings.TrimPrefix(out, "-"), ".", 2)[0], "0")
	if len(digits) > precision-scale {
		return "", true, fmt.Errorf("out of range for numeric(%d,%d)", precision, scale)
	}
	return out, true, nil
}

// canonicalDate checks s is a date as ISO output prints it: YYYY-MM-DD
// (at least 4 year digits), " BC" after, or ±infinity.
func canonicalDate(s string) (string, bool, error) {
	if s == "infinity" || s == "-infinity" {
		return s, true, nil
	}
	rest, bc := strings.CutSuffix(s, " BC")
	y, m, d, ok := splitDate(rest)
	if !ok || !validDate(y, m, d, bc) {
		if t, err := parseAny(strings.TrimSpace(s), "2006-1-2", "20060102", "2006/1/2"); err == nil {
			return t.Format("2006-01-02"), true, nil
		}
		return "", true, errors.New("not a date as YYYY-MM-DD")
	}
	return s, true, nil
}

// parseAny parses s with the first of layouts that fits.
func parseAny(s string, layouts ...string) (t time.Time, err error) {
	for _, l := range layouts {
		if t, err = time.Parse(l, s); err == nil {
			return t, nil
		}
	}
	return t, err
}

// respellTimestamp spells s, a timestamp in a common form other than
// PostgreSQL's (RFC 3339, another zone, trailing zeros), as PostgreSQL
// prints it in UTC, when its fraction fits the column's digits.
func respellTimestamp(s string, digits int, zone string) (string, bool) {
	layouts := []string{"2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999"}
	if zone != "" {
		layouts = []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999Z07", "2006-01-02T15:04:05.999999999Z07"}
	}
	t, err := parseAny(strings.TrimSpace(s), layouts...)
	if err != nil || t.UTC().Year() < 1 || t.Nanosecond()%int(math.Pow10(9-digits)) != 0 {
		return "", false
	}
	out := t.UTC().Format("2006-01-02 15:04:05.999999")
	return out + zone, true
}

// canonicalTimestamp checks s is a timestamp as ISO output in UTC prints
// it: "YYYY-MM-DD hh:mm:ss", a fraction without trailing zeros (at most the
// column's precision), then zone ("+00" for timestamptz), then " BC".
func canonicalTimestamp(s string, typmod int32, zone string) (string, bool, error) {
	if s == "infinity" || s == "-infinity" {
		return s, true, nil
	}
	bad := fmt.Errorf("not a timestamp as YYYY-MM-DD hh:mm:ss[.ffffff]%s", zone)
	rest, bc := strings.CutSuffix(s, " BC")
	rest, ok := strings.CutSuffix(rest, zone)
	date, clock, found := strings.Cut(rest, " ")
	digits := 6
	if typmod >= 0 && typmod < 6 {
		digits = int(typmod)
	}
	if y, m, d, dateOK := splitDate(date); !ok || !found || !dateOK || !validDate(y, m, d, bc) {
		if c, ok := respellTimestamp(s, digits, zone); ok && !bc {
			return c, true, nil
		}
		return "", true, bad
	}
	clock, frac, _ := strings.Cut(clock, ".")
	if len(clock) != 8 || clock[2] != ':' || clock[5] != ':' || !allDigits(clock[:2]+clock[3:5]+clock[6:]) ||
		clock[:2] > "23" || clock[3:5] > "59" || clock[6:] > "59" ||
		strings.Contains(rest, ".") && (frac == "" || len(frac) > digits || !allDigits(frac) || strings.HasSuffix(frac, "0")) {
		if c, ok := respellTimestamp(s, digits, zone); ok && !bc {
			return c, true, nil
		}
		return "", true, bad
	}
	return s, true, nil
}

func splitDate(s string) (y, m, d int, ok bool) {
	parts := strings.Split(s, "-")
	if len(parts) != 3 || len(parts[0]) < 4 || len(parts[1]) != 2 || len(parts[2]) != 2 ||
		!allDigits(parts[0]+parts[1]+parts[2]) || len(parts[0]) > 4 && parts[0][0] == '0' {
		return 0, 0, 0, false
	}
	y, _ = strconv.Atoi(parts[0])
	m, _ = strconv.Atoi(parts[1])
	d, _ = strconv.Atoi(parts[2])
	return y, m, d, y > 0
}

// validDate tells a day of the proleptic Gregorian calendar; year 1 BC is
// a leap year (astronomical year 0).
func validDate(y, m, d int, bc bool) bool {
	if bc {
		y = 1 - y
	}
	days := [13]int{0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
	if y%4 == 0 && (y%100 != 0 || y%400 == 0) {
		days[2] = 29
	}
	return m >= 1 && m <= 12 && d >= 1 && d <= days[m]
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// KeyBytes returns the bytes a value of type oid can hold in its output
// text, or nil when it can hold any: what tells whether two key templates
// can produce the same key.
func KeyBytes(oid uint32) *[256]bool {
	set := func(chars string) *[256]bool {
		var b [256]bool
		for i := 0; i < len(chars); i++ {
			b[chars[i]] = true
		}
		return &b
	}
	switch oid {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID:
		return set("-0123456789")
	case pgtype.BoolOID:
		return set("tf")
	case pgtype.UUIDOID:
		return set("-0123456789abcdef")
	case pgtype.NumericOID:
		return set("-.0123456789NaInfity")
	case pgtype.DateOID, pgtype.TimestampOID, pgtype.TimestamptzOID:
		return set("-+.: 0123456789BCinfty")
	}
	return nil
}
