package main

// End-to-end tests of the built cachesync binary, run as a user runs it
// (world.Binary, Daemon, CLI), each test on a world of its own: a database
// of the package's PostgreSQL, a Redis, and configs named after the world,
// so slot names never collide.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

func TestMain(m *testing.M) { world.Main(m) }

// itemsCaches is the items cache of the streaming tests.
const itemsCaches = `  items:
    table: public.items
    key: "item:{id}"
    value: {format: json, columns: {id: id, val: val, note: note}}
    sync: changefeed
`

// itemsSchema creates the items table with rows 1..n; every tenth note is NULL.
func itemsSchema(n int) string {
	return fmt.Sprintf(`CREATE TABLE items (id int PRIMARY KEY, val bigint NOT NULL, note text);
		INSERT INTO items SELECT g, g * 10, CASE WHEN g %% 10 = 0 THEN NULL ELSE 'note ' || g END
		FROM generate_series(1, %d) g`, n)
}

// itemsWant is what Redis must hold of the items table, the JSON built by
// PostgreSQL (to_json) rather than by cachesync's encoder.
const itemsWant = `SELECT 'item:' || id, format('{"id":%s,"val":%s,"note":%s}', id, val, coalesce(to_json(note)::text, 'null')) FROM items`

// waitItems waits until the item:* keys of Redis are the items table.
func waitItems(w *world.World) {
	w.T.Helper()
	w.WaitEqual("item:*", func() map[string]string { return w.Rows(itemsWant) })
}

// requireItems checks once that the item:* keys of Redis are the items table.
func requireItems(w *world.World) {
	w.T.Helper()
	if d := world.Diff(w.Rows(itemsWant), w.Snapshot("item:*")); d != "" {
		w.T.Fatalf("Redis differs from the database:\n%s", d)
	}
}

// serve starts `cachesync run` on yaml (a config without http:) with an
// HTTP API on a free port (the config names it, for cachesync status),
// with more settings (keys: ..., indented by 2), and returns it, the API's
// base URL and the config's path once it is ready.
func serve(w *world.World, yaml, more string) (*world.Proc, string, string) {
	w.T.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		w.T.Fatal(err)
	}
	cfg := w.WriteYAML(yaml + fmt.Sprintf("http:\n  addr: 127.0.0.1:%d\n", port) + more)
	d := w.Daemon(cfg)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	d.WaitFor("GET /readyz = 200", func() bool { code, _ := httpDo(w.T, "GET", base+"/readyz", ""); return code == 200 })
	return d, base, cfg
}

// lastCommitLSN runs fn in a transaction and returns pg_current_wal_insert_lsn()
// read inside it just before COMMIT: a position the transaction ends after.
func lastCommitLSN(ctx context.Context, conn *pgx.Conn, fn func(tx pgx.Tx) error) (string, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return "", err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := fn(tx); err != nil {
		return "", err
	}
	var lsn string
	if err := tx.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&lsn); err != nil {
		return "", err
	}
	return lsn, tx.Commit(ctx)
}

