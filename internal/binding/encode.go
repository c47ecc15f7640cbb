package binding

import (
	"fmt"
	"strings"
	"unsafe"

	"github.com/cachesync/cachesync/internal/pgtext"
)

// Format is how a row is stored in Redis; the zero value is not a valid Format, so
// an unset configuration is caught.
type Format int

// The supported storage formats.
const (
	// FormatJSON stores the row as a JSON object string (Redis SET).
	FormatJSON Format = iota + 1
	// FormatHash stores the row as a Redis hash, one hash field per Field (HSET).
	FormatHash
	// FormatString stores exactly one column's plain value as a Redis string (SET).
	FormatString
)

// ParseFormat parses a format name ("json", "hash" or "string", case-insensitive) as
// written in configuration.
func ParseFormat(s string) (Format, error) {
	for f := FormatJSON; f <= FormatString; f++ {
		if strings.EqualFold(s, f.String()) {
			return f, nil
		}
	}
	return 0, fmt.Errorf("binding: unknown format %q (want json, hash or string)", s)
}

// String returns the configuration name of f ("json", "hash", "string").
func (f Format) String() string {
	switch f {
	case FormatJSON:
		return "json"
	case FormatHash:
		return "hash"
	case FormatString:
		return "string"
	}
	return fmt.Sprintf("Format(%d)", int(f))
}

// MarshalText implements encoding.TextMarshaler so a Format serializes as its name.
func (f Format) MarshalText() ([]byte, error) {
	if f < FormatJSON || f > FormatString {
		return nil, fmt.Errorf("binding: invalid format %d", int(f))
	}
	return []byte(f.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler so configuration decoders accept
// format names directly.
func (f *Format) UnmarshalText(b []byte) error {
	v, err := ParseFormat(string(b))
	if err != nil {
		return err
	}
	*f = v
	return nil
}

// Field maps one output field (JSON key or hash field) to a row column, with the
// column's type OID deciding how its text value is converted.
type Field struct {
	Name    string // output field name
	Column  int    // index into the row passed to the Encoder
	TypeOID uint32 // PostgreSQL type OID of the column (base type for domains)
}

// Encoder turns a row of PostgreSQL text values (nil = NULL) into a Redis value. Its
// methods do not look at Format (callers pick the method that matches it) and are
// safe for concurrent use as long as the Encoder is not modified.
type Encoder struct {
	Format Format
	Fields []Field
	// Loose keeps a value in a form PostgreSQL takes but does not print
	// (a writer's "2026-01-02T03:04:05+05:30" or "yes") as its text,
	// where it would be refused: for values given by a writer, not read.
	Loose bool
}

func (e *Encoder) value(f *Field, row [][]byte) ([]byte, error) {
	if f.Column < 0 || f.Column >= len(row) {
		return nil, fmt.Errorf("binding: field %q: column index %d out of range (row has %d columns)", f.Name, f.Column, len(row))
	}
	return row[f.Column], nil
}

// AppendJSON appends the row as a JSON object {"name":value,...} in Fields order to
// dst, with NULL columns as null; on error dst is returned with its original length.
func (e *Encoder) AppendJSON(dst []byte, row [][]byte) ([]byte, error) {
	orig := len(dst)
	dst = append(dst, '{')
	for i := range e.Fields {
		f := &e.Fields[i]
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = pgtext.AppendJSONString(dst, f.Name)
		dst = append(dst, ':')
		v, err := e.value(f, row)
		if err != nil {
			return dst[:orig], err
		}
		if v == nil {
			dst = append(dst, "null"...)
			continue
		}
		if dst, err = pgtext.AppendJSON(dst, f.TypeOID, v); err != nil && e.Loose {
			dst = pgtext.AppendJSONString(dst, string(v))
		} else if err != nil {
			return dst[:orig], fmt.Errorf("binding: field %q (column %d): %w", f.Name, f.Column, err)
		}
	}
	return append(dst, '}'), nil
}

// HashFields returns the row as alternating hash field names and plain values
// (field1, value1, field2, value2, ...) in Fields order, ready for HSET; NULL columns
// are omitted (so callers should HDEL or replace the whole hash to drop stale fields).
// All values share one backing string, so the row costs a constant number of
// allocations.
func (e *Encoder) HashFields(row [][]byte) ([]string, error) {
	size, count := 0, 0
	for i := range e.Fields {
		v, err := e.value(&e.Fields[i], row)
		if err != nil {
			return nil, err
		}
		if v != nil {
			size += len(v) + 8 // slack for bool/timestamp growth
			count++
		}
	}
	buf := make([]byte, 0, size)
	var endsArr [32]int
	ends := endsArr[:0]
	for i := range e.Fields {
		f := &e.Fields[i]
		v := row[f.Column]
		if v == nil {
			continue
		}
		var err error
		if buf, err = pgtext.AppendPlain(buf, f.TypeOID, v); err != nil && e.Loose {
			buf = append(buf, v...)
		} else if err != nil {
			return nil, fmt.Errorf("binding: field %q (column %d): %w", f.Name, f.Column, err)
		}
		ends = append(ends, len(buf))
	}
	// buf is never modified again, so viewing it as a string is safe and saves a copy.
	s := unsafe.String(unsafe.SliceData(buf), len(buf))
	out := make([]string, 0, 2*count)
	prev, j := 0, 0
	for i := range e.Fields {
		f := &e.Fields[i]
		if row[f.Column] == nil {
			continue
		}
		out = append(out, f.Name, s[prev:ends[j]])
		prev = ends[j]
		j++
	}
	return out, nil
}

// AppendString appends the plain form of the Encoder's only field to dst, for
// FormatString; it is an error if there is not exactly one field or the column is
// NULL. On error dst is returned with its original length.
func (e *Encoder) AppendString(dst []byte, row [][]byte) ([]byte, error) {
	if len(e.Fields) != 1 {
		return dst, fmt.Errorf("binding: string format needs exactly one field, have %d", len(e.Fields))
	}
	f := &e.Fields[0]
	v, err := e.value(f, row)
	if err != nil {
		return dst, err
	}
	if v == nil {
		return dst, fmt.Errorf("binding: column %d (field %q) is NULL: %w", f.Column, f.Name, ErrNoValue)
	}
	out, err := pgtext.AppendPlain(dst, f.TypeOID, v)
	if err != nil && e.Loose {
		return append(dst, v...), nil
	}
	if err != nil {
		return dst, fmt.Errorf("binding: field %q (column %d): %w", f.Name, f.Column, err)
	}
	return out, nil
}
