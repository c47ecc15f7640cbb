package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/pgtext"
)

// Write-behind: PutBehind writes the value to Redis, appends the row to the
// cache's Redis Stream and marks the key pending in one Lua script;
// Drain (run by the daemon, drain.go) applies the stream to PostgreSQL.

// StreamKey names the write-behind stream of cache (one Cluster slot).
func StreamKey(cache string) string { return binding.StreamKey(cache) }

// DeadLetterKey names the dead-letter stream of cache.
func DeadLetterKey(cache string) string { return binding.DeadLetterKey(cache) }

// MaxAttempts is how often a refused row is tried before it is dead-lettered.
const MaxAttempts = 3

// ErrNotBehind reports PutBehind on a cache without writes: behind.
var ErrNotBehind = errors.New("the cache does not take write-behind (writes: behind)")

// PutBehind writes row to Redis at once and queues it for PostgreSQL; it
// returns the row's key once Redis acknowledged both. The row must hold the
// key's columns and every column the cached value shows; it takes the
// values Put takes (input.go). Until the drainer applies it, the key holds
// the values as given (a timestamp, say, as written); once applied, the
// row as PostgreSQL stored it. Redis must keep its data through a crash
// (appendonly yes) for the queue to be durable.
func (c *Engine) PutBehind(ctx context.Context, name string, row map[string]any) (string, error) {
	ca, ok := c.caches[name]
	if !ok {
		return "", fmt.Errorf("cache %q: %w", name, ErrUnknownCache)
	}
	if ca.cfg.Writes != config.WritesBehind {
		return "", fmt.Errorf("cache %q: %w", name, ErrNotBehind)
	}
	if err := ca.checkRow(row); err != nil {
		return "", fmt.Errorf("cache %q: %w", name, err)
	}
	for _, col := range ca.cols {
		if _, ok := row[col]; !ok {
			return "", fmt.Errorf("cache %q: %w: write-behind needs column %q (the cached value shows it)", name, ErrBadRow, col)
		}
	}
	// The queued row: each column's input text, as a JSON string (json and
	// jsonb embedded), which json_populate_recordset converts as its
	// column's input function would.
	cols := make([]string, 0, len(row))
	for col := range row {
		cols = append(cols, col)
	}
	slices.Sort(cols)
	inputs := make(map[string][]byte, len(row))
	rowJSON := []byte{'{'}
	for i, name := range cols {
		col, _ := ca.table.Column(name) // checkRow checked it
		t, err := inputText(ca.cfg.Format, col, row[name])
		if err != nil {
			return "", fmt.Errorf("cache %q: %w: column %q: %w", ca.cfg.Name, ErrBadRow, name, err)
		}
		inputs[name] = t
		if i > 0 {
			rowJSON = append(rowJSON, ',')
		}
		rowJSON = append(pgtext.AppendJSONString(rowJSON, name), ':')
		switch {
		case t == nil:
			rowJSON = append(rowJSON, "null"...)
		case isJSON(col.TypeOID):
			if !json.Valid(t) {
				return "", fmt.Errorf("cache %q: %w: column %q is not JSON", ca.cfg.Name, ErrBadRow, name)
			}
			rowJSON = append(rowJSON, t...)
		default:
			rowJSON = pgtext.AppendJSONString(rowJSON, string(t))
		}
	}
	rowJSON = append(rowJSON, '}')
	text := make([][]byte, len(ca.cols))
	for i, col := range ca.cols {
		text[i] = inputs[col]
	}
	key, err := c.KeyOf(name, row) // the key columns as PostgreSQL prints them ("01" is 1)
	if err != nil {
		return "", err
	}
	keyValues, _ := ca.cfg.Template.Parse(key)
	for i, v := range keyValues { // the key columns, first in ca.cols
		text[i] = []byte(v)
	}
	v, err := ca.b.EncodeGiven(text)
	if err != nil {
		return "", fmt.Errorf("cache %q: %w: %w", name, ErrBadRow, err)
	}
	cmd := ca.b.QueueCmd(c.redis.B(), key, &v, string(rowJSON), strings.Join(cols, "\x00"))
	if err := c.redis.Do(ctx, cmd).Error(); err != nil {
		return "", fmt.Errorf("cache %q: redis %w: %w", name, ErrUnavailable, err)
	}
	return key, nil
}

// Queue is a write-behind cache's queue: entries waiting for the drainer,
// and dead letters.
type Queue struct{ Pending, DeadLetters int64 }

// Queues reads the queue of every write-behind cache of cfg in one round
// trip; a cache whose queue cannot be read is left out.
func Queues(ctx context.Context, rc rueidis.Client, cfg *config.Config) map[string]Queue {
	var cmds rueidis.Commands
	var behind []string
	for _, name := range cfg.CacheNames() {
		if cfg.Caches[name].Writes == config.WritesBehind {
			behind = append(behind, name)
			cmds = append(cmds, rc.B().Xlen().Key(StreamKey(name)).Build(), rc.B().Xlen().Key(DeadLetterKey(name)).Build())
		}
	}
	out := map[string]Queue{}
	if len(cmds) == 0 {
		return out
	}
	res := rc.DoMulti(ctx, cmds...)
	for i, name := range behind {
		pending, err1 := res[2*i].AsInt64()
		dead, err2 := res[2*i+1].AsInt64()
		if err1 == nil && err2 == nil {
			out[name] = Queue{pending, dead}
		}
	}
	return out
}
