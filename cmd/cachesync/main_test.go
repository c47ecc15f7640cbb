package main

// End-to-end tests of the built cachesync binary against private Redis and
// PostgreSQL servers (internal/testenv). TestMain builds the binary once; each
// test starts its own servers, writes its own config (with its own name, so
// slot names never collide) and runs the binary as a subprocess.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
)

// binary is the cachesync binary built by TestMain.
var binary string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "cachesync-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "cachesync")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: go build:", err)
		return 1
	}
	return m.Run()
}

// ---------------------------------------------------------------------------
// The test bed: private servers, a database, configs and daemon subprocesses.

// bed is one test's Redis, PostgreSQL database and the daemons it started.
type bed struct {
	t     *testing.T
	redis *testenv.Redis
	pg    *testenv.Postgres
	dbURL string
	db    *pgx.Conn // used from the test goroutine only
	rc    rueidis.Client
	dir   string

	mu      sync.Mutex
	daemons []*proc
}

// newBed starts a private Redis and PostgreSQL with database dbName. At
// cleanup every daemon still running is killed first, and when the test
// failed the daemons' logs are printed.
func newBed(t *testing.T, dbName string) *bed {
	t.Helper()
	b := &bed{t: t, dir: t.TempDir()}
	b.redis = testenv.StartRedis(t)
	b.pg = testenv.StartPostgres(t)
	ctx := t.Context()
	if err := b.pg.CreateDatabase(ctx, dbName); err != nil {
		t.Fatal(err)
	}
	b.dbURL = b.pg.URL(dbName)
	db, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	b.db = db
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{b.redis.Addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Close)
	b.rc = rc
	t.Cleanup(b.cleanupDaemons) // runs first: daemons stop before the servers
	return b
}

func (b *bed) cleanupDaemons() {
	b.mu.Lock()
	ds := b.daemons
	b.mu.Unlock()
	for _, d := range ds {
		if !d.exited() {
			_ = d.cmd.Process.Kill()
			select {
			case <-d.done:
			case <-time.After(10 * time.Second):
				b.t.Errorf("%s: pid %d did not exit after SIGKILL", d.name, d.cmd.Process.Pid)
			}
		}
	}
	if !b.t.Failed() {
		return
	}
	for _, d := range ds {
		b.t.Logf("--- %s (%s) stderr (tail) ---\n%s", d.name, d.state(), tail(d.stderr.String(), 40))
	}
}

// exec runs SQL statements on the test's connection.
func (b *bed) exec(sql string, args ...any) {
	b.t.Helper()
	if _, err := b.db.Exec(b.t.Context(), sql, args...); err != nil {
		b.t.Fatalf("%s: %v", sql, err)
	}
}

// writeConfig writes a config file and returns its path.
func (b *bed) writeConfig(file, text string) string {
	b.t.Helper()
	path := filepath.Join(b.dir, file)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		b.t.Fatal(err)
	}
	return path
}

// itemsYAML is the config of the items table used by the streaming tests.
const itemsYAML = `name: %s
redis: {url: %q}
sources:
  main: {url: %q}
caches:
  items:
    table: public.items
    key: "item:{id}"
    value: {format: json, columns: {id: id, val: val, note: note}}
    sync: changefeed
`

// itemsConfig writes the items config named name.
func (b *bed) itemsConfig(name string) string {
	return b.writeConfig(name+".yaml", fmt.Sprintf(itemsYAML, name, b.redis.URL(), b.dbURL))
}

// createItems creates the items table with rows 1..n; every tenth note is NULL.
func (b *bed) createItems(n int) {
	b.t.Helper()
	b.exec(`CREATE TABLE items (id int PRIMARY KEY, val bigint NOT NULL, note text)`)
	b.exec(`INSERT INTO items SELECT g, g * 10, CASE WHEN g % 10 = 0 THEN NULL ELSE 'note ' || g END
		FROM generate_series(1, $1::int) g`, n)
}

