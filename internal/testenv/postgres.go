package testenv

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres is a private PostgreSQL cluster (initdb in a temp dir, wal_level=logical) on a free 127.0.0.1 port.
//
// Stop stops the server and keeps Dir, so Start can start it again; Close
// stops it for good and also removes Dir when the Postgres made Dir itself
// (NewTempPostgres, StartPostgres, RunWithPostgres).
type Postgres struct {
	// Port is the TCP port the postmaster listens on (127.0.0.1 only).
	Port int
	// Dir holds the cluster: data/ (PGDATA), postgres.log and the Unix socket.
	Dir string

	bin      string
	settings []string
	cred     *syscall.Credential // non-nil when running as root: drop to the postgres user
	ownDir   bool                // Dir was made by NewTempPostgres: Close removes it
	tls      *Certs              // WithPostgresTLS
	hba      []string            // WithPostgresHBA

	mu sync.Mutex
	p  *proc
}

// PostgresOption configures a Postgres before it starts.
type PostgresOption func(*Postgres)

// WithPostgresSettings adds server settings, each "name=value", passed as
// extra -c flags that override the defaults.
func WithPostgresSettings(kv ...string) PostgresOption {
	return func(p *Postgres) { p.settings = append(p.settings, kv...) }
}

// StartPostgres starts a private PostgreSQL cluster for the test (in a
// directory of its own, as NewTempPostgres) and stops it and removes its
// directory at cleanup; it fails the test if that is impossible.
func StartPostgres(tb testing.TB, opts ...PostgresOption) *Postgres {
	tb.Helper()
	NeedServers(tb)
	p, err := NewTempPostgres(opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := p.Close(); err != nil {
			tb.Error(err)
		}
	})
	return p
}

// NewTempPostgres starts a cluster, as NewPostgres does, in a new directory
// of its own that the postgres user can reach: under os.TempDir(), or under
// /tmp when we are root and the postgres user (which PostgreSQL then runs
// as) cannot search os.TempDir(). The caller must call Close, which stops
// the server and removes the directory.
//
// Use it rather than a dir under the caller's (a clone in /root, the demo's
// working dir) or tb.TempDir: as root their 0700 parents are out of the
// postgres user's reach, and tb.TempDir's long names can also overflow the
// Unix socket path limit.
func NewTempPostgres(opts ...PostgresOption) (*Postgres, error) {
	base := os.TempDir()
	if os.Geteuid() == 0 {
		cred, err := postgresUser()
		if err != nil {
			return nil, err
		}
		if checkTraversable(filepath.Join(base, "x"), cred) != nil {
			base = "/tmp" // e.g. TMPDIR=/tmp/user/0 (0700), as pam_tmpdir sets it
		}
	}
	dir, err := os.MkdirTemp(base, "cachesync-pg-")
	if err != nil {
		return nil, fmt.Errorf("postgres dir: %w", err)
	}
	p, err := NewPostgres(dir, opts...)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	p.ownDir = true
	return p, nil
}