// requireConfirmed waits until the world's slot is idle and checks that its
// confirmed_flush_lsn is at or after lsn.
func requireConfirmed(w *world.World, lsn string) {
	w.T.Helper()
	slot := "cachesync_" + w.Name
	var (
		confirmed       string
		covered, active bool
	)
	world.Within(world.Patience, func() bool {
		err := w.DB.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text, confirmed_flush_lsn >= $2::pg_lsn, active
			FROM pg_replication_slots WHERE slot_name = $1`, slot, lsn).Scan(&confirmed, &covered, &active)
		if err != nil {
			w.T.Fatalf("slot %s: %v", slot, err)
		}
		return !active
	})
	if !covered {
		w.T.Fatalf("slot %s: confirmed_flush_lsn %s < %s, an LSN inside the last committed transaction (active=%v)", slot, confirmed, lsn, active)
	}
	w.T.Logf("slot %s: confirmed_flush_lsn %s >= last commit's %s", slot, confirmed, lsn)
}

// ---------------------------------------------------------------------------
// Bad config and command line.

// badYAML is examples/grocery.yaml's prices cache, with @FIELD@ placeholders.
const badYAML = `name: @NAME@
redis: {url: "@REDIS@"}
sources:
  catalog: {url: "@DB@"}
caches:
  prices:
    source: @SOURCE@
    table: @TABLE@
    key: "@KEY@"
    value: {format: @FORMAT@, columns: {@COLUMNS@}}
    ttl: 10m
    ttl_jitter: 10%
    sync: changefeed
@EXTRA@`

// envWithout returns the environment without the named variables.
func envWithout(names ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		keep := true
		for _, n := range names {
			keep = keep && name != n
		}
		if keep {
			env = append(env, kv)
		}
	}
	return env
}

func TestBadConfig(t *testing.T) {
	t.Parallel()
	schema, err := os.ReadFile("../../examples/grocery.sql")
	if err != nil {
		t.Fatal(err)
	}
	w := world.New(t, string(schema))
	w.Exec(`CREATE TABLE nopk (item text NOT NULL, price numeric NOT NULL)`)
	closed, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	const unset = "CACHESYNC_E2E_UNSET_URL"
	env := envWithout(unset)

	base := map[string]string{
		"@NAME@": w.Name, "@REDIS@": w.Redis.URL(), "@DB@": w.DBURL, "@SOURCE@": "catalog",
		"@TABLE@": "public.inventory", "@KEY@": "price:{item}", "@FORMAT@": "json",
		"@COLUMNS@": "item: item, price: price", "@EXTRA@": "",
	}
	config := func(set map[string]string) string {
		var pairs []string
		for k, v := range base {
			if s, ok := set[k]; ok {
				v = s
			}
			pairs = append(pairs, k, v)
		}
		return strings.NewReplacer(pairs...).Replace(badYAML)
	}
	// The base config is good: the daemon starts on it (checked below).
	tests := []struct {
		name string
		set  map[string]string
		want string // the one stderr line must contain this
	}{
		{"unknown table", map[string]string{"@TABLE@": "public.nope"}, "caches.prices.table"},
		{"unknown value column", map[string]string{"@COLUMNS@": "item: item, price: cost"}, "caches.prices.value.columns"},
		{"unknown key column", map[string]string{"@KEY@": "price:{sku}"}, "caches.prices.key"},
		{"non-invertible key", map[string]string{"@KEY@": "{a}{b}"}, "caches.prices.key"},
		{"key template without placeholder", map[string]string{"@KEY@": "price"}, "caches.prices.key"},
		{"key not in replica identity", map[string]string{"@KEY@": "cat:{category}"}, "caches.prices.key"},
		{"table without primary key", map[string]string{"@TABLE@": "public.nopk", "@KEY@": "np:{item}", "@COLUMNS@": "item: item"}, "caches.prices.key"},
		{"bad redis url", map[string]string{"@REDIS@": "http://x"}, "redis.url"},
		{"bad postgres url", map[string]string{"@DB@": "postgres://127.0.0.1:notaport/grocery"}, "sources.catalog.url"},
		{"unknown yaml field", map[string]string{"@EXTRA@": "    colour: blue\n"}, "colour"},
		{"missing env var", map[string]string{"@DB@": "${" + unset + "}"}, unset},
		{"unknown source", map[string]string{"@SOURCE@": "warehouse"}, "caches.prices.source"},
		{"unknown format", map[string]string{"@FORMAT@": "xml"}, "caches.prices.value.format"},
		{"bad name", map[string]string{"@NAME@": "Bad-Name"}, "name"},
		{"redis unreachable", map[string]string{"@REDIS@": fmt.Sprintf("redis://127.0.0.1:%d/0", closed)}, "redis"},
		{"postgres unreachable", map[string]string{"@DB@": fmt.Sprintf("postgres://postgres@127.0.0.1:%d/grocery", closed)}, "catalog"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := world.CLI(t, env, "run", "--config", w.WriteYAML(config(tc.set)))
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			if code == 0 {
				t.Errorf("exit code 0, want non-zero")
			}
			if len(lines) != 1 || lines[0] == "" {
				t.Fatalf("stderr has %d lines, want exactly one:\n%s", len(lines), stderr)
			}
			if !strings.Contains(lines[0], tc.want) {
				t.Errorf("stderr %q does not name %q", lines[0], tc.want)
			}
			t.Logf("exit %d: %s", code, lines[0])
		})
	}
	t.Run("missing file", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "nope.yaml")
		code, _, stderr := world.CLI(t, env, "run", "--config", missing)
		if code != 1 || strings.Count(strings.TrimRight(stderr, "\n"), "\n") != 0 || !strings.Contains(stderr, missing) {
			t.Errorf("exit %d, stderr %q; want 1 and one line naming %s", code, stderr, missing)
		}
	})

	good := w.WriteYAML(config(nil))
	usage := []struct {
		name     string
		args     []string
		code     int
		contains string // in stdout+stderr
	}{
		{"no arguments", nil, 2, "Usage:"},
		{"help", []string{"help"}, 0, "Usage:"},
		{"run -h", []string{"run", "-h"}, 0, "Usage: cachesync run"},
		{"resync -h", []string{"resync", "-h"}, 0, "Usage: cachesync resync"},
		{"version", []string{"version"}, 0, "cachesync "},
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"unknown flag", []string{"run", "--frobnicate"}, 2, "frobnicate"},
		{"run with an argument", []string{"run", "--config", good, "extra"}, 2, `"extra"`},
		{"bad log level", []string{"run", "--config", good, "--log-level", "loud"}, 2, "loud"},
		{"resync without cache", []string{"resync", "--config", good}, 2, "CACHE"},
		{"resync of an unknown cache", []string{"resync", "--config", good, "nosuchcache"}, 1, `"nosuchcache"`},
	}
	for _, tc := range usage {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := world.CLI(t, env, tc.args...)
			if code != tc.code {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tc.code, stderr)
			}
			if !strings.Contains(stdout+stderr, tc.contains) {
				t.Errorf("output does not contain %q:\nstdout: %s\nstderr: %s", tc.contains, stdout, stderr)
			}
			if tc.name == "version" && !regexp.MustCompile(`^cachesync \S+ go1\.\d+\S* \w+/\w+\n$`).MatchString(stdout) {
				t.Errorf("version prints %q", stdout)
			}
		})
	}

	// The base config itself is good: the daemon runs on it and stops cleanly.
	t.Run("good config runs", func(t *testing.T) {
		d := world.StartBinary(t, "run", "--config", good)
		d.WaitLog("streaming changes")
		d.Stop()
	})
}

// ---------------------------------------------------------------------------
// Resync.

var progressLine = regexp.MustCompile(`^resync items: (\d+)/(\d+) rows \(\d+%\), \d+ rows/s, eta \S+$`)

// progressLines returns the progress lines of a resync's stderr.
func progressLines(stderr string) [][]string {
	var out [][]string
	sc := bufio.NewScanner(strings.NewReader(stderr))
	for sc.Scan() {
		if m := progressLine.FindStringSubmatch(sc.Text()); m != nil {
			out = append(out, m)
		}
	}
	return out
}

func TestResync(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(1000))
	cfg := w.WriteConfig(itemsCaches)

	d := w.Daemon(cfg)
	d.WaitLog("streaming changes")
	waitItems(w)

	t.Run("refused while a daemon runs", func(t *testing.T) {
		code, _, stderr := world.CLI(t, nil, "resync", "--config", cfg, "items")
		if code != 1 || !strings.Contains(stderr, "in use") {
			t.Errorf("resync beside a running daemon: exit %d, stderr:\n%s\nwant exit 1 and a message that the slot is in use", code, stderr)
		}
	})
	d.Stop()

	// Damage the cache while no daemon runs: a wrong value, a key of the
	// template that has no row, and a key of no cache that must survive.
	for _, kv := range [][2]string{{"item:5", `{"id":5,"val":-1,"note":"wrong"}`}, {"item:424242", `{"id":424242}`}, {"other:1", "keep"}} {
		w.Do(w.RC.B().Set().Key(kv[0]).Value(kv[1]).Build())
	}
	w.Exec(`UPDATE items SET val = 7, note = 'while stopped' WHERE id = 6`)

	r := world.StartBinary(t, "resync", "--config", cfg, "items")
	r.WaitLog("streaming changes")
	waitItems(w)
	if v, ok := w.Get("other:1"); v != "keep" {
		t.Errorf("resync touched other:1, a key of no cache: %q, %v", v, ok)
	}
	lines := progressLines(r.Stderr.String())
	if len(lines) == 0 {
		t.Fatalf("resync printed no plain progress line (resync items: N/M rows ...):\n%s", r.Stderr.String())
	}
	if last := lines[len(lines)-1]; last[1] != "1000" || last[2] != "1000" {
		t.Errorf("last progress line %q, want 1000/1000 rows", last[0])
	}
	if strings.Contains(r.Stderr.String(), "\r") {
		t.Errorf("resync drew a terminal progress bar on a pipe")
	}

	// It keeps streaming.
	w.Exec(`UPDATE items SET val = val + 1000, note = 'after resync' WHERE id IN (1, 2, 3)`)
	w.Exec(`DELETE FROM items WHERE id = 4`)
	waitItems(w)
	r.Stop()
}

// TestResyncProgressReachesTotal resyncs a table whose planner statistics
// are out of date (rows deleted after ANALYZE), as any busy table's are.
// The user must still see the rebuild finish: a last line N/N with N the
// rows actually copied.
func TestResyncProgressReachesTotal(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(1000))
	w.Exec(`ANALYZE items`)
	w.Exec(`DELETE FROM items WHERE id > 900`) // reltuples still says 1000

	r := world.StartBinary(t, "resync", "--config", w.WriteConfig(itemsCaches), "items")
	r.WaitLog("streaming changes")
	waitItems(w)
	r.Stop()
	lines := progressLines(r.Stderr.String())
	var shown []string
	for _, l := range lines {
		shown = append(shown, l[0])
	}
	if len(lines) == 0 || lines[len(lines)-1][1] != "900" || lines[len(lines)-1][2] != "900" {
		t.Errorf("progress lines %q: want the last one to say 900/900 rows (100%%), the rows copied", shown)
	}
}
