package engine

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/pgsource"
	"github.com/cachesync/cachesync/internal/pgtext"
)

// Values a writer gives (Put, PutBehind) become PostgreSQL's input text for
// their column, one way for both, so both take the same values, and every
// value a Get of a JSON cache returns is taken back as it was: a string as
// it is (PostgreSQL parses it: "2026-01-02T03:04:05+05:30", "yes", "NaN"),
// numbers for number columns and booleans for boolean ones, null; for
// bytea a base64 string (as Get returns it) or \x hex; for json and jsonb
// any JSON value (a string is a JSON string, but in a hash cache, whose
// Get returns every field as a string, it is the field's JSON text); for
// an array a JSON array (or PostgreSQL's array text). A JSON value of
// another kind (true for a text column, an object for a number) is
// refused, as is a NUL character, which PostgreSQL's text cannot hold.
// Go's time.Time and []byte are taken too.

// isJSON tells the json and jsonb types, whose values are JSON text.
func isJSON(oid uint32) bool { return oid == pgtype.JSONOID || oid == pgtype.JSONBOID }

// isNull tells a value that is NULL: nil, or JSON null.
func isNull(v any) bool {
	raw, ok := v.(json.RawMessage)
	return v == nil || ok && string(bytes.TrimSpace(raw)) == "null"
}

// inputText gives the input text of v for column col of a cache of
// format; nil is NULL. A json.RawMessage (how the HTTP API passes a body's
// values) is taken as the JSON value it holds, and a json column keeps its
// text as written.
func inputText(format binding.Format, col pgsource.Column, v any) ([]byte, error) {
	if raw, ok := v.(json.RawMessage); ok {
		raw = bytes.TrimSpace(raw)
		switch {
		case string(raw) == "null":
			return nil, nil
		case isJSON(col.TypeOID):
			// A hash's field holds its JSON text as a string.
			var s string
			if format == binding.FormatHash && json.Unmarshal(raw, &s) == nil && json.Valid([]byte(s)) {
				return []byte(s), nil
			}
			return raw, nil
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		if err := jsonKind(col, v); err != nil {
			return nil, err
		}
	}
	if elem, delim, ok := pgtext.ArrayElem(col.TypeOID); ok {
		return arrayText(elem, delim, v, 0)
	}
	return scalarText(col.TypeOID, v)
}

// jsonKind refuses a JSON value of a kind that column type oid does not
// take: numbers go to number columns, booleans to boolean ones, arrays to
// array ones (json columns take anything; they are not asked); a string
// goes anywhere, for PostgreSQL to read, unless it holds a NUL.
func jsonKind(col pgsource.Column, v any) error {
	oid := col.TypeOID
	kind := ""
	switch v := v.(type) {
	case string:
		if strings.IndexByte(v, 0) >= 0 {
			return errors.New("a NUL character (\\u0000) cannot be stored in PostgreSQL text")
		}
		return nil
	case json.Number:
		if numberOIDs[oid] {
			return nil
		}
		kind = "a number"
	case bool:
		if oid == pgtype.BoolOID {
			return nil
		}
		kind = "a boolean"
	case []any:
		if _, _, ok := pgtext.ArrayElem(oid); ok {
			return nil
		}
		kind = "an array"
	case map[string]any:
		kind = "an object"
	}
	return fmt.Errorf("got %s, which a column of type %s does not take (send a string for PostgreSQL to read)", kind, col.Type)
}

// numberOIDs are the types a JSON number is written to (790 is money).
var numberOIDs = map[uint32]bool{pgtype.Int2OID: true, pgtype.Int4OID: true, pgtype.Int8OID: true, pgtype.OIDOID: true,
	pgtype.Float4OID: true, pgtype.Float8OID: true, pgtype.NumericOID: true, 790: true}

func scalarText(oid uint32, v any) ([]byte, error) {
	switch oid {
	case pgtype.ByteaOID:
		switch v := v.(type) {
		case nil:
			return nil, nil
		case []byte:
			return hexBytea(v), nil
		case string:
			if strings.HasPrefix(v, `\x`) {
				return []byte(v), nil
			}
			b, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				return nil, fmt.Errorf("bytea takes base64 (as Get returns it) or \\x hex: %w", err)
			}
			return hexBytea(b), nil
		}
	case pgtype.JSONOID, pgtype.JSONBOID:
		switch v := v.(type) {
		case nil:
			return nil, nil
		case string:
			return []byte(v), nil
		default:
			b, err := json.Marshal(v)
			if err != nil {
				return nil, err
			}
			return b, nil
		}
	}
	switch v := v.(type) {
	case nil:
		return nil, nil
	case string:
		return []byte(v), nil
	case json.Number:
		return []byte(v.String()), nil
	case bool:
		if v {
			return []byte("t"), nil
		}
		return []byte("f"), nil
	case int:
		return strconv.AppendInt(nil, int64(v), 10), nil
	case int32:
		return strconv.AppendInt(nil, int64(v), 10), nil
	case int64:
		return strconv.AppendInt(nil, v, 10), nil
	case uint64:
		return strconv.AppendUint(nil, v, 10), nil
	case float64:
		return strconv.AppendFloat(nil, v, 'g', -1, 64), nil
	case float32:
		return strconv.AppendFloat(nil, float64(v), 'g', -1, 32), nil
	case time.Time:
		return v.AppendFormat(nil, time.RFC3339Nano), nil
	case []byte:
		return v, nil
	case fmt.Stringer:
		return []byte(v.String()), nil
	}
	return nil, fmt.Errorf("a %T cannot be written to a column of type oid %d", v, oid)
}

func hexBytea(b []byte) []byte {
	out := append(make([]byte, 0, 2+2*len(b)), `\x`...)
	return hex.AppendEncode(out, b)
}

// arrayText gives PostgreSQL's array text of v (a JSON array, or a string:
// JSON array text, or array text as PostgreSQL takes it).
func arrayText(elem uint32, delim byte, v any, depth int) ([]byte, error) {
	if depth > 16 {
		return nil, fmt.Errorf("array nested too deeply")
	}
	if s, ok := v.(string); ok && depth == 0 {
		if !strings.HasPrefix(strings.TrimSpace(s), "[") {
			return []byte(s), nil
		}
		dec := json.NewDecoder(strings.NewReader(s))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("array: %w", err)
		}
	}
	switch a := v.(type) {
	case nil:
		return nil, nil
	case []any:
		out := []byte{'{'}
		for i, x := range a {
			if i > 0 {
				out = append(out, delim)
			}
			if _, nested := x.([]any); nested {
				t, err := arrayText(elem, delim, x, depth+1)
				if err != nil {
					return nil, err
				}
				out = append(out, t...)
				continue
			}
			t, err := scalarText(elem, x)
			if err != nil {
				return nil, err
			}
			if t == nil {
				out = append(out, "NULL"...)
				continue
			}
			out = append(out, '"')
			for _, c := range t {
				if c == '"' || c == '\\' {
					out = append(out, '\\')
				}
				out = append(out, c)
			}
			out = append(out, '"')
		}
		return append(out, '}'), nil
	}
	return nil, fmt.Errorf("an array column takes a JSON array, not a %T", v)
}