// NewPostgres starts a cluster in dir (running initdb unless dir/data already
// holds one), for callers outside tests (benchmarks), who must call Stop or
// Close; both keep dir. As root, dir and its parents must be searchable by
// the postgres user (NewPostgres fails saying so otherwise): a caller
// without such a dir of its own uses NewTempPostgres.
func NewPostgres(dir string, opts ...PostgresOption) (*Postgres, error) {
	bin, err := PostgresBinDir()
	if err != nil {
		return nil, err
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, fmt.Errorf("postgres dir: %w", err)
	}
	p := &Postgres{Dir: dir, bin: bin}
	for _, o := range opts {
		o(p)
	}
	for _, kv := range p.settings {
		if !strings.Contains(kv, "=") {
			return nil, fmt.Errorf("postgres setting %q: want name=value", kv)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("postgres dir: %w", err)
	}
	if os.Geteuid() == 0 {
		if p.cred, err = postgresUser(); err != nil {
			return nil, err
		}
		if err := chownTree(dir, p.cred); err != nil {
			return nil, err
		}
		if err := checkTraversable(dir, p.cred); err != nil {
			return nil, err
		}
	}
	if err := p.initdb(); err != nil {
		return nil, err
	}
	files, err := p.fileSettings()
	if err != nil {
		return nil, err
	}
	p.settings = append(files, p.settings...) // the caller's settings win
	for range startAttempts {
		if p.Port, err = FreePort(); err != nil {
			return nil, err
		}
		if err = p.Start(); !errors.Is(err, errAddrInUse) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	return p, nil
}

// PostgresBinDir returns the directory holding the PostgreSQL server binaries:
// $CACHESYNC_PG_BIN, else the highest /usr/lib/postgresql/*/bin containing
// postgres, else the directory of `postgres` on PATH.
func PostgresBinDir() (string, error) {
	if d := os.Getenv("CACHESYNC_PG_BIN"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err != nil {
			return "", fmt.Errorf("CACHESYNC_PG_BIN=%s: %w", d, err)
		}
		return d, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	best, bestVer := "", -1.0
	for _, m := range matches {
		ver, err := strconv.ParseFloat(filepath.Base(filepath.Dir(filepath.Dir(m))), 64)
		if err == nil && ver > bestVer {
			best, bestVer = filepath.Dir(m), ver
		}
	}
	if best != "" {
		return best, nil
	}
	if path, err := exec.LookPath("postgres"); err == nil {
		return filepath.Dir(path), nil
	}
	return "", fmt.Errorf("PostgreSQL server binaries (postgres, initdb) not found: %s", installHint)
}

// BinDir returns the directory of the PostgreSQL binaries this cluster uses.
func (p *Postgres) BinDir() string { return p.bin }

// URL returns a connection URL for database db as the trusted superuser postgres.
func (p *Postgres) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.Port, db)
}

// CreateDatabase creates database name.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, p.URL("postgres"))
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// command builds a command for a PostgreSQL binary, run as the postgres
// user when we are root (PostgreSQL refuses to run as root).
func (p *Postgres) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(p.bin, name), args...)
	cmd.Dir = p.Dir
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	return cmd
}

// initdb creates the cluster in Dir/data unless it already exists.
func (p *Postgres) initdb() error {
	data := filepath.Join(p.Dir, "data")
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err == nil {
		return nil
	}
	cmd := p.command("initdb", "-D", data, "--auth=trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb %s: %w\n%s", data, err, out)
	}
	return nil
}

// Start starts the postmaster again on the same port and data dir.
func (p *Postgres) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.p != nil && !p.p.exited() {
		return fmt.Errorf("start postgres on port %d: already running", p.Port)
	}
	args := []string{
		"-D", filepath.Join(p.Dir, "data"),
		"-p", strconv.Itoa(p.Port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=" + p.Dir,
		"-c", "wal_level=logical",
		"-c", "max_wal_senders=20",
		"-c", "max_replication_slots=20",
		"-c", "fsync=off",
		"-c", "full_page_writes=off",
		"-c", "shared_buffers=128MB",
		"-c", "max_connections=200",
		"-c", "wal_sender_timeout=60s",
	}
	for _, kv := range p.settings {
		args = append(args, "-c", kv)
	}
	logPath := filepath.Join(p.Dir, "postgres.log")
	off := logSize(logPath)
	pr, err := startProc(p.command("postgres", args...), logPath, syscall.SIGINT)
	if err == nil {
		err = pr.waitReady(30*time.Second, p.ready)
	}
	if err != nil {
		return fmt.Errorf("start postgres on port %d: %w", p.Port, startError(err, logPath, off))
	}
	p.p = pr
	return nil
}

// ready reports whether our server accepts a real connection.
func (p *Postgres) ready() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	// Make sure it is our cluster, not another one that won the port race.
	var dataDir string
	if err := conn.QueryRow(ctx, "SHOW data_directory").Scan(&dataDir); err != nil {
		return err
	}
	if want := filepath.Join(p.Dir, "data"); dataDir != want {
		return fmt.Errorf("port %d is served by another cluster (%s)", p.Port, dataDir)
	}
	return nil
}

