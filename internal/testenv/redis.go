package testenv

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// Redis is a private redis-server on a free 127.0.0.1 port in its own temp dir.
type Redis struct {
	// Addr is "127.0.0.1:port", ready for a Redis client.
	Addr string
	// Port is the TCP port the server listens on.
	Port int
	// Dir holds the server's working files and redis.log.
	Dir string
	// TLS is what the test bed's clients present to a server started
	// WithRedisTLS (nil for a plain one): see Certs.Client.
	TLS *tls.Config

	bin  string
	args []string
	conf string // a config file's text, written to Dir/redis.conf at first start (a Sentinel's)

	mu sync.Mutex
	p  *proc
}

// RedisOption configures a Redis before it starts.
type RedisOption func(*Redis)

// WithRedisArgs appends extra redis-server arguments (e.g. "--appendonly", "yes"),
// which override the defaults because later arguments win.
func WithRedisArgs(args ...string) RedisOption {
	return func(r *Redis) { r.args = append(r.args, args...) }
}

// StartRedis starts a private redis-server for the test and stops it and
// removes its directory at cleanup; it fails the test if that is impossible.
func StartRedis(tb testing.TB, opts ...RedisOption) *Redis {
	tb.Helper()
	NeedServers(tb)
	r, err := NewRedis(tb.TempDir(), opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := r.Stop(); err != nil {
			tb.Error(err)
		}
	})
	return r
}

// NewRedis starts a redis-server keeping its files in dir, for callers
// outside tests (demo, benchmarks), who must call Stop.
func NewRedis(dir string, opts ...RedisOption) (*Redis, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found on PATH: %s", installHint)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("redis dir: %w", err)
	}
	r := &Redis{Dir: dir, bin: bin}
	for _, o := range opts {
		o(r)
	}
	for range startAttempts {
		if r.Port, err = r.freePort(); err != nil {
			return nil, err
		}
		r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(r.Port))
		if err = r.Start(); !errors.Is(err, errAddrInUse) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

// maxClusterPort is the highest port a Redis Cluster node may listen on:
// its cluster bus listens 10000 above it.
const maxClusterPort = 65535 - 10000

// freePort picks a free port the server may listen on. (Go's listeners
// get ports from the lower half of Linux's ephemeral range, below
// maxClusterPort, but a kernel may hand out any.)
func (r *Redis) freePort() (int, error) {
	for range 100 {
		port, err := FreePort()
		if err != nil || port <= maxClusterPort || !slices.Contains(r.args, "--cluster-enabled") {
			return port, err
		}
	}
	return 0, fmt.Errorf("find free port: none at or below %d for a cluster node", maxClusterPort)
}

// URL returns the redis:// URL of database 0 (rediss:// WithRedisTLS).
func (r *Redis) URL() string {
	if r.TLS != nil {
		return "rediss://" + r.Addr + "/0"
	}
	return "redis://" + r.Addr + "/0"
}

// PID returns the server's process id, or 0 when it is not running.
func (r *Redis) PID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p == nil || r.p.exited() {
		return 0
	}
	return r.p.cmd.Process.Pid
}

// Start starts the server again on the same port and dir (after Stop or Kill).
func (r *Redis) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p != nil && !r.p.exited() {
		return fmt.Errorf("start redis on port %d: already running", r.Port)
	}
	logPath := filepath.Join(r.Dir, "redis.log")
	var first []string
	if r.conf != "" {
		// A Sentinel rewrites its file: written once, kept across restarts.
		path := filepath.Join(r.Dir, "redis.conf")
		if _, err := os.Stat(path); err != nil {
			if err := os.WriteFile(path, []byte(r.conf), 0o600); err != nil {
				return fmt.Errorf("start redis on port %d: %w", r.Port, err)
			}
		}
		first = []string{path}
	}
	args := append(append(append(first, r.listenArgs()...),
		"--bind", "127.0.0.1",
		"--dir", r.Dir,
		"--save", "",
		"--appendonly", "no",
		"--protected-mode", "no",
		"--daemonize", "no",
		"--logfile", logPath,
	), r.args...)
	cmd := exec.Command(r.bin, args...)
	cmd.Dir = r.Dir
	off := logSize(logPath)
	p, err := startProc(cmd, logPath, syscall.SIGTERM)
	if err == nil {
		err = p.waitReady(10*time.Second, func() error { return ping(r.dial, p.cmd.Process.Pid) })
	}
	if err != nil {
		return fmt.Errorf("start redis on port %d: %w", r.Port, startError(err, logPath, off))
	}
	r.p = p
	return nil
}

