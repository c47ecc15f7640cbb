package pgsource

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// Column is one column of a table as cachesync sees it: its name and the OID
// of the type whose text form it carries (a domain resolves to its base type).
type Column struct {
	Name    string
	TypeOID uint32 // the base type, through domains: what values are formatted by
	// Type is the declared type without its length or precision
	// (format_type with typmod -1: bpchar, "bit", numeric), for casts of
	// text parameters to compare with the column: a longer value is not cut
	// short, and the column's index serves. (The bare names character and
	// bit would mean one character or bit.)
	Type string
	// Declared is the type with its modifiers (numeric(6,2), character(5)):
	// a value cast to it prints as the column would print it once stored.
	Declared string
	// Typmod is the type's modifier (atttypmod, through domains): -1 for
	// none, else as the type encodes it (character(5): 9).
	Typmod int32
}

// Table is a source table's shape, read from the live catalog.
type Table struct {
	Name    string // schema.table as written in the config
	Quoted  string // schema.table quoted for SQL, as the catalog spells it
	OID     uint32
	Columns []Column
	// Identity holds the replica identity columns: what PostgreSQL sends of
	// the old row on UPDATE and DELETE. FullIdentity means every column.
	Identity     []string
	FullIdentity bool
	// UniqueKeys lists the key column sets of the valid unique indexes
	// (primary key first) that have no predicate or expression: what can
	// name one row.
	UniqueKeys [][]string
	// IdentityIndexes lists the unique indexes PostgreSQL accepts in ALTER
	// TABLE ... REPLICA IDENTITY USING INDEX: valid, immediate (not
	// deferrable), no predicate or expression, every key column NOT NULL.
	IdentityIndexes []Index
	// Partitioned marks a partitioned table: PostgreSQL sends the old rows
	// of its partitions by each partition's own replica identity.
	Partitioned bool
}

// Index is a unique index of a table: its name, quoted for SQL (it lives
// in the table's schema), and its key columns (INCLUDE columns left out).
type Index struct {
	Name    string
	Columns []string
}

// ErrNoTable reports a table that does not exist.
var ErrNoTable = errors.New("table does not exist")

// ErrNotTable reports a relation that is not a table (a view, say): it has no changes to stream.
var ErrNotTable = errors.New("not a table")

// Column returns the named column and whether it exists.
func (t *Table) Column(name string) (Column, bool) {
	for _, c := range t.Columns {
		if c.Name == name {
			return c, true
		}
	}
	return Column{}, false
}

// InIdentity reports whether PostgreSQL sends the named column's old value on
// UPDATE and DELETE, which a key column needs so the old key can be removed.
func (t *Table) InIdentity(name string) bool {
	if t.FullIdentity {
		return true
	}
	for _, c := range t.Identity {
		if c == name {
			return true
		}
	}
	return false
}

// LoadTable reads the shape of table (schema.table) from the catalog.
func LoadTable(ctx context.Context, conn *pgx.Conn, table string) (*Table, error) {
	t := &Table{Name: table}
	var ident, kind string
	err := conn.QueryRow(ctx,
		`SELECT c.oid, c.relreplident::text, c.relkind::text, format('%I.%I', n.nspname, c.relname)
		 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)`, table).
		Scan(&t.OID, &ident, &kind, &t.Quoted)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s: %w", table, ErrNoTable)
	}
	if err != nil {
		return nil, fmt.Errorf("table %s: %w", table, err)
	}
	if kind != "r" && kind != "p" { // plain or partitioned table
		return nil, fmt.Errorf("%s: %w (relkind %s)", table, ErrNotTable, kind)
	}
	t.Partitioned = kind == "p"
	// Domains are followed to their base type, so values are formatted by
	// what they hold. Generated columns are left out: pgoutput never sends them.
	rows, err := conn.Query(ctx, `
		WITH RECURSIVE base(attnum, typ, typmod, depth) AS (
			SELECT a.attnum, a.atttypid, a.atttypmod, 0 FROM pg_attribute a
			WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
			UNION ALL
			SELECT b.attnum, t.typbasetype, CASE WHEN t.typtypmod <> -1 THEN t.typtypmod ELSE b.typmod END, b.depth + 1
			FROM base b JOIN pg_type t ON t.oid = b.typ
			WHERE t.typtype = 'd')
		SELECT a.attname, b.typ, b.typmod, format_type(a.atttypid, -1), format_type(a.atttypid, a.atttypmod)
		FROM pg_attribute a
		CROSS JOIN LATERAL (SELECT typ, typmod FROM base b WHERE b.attnum = a.attnum ORDER BY depth DESC LIMIT 1) b
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		ORDER BY a.attnum`, t.OID)
	if err != nil {
		return nil, fmt.Errorf("table %s: columns: %w", table, err)
	}
	for rows.Next() {
		var c Column
		if err := rows.Scan(&c.Name, &c.TypeOID, &c.Typmod, &c.Type, &c.Declared); err != nil {
			return nil, fmt.Errorf("table %s: columns: %w", table, err)
		}
		t.Columns = append(t.Columns, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("table %s: columns: %w", table, err)
	}
	switch ident {
	case "f":
		t.FullIdentity = true
	case "d", "i":
		// Key columns only: PostgreSQL does not send an index's INCLUDE columns.
		rows, err := conn.Query(ctx, `
			SELECT a.attname FROM pg_index i
			CROSS JOIN LATERAL generate_series(0, i.indnkeyatts - 1) k(n)
			JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[k.n]
			WHERE i.indrelid = $1 AND CASE WHEN $2 = 'd' THEN i.indisprimary ELSE i.indisreplident END
			ORDER BY k.n`,
			t.OID, ident)
		if err != nil {
			return nil, fmt.Errorf("table %s: replica identity: %w", table, err)
		}
		t.Identity, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("table %s: replica identity: %w", table, err)
		}
	}
	// Key columns only: INCLUDE columns are not part of what is unique.
	rows, err = conn.Query(ctx, `
		SELECT format('%I', c.relname), array_agg(a.attname::text ORDER BY a.attname),
			i.indimmediate AND bool_and(a.attnotnull)
		FROM pg_index i
		JOIN pg_class c ON c.oid = i.indexrelid
		CROSS JOIN LATERAL generate_series(0, i.indnkeyatts - 1) k(n)
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[k.n]
		WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
		GROUP BY i.indexrelid, c.relname, i.indisprimary, i.indimmediate
		ORDER BY i.indisprimary DESC, i.indexrelid`, t.OID)
	if err != nil {
		return nil, fmt.Errorf("table %s: unique keys: %w", table, err)
	}
	for rows.Next() {
		var ix Index
		var identity bool
		if err := rows.Scan(&ix.Name, &ix.Columns, &identity); err != nil {
			return nil, fmt.Errorf("table %s: unique keys: %w", table, err)
		}
		t.UniqueKeys = append(t.UniqueKeys, ix.Columns)
		if identity {
			t.IdentityIndexes = append(t.IdentityIndexes, ix)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("table %s: unique keys: %w", table, err)
	}
	return t, nil
}

// Identifies reports whether the columns cols always name at most one row:
// they include every column of some unique key.
func (t *Table) Identifies(cols []string) bool {
	for _, key := range t.UniqueKeys {
		covered := true
		for _, k := range key {
			if !slices.Contains(cols, k) {
				covered = false
			}
		}
		if covered {
			return true
		}
	}
	return false
}
