// Package schema checks caches against their live tables: every column
// exists, a key names one row, and the change feed can see deleted keys.
package schema

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/pgsource"
)

// CheckTable checks a cache against its live table: its columns exist, its
// key names one row and can be rendered for some row, and PostgreSQL sends
// the old values of the key columns on UPDATE and DELETE (else a deleted
// row's key could not be found).
func CheckTable(c *config.Cache, t *pgsource.Table) error {
	field := "caches." + c.Name
	b, err := binding.New(c.Spec(), BindingColumns(t.Columns))
	if err != nil {
		var se *binding.SpecError
		if errors.As(err, &se) {
			return config.FieldError(field+"."+se.Field, "%v", se.Err)
		}
		return config.FieldError(field, "%v", err)
	}
	if err := checkKeyspace(c, b); err != nil {
		return config.FieldError(field+".key", "%v", err)
	}
	if !t.Identifies(c.Template.Columns()) {
		keys := "it has no unique key"
		if len(t.UniqueKeys) > 0 {
			keys = "include the columns of a unique key such as (" + strings.Join(t.UniqueKeys[0], ", ") + ")"
		}
		return config.FieldError(field+".key", "columns (%s) do not name one row of %s: %s",
			strings.Join(c.Template.Columns(), ", "), t.Name, keys)
	}
	if err := checkRenderable(c.Template, t); err != nil {
		return config.FieldError(field+".key", "%v", err)
	}
	if c.Sync != config.SyncChangefeed {
		return nil
	}
	var missing []string
	for _, col := range c.Template.Columns() {
		if !t.InIdentity(col) {
			missing = append(missing, col)
		}
	}
	if len(missing) > 0 {
		return config.FieldError(field+".key", "%s", identityAdvice(t, c.Template.Columns(), missing))
	}
	return nil
}

// checkKeyspace refuses a cache whose keys could be taken for others': a
// change-feed cache clears every key its template can produce when it is
// rebuilt or its table truncated, so none may be cachesync's own (a bare
// "{k}" of text could be any key at all); and write-behind keys each queued
// write by the key as given, so each row must have one spelling of it.
func checkKeyspace(c *config.Cache, b *binding.Binding) error {
	if k, ok := binding.OverlapReserved(b); ok && c.Sync == config.SyncChangefeed {
		return fmt.Errorf("template %s can produce keys that are not this cache's own, such as %q (cachesync's): "+
			"a rebuild or a TRUNCATE clears every key the template can produce; give the keys a prefix of their own, such as %q",
			c.Template, k, c.Name+":"+c.Template.String())
	}
	if c.Writes == config.WritesBehind && !b.ExactKeys() {
		return fmt.Errorf("write-behind needs key columns whose values PostgreSQL prints one way (integers, text, uuid, numeric(p,s)...); "+
			"a column of %s has several spellings of one value", c.Table)
	}
	return nil
}

// CheckKeyspaces refuses two caches whose templates can produce the same
// key: each would take the other's keys for its own (and clear them, or
// fill them with its rows). bindings maps cache names to their bindings.
func CheckKeyspaces(bindings map[string]*binding.Binding) error {
	names := slices.Sorted(maps.Keys(bindings))
	for i, a := range names {
		for _, b := range names[i+1:] {
			if k, ok := binding.Overlap(bindings[a], bindings[b]); ok {
				return config.FieldError("caches."+b+".key", "caches %s (%s) and %s (%s) can both produce the key %q: give each a prefix of its own",
					a, bindings[a].Spec.Key, b, bindings[b].Spec.Key, k)
			}
		}
	}
	return nil
}

// identityAdvice says that the key columns missing are not in t's replica
// identity, and every way out: the cheapest first.
func identityAdvice(t *pgsource.Table, key, missing []string) string {
	have := "replica identity of " + t.Name + " (it has none)"
	if len(t.Identity) > 0 {
		have = "replica identity (" + strings.Join(t.Identity, ", ") + ") of " + t.Name
	}
	var fixes []string
	// The smallest index PostgreSQL would take as the identity that holds
	// every key column (the indexes are listed primary key first).
	var best *pgsource.Index
	for i, ix := range t.IdentityIndexes {
		covers := !slices.ContainsFunc(key, func(col string) bool { return !slices.Contains(ix.Columns, col) })
		if covers && (best == nil || len(ix.Columns) < len(best.Columns)) {
			best = &t.IdentityIndexes[i]
		}
	}
	if best != nil {
		fixes = append(fixes, fmt.Sprintf("run ALTER TABLE %s REPLICA IDENTITY USING INDEX %s", t.Quoted, best.Name))
	}
	fixes = append(fixes, fmt.Sprintf("run ALTER TABLE %s REPLICA IDENTITY FULL (the whole old row goes to the WAL)", t.Quoted))
	if len(t.Identity) > 0 {
		fixes = append(fixes, "key on columns of ("+strings.Join(t.Identity, ", ")+") only")
	}
	fixes = append(fixes, "set sync: none if the cache only needs refreshes or read-through")
	partitions := ""
	if t.Partitioned {
		partitions = " (on a partitioned table, set the replica identity of the table and of each partition)"
	}
	return fmt.Sprintf("column(s) %s are not in the %s, so a delete could not name its key: %s%s",
		strings.Join(missing, ", "), have, strings.Join(fixes, ", or "), partitions)
}

