package pgsource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Loader reads rows by key from a source, in the same text form as the
// stream and snapshots: the one place a cache's rows are loaded on demand
// (read-through fills, refreshes).
type Loader struct {
	pool *pgxpool.Pool
	// noShare is set once PostgreSQL refused a FOR SHARE read (the role
	// lacks the UPDATE privilege): reads are plain from then on.
	noShare atomic.Bool
}

// share adds FOR SHARE to sql when asked and allowed.
func (l *Loader) share(sql string, share bool) string {
	if share && !l.noShare.Load() {
		return sql + " FOR SHARE OF t"
	}
	return sql
}

// refused tells a FOR SHARE read the role may not make; it turns them off.
func (l *Loader) refused(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" && !l.noShare.Swap(true) {
		slog.Warn("the source role may not read FOR SHARE (it needs the UPDATE privilege): fills read plainly, and a fill racing a commit that is not yet visible may write the older row", "err", err)
		return true
	}
	return false
}

// NewLoader opens a connection pool to url with SessionParams.
func NewLoader(ctx context.Context, url string) (*Loader, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	for k, v := range SessionParams {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return &Loader{pool: pool}, nil
}

// Close closes the pool.
func (l *Loader) Close() { l.pool.Close() }

// Pool is the loader's connection pool, for writes that go with loads.
func (l *Loader) Pool() *pgxpool.Pool { return l.pool }

// LoadRow returns columns of the row of t whose keyColumns equal values
// (text, converted by PostgreSQL to each column's type), or nil when there is
// no such row. With share the row is read FOR SHARE (see LoadRows).
func (l *Loader) LoadRow(ctx context.Context, t *Table, columns, keyColumns, values []string, share bool) ([][]byte, error) {
	params := make([][]byte, len(values))
	for i, v := range values {
		params[i] = []byte(v)
	}
	for {
		sql := l.share(selectByKey(t, columns, keyColumns), share)
		var row [][]byte
		err := l.pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
			res := c.Conn().PgConn().ExecParams(ctx, sql, params, nil, nil, nil).Read()
			if res.Err != nil {
				return res.Err
			}
			if len(res.Rows) > 0 {
				row = res.Rows[0]
			}
			return nil
		})
		if err != nil && share && l.refused(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", t.Name, err)
		}
		return row, nil
	}
}

// LoadRows returns columns of the rows of t whose keyColumns equal one of
// keys (each a list of text values, one per key column), in one query.
// Rows come in no particular order; keys without a row have none. With
// share the rows are read FOR SHARE: the read waits for a transaction that
// changed one of them and is still finishing its commit, and reads its
// version. A plain read could miss a commit already in the WAL, so already
// applied by the change feed, and a fill would then write the older row
// (DESIGN's visibility trap). Without the UPDATE privilege it reads plainly.
func (l *Loader) LoadRows(ctx context.Context, t *Table, columns, keyColumns []string, keys [][]string, share bool) ([][][]byte, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	query, err := selectByKeys(t, columns, keyColumns)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", t.Name, err)
	}
	// One text[] parameter per key column, in PostgreSQL's array syntax.
	params := make([][]byte, len(keyColumns))
	for i := range keyColumns {
		a := []byte{'{'}
		for j, k := range keys {
			if j > 0 {
				a = append(a, ',')
			}
			a = append(a, '"')
			for _, c := range []byte(k[i]) {
				if c == '"' || c == '\\' {
					a = append(a, '\\')
				}
				a = append(a, c)
			}
			a = append(a, '"')
		}
		params[i] = append(a, '}')
	}
	for {
		sql := l.share(query, share)
		var rows [][][]byte
		err = l.pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
			res := c.Conn().PgConn().ExecParams(ctx, sql, params, nil, nil, nil).Read()
			rows = res.Rows
			return res.Err
		})
		if err != nil && share && l.refused(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", t.Name, err)
		}
		return rows, nil
	}
}

// selectByKeys selects the rows whose key columns are in the unnested
// parameter arrays, cast to each column's type so its index serves.
func selectByKeys(t *Table, columns, keyColumns []string) (string, error) {
	cols := make([]string, len(columns))
	for i, c := range columns {
		cols[i] = "t." + pgx.Identifier{c}.Sanitize()
	}
	keys := make([]string, len(keyColumns))
	arrays := make([]string, len(keyColumns))
	for i, name := range keyColumns {
		c, ok := t.Column(name)
		if !ok {
			return "", fmt.Errorf("no column %q", name)
		}
		keys[i] = "t." + pgx.Identifier{name}.Sanitize()
		arrays[i] = fmt.Sprintf("$%d::text[]::%s[]", i+1, c.Type)
	}
	if len(keys) == 1 { // the common case, planned best as = ANY
		return fmt.Sprintf("SELECT %s FROM %s t WHERE %s = ANY(%s)", strings.Join(cols, ", "), t.Quoted, keys[0], arrays[0]), nil
	}
	return fmt.Sprintf("SELECT %s FROM %s t WHERE (%s) IN (SELECT * FROM unnest(%s))",
		strings.Join(cols, ", "), t.Quoted, strings.Join(keys, ", "), strings.Join(arrays, ", ")), nil
}

func selectByKey(t *Table, columns, keyColumns []string) string {
	cols := make([]string, len(columns))
	for i, c := range columns {
		cols[i] = pgx.Identifier{c}.Sanitize()
	}
	where := make([]string, len(keyColumns))
	for i, c := range keyColumns {
		where[i] = fmt.Sprintf("%s = $%d", pgx.Identifier{c}.Sanitize(), i+1)
	}
	return fmt.Sprintf("SELECT %s FROM %s t WHERE %s", strings.Join(cols, ", "), t.Quoted, strings.Join(where, " AND "))
}
