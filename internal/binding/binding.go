package binding

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/redis/rueidis"
)

// Spec is what a config says of one cache, before any schema is known.
type Spec struct {
	Name   string
	Table  string
	Key    *Template
	Format Format
	// Fields maps output field names to columns, in order; empty means every
	// column under its own name.
	Fields []FieldSpec
	TTL    time.Duration
	// Jitter shortens each TTL by a random part up to this fraction.
	Jitter float64
	// Stale, when set, keeps a stale copy of each value (its Companions' Stale)
	// for this long after the key expires: what stale-while-revalidate and
	// stale-if-error serve.
	Stale time.Duration
	// Record, when set, is the cache's expiry record (RecordKey): every
	// write adds the key with its expiry time, every removal removes it.
	Record string
	// Queued tells a cache that takes write-behind writes: while a key's
	// write is queued (its mark in PendingKey), fills leave the key alone.
	Queued bool
	// Feed tells a cache that a change feed keeps: an invalidation of a key
	// that holds a value leaves the key's exists marker (AppendDrop).
	Feed bool
}

// FieldSpec names one output field and the column it comes from.
type FieldSpec struct{ Name, Column string }

// Column is a column of a row layout: its name, type OID and modifier
// (-1 for none).
type Column struct {
	Name    string
	TypeOID uint32
	Typmod  int32
}

// Binding is a Spec resolved against one row layout (the columns of a
// replication relation, or the columns a snapshot read selects). It is the one
// place where a row becomes a Redis key and value.
type Binding struct {
	Spec
	keyIdx   []int
	keyTypes []Column // the key columns, in template order
	exact    bool     // ExactKeys
	enc      Encoder
}

// New resolves spec against cols; errors name the config field at fault.
func New(spec Spec, cols []Column) (*Binding, error) {
	b := &Binding{Spec: spec, enc: Encoder{Format: spec.Format}}
	index := func(name string) (int, bool) {
		for i, c := range cols {
			if c.Name == name {
				return i, true
			}
		}
		return 0, false
	}
	for _, name := range spec.Key.Columns() {
		i, ok := index(name)
		if !ok {
			return nil, &SpecError{Field: "key", Err: fmt.Errorf("column %q does not exist in %s", name, spec.Table)}
		}
		b.keyIdx = append(b.keyIdx, i)
		b.keyTypes = append(b.keyTypes, cols[i])
	}
	b.exact = exactKeys(b.keyTypes)
	fields := spec.Fields
	if len(fields) == 0 {
		for _, c := range cols {
			fields = append(fields, FieldSpec{Name: c.Name, Column: c.Name})
		}
	}
	for _, f := range fields {
		i, ok := index(f.Column)
		if !ok {
			return nil, &SpecError{Field: "value.columns", Err: fmt.Errorf("column %q does not exist in %s", f.Column, spec.Table)}
		}
		b.enc.Fields = append(b.enc.Fields, Field{Name: f.Name, Column: i, TypeOID: cols[i].TypeOID})
	}
	return b, nil
}

// SpecError is a binding that does not fit the live table; Field is the
// cache's config field (key, value.columns) at fault.
type SpecError struct {
	Field string
	Err   error
}

func (e *SpecError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *SpecError) Unwrap() error { return e.Err }

