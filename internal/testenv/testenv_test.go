package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"
)

func TestFreePort(t *testing.T) {
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	if port <= 0 || port > 65535 {
		t.Fatalf("FreePort() = %d", port)
	}
}

func TestRedis(t *testing.T) {
	r := StartRedis(t, WithRedisArgs("--maxmemory", "64mb"))
	if want := "redis://" + r.Addr + "/0"; r.URL() != want {
		t.Fatalf("URL() = %q, want %q", r.URL(), want)
	}
	pid, port := r.PID(), r.Port
	if pid == 0 {
		t.Fatal("PID() = 0 while running")
	}
	steps := []struct {
		name string
		do   func() error
	}{
		{"ping", func() error { return nil }},
		{"restart", r.Restart},
		{"kill+start", func() error {
			if err := r.Kill(); err != nil {
				return err
			}
			if r.PID() != 0 {
				t.Error("PID() != 0 after Kill")
			}
			if rawPing(r.Addr) == nil {
				t.Error("PING succeeded after Kill")
			}
			return r.Start()
		}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if err := s.do(); err != nil {
				t.Fatal(err)
			}
			if err := rawPing(r.Addr); err != nil {
				t.Fatal(err)
			}
			if r.Port != port {
				t.Fatalf("port changed: %d -> %d", port, r.Port)
			}
		})
	}
	if r.PID() == pid {
		t.Error("PID unchanged after restarts")
	}
	if _, err := os.Stat(filepath.Join(r.Dir, "redis.log")); err != nil {
		t.Error(err)
	}
}

// rawPing is the test's own PING over a plain net.Conn.
func rawPing(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 7)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "+PONG\r\n" {
		return errors.New("unexpected reply " + string(buf[:n]))
	}
	return nil
}

// TestPortTaken checks that losing the race for a port is reported as
// errAddrInUse (so New* retries), even when the winner is a server of the
// same kind that would answer our readiness probe.
func TestPortTaken(t *testing.T) {
	NeedServers(t)
	tests := []struct {
		name  string
		taken func(t *testing.T) (port int)
		start func(t *testing.T, port int) error
	}{
		{"redis vs listener", takeWithListener, startRedisOn},
		{"redis vs redis", func(t *testing.T) int { return StartRedis(t).Port }, startRedisOn},
		{"postgres vs listener", takeWithListener, startPostgresOn},
		{"postgres vs postgres", func(t *testing.T) int { return StartPostgres(t).Port }, startPostgresOn},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.start(t, tc.taken(t))
			if !errors.Is(err, errAddrInUse) {
				t.Fatalf("err = %v, want errAddrInUse", err)
			}
		})
	}
}