// proc is one cachesync subprocess (a daemon or a one-shot command).
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdout *testenv.LogBuffer
	stderr *testenv.LogBuffer
	done   chan struct{} // closed once the process was reaped
}

// start runs the binary with args (and extra environment) in the background.
func (b *bed) start(env []string, args ...string) *proc {
	b.t.Helper()
	b.mu.Lock()
	name := fmt.Sprintf("cachesync#%d %s", len(b.daemons)+1, args[0])
	b.mu.Unlock()
	d := &proc{name: name, stdout: &testenv.LogBuffer{}, stderr: &testenv.LogBuffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(binary, args...)
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.Stdout, d.cmd.Stderr = d.stdout, d.stderr
	// Should the test binary die, the daemon dies with it. Pdeathsig fires
	// when the OS thread that forked the child exits (testenv's server
	// goroutines end theirs), so the fork happens on a thread locked to a
	// goroutine that lives until the child is reaped, as in testenv.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := d.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = d.cmd.Wait()
		close(d.done)
	}()
	if err := <-started; err != nil {
		b.t.Fatal(err)
	}
	b.mu.Lock()
	b.daemons = append(b.daemons, d)
	b.mu.Unlock()
	return d
}

// run starts `cachesync run --config cfg`.
func (b *bed) run(cfg string) *proc { return b.start(nil, "run", "--config", cfg) }

func (d *proc) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// state describes the process: running or how it ended.
func (d *proc) state() string {
	if !d.exited() {
		return "running"
	}
	return d.cmd.ProcessState.String()
}

// kill SIGKILLs the daemon and waits until it is gone; it fails the test if
// the daemon had already exited on its own.
func (d *proc) kill(t *testing.T) {
	t.Helper()
	if d.exited() {
		t.Fatalf("%s exited on its own (%s) before it was killed:\n%s", d.name, d.state(), tail(d.stderr.String(), 30))
	}
	_ = d.cmd.Process.Kill()
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: pid %d still running 10s after SIGKILL", d.name, d.cmd.Process.Pid)
	}
}

// stop sends SIGTERM and returns the exit code, or an error when the daemon
// does not exit within timeout (it is then killed).
func (d *proc) stop(timeout time.Duration) (int, error) {
	if !d.exited() {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-d.done:
		return d.cmd.ProcessState.ExitCode(), nil
	case <-time.After(timeout):
		_ = d.cmd.Process.Kill()
		<-d.done
		return -1, fmt.Errorf("%s did not exit within %v of SIGTERM; killed", d.name, timeout)
	}
}

// stopOK stops the daemon and requires exit code 0 within 10 s.
func (d *proc) stopOK(t *testing.T) {
	t.Helper()
	start := time.Now()
	code, err := d.stop(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Fatalf("%s: exit code %d after SIGTERM, want 0:\n%s", d.name, code, tail(d.stderr.String(), 30))
	}
	t.Logf("%s stopped by SIGTERM in %v", d.name, time.Since(start).Round(time.Millisecond))
}

