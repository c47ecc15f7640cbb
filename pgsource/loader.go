package pgsource

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Loader reads rows by key from a source, in the same text form as the
// stream and snapshots: the one place a cache's rows are loaded on demand
// (read-through fills, refreshes).
type Loader struct {
	pool *pgxpool.Pool
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
// no such row.
func (l *Loader) LoadRow(ctx context.Context, t *Table, columns, keyColumns, values []string) ([][]byte, error) {
	sql := selectByKey(t, columns, keyColumns)
	params := make([][]byte, len(values))
	for i, v := range values {
		params[i] = []byte(v)
	}
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
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", t.Name, err)
	}
	return row, nil
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
	return fmt.Sprintf("SELECT %s FROM %s WHERE %s", strings.Join(cols, ", "), t.Quoted, strings.Join(where, " AND "))
}
