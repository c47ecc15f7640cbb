package cachesync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
)

// Write-behind: PutBehind writes the value to Redis and appends the row to
// the cache's Redis Stream in one Lua script; Drain (run by the daemon)
// reads the stream with a consumer group, applies batches to PostgreSQL with
// multi-row upserts, and acknowledges only what committed. A row PostgreSQL
// refuses MaxAttempts times moves to the dead-letter stream and its key is
// invalidated, so Redis never keeps a value the database refused.

// StreamKey names the write-behind stream of cache (one Cluster slot).
func StreamKey(cache string) string { return "cachesync:wb:{" + cache + "}" }

// DeadLetterKey names the dead-letter stream of cache.
func DeadLetterKey(cache string) string { return "cachesync:wb:dead:{" + cache + "}" }

const drainGroup = "cachesync"

// MaxAttempts is how often a refused row is tried before it is dead-lettered.
const MaxAttempts = 3

// ErrNotBehind reports PutBehind on a cache without writes: behind.
var ErrNotBehind = errors.New("the cache does not take write-behind (writes: behind)")

// PutBehind writes row to Redis at once and queues it for PostgreSQL; it
// returns the row's key once Redis acknowledged both. The row must hold the
// key's columns and every column the cached value shows, in PostgreSQL's text
// form for anything but numbers, strings, booleans and null. Redis must keep
// its data through a crash (appendonly yes) for the queue to be durable.
func (c *Client) PutBehind(ctx context.Context, name string, row map[string]any) (string, error) {
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
	text := make([][]byte, len(ca.cols))
	for i, col := range ca.cols {
		v, ok := row[col]
		if !ok {
			return "", fmt.Errorf("cache %q: %w: write-behind needs column %q (the cached value shows it)", name, ErrBadRow, col)
		}
		if text[i], ok = pgText(v); !ok {
			return "", fmt.Errorf("cache %q: %w: column %q: a %T cannot be written behind", name, ErrBadRow, col, v)
		}
	}
	keyBytes, err := ca.cfg.Template.Render(nil, text[:len(ca.cfg.Template.Columns())])
	if err != nil {
		return "", fmt.Errorf("cache %q: %w: %w", name, ErrBadRow, err)
	}
	key := string(keyBytes)
	v, err := ca.b.Encode(text)
	if err != nil {
		return "", fmt.Errorf("cache %q: %w: %w", name, ErrBadRow, err)
	}
	rowJSON, err := json.Marshal(row)
	if err != nil {
		return "", fmt.Errorf("cache %q: %w: %w", name, ErrBadRow, err)
	}
	cols := make([]string, 0, len(row))
	for col := range row {
		cols = append(cols, col)
	}
	slices.Sort(cols)
	cmd := ca.b.QueueCmd(c.redis.B(), key, StreamKey(name), &v, string(rowJSON), strings.Join(cols, "\x00"))
	if err := c.redis.Do(ctx, cmd).Error(); err != nil {
		return "", fmt.Errorf("cache %q: redis %w: %w", name, ErrUnavailable, err)
	}
	return key, nil
}

// pgText gives the PostgreSQL text form of a JSON-ish value; nil is NULL.
func pgText(v any) ([]byte, bool) {
	switch v := v.(type) {
	case nil:
		return nil, true
	case string:
		return []byte(v), true
	case json.Number:
		return []byte(v.String()), true
	case bool:
		if v {
			return []byte("t"), true
		}
		return []byte("f"), true
	case int:
		return strconv.AppendInt(nil, int64(v), 10), true
	case int64:
		return strconv.AppendInt(nil, v, 10), true
	case float64:
		return strconv.AppendFloat(nil, v, 'g', -1, 64), true
	}
	return nil, false
}