// alwaysIn gives, for a base type, text that every value of it contains as
// cachesync reads values (pgsource.SessionParams: DateStyle ISO, TimeZone
// UTC, bytea_output hex), and which values are exceptions.
var alwaysIn = map[uint32]struct {
	texts  []string
	except string
}{
	pgtype.UUIDOID:        {texts: []string{"-"}},
	pgtype.TimeOID:        {texts: []string{":"}},
	pgtype.TimetzOID:      {texts: []string{":"}},
	pgtype.DateOID:        {texts: []string{"-"}, except: "±infinity"},
	pgtype.TimestampOID:   {texts: []string{"-", " ", ":"}, except: "±infinity"},
	pgtype.TimestamptzOID: {texts: []string{"-", " ", ":"}, except: "±infinity"},
	pgtype.ByteaOID:       {texts: []string{`\x`}},
	pgtype.MacaddrOID:     {texts: []string{":"}},
	774:                   {texts: []string{":"}}, // macaddr8
	pgtype.CIDROID:        {texts: []string{"/"}},
	3220:                  {texts: []string{"/"}}, // pg_lsn
	pgtype.TIDOID:         {texts: []string{"(", ",", ")"}},
	pgtype.PointOID:       {texts: []string{","}},
	pgtype.LsegOID:        {texts: []string{","}},
	pgtype.PathOID:        {texts: []string{","}},
	pgtype.BoxOID:         {texts: []string{","}},
	pgtype.PolygonOID:     {texts: []string{","}},
	pgtype.LineOID:        {texts: []string{","}},
	pgtype.CircleOID:      {texts: []string{","}},
}

// builtinArrays tells the built-in array types, whose every value is
// written in braces ({1,2}, {}).
var builtinArrays = sync.OnceValue(func() func(oid uint32) bool {
	m := pgtype.NewMap()
	return func(oid uint32) bool {
		t, ok := m.TypeForOID(oid)
		if !ok {
			return false
		}
		_, ok = t.Codec.(*pgtype.ArrayCodec)
		return ok
	}
})

// checkRenderable refuses a key no row could have: a placeholder (not the
// last, which may hold anything) whose column's every value contains text
// the template forbids there (the literal that follows it), as a
// timestamp's ":" in "ev:{at}:{id}". It asks the template itself: a value
// made of that text alone, fenced with NUL bytes so that it cannot run into
// the literal, renders only if the literal is not within the text.
func checkRenderable(tmpl *binding.Template, t *pgsource.Table) error {
	if strings.ContainsRune(tmpl.String(), 0) {
		return nil // the fence would not hold
	}
	cols := tmpl.Columns()
	for i, name := range cols[:len(cols)-1] {
		col, ok := t.Column(name)
		if !ok {
			continue
		}
		always := alwaysIn[col.TypeOID]
		if builtinArrays()(col.TypeOID) {
			always.texts = []string{"{", "}"}
		}
		for _, text := range always.texts {
			values := make([][]byte, len(cols))
			for j := range values {
				values[j] = []byte{}
			}
			values[i] = []byte("\x00" + text + "\x00")
			if _, err := tmpl.Render(nil, values); err == nil {
				continue
			}
			but := ""
			if always.except != "" {
				but = " but " + always.except
			}
			return fmt.Errorf("no row could be keyed: every value of column %q (%s)%s contains %q, and with it the text that follows {%s} in %q; put {%s} last or follow it with text its values never contain",
				name, col.Declared, but, text, name, tmpl.String(), name)
		}
	}
	return nil
}

// BindingColumns converts table columns to binding columns.
func BindingColumns(cols []pgsource.Column) []binding.Column {
	out := make([]binding.Column, len(cols))
	for i, c := range cols {
		out[i] = binding.Column{Name: c.Name, TypeOID: c.TypeOID, Typmod: c.Typmod}
	}
	return out
}

// LoadTables reads and checks the tables of caches against the live
// schema. (That no two caches of a config can produce one key is checked
// over all of them, by CheckKeyspaces.)
func LoadTables(ctx context.Context, db *pgx.Conn, caches []*config.Cache) (map[string]*pgsource.Table, error) {
	tables := map[string]*pgsource.Table{}
	for _, c := range caches {
		t, ok := tables[c.Table]
		if !ok {
			var err error
			t, err = pgsource.LoadTable(ctx, db, c.Table)
			if errors.Is(err, pgsource.ErrNoTable) {
				return nil, config.FieldError("caches."+c.Name+".table", "table %s does not exist", c.Table)
			}
			if errors.Is(err, pgsource.ErrNotTable) {
				return nil, config.FieldError("caches."+c.Name+".table", "%v: a cache needs a table", err)
			}
			if err != nil {
				return nil, err
			}
			tables[c.Table] = t
		}
		if err := CheckTable(c, t); err != nil {
			return nil, err
		}
	}
	return tables, nil
}

// Bindings returns the bindings of caches over their tables (as
// LoadTables returned them), by cache name: what CheckKeyspaces takes.
func Bindings(caches []*config.Cache, tables map[string]*pgsource.Table) map[string]*binding.Binding {
	out := map[string]*binding.Binding{}
	for _, c := range caches {
		out[c.Name], _ = binding.New(c.Spec(), BindingColumns(tables[c.Table].Columns)) // CheckTable built it
	}
	return out
}

// SelectBinding resolves cache c against the columns a read of its rows
// selects (key columns, then value columns) and returns both: what a
// snapshot copy or a read-through load uses.
func SelectBinding(c *config.Cache, t *pgsource.Table) (*binding.Binding, []string, error) {
	spec := c.Spec()
	cols := binding.ColumnNames(spec, BindingColumns(t.Columns))
	layout := make([]binding.Column, len(cols))
	for i, name := range cols {
		col, _ := t.Column(name)
		layout[i] = binding.Column{Name: col.Name, TypeOID: col.TypeOID, Typmod: col.Typmod}
	}
	b, err := binding.New(spec, layout)
	if err != nil {
		return nil, nil, config.FieldError("caches."+c.Name, "%v", err)
	}
	return b, cols, nil
}
