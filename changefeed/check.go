package changefeed

import (
	"errors"
	"strings"

	"github.com/cachesync/cachesync/binding"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/pgsource"
)

// CheckTable checks a cache against its live table: its columns exist, and
// PostgreSQL sends the old values of the key columns on UPDATE and DELETE
// (else a deleted row's key could not be found).
func CheckTable(c *config.Cache, t *pgsource.Table) error {
	field := "caches." + c.Name
	if _, err := binding.New(c.Spec(), bindingColumns(t.Columns)); err != nil {
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

func bindingColumns(cols []pgsource.Column) []binding.Column {
	out := make([]binding.Column, len(cols))
	for i, c := range cols {
		out[i] = binding.Column(c)
	}
	return out
}
