package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
)

// consistency compares a random sample of rows with their keys, so the
// figures of the steps before are known to come from a daemon that did its
// job.
type consistency struct {
	about
	Sampled, Bad int
}

//go:embed step_check.md
var consistencyText string

func (s consistency) Text() string { return consistencyText }

func (s consistency) Run(ctx context.Context, e *env) (step, error) {
	// Not the sentinel: caughtUp below writes a new mark into it.
	rows, err := e.db.Query(ctx, "SELECT id, val, note FROM bench TABLESAMPLE BERNOULLI(1) WHERE id <> 0 LIMIT 2000")
	if err != nil {
		return nil, err
	}
	type row struct {
		ID   int64  `json:"id"`
		Val  int64  `json:"val"`
		Note string `json:"note"`
	}
	var want []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.ID, &r.Val, &r.Note); err != nil {
			return nil, err
		}
		want = append(want, r)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// The daemon was stopped after catching up with everything but the
	// stopper; run it once more so the last writes are in.
	if _, err := e.startDaemon(e.node, "check"); err != nil {
		return nil, err
	}
	if err := e.caughtUp(ctx); err != nil {
		return nil, err
	}
	if _, err := e.stopStreaming(); err != nil {
		return nil, err
	}
	for _, w := range want {
		v, err := e.redis.Do(ctx, e.redis.B().Get().Key(fmt.Sprintf("b:%d", w.ID)).Build()).ToString()
		var got row
		if err == nil {
			err = json.Unmarshal([]byte(v), &got)
		}
		if err != nil || got != w {
			s.Bad++
			if s.Bad <= 3 {
				fmt.Printf("   mismatch b:%d: redis %q (%v), database %+v\n", w.ID, v, err, w)
			}
		}
	}
	s.Sampled = len(want)
	if s.Bad > 0 {
		return nil, fmt.Errorf("%d sampled rows differ from Redis", s.Bad)
	}
	return s, nil
}

// Matched is the sampled rows whose keys hold them.
func (s consistency) Matched() int { return s.Sampled - s.Bad }