// ColumnNames lists the columns a binding reads (key columns first, then
// value columns, no repeats): what a snapshot read or a row load selects.
func ColumnNames(spec Spec, all []Column) []string {
	var names []string
	seen := map[string]bool{}
	add := func(n string) {
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	for _, n := range spec.Key.Columns() {
		add(n)
	}
	if len(spec.Fields) == 0 {
		for _, c := range all {
			add(c.Name)
		}
	}
	for _, f := range spec.Fields {
		add(f.Column)
	}
	return names
}

// UsesColumn reports whether the value reads column i of the layout.
func (b *Binding) UsesColumn(i int) bool {
	for _, f := range b.enc.Fields {
		if f.Column == i {
			return true
		}
	}
	for _, k := range b.keyIdx {
		if k == i {
			return true
		}
	}
	return false
}

// Key renders the Redis key of row.
func (b *Binding) Key(row [][]byte) (string, error) {
	var vals [8][]byte
	v := vals[:0]
	for _, i := range b.keyIdx {
		v = append(v, row[i])
	}
	k, err := b.Spec.Key.Render(nil, v)
	if err != nil {
		return "", fmt.Errorf("key: %w", err)
	}
	return string(k), nil
}

// ttl returns the TTL for one write, jittered downwards so it never exceeds
// the configured TTL (a TTL is often a promise about staleness).
func (b *Binding) ttl() time.Duration {
	if b.Jitter <= 0 || b.TTL <= 0 {
		return b.TTL
	}
	return b.TTL - time.Duration(rand.Int64N(int64(float64(b.TTL)*b.Jitter)+1))
}

// Value is a row encoded for Redis: Bytes for json and string, Fields
// (field, value, ...) for hash.
type Value struct {
	Bytes  []byte
	Fields []string
}

// ErrNoValue is Encode's refusal of a row that has no value to store: in
// the hash format every value column is NULL (Redis has no empty hash), in
// the string format its column is NULL. Such a row's key is absent, as a
// deleted row's is: the feed removes it, a fill writes nothing.
var ErrNoValue = errors.New("no value to store: a NULL string, or a hash whose every field is NULL")

// Encode encodes row in the binding's format.
func (b *Binding) Encode(row [][]byte) (Value, error) { return b.encode(&b.enc, row) }

// EncodeGiven encodes a row given by a writer (write-behind) rather than
// read from PostgreSQL: a value in a form PostgreSQL takes but does not
// print is kept as given (Encoder.Loose), until the row as stored replaces it.
func (b *Binding) EncodeGiven(row [][]byte) (Value, error) {
	enc := b.enc
	enc.Loose = true
	return b.encode(&enc, row)
}

func (b *Binding) encode(enc *Encoder, row [][]byte) (Value, error) {
	var v Value
	var err error
	switch b.Format {
	case FormatHash:
		if v.Fields, err = enc.HashFields(row); err == nil && len(v.Fields) == 0 {
			err = ErrNoValue
		}
	case FormatString:
		v.Bytes, err = enc.AppendString(nil, row)
	default:
		v.Bytes, err = enc.AppendJSON(nil, row)
	}
	if err != nil {
		return v, fmt.Errorf("value: %w", err)
	}
	return v, nil
}

// Result is the value as a reader of the API gets it: the stored bytes, or a
// hash as a JSON object of its fields.
func (v Value) Result(f Format) []byte {
	if f != FormatHash {
		return v.Bytes
	}
	m := make(map[string]string, len(v.Fields)/2)
	for i := 0; i+1 < len(v.Fields); i += 2 {
		m[v.Fields[i]] = v.Fields[i+1]
	}
	out, _ := json.Marshal(m)
	return out
}

// hashSet replaces a hash and its TTL in one atomic step, so a reader never
// sees a half-written or missing hash; it also ends the key's lease and
// "not found" marker. KEYS: key, lease, neg. ARGV: ttl ms, field, value, ...
const hashSet = `redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1`

// AppendSet appends the commands that store row under key unconditionally:
// the change feed's write, the one ordered writer of a cache. A fill never
// overwrites an existing key, so a fill that read an older row loses to
// this write. When fresh (the key may not have existed: an insert, a row
// that moved to this key), the key's lease and "not found" marker are
// ended too, so a fill that found no row cannot write its marker after it.
func (b *Binding) AppendSet(cmds []rueidis.Completed, rb rueidis.Builder, key string, row [][]byte, fresh bool) ([]rueidis.Completed, error) {
	v, err := b.Encode(row)
	if errors.Is(err, ErrNoValue) {
		return b.AppendInvalidate(cmds, rb, key), nil // no key, as for a deleted row
	}
	if err != nil {
		return cmds, err
	}
	w := b.writeArgs(&v)
	var c Companions // named only for the writes that use them: the feed's hot path
	if fresh || w.mode == "h" || w.staleTTL > 0 {
		c = CompanionsOf(key)
	}
	if b.Record != "" && w.expiresAt > 0 {
		cmds = append(cmds, rb.Zadd().Key(b.Record).ScoreMember().ScoreMember(float64(w.expiresAt), key).Build())
	}
	if fresh && w.mode == "s" { // (a hash's write ends them itself)
		cmds = append(cmds, rb.Unlink().Key(c.Lease, c.Neg).Build())
	}
	return appendValue(cmds, rb, key, c, w), nil
}

// Clear removes every key of this binding from Redis, with their leases,
// "not found" markers, stale copies and exists markers (on every primary
// of a cluster), after bumping the cache's removal count: keys are found
// with SCAN MATCH and kept only if the template parses them. It ends fills
// in flight before it removes values (DESIGN invariant 9): the leases go
// first, so a fill that read its row before the clear either wrote before
// the values are removed, or finds its lease gone and writes nothing.
// (SCAN returns every key present for the whole scan, so every lease taken
// before it.) Pending marks of queued write-behind writes are the queue's,
// and stay.
func (b *Binding) Clear(ctx context.Context, client rueidis.Client) (int, error) {
	return b.ClearThrough(ctx, client, nil)
}

// ClearThrough is Clear with its writes sent by write (the change feed's
// fenced writer: a clear of a session that lost its claim writes nothing);
// nil sends them plainly.
func (b *Binding) ClearThrough(ctx context.Context, client rueidis.Client, write func(context.Context, []rueidis.Completed) error) (int, error) {
	if write == nil {
		write = func(ctx context.Context, cmds []rueidis.Completed) error {
			for _, r := range client.DoMulti(ctx, cmds...) {
				if err := r.Error(); err != nil {
					return err
				}
			}
			return nil
		}
	}
	n := 0
	// First, so watched reloads that read rows before are refused.
	if err := write(ctx, []rueidis.Completed{client.B().Incr().Key(RemovalsKey(b.Name)).Build()}); err != nil {
		return 0, fmt.Errorf("incr %s: %w", RemovalsKey(b.Name), err)
	}
	if b.Record != "" {
		if err := write(ctx, []rueidis.Completed{client.B().Unlink().Key(b.Record).Build()}); err != nil {
			return 0, fmt.Errorf("unlink %s: %w", b.Record, err)
		}
	}
	for _, prefix := range []string{leasePrefix, "", negPrefix, stalePrefix, existsPrefix} {
		m, err := b.clear(ctx, client, write, prefix)
		n += m
		if err != nil {
			return n, err
		}
		if clearPassed != nil {
			clearPassed(prefix)
		}
	}
	return n, nil
}

// clearPassed, when set (by tests), is called after each pass of Clear
// with the prefix of the keys it removed ("" for values).
var clearPassed func(prefix string)

// clear removes the keys of this binding with prefix (a companion kind).
func (b *Binding) clear(ctx context.Context, client rueidis.Client, write func(context.Context, []rueidis.Completed) error, prefix string) (int, error) {
	pattern := prefix + b.Spec.Key.Pattern()
	owns := b.Owns
	if prefix != "" {
		pattern = prefix + "*"
		owns = func(k string) bool {
			// Ours when any key named by it is: removing another key's
			// lease, marker or stale copy is always safe.
			return slices.ContainsFunc(keysOfCompanion(prefix, k), b.Owns)
		}
	}
	n := 0
	err := scanKeys(ctx, client, pattern, owns, func(keys []string) error {
		cmds := make(rueidis.Commands, len(keys))
		for i, k := range keys { // one by one: a Cluster refuses keys of several slots in one command
			cmds[i] = client.B().Unlink().Key(k).Build()
		}
		if err := write(ctx, cmds); err != nil {
			return fmt.Errorf("unlink: %w", err)
		}
		n += len(keys)
		return nil
	})
	return n, err
}