func takeWithListener(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

// startRedisOn starts a second server that reuses a running one's port.
func startRedisOn(t *testing.T, port int) error {
	r := StartRedis(t)
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	r.Port, r.Addr = port, net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return r.Start()
}

// startPostgresOn starts a second cluster on a running one's port.
func startPostgresOn(t *testing.T, port int) error {
	p := StartPostgres(t)
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	p.Port = port
	return p.Start()
}

func TestPostgres(t *testing.T) {
	ctx := context.Background()
	p := StartPostgres(t, WithPostgresSettings("application_name=testenv"))
	if err := p.CreateDatabase(ctx, "app-db"); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		do   func() error
	}{
		{"fresh", func() error { return nil }},
		{"restart", p.Restart},
		{"kill+start", func() error {
			if err := p.Kill(); err != nil {
				return err
			}
			return p.Start()
		}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if err := s.do(); err != nil {
				t.Fatal(err)
			}
			conn, err := pgx.Connect(ctx, p.URL("app-db"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			for _, c := range []struct{ setting, want string }{
				{"wal_level", "logical"},
				{"application_name", "testenv"},
				{"max_replication_slots", "20"},
			} {
				var got string
				if err := conn.QueryRow(ctx, "SHOW "+c.setting).Scan(&got); err != nil {
					t.Fatal(err)
				}
				if got != c.want {
					t.Errorf("SHOW %s = %q, want %q", c.setting, got, c.want)
				}
			}
		})
	}
}

// TestTempPostgres: NewTempPostgres starts a cluster in a dir of its own
// even when TMPDIR is a 0700 dir of ours (as pam_tmpdir's /tmp/user/0 is
// for root, out of the postgres user's reach), and Close stops the server
// and removes that dir.
func TestTempPostgres(t *testing.T) {
	NeedServers(t)
	private := t.TempDir()
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", private)
	p, err := NewTempPostgres(WithPostgresSettings("application_name=temp"))
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			p.Close()
		}
	})
	if err := p.ready(); err != nil {
		t.Fatal(err)
	}
	pid := p.p.cmd.Process.Pid
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	if alive(pid) {
		t.Errorf("postmaster pid %d still running after Close", pid)
	}
	if _, err := os.Stat(p.Dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Close left %s (stat: %v)", p.Dir, err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestPostgresBinDir(t *testing.T) {
	dir, err := PostgresBinDir()
	if err != nil {
		t.Fatal(err)
	}
	for _, bin := range []string{"postgres", "initdb"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			t.Error(err)
		}
	}
	t.Setenv("CACHESYNC_PG_BIN", t.TempDir())
	if _, err := PostgresBinDir(); err == nil {
		t.Error("PostgresBinDir accepted a CACHESYNC_PG_BIN without postgres")
	}
}

// TestOrphanedServersDie kills a process that started servers without
// stopping them and checks that the servers exit too (Pdeathsig).
func TestOrphanedServersDie(t *testing.T) {
	if dir := os.Getenv("CACHESYNC_TESTENV_HELPER"); dir != "" {
		r, err := NewRedis(filepath.Join(dir, "redis"))
		if err != nil {
			t.Fatal(err)
		}
		p, err := NewPostgres(filepath.Join(dir, "pg"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("pids %d %d\n", r.PID(), p.p.cmd.Process.Pid)
		select {} // wait to be killed
	}
	NeedServers(t)
	dir, err := os.MkdirTemp("", "cachesync-orphan-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // searchable by the postgres user under root
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "redis"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestOrphanedServersDie$", "-test.timeout=60s", "-test.v")
	cmd.Env = append(os.Environ(), "CACHESYNC_TESTENV_HELPER="+dir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var rpid, ppid int
	var seen strings.Builder
	sc := bufio.NewScanner(out)
	for rpid == 0 && sc.Scan() {
		seen.WriteString(sc.Text() + "\n")
		_, _ = fmt.Sscanf(sc.Text(), "pids %d %d", &rpid, &ppid)
	}
	if rpid == 0 || ppid == 0 {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper failed:\n%s%s", seen.String(), stderr.String())
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	for _, pid := range []int{rpid, ppid} {
		deadline := time.Now().Add(20 * time.Second)
		for alive(pid) {
			if time.Now().After(deadline) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				t.Fatalf("orphaned server pid %d still running", pid)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// TestCluster: three primaries form a cluster that a client sees as one,
// and keys spread over all of them.
func TestCluster(t *testing.T) {
	c := StartCluster(t, 3)
	rc := c.Client(t)
	if rc.Mode() != rueidis.ClientModeCluster || len(rc.Nodes()) != 3 {
		t.Fatalf("client mode %v with %d nodes, want a cluster of 3", rc.Mode(), len(rc.Nodes()))
	}
	ctx := context.Background()
	for i := range 100 {
		if err := rc.Do(ctx, rc.B().Set().Key(fmt.Sprintf("k%d", i)).Value("v").Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.Nodes {
		node, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{n.Addr}, ForceSingleClient: true})
		if err != nil {
			t.Fatal(err)
		}
		defer node.Close()
		keys, err := node.Do(ctx, node.B().Dbsize().Build()).AsInt64()
		if err != nil || keys == 0 {
			t.Errorf("node %s holds %d keys (%v), want some of the 100", n.Addr, keys, err)
		}
	}
}
