// Package schema checks caches against their live tables: every column
// exists, a key names one row, and the change feed can see deleted keys.
package schema

import (
	"context"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/binding"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/pgsource"
)

// CheckTable checks a cache against its live table: its columns exist, and
// PostgreSQL sends the old values of the key columns on UPDATE and DELETE
// (else a deleted row's key could not be found).
func CheckTable(c *config.Cache, t *pgsource.Table) error {
	field := "caches." + c.Name
	if _, err := binding.New(c.Spec(), BindingColumns(t.Columns)); err != nil {
		var se *binding.SpecError
		if errors.As(err, &se) {
			return config.FieldError(field+"."+se.Field, "%v", se.Err)
		}
		return config.FieldError(field, "%v", err)
	}
	if !t.Identifies(c.Template.Columns()) {
		keys := "it has no unique key"
		if len(t.UniqueKeys) > 0 {
			keys = "include the columns of a unique key such as (" + strings.Join(t.UniqueKeys[0], ", ") + ")"
		}
		return config.FieldError(field+".key", "columns (%s) do not name one row of %s: %s",
			strings.Join(c.Template.Columns(), ", "), t.Name, keys)
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
		have := "no replica identity"
		if len(t.Identity) > 0 {
			have = "replica identity (" + strings.Join(t.Identity, ", ") + ")"
		}
		return config.FieldError(field+".key",
			"column(s) %s are not in the %s of %s, so a delete could not name its key; use primary-key columns in the key or run ALTER TABLE %s REPLICA IDENTITY FULL",
			strings.Join(missing, ", "), have, t.Name, t.Quoted)
	}
	return nil
}

// BindingColumns converts table columns to binding columns.
func BindingColumns(cols []pgsource.Column) []binding.Column {
	out := make([]binding.Column, len(cols))
	for i, c := range cols {
		out[i] = binding.Column{Name: c.Name, TypeOID: c.TypeOID}
	}
	return out
}

// LoadTables reads and checks the tables of caches against the live schema.
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

// SelectBinding resolves cache c against the columns a read of its rows
// selects (key columns, then value columns) and returns both: what a
// snapshot copy or a read-through load uses.
func SelectBinding(c *config.Cache, t *pgsource.Table) (*binding.Binding, []string, error) {
	spec := c.Spec()
	cols := binding.ColumnNames(spec, BindingColumns(t.Columns))
	layout := make([]binding.Column, len(cols))
	for i, name := range cols {
		col, _ := t.Column(name)
		layout[i] = binding.Column{Name: col.Name, TypeOID: col.TypeOID}
	}
	b, err := binding.New(spec, layout)
	if err != nil {
		return nil, nil, config.FieldError("caches."+c.Name, "%v", err)
	}
	return b, cols, nil
}