// waitLog waits until the daemon's stderr contains s.
func (d *proc) waitLog(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(d.stderr.String(), s) {
		if d.exited() {
			t.Fatalf("%s exited (%s) before logging %q:\n%s", d.name, d.state(), s, tail(d.stderr.String(), 30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not log %q within %v:\n%s", d.name, s, timeout, tail(d.stderr.String(), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// ---------------------------------------------------------------------------
// Comparing Redis with the database.

// itemJSON is the value cachesync must store for an items row, built
// independently of cachesync's encoder.
func itemJSON(id int, val int64, note *string) string {
	n := "null"
	if note != nil {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(*note)
		n = strings.TrimSuffix(buf.String(), "\n")
	}
	return fmt.Sprintf(`{"id":%d,"val":%d,"note":%s}`, id, val, n)
}

// wantItems returns the expected Redis contents for the items table.
func (b *bed) wantItems(ctx context.Context) (map[string]string, error) {
	rows, err := b.db.Query(ctx, `SELECT id, val, note FROM items`)
	if err != nil {
		return nil, err
	}
	want := map[string]string{}
	for rows.Next() {
		var (
			id   int
			val  int64
			note *string
		)
		if err := rows.Scan(&id, &val, &note); err != nil {
			rows.Close()
			return nil, err
		}
		want["item:"+strconv.Itoa(id)] = itemJSON(id, val, note)
	}
	return want, rows.Err()
}

// redisStrings returns every key matching pattern with its string value
// ("<not a string>" for other types).
func redisStrings(ctx context.Context, rc rueidis.Client, pattern string) (map[string]string, error) {
	var keys []string
	var cursor uint64
	for {
		e, err := rc.Do(ctx, rc.B().Scan().Cursor(cursor).Match(pattern).Count(1000).Build()).AsScanEntry()
		if err != nil {
			return nil, err
		}
		keys = append(keys, e.Elements...)
		if cursor = e.Cursor; cursor == 0 {
			break
		}
	}
	got := make(map[string]string, len(keys))
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), 500)]
		keys = keys[len(chunk):]
		vals, err := rc.Do(ctx, rc.B().Mget().Key(chunk...).Build()).ToArray()
		if err != nil {
			return nil, err
		}
		for i, v := range vals {
			s, err := v.ToString()
			switch {
			case err == nil:
				got[chunk[i]] = s
			case rueidis.IsRedisNil(err):
				got[chunk[i]] = "<not a string>" // deleted since SCAN, or another type
			default:
				return nil, err
			}
		}
	}
	return got, nil
}

// cacheDiff is how Redis differs from the database.
type cacheDiff struct {
	missing, extra, stale []string
}

func diffMaps(want, got map[string]string) cacheDiff {
	var d cacheDiff
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			d.missing = append(d.missing, k)
		case g != w:
			d.stale = append(d.stale, fmt.Sprintf("%s = %s, want %s", k, g, w))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			d.extra = append(d.extra, k)
		}
	}
	return d
}

func (d cacheDiff) ok() bool { return len(d.missing)+len(d.extra)+len(d.stale) == 0 }

func (d cacheDiff) String() string {
	ex := func(s []string) string {
		if len(s) > 3 {
			return strings.Join(s[:3], "; ") + "; ..."
		}
		return strings.Join(s, "; ")
	}
	return fmt.Sprintf("%d missing [%s], %d extra [%s], %d stale [%s]",
		len(d.missing), ex(d.missing), len(d.extra), ex(d.extra), len(d.stale), ex(d.stale))
}

// diffItems compares the item:* keys of Redis with the items table.
func (b *bed) diffItems(ctx context.Context) (cacheDiff, error) {
	want, err := b.wantItems(ctx)
	if err != nil {
		return cacheDiff{}, fmt.Errorf("read items: %w", err)
	}
	got, err := redisStrings(ctx, b.rc, "item:*")
	if err != nil {
		return cacheDiff{}, fmt.Errorf("read redis: %w", err)
	}
	return diffMaps(want, got), nil
}