// Stop performs a fast shutdown (SIGINT to the postmaster) and waits,
// SIGKILLing it after 30s.
func (p *Postgres) Stop() error {
	return p.halt("stop", syscall.SIGINT)
}

// Close stops the server (as Stop, which kills it if it does not stop in
// time) and then, if NewTempPostgres made Dir, removes Dir. Calling it again
// does nothing more.
func (p *Postgres) Close() error {
	err := p.Stop()
	if p.ownDir {
		if rerr := os.RemoveAll(p.Dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove postgres dir: %w", rerr))
		}
	}
	return err
}

// Kill performs an immediate shutdown (SIGQUIT): no checkpoint, so the next
// Start runs crash recovery, but no orphaned backends are left behind.
func (p *Postgres) Kill() error {
	return p.halt("kill", syscall.SIGQUIT)
}

// halt signals the postmaster and waits for it to exit.
func (p *Postgres) halt(what string, sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.p == nil {
		return nil
	}
	if err := p.p.stop(sig, 30*time.Second); err != nil {
		return fmt.Errorf("%s postgres on port %d: %w", what, p.Port, err)
	}
	return nil
}

// Restart stops the server and starts it again on the same port and data dir.
func (p *Postgres) Restart() error {
	if err := p.Stop(); err != nil {
		return err
	}
	return p.Start()
}

// postgresUser returns the credentials of the postgres OS user, creating a
// system user if it does not exist.
func postgresUser() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if errors.As(err, new(user.UnknownUserError)) {
		out, uerr := exec.Command("useradd", "--system", "--no-create-home", "--user-group", "postgres").CombinedOutput()
		if uerr != nil {
			return nil, fmt.Errorf("running as root, PostgreSQL needs a non-root 'postgres' OS user and useradd failed: %w\n%s", uerr, out)
		}
		u, err = user.Lookup("postgres")
	}
	if err != nil {
		return nil, fmt.Errorf("look up OS user postgres: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("uid of postgres: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("gid of postgres: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// chownTree gives dir and everything below it to the given user.
func chownTree(dir string, c *syscall.Credential) error {
	err := filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, int(c.Uid), int(c.Gid))
	})
	if err != nil {
		return fmt.Errorf("chown %s to postgres: %w", dir, err)
	}
	return nil
}

// checkTraversable fails clearly if some parent of dir cannot be searched by
// the user, which would make initdb/postgres fail with a cryptic error.
func checkTraversable(dir string, c *syscall.Credential) error {
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("postgres dir: %w", err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		bit := fs.FileMode(0o001) // "other" search bit
		switch {
		case st.Uid == c.Uid:
			bit = 0o100
		case st.Gid == c.Gid:
			bit = 0o010
		}
		ok := mode&bit != 0
		if !ok {
			return fmt.Errorf("postgres dir %s: parent %s (mode %v) is not searchable by the postgres user (uid %d), which PostgreSQL runs as under root; chmod o+x it or choose another dir", dir, d, mode, c.Uid)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// RunWithPostgres runs a package's tests with one private PostgreSQL cluster
// shared by all of them, stored in *pg, and returns the exit code; use it as
// TestMain's body: os.Exit(testenv.RunWithPostgres(m, &pg)). Tests share the
// cluster by each using a database and replication slot of its own.
func RunWithPostgres(m *testing.M, pg **Postgres, opts ...PostgresOption) int {
	flag.Parse()
	if testing.Short() {
		return m.Run() // the tests that need the servers skip (NeedServers)
	}
	var err error
	if *pg, err = NewTempPostgres(opts...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer (*pg).Close()
	return m.Run()
}

// Database creates database name, runs schema in it (when not empty) and
// returns a connection to it that closes when the test ends, with its URL.
func (p *Postgres) Database(tb testing.TB, name, schema string) (*pgx.Conn, string) {
	tb.Helper()
	NeedServers(tb)
	ctx := context.Background()
	if err := p.CreateDatabase(ctx, name); err != nil {
		tb.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, p.URL(name))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close(context.Background()) })
	if schema != "" {
		if _, err := conn.Exec(ctx, schema); err != nil {
			tb.Fatal(err)
		}
	}
	return conn, p.URL(name)
}
