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

// blanks are what PostgreSQL's input functions skip around a value.
const blanks = " \t\n\r\v\f"

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
		n, err := strconv.ParseUint(strings.Trim(s, blanks), 10, 32)
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
		if utf8.RuneCountInString(s) == n {
			return s, true, nil // padded as printed
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
	n, err := strconv.ParseInt(strings.Trim(s, blanks), 10, bits)
	if err != nil {
		return "", true, numErr(err, fmt.Sprintf("a %d-bit integer", bits))
	}
	if plainInt(s) {
		return s, true, nil // as printed: no need to print it
	}
	return strconv.FormatInt(n, 10), true, nil
}

// plainInt tells digits as an integer prints: no sign but "-", no leading
// zero, no blanks.
func plainInt(s string) bool {
	d := strings.TrimPrefix(s, "-")
	return s == "0" || d != "" && d[0] != '0' && allDigits(d)
}

func numErr(err error, what string) error {
	if errors.Is(err, strconv.ErrRange) {
		return fmt.Errorf("out of range for %s", what)
	}
	return fmt.Errorf("not %s", what)
}

func canonicalBool(s string) (string, bool, error) {
	switch strings.ToLower(strings.Trim(s, blanks)) {
	case "t", "true", "y", "yes", "on", "1":
		return "t", true, nil
	case "f", "false", "n", "no", "off", "0":
		return "f", true, nil
	}
	return "", true, errors.New("not a boolean (t or f)")
}

// canonicalUUID takes the forms PostgreSQL reads: 32 hex digits in either
// case, a hyphen after any group of four, the whole in braces or not.
func canonicalUUID(s string) (string, bool, error) {
	bad := errors.New("not a UUID")
	h := s
	if strings.HasPrefix(h, "{") {
		var ok bool
		if h, ok = strings.CutSuffix(h[1:], "}"); !ok {
			return "", true, bad
		}
	}
	digits := make([]byte, 0, 32)
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c == '-' && len(digits) > 0 && len(digits)%4 == 0 && h[i-1] != '-' && i < len(h)-1:
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
			digits = append(digits, c)
		case c >= 'A' && c <= 'F':
			digits = append(digits, c+'a'-'A')
		default:
			return "", true, bad
		}
	}
	if len(digits) != 32 {
		return "", true, bad
	}
	d := string(digits)
	return d[:8] + "-" + d[8:12] + "-" + d[12:16] + "-" + d[16:20] + "-" + d[20:], true, nil
}

// canonicalNumeric spells s as numeric(precision, scale) prints it:
// rounded half away from zero to scale digits, no exponent, no "+".
func canonicalNumeric(s string, precision, scale int) (string, bool, error) {
	if plainNumeric(s, precision, scale) {
		return s, true, nil
	}
	t := strings.Trim(s, blanks)
	if strings.EqualFold(t, "nan") {
		return "NaN", true, nil
	}
	if strings.Trim(t, "0123456789.+-eE") != "" || t == "" {
		return "", true, errors.New("not a number") // (big.Rat would take 0x1p3, 1/2, 1_0)
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
	// numeric(p,s) holds values below 10^(p-s) (s may exceed p).
	rounded, _ := new(big.Rat).SetString(out)
	limit := new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(abs(precision-scale))), nil))
	if precision < scale {
		limit.Inv(limit)
	}
	if rounded.Abs(rounded).Cmp(limit) >= 0 {
		return "", true, fmt.Errorf("out of range for numeric(%d,%d)", precision, scale)
	}
	return out, true, nil
}

// plainNumeric tells a value of numeric(precision, scale) as it prints,
// without computing: an integer part as plainInt, exactly scale digits
// after the point, within range, not a negative zero.
func plainNumeric(s string, precision, scale int) bool {
	whole, frac, ok := strings.Cut(s, ".")
	if scale == 0 {
		whole, ok = s, !ok
	}
	digits := len(strings.TrimPrefix(whole, "-"))
	if whole == "0" || whole == "-0" {
		digits = 0
	}
	return ok && len(frac) == scale && allDigits(frac) && (plainInt(whole) || whole == "-0" && strings.Trim(frac, "0") != "") &&
		precision >= scale && digits <= precision-scale
}

func abs(n int) int { return max(n, -n) }