// Drain applies the write-behind queues of every cache with writes: behind
// until ctx is done. Only one process may drain a config at a time (the
// daemon holding the slot lock does), which keeps each key's writes in order.
func (c *Client) Drain(ctx context.Context) error {
	if !slices.ContainsFunc(c.cfg.CacheNames(), func(n string) bool { return c.cfg.Caches[n].Writes == config.WritesBehind }) {
		return nil
	}
	release, err := c.lockDrain(ctx)
	if err != nil || release == nil {
		return err
	}
	defer release()
	errs := make(chan error, len(c.caches))
	n := 0
	for _, ca := range c.caches {
		if ca.cfg.Writes != config.WritesBehind {
			continue
		}
		n++
		go func() { errs <- c.drain(ctx, ca) }()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// lockDrain waits until this process may drain the config: a session-level
// advisory lock held on one connection of each source for as long as it
// drains. It returns nil, nil when ctx ends first.
func (c *Client) lockDrain(ctx context.Context) (func(), error) {
	var conns []*pgxpool.Conn
	release := func() {
		for _, conn := range conns {
			conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext('cachesync drain ' || $1))`, c.cfg.Name)
			conn.Release()
		}
	}
	for _, l := range c.loaders {
		conn, err := l.Pool().Acquire(ctx)
		if err != nil {
			release()
			return nil, fmt.Errorf("write-behind lock: %w", err)
		}
		conns = append(conns, conn)
		for {
			var ok bool
			if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('cachesync drain ' || $1))`, c.cfg.Name).Scan(&ok); err != nil {
				release()
				if ctx.Err() != nil {
					return nil, nil
				}
				return nil, fmt.Errorf("write-behind lock: %w", err)
			}
			if ok {
				break
			}
			sleep(ctx, time.Second)
			if ctx.Err() != nil {
				release()
				return nil, nil
			}
		}
	}
	return release, nil
}

// entry is one queued write: the row as the JSON object PutBehind queued,
// and its column names, sorted.
type entry struct {
	id, key, row string
	cols         []string
}

func (c *Client) drain(ctx context.Context, ca *cache) error {
	log := c.opts.Logger.With("cache", ca.cfg.Name, "component", "writebehind")
	stream := StreamKey(ca.cfg.Name)
	rb := c.redis.B()
	backoff := 100 * time.Millisecond
	claimed := false
	// done holds the entries PostgreSQL committed that are not acknowledged
	// yet, in stream order. They are acknowledged with the next read, so the
	// acknowledgement costs no round trip of its own. Acknowledgements go in
	// stream order, so the pending entries are always the newest ones, and
	// replaying them after a crash rewrites every key in order.
	var done []entry
	// next acknowledges done and reads the following batch while the current
	// one is written to PostgreSQL; its entries are applied after the
	// current ones.
	var next chan batchRead
	defer func() {
		if next != nil {
			<-next
		}
		if err := c.ack(context.WithoutCancel(ctx), stream, done); err != nil {
			log.Warn("write-behind: acknowledge", "err", err) // replayed at the next start
		}
	}()
	for ctx.Err() == nil {
		var entries []entry
		var err error
		switch {
		case !claimed:
			// Entries a crashed drainer read but did not acknowledge come
			// first, however fresh: they are older than anything unread.
			err = c.redis.Do(ctx, rb.XgroupCreate().Key(stream).Group(drainGroup).Id("0").Mkstream().Build()).Error()
			if err != nil && strings.Contains(err.Error(), "BUSYGROUP") {
				err = nil
			}
			if err == nil {
				err = c.ack(ctx, stream, done)
			}
			if err == nil {
				done = nil
				entries, err = c.claimAll(ctx, stream)
				claimed = err == nil
			}
		case next != nil:
			r := <-next
			next, entries, err = nil, r.entries, r.err
			if err == nil {
				done = done[r.acked:]
			}
		default:
			if entries, err = c.ackAndRead(ctx, stream, done, true); err == nil {
				done = nil
			}
		}
		if err == nil && len(entries) > 0 {
			if claimed {
				next = make(chan batchRead, 1)
				ack := done[:len(done):len(done)]
				go func(out chan<- batchRead) {
					e, err := c.ackAndRead(ctx, stream, ack, false)
					out <- batchRead{e, len(ack), err}
				}(next)
			}
			if err = c.applyBehind(ctx, ca, entries, log); err == nil {
				done = append(done, entries...)
			}
		}
		if err != nil {
			if next != nil {
				<-next // what it read stays pending and is claimed again, in order
				next = nil
			}
			if ctx.Err() != nil {
				break
			}
			log.Error("write-behind: retrying", "err", err, "retry_in", backoff)
			sleep(ctx, backoff)
			backoff = min(backoff*2, 10*time.Second)
			claimed = false // what was read stays pending: claim it again, first
			continue
		}
		backoff = 100 * time.Millisecond
	}
	return nil
}

