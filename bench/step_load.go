package main

import (
	"context"
	_ "embed"
	"fmt"
	"time"
)

// loadTable fills the table the daemon caches: bench(id, val, note) with
// sz.Rows rows and the sentinel row 0, which the steps write marks into and
// poll the key of.
type loadTable struct {
	about
	Rows int           // rows, without the sentinel
	Took time.Duration // to insert them, vacuum and checkpoint
}

//go:embed step_load.md
var loadText string

func (s loadTable) Text() string { return loadText }

func (s loadTable) Run(ctx context.Context, e *env) (step, error) {
	start := time.Now()
	s.Rows = e.sz.Rows
	_, err := e.db.Exec(ctx, fmt.Sprintf(`CREATE TABLE bench (id int PRIMARY KEY, val bigint NOT NULL, note text NOT NULL);
		INSERT INTO bench SELECT g, 0, 'note ' || md5(g::text) FROM generate_series(0, %d) g`, s.Rows))
	if err != nil {
		return nil, err
	}
	if err := e.settle(ctx); err != nil {
		return nil, err
	}
	s.Took = time.Since(start)
	fmt.Printf("   loaded %d rows (+1 sentinel) in %s\n", s.Rows, s.Took.Round(time.Millisecond))
	return s, nil
}