// canonicalDate checks s is a date as ISO output prints it: YYYY-MM-DD
// (at least 4 year digits), " BC" after, or ±infinity.
func canonicalDate(s string) (string, bool, error) {
	if s == "infinity" || s == "-infinity" {
		return s, true, nil
	}
	rest, bc := strings.CutSuffix(s, " BC")
	y, m, d, ok := splitDate(rest)
	if !ok || !validDate(y, m, d, bc) {
		t, err := parseAny(strings.Trim(s, blanks), "2006-1-2", "20060102", "2006/1/2", time.RFC3339Nano, "2006-01-02 15:04:05.999999999")
		if err == nil && t.Year() >= 1 && !strings.Contains(s, ",") { // (Go takes "," before a fraction)
			return t.Format("2006-01-02"), true, nil // a timestamp's date, as PostgreSQL takes it
		}
		return "", true, errors.New("not a date as YYYY-MM-DD")
	}
	if !inRange(y, m, d, bc, 5874897) {
		return "", true, errors.New("out of range for a date")
	}
	return s, true, nil
}

// inRange tells a day PostgreSQL's dates (maxYear 5874897) or timestamps
// (294276) hold: from 4714-11-24 BC.
func inRange(y, m, d int, bc bool, maxYear int) bool {
	if bc {
		return y < 4714 || y == 4714 && (m == 12 || m == 11 && d >= 24)
	}
	return y <= maxYear
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
	// Without an offset a timestamptz is in the feed's time zone, UTC.
	layouts := []string{"2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999"}
	if zone != "" {
		layouts = append(layouts, time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999Z07", "2006-01-02T15:04:05.999999999Z07")
	}
	t, err := parseAny(strings.Trim(s, blanks), layouts...)
	if err != nil || strings.Contains(s, ",") || t.UTC().Year() < 1 || t.Nanosecond()%int(math.Pow10(9-digits)) != 0 {
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
	digits := 6
	if typmod >= 0 && typmod < 6 {
		digits = int(typmod)
	}
	bad := fmt.Errorf("not a timestamp as YYYY-MM-DD hh:mm:ss[.ffffff]%s, with at most %d digits after the second (round it first)", zone, digits)
	rest, bc := strings.CutSuffix(s, " BC")
	rest, zoned := strings.CutSuffix(rest, zone)
	date, clock, spaced := strings.Cut(rest, " ")
	y, m, d, dateOK := splitDate(date)
	if zoned && spaced && dateOK && validDate(y, m, d, bc) && plainClock(clock, digits) {
		if !inRange(y, m, d, bc, 294276) {
			return "", true, errors.New("out of range for a timestamp")
		}
		return s, true, nil
	}
	if c, ok := respellTimestamp(s, digits, zone); ok && !bc {
		return c, true, nil
	}
	return "", true, bad
}

// plainClock tells a time of day as printed: hh:mm:ss, then a fraction
// of at most digits digits without trailing zeros.
func plainClock(clock string, digits int) bool {
	clock, frac, dotted := strings.Cut(clock, ".")
	return len(clock) == 8 && clock[2] == ':' && clock[5] == ':' && allDigits(clock[:2]) && allDigits(clock[3:5]) && allDigits(clock[6:]) &&
		clock[:2] <= "23" && clock[3:5] <= "59" && clock[6:] <= "59" &&
		(!dotted || frac != "" && len(frac) <= digits && allDigits(frac) && !strings.HasSuffix(frac, "0"))
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

// KeyBytes returns the bytes that a spelling Canonical takes for type oid
// can hold (the spelling PostgreSQL prints, and the others Canonical
// respells), blanks aside: those it takes at either end of a value (" 1"),
// and only there. It is nil when a spelling can hold any byte, as for a
// type that is not Exact. It tells whether two key templates can name the
// same key.
func KeyBytes(oid uint32, typmod int32) *[256]bool {
	if !Exact(oid, typmod) {
		return nil
	}
	set := func(chars string) *[256]bool {
		var b [256]bool
		for _, c := range []byte(chars) {
			b[c] = true
		}
		return &b
	}
	const digits = "0123456789"
	switch oid {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID:
		return set("+-" + digits)
	case pgtype.BoolOID:
		return set("01trueyesonfalsnTRUEYESONFALSN")
	case pgtype.UUIDOID:
		return set("-{}" + digits + "abcdefABCDEF")
	case pgtype.NumericOID:
		return set("+-.eE" + digits + "NaNnAa")
	case pgtype.DateOID, pgtype.TimestampOID, pgtype.TimestamptzOID:
		return set("-+/.:TZ " + digits + "BCinfty")
	}
	return nil
}

// Blanks are the bytes Canonical takes around a value (KeyBytes).
const Blanks = blanks