// Stop shuts the server down with SIGTERM and waits, SIGKILLing it after 10s.
func (r *Redis) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p == nil {
		return nil
	}
	if err := r.p.stop(syscall.SIGTERM, 10*time.Second); err != nil {
		return fmt.Errorf("stop redis on port %d: %w", r.Port, err)
	}
	return nil
}

// Kill SIGKILLs the server (simulating a crash) and waits for it to exit.
func (r *Redis) Kill() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p != nil {
		r.p.kill()
	}
	return nil
}

// Restart stops the server and starts it again on the same port and dir.
func (r *Redis) Restart() error {
	if err := r.Stop(); err != nil {
		return err
	}
	return r.Start()
}

// ping sends an inline PING over a fresh connection and expects +PONG, then
// checks via INFO that the server answering is process pid (and not another
// server that won the race for the port).
func ping(dial func() (net.Conn, error), pid int) error {
	c, err := dial()
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\nINFO server\r\n")); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("PING: unexpected reply %q", strings.TrimSpace(line))
	}
	want := fmt.Sprintf("process_id:%d\r\n", pid)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return fmt.Errorf("INFO server: %w", err)
		}
		if strings.HasPrefix(line, "process_id:") {
			if line != want {
				return fmt.Errorf("port %s is served by another redis (%s)", c.RemoteAddr(), strings.TrimSpace(line))
			}
			return nil
		}
	}
}

// Client returns a client of r (no client-side cache) that closes when the
// test ends.
func (r *Redis) Client(tb testing.TB) rueidis.Client {
	tb.Helper()
	return r.ClientAs(tb, "", "")
}

// ClientAs is Client logged in as user with password (the default user
// when user is "").
func (r *Redis) ClientAs(tb testing.TB, user, password string) rueidis.Client {
	tb.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{r.Addr}, Username: user, Password: password, DisableCache: true, TLSConfig: r.TLS})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}

// NodeClient returns a client of r alone, closed when the test ends: on a
// Cluster its commands reach this node (a key of another's slots is
// answered MOVED), and CONFIG, INFO and the like are this node's.
func (r *Redis) NodeClient(tb testing.TB) rueidis.Client {
	tb.Helper()
	c, err := r.nodeClient()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}

// nodeClient is NodeClient for a caller that closes it.
func (r *Redis) nodeClient() (rueidis.Client, error) {
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{r.Addr}, ForceSingleClient: true, DisableCache: true, TLSConfig: r.TLS})
	if err != nil {
		return nil, fmt.Errorf("redis %s: %w", r.Addr, err)
	}
	return c, nil
}

// Info returns field of r's INFO section (this node alone, on a
// Cluster), failing the test when r does not say it.
func (r *Redis) Info(tb testing.TB, section, field string) string {
	tb.Helper()
	v, ok := r.info(tb, section, field)
	if !ok {
		tb.Fatalf("no %s in INFO %s of %s", field, section, r.Addr)
	}
	return v
}

// Refused returns how many commands r refused with the error code (INFO
// errorstats: TRYAGAIN, MOVED, ...) since it started.
func (r *Redis) Refused(tb testing.TB, code string) int {
	tb.Helper()
	v, _ := r.info(tb, "errorstats", "errorstat_"+code)
	n, _ := strconv.Atoi(strings.TrimPrefix(v, "count="))
	return n
}

// info returns field of r's INFO section, and whether r says it.
func (r *Redis) info(tb testing.TB, section, field string) (string, bool) {
	tb.Helper()
	c := r.NodeClient(tb)
	info, err := c.Do(context.Background(), c.B().Info().Section(section).Build()).ToString()
	c.Close()
	if err != nil {
		tb.Fatalf("INFO %s of %s: %v", section, r.Addr, err)
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v, true
		}
	}
	return "", false
}

// SetUser runs ACL SETUSER user rules... on r (this node alone, on a
// Cluster) as the default user.
func (r *Redis) SetUser(tb testing.TB, user string, rules ...string) {
	tb.Helper()
	c, err := r.nodeClient()
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	if err := c.Do(context.Background(), c.B().AclSetuser().Username(user).Rule(rules...).Build()).Error(); err != nil {
		tb.Fatalf("ACL SETUSER %s: %v", user, err)
	}
}