// batchRead is the outcome of acknowledging acked entries and reading a batch.
type batchRead struct {
	entries []entry
	acked   int
	err     error
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// claimAll takes over every pending entry of the group, oldest first.
func (c *Client) claimAll(ctx context.Context, stream string) ([]entry, error) {
	var out []entry
	start := "0-0"
	for {
		res, err := c.redis.Do(ctx, c.redis.B().Xautoclaim().Key(stream).Group(drainGroup).Consumer("drainer").
			MinIdleTime("0").Start(start).Count(1000).Build()).ToArray()
		if err != nil {
			return nil, fmt.Errorf("xautoclaim: %w", err)
		}
		next, _ := res[0].ToString()
		msgs, _ := res[1].AsXRange()
		out = append(out, toEntries(msgs)...)
		if next == "0-0" || len(msgs) == 0 {
			return out, nil
		}
		start = next
	}
}

// ackCmds acknowledges entries and trims the stream below the last of them,
// but never past the oldest entry still pending (read by a drainer, not yet
// acknowledged): everything older was acknowledged before (acknowledgements
// go in stream order) or dead-lettered. Trimming whole stream nodes costs
// Redis far less than deleting entries one by one.
func (c *Client) ackCmds(stream string, entries []entry) rueidis.Commands {
	if len(entries) == 0 {
		return nil
	}
	args := make([]string, 0, len(entries)+2)
	args = append(args, drainGroup, afterID(entries[len(entries)-1].id))
	for _, e := range entries {
		args = append(args, e.id)
	}
	return rueidis.Commands{c.redis.B().Eval().Script(ackTrim).Numkeys(1).Key(stream).Arg(args...).Build()}
}

// ackTrim acknowledges ids and trims the stream (KEYS[1]) below a bound,
// or below the oldest pending entry when that comes first. ARGV: group,
// bound, id...
const ackTrim = `redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 3))
local bound = ARGV[2]
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
if p[1] > 0 then
  local a, b = string.match(p[2], '(%d+)-(%d+)')
  local c, d = string.match(bound, '(%d+)-(%d+)')
  if #a < #c or (#a == #c and (a < c or (a == c and (#b < #d or (#b == #d and b < d))))) then bound = p[2] end
end
return redis.call('XTRIM', KEYS[1], 'MINID', bound)`

// afterID gives the smallest stream ID greater than id ("ms-seq").
func afterID(id string) string {
	ms, seq, _ := strings.Cut(id, "-")
	m, err1 := strconv.ParseUint(ms, 10, 64)
	n, err2 := strconv.ParseUint(seq, 10, 64)
	switch {
	case err1 != nil || err2 != nil:
		return id // not an ID Redis gave: trim nothing more than before it
	case n < math.MaxUint64:
		return ms + "-" + strconv.FormatUint(n+1, 10)
	case m < math.MaxUint64:
		return strconv.FormatUint(m+1, 10) + "-0"
	}
	return id
}

// ack acknowledges entries whose rows PostgreSQL committed.
func (c *Client) ack(ctx context.Context, stream string, entries []entry) error {
	for _, r := range c.redis.DoMulti(ctx, c.ackCmds(stream, entries)...) {
		if err := r.Error(); err != nil {
			return fmt.Errorf("xack: %w", err)
		}
	}
	return nil
}

// ackAndRead acknowledges entries whose rows PostgreSQL committed, then reads
// entries no one has read, waiting up to a second for some if block; one
// round trip.
func (c *Client) ackAndRead(ctx context.Context, stream string, entries []entry, block bool) ([]entry, error) {
	read := c.redis.B().Xreadgroup().Group(drainGroup, "drainer").Count(1000)
	var cmd rueidis.Completed
	if block {
		cmd = read.Block(1000).Streams().Key(stream).Id(">").Build()
	} else {
		cmd = read.Streams().Key(stream).Id(">").Build()
	}
	cmds := append(c.ackCmds(stream, entries), cmd)
	res := c.redis.DoMulti(ctx, cmds...)
	for _, r := range res[:len(res)-1] {
		if err := r.Error(); err != nil {
			return nil, fmt.Errorf("xack: %w", err)
		}
	}
	got, err := res[len(res)-1].AsXRead()
	if rueidis.IsRedisNil(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("xreadgroup: %w", err)
	}
	return toEntries(got[stream]), nil
}

func toEntries(msgs []rueidis.XRangeEntry) []entry {
	out := make([]entry, 0, len(msgs))
	for _, m := range msgs {
		e := entry{id: m.ID, key: m.FieldValues["key"], row: m.FieldValues["row"]}
		if cols := m.FieldValues["cols"]; cols != "" {
			e.cols = strings.Split(cols, "\x00") // sorted by PutBehind
		}
		out = append(out, e) // a damaged entry (no cols) is refused below and dead-lettered
	}
	return out
}

// applyBehind writes entries to PostgreSQL, the last write of each key
// winning (entries are in stream order); the caller acknowledges them. A refused
// row is tried alone up to MaxAttempts times, then dead-lettered.
func (c *Client) applyBehind(ctx context.Context, ca *cache, entries []entry, log *slog.Logger) error {
	last := map[string]int{}
	for i, e := range entries {
		last[e.key] = i
	}
	var rows []entry
	for i, e := range entries {
		if last[e.key] == i {
			rows = append(rows, e)
		}
	}
	err := c.upsertRows(ctx, ca, rows)
	var pgErr *pgconn.PgError
	if err != nil && !(errors.As(err, &pgErr) && refused(pgErr)) && !errors.Is(err, ErrBadRow) {
		return err // PostgreSQL unreachable: retry the whole batch later
	}
	if err != nil {
		// Someone's row is refused: find it by trying each alone.
		for _, r := range rows {
			var rerr error
			for attempt := 1; attempt <= MaxAttempts; attempt++ {
				if rerr = c.upsertRows(ctx, ca, []entry{r}); rerr == nil {
					break
				}
				if !(errors.As(rerr, &pgErr) && refused(pgErr)) && !errors.Is(rerr, ErrBadRow) {
					return rerr
				}
				sleep(ctx, time.Duration(attempt)*50*time.Millisecond)
			}
			if rerr != nil {
				log.Error("write-behind: row refused; moved to the dead-letter stream", "key", r.key, "err", rerr)
				if err := c.deadLetter(ctx, ca, r, rerr); err != nil {
					return err
				}
			}
		}
	}
	ca.stats.Drained.Add(int64(len(entries)))
	return nil
}

// refused tells a row PostgreSQL will never take (bad data, a constraint,
// an unknown column) from a failure worth retrying.
func refused(e *pgconn.PgError) bool {
	return strings.HasPrefix(e.Code, "22") || strings.HasPrefix(e.Code, "23") || strings.HasPrefix(e.Code, "42")
}

// deadLetter invalidates r's key, so Redis does not keep a value PostgreSQL
// refused, then moves r to the dead-letter stream and acknowledges it in one
// script, so a drainer killed midway dead-letters it once when it retries.
func (c *Client) deadLetter(ctx context.Context, ca *cache, r entry, cause error) error {
	if err := c.invalidate(ctx, ca, r.key); err != nil {
		return fmt.Errorf("dead-letter: %w", err)
	}
	err := c.redis.Do(ctx, c.redis.B().Eval().Script(moveDead).Numkeys(2).
		Key(DeadLetterKey(ca.cfg.Name), StreamKey(ca.cfg.Name)).
		Arg(drainGroup, r.id, r.key, r.row, cause.Error()).Build()).Error()
	if err != nil {
		return fmt.Errorf("dead-letter: %w", err)
	}
	ca.stats.DeadLettered.Add(1)
	return nil
}

// moveDead adds an entry to the dead-letter stream (KEYS[1]) and removes it
// from the queue (KEYS[2]). ARGV: group, id, key, row, error.
const moveDead = `redis.call('XADD', KEYS[1], '*', 'key', ARGV[3], 'row', ARGV[4], 'id', ARGV[2], 'error', ARGV[5])
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return 1`

// upsertRows writes rows in one transaction, one statement per set of
// columns: PostgreSQL reads the queued JSON objects itself
// (json_populate_recordset), converting each value to its column's type.
func (c *Client) upsertRows(ctx context.Context, ca *cache, rows []entry) error {
	groups := map[string][]string{}
	cols := map[string][]string{}
	var order []string
	for _, r := range rows {
		if len(r.cols) == 0 {
			return fmt.Errorf("%w: entry %s has no row", ErrBadRow, r.id)
		}
		sig := strings.Join(r.cols, "\x00")
		if _, ok := groups[sig]; !ok {
			order = append(order, sig)
			cols[sig] = r.cols
		}
		groups[sig] = append(groups[sig], r.row)
	}
	if len(order) == 1 { // one statement is a transaction of its own: one round trip
		sql, err := ca.upsertJSON(cols[order[0]])
		if err != nil {
			return err
		}
		_, err = ca.loader.Pool().Exec(ctx, sql, "["+strings.Join(groups[order[0]], ",")+"]")
		return err
	}
	tx, err := ca.loader.Pool().Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	for _, sig := range order {
		sql, err := ca.upsertJSON(cols[sig])
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, sql, "["+strings.Join(groups[sig], ",")+"]"); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
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