// waitSynced polls until Redis equals the items table, failing the test after
// timeout (with the differences) or as soon as d exits.
func (b *bed) waitSynced(d *proc, timeout time.Duration) {
	b.t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		diff, err := b.diffItems(b.t.Context())
		if err == nil && diff.ok() {
			b.t.Logf("Redis equals the database after %v", time.Since(start).Round(time.Millisecond))
			return
		}
		what := "Redis differs from the database: "
		if err != nil {
			what += err.Error()
		} else {
			what += diff.String()
		}
		if d != nil && d.exited() {
			b.t.Fatalf("%s exited (%s); %s\n%s", d.name, d.state(), what, tail(d.stderr.String(), 30))
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("after %v: %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// requireSynced checks once that Redis equals the items table.
func (b *bed) requireSynced() {
	b.t.Helper()
	diff, err := b.diffItems(b.t.Context())
	if err != nil {
		b.t.Fatal(err)
	}
	if !diff.ok() {
		b.t.Fatalf("Redis differs from the database: %s", diff)
	}
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

// requireConfirmed waits until slot is idle and checks that its
// confirmed_flush_lsn is at or after lsn.
func (b *bed) requireConfirmed(slot, lsn string) {
	b.t.Helper()
	ctx := b.t.Context()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var (
			confirmed string
			covered   bool
			active    bool
		)
		err := b.db.QueryRow(ctx, `SELECT confirmed_flush_lsn::text, confirmed_flush_lsn >= $2::pg_lsn, active
			FROM pg_replication_slots WHERE slot_name = $1`, slot, lsn).Scan(&confirmed, &covered, &active)
		if err != nil {
			b.t.Fatalf("slot %s: %v", slot, err)
		}
		if !active || time.Now().After(deadline) {
			if !covered {
				b.t.Fatalf("slot %s: confirmed_flush_lsn %s < %s, an LSN inside the last committed transaction (active=%v)", slot, confirmed, lsn, active)
			}
			b.t.Logf("slot %s: confirmed_flush_lsn %s >= last commit's %s", slot, confirmed, lsn)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
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

// runCLI runs the binary to completion (killed after timeout) and returns its
// exit code, output and run time.
func runCLI(t *testing.T, timeout time.Duration, env []string, args ...string) (code int, stdout, stderr string, took time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = time.Second
	start := time.Now()
	err := cmd.Run()
	took = time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("cachesync %s: still running after %v (killed); stderr:\n%s", strings.Join(args, " "), timeout, errb.String())
	}
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("cachesync %s: %v", strings.Join(args, " "), err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String(), took
}

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
	b := newBed(t, "grocery")
	schema, err := os.ReadFile("../../examples/grocery.sql")
	if err != nil {
		t.Fatal(err)
	}
	b.exec(string(schema))
	b.exec(`CREATE TABLE nopk (item text NOT NULL, price numeric NOT NULL)`)
	closed, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	const unset = "CACHESYNC_E2E_UNSET_URL"
	env := envWithout(unset)

	base := map[string]string{
		"@NAME@": "badconfig", "@REDIS@": b.redis.URL(), "@DB@": b.dbURL, "@SOURCE@": "catalog",
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
			cfg := b.writeConfig(strings.ReplaceAll(tc.name, " ", "_")+".yaml", config(tc.set))
			code, _, stderr, took := runCLI(t, 15*time.Second, env, "run", "--config", cfg)
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			if code == 0 {
				t.Errorf("exit code 0, want non-zero")
			}
			if took > 5*time.Second {
				t.Errorf("took %v to fail, want a few seconds at most", took)
			}
			if len(lines) != 1 || lines[0] == "" {
				t.Fatalf("stderr has %d lines, want exactly one:\n%s", len(lines), stderr)
			}
			if !strings.Contains(lines[0], tc.want) {
				t.Errorf("stderr %q does not name %q", lines[0], tc.want)
			}
			t.Logf("exit %d in %v: %s", code, took.Round(time.Millisecond), lines[0])
		})
	}
	t.Run("missing file", func(t *testing.T) {
		missing := filepath.Join(b.dir, "nope.yaml")
		code, _, stderr, _ := runCLI(t, 15*time.Second, env, "run", "--config", missing)
		if code != 1 || strings.Count(strings.TrimRight(stderr, "\n"), "\n") != 0 || !strings.Contains(stderr, missing) {
			t.Errorf("exit %d, stderr %q; want 1 and one line naming %s", code, stderr, missing)
		}
	})

	good := b.writeConfig("good.yaml", config(nil))
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
			code, stdout, stderr, _ := runCLI(t, 15*time.Second, env, tc.args...)
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
		d := b.run(good)
		d.waitLog(t, "streaming changes", 20*time.Second)
		d.stopOK(t)
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
	b := newBed(t, "resync")
	b.createItems(1000)
	cfg := b.itemsConfig("resynctest")
	ctx := t.Context()

	d := b.run(cfg)
	d.waitLog(t, "streaming changes", 20*time.Second)
	b.waitSynced(d, 20*time.Second)

	t.Run("refused while a daemon runs", func(t *testing.T) {
		code, _, stderr, took := runCLI(t, 20*time.Second, nil, "resync", "--config", cfg, "items")
		if code != 1 || !strings.Contains(stderr, "in use") {
			t.Errorf("resync beside a running daemon: exit %d in %v, stderr:\n%s\nwant exit 1 and a message that the slot is in use", code, took, stderr)
		}
	})
	d.stopOK(t)

	// Damage the cache while no daemon runs: a wrong value, a key of the
	// template that has no row, and a key of no cache that must survive.
	for _, kv := range [][2]string{{"item:5", `{"id":5,"val":-1,"note":"wrong"}`}, {"item:424242", `{"id":424242}`}, {"other:1", "keep"}} {
		if err := b.rc.Do(ctx, b.rc.B().Set().Key(kv[0]).Value(kv[1]).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	b.exec(`UPDATE items SET val = 7, note = 'while stopped' WHERE id = 6`)

	r := b.start(nil, "resync", "--config", cfg, "items")
	r.waitLog(t, "streaming changes", 30*time.Second)
	b.waitSynced(r, 20*time.Second)
	if v, err := b.rc.Do(ctx, b.rc.B().Get().Key("other:1").Build()).ToString(); err != nil || v != "keep" {
		t.Errorf("resync touched other:1, a key of no cache: %q, %v", v, err)
	}
	lines := progressLines(r.stderr.String())
	if len(lines) == 0 {
		t.Fatalf("resync printed no plain progress line (resync items: N/M rows ...):\n%s", r.stderr.String())
	}
	if last := lines[len(lines)-1]; last[1] != "1000" || last[2] != "1000" {
		t.Errorf("last progress line %q, want 1000/1000 rows", last[0])
	}
	if strings.Contains(r.stderr.String(), "\r") {
		t.Errorf("resync drew a terminal progress bar on a pipe")
	}

	// It keeps streaming.
	b.exec(`UPDATE items SET val = val + 1000, note = 'after resync' WHERE id IN (1, 2, 3)`)
	b.exec(`DELETE FROM items WHERE id = 4`)
	b.waitSynced(r, 20*time.Second)
	r.stopOK(t)
}

// TestResyncProgressReachesTotal resyncs a table whose planner statistics
// are out of date (rows deleted after ANALYZE), as any busy table's are.
// The user must still see the rebuild finish: a last line N/N with N the
// rows actually copied.
func TestResyncProgressReachesTotal(t *testing.T) {
	t.Parallel()
	b := newBed(t, "progress")
	b.createItems(1000)
	b.exec(`ANALYZE items`)
	b.exec(`DELETE FROM items WHERE id > 900`) // reltuples still says 1000
	cfg := b.itemsConfig("progresstest")

	r := b.start(nil, "resync", "--config", cfg, "items")
	r.waitLog(t, "streaming changes", 30*time.Second)
	b.waitSynced(r, 20*time.Second)
	r.stopOK(t)
	lines := progressLines(r.stderr.String())
	var shown []string
	for _, l := range lines {
		shown = append(shown, l[0])
	}
	if len(lines) == 0 || lines[len(lines)-1][1] != "900" || lines[len(lines)-1][2] != "900" {
		t.Errorf("progress lines %q: want the last one to say 900/900 rows (100%%), the rows copied", shown)
	}
}
