package world

// The built binary, run as a user runs it: cachesync built once per test
// binary, a config file, daemons started with their output captured,
// waited on, stopped with SIGTERM or killed with SIGKILL, and one-shot
// commands run to completion.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

var bin struct {
	sync.Mutex
	dir, path string
	err       error
}

// Binary returns the path of cachesync built from cmd/cachesync: built by
// the first call of the test binary, into a temp dir that RemoveBinary
// removes (Main does).
func Binary(tb testing.TB) string {
	tb.Helper()
	bin.Lock()
	defer bin.Unlock()
	if bin.path == "" && bin.err == nil {
		bin.dir, bin.err = os.MkdirTemp("", "cachesync-bin-")
		if bin.err == nil {
			path := filepath.Join(bin.dir, "cachesync")
			out, err := exec.Command("go", "build", "-o", path, "github.com/cachesync/cachesync/cmd/cachesync").CombinedOutput()
			if bin.path, bin.err = path, err; err != nil {
				bin.err = fmt.Errorf("go build cmd/cachesync: %w\n%s", err, out)
			}
		}
	}
	if bin.err != nil {
		tb.Fatal(bin.err)
	}
	return bin.path
}

// RemoveBinary removes what Binary built, once the tests are done.
func RemoveBinary() {
	bin.Lock()
	defer bin.Unlock()
	if bin.dir != "" {
		os.RemoveAll(bin.dir)
	}
	bin.dir, bin.path, bin.err = "", "", nil
}

// WriteConfig writes the config YAML(caches) to a file and returns its path.
func (w *World) WriteConfig(caches string) string {
	w.T.Helper()
	return w.WriteYAML(w.YAML(caches))
}

// WriteYAML writes the config yaml, one of the world's, to a file and
// returns its path.
func (w *World) WriteYAML(yaml string) string {
	w.T.Helper()
	path := filepath.Join(w.T.TempDir(), "cachesync.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		w.T.Fatal(err)
	}
	return path
}

// Proc is a process of the binary started by a test, with its output.
type Proc struct {
	Name           string             // what it runs, for messages
	Stdout, Stderr *testenv.LogBuffer // its output so far
	tb             testing.TB
	ended          atomic.Bool // stopped or killed by the test
	cmd            *exec.Cmd
	done           chan struct{} // closed once the process was reaped
}

// Daemon starts `cachesync run --config config`.
func (w *World) Daemon(config string) *Proc {
	w.T.Helper()
	p := StartBinary(w.T, "run", "--config", config)
	w.mu.Lock()
	w.daemons = append(w.daemons, p)
	w.mu.Unlock()
	return p
}

// checkDaemons fails the test when a daemon of the world exited though
// the test neither stopped nor killed it.
func (w *World) checkDaemons() {
	w.T.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.daemons {
		if !p.ended.Load() && p.Exited() {
			w.T.Fatalf("%s exited on its own (%s):\n%s", p.Name, p.State(), p.Tail(30))
		}
	}
}

var procs atomic.Int64

// StartBinary runs the binary with args in the background, its output
// captured. It is killed when the test ends, if still running; if the test
// failed, the end of its stderr is logged.
func StartBinary(tb testing.TB, args ...string) *Proc {
	tb.Helper()
	path := Binary(tb)
	p := &Proc{Name: fmt.Sprintf("cachesync#%d %s", procs.Add(1), args[0]), tb: tb,
		Stdout: &testenv.LogBuffer{}, Stderr: &testenv.LogBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.Stdout, p.Stderr
	// Should the test binary die, the process dies with it. Pdeathsig
	// fires when the OS thread that forked the child exits, so the fork
	// happens on a thread locked to a goroutine that lives until the child
	// is reaped.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := p.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = p.cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if !p.Exited() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if tb.Failed() {
			tb.Logf("--- %s (%s) stderr ---\n%s", p.Name, p.State(), p.Tail(40))
		}
	})
	return p
}

// PID is the process's id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// State says whether the process runs or how it ended.
func (p *Proc) State() string {
	if !p.Exited() {
		return "running"
	}
	return p.cmd.ProcessState.String()
}

// Tail is the last n lines of the process's stderr.
func (p *Proc) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Stderr.String(), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// WaitFor waits until ok holds, failing the test at once if the process
// ends first, or after Patience.
func (p *Proc) WaitFor(what string, ok func() bool) {
	p.tb.Helper()
	exited := false
	if Within(Patience, func() bool {
		if ok() {
			return true
		}
		exited = p.Exited()
		return exited
	}) && !exited {
		return
	}
	if exited {
		p.tb.Fatalf("%s exited (%s) before %s:\n%s", p.Name, p.State(), what, p.Tail(30))
	}
	p.tb.Fatalf("%s: never within %v: %s:\n%s", p.Name, Patience, what, p.Tail(30))
}

// WaitLog waits until the process has logged s.
func (p *Proc) WaitLog(s string) {
	p.tb.Helper()
	p.WaitFor(fmt.Sprintf("logging %q", s), func() bool { return strings.Contains(p.Stderr.String(), s) })
}

// Stop sends SIGTERM and requires the process to exit with code 0.
func (p *Proc) Stop() {
	p.tb.Helper()
	p.ended.Store(true)
	start := time.Now()
	if !p.Exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-p.done:
	case <-time.After(Patience):
		_ = p.cmd.Process.Kill()
		<-p.done
		p.tb.Fatalf("%s still running %v after SIGTERM; killed:\n%s", p.Name, Patience, p.Tail(30))
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		p.tb.Fatalf("%s: exit code %d after SIGTERM, want 0:\n%s", p.Name, code, p.Tail(30))
	}
	p.tb.Logf("%s stopped by SIGTERM in %v", p.Name, time.Since(start).Round(time.Millisecond))
}

// Kill SIGKILLs the process and waits until it is gone; it fails the test
// if the process had already ended on its own.
func (p *Proc) Kill() {
	p.tb.Helper()
	if p.Exited() {
		p.tb.Fatalf("%s exited on its own (%s) before it was killed:\n%s", p.Name, p.State(), p.Tail(30))
	}
	p.ended.Store(true)
	_ = p.cmd.Process.Kill()
	<-p.done
}

// CLI runs the binary with args to completion and returns its exit code
// and output; env, when not nil, is its whole environment. It fails the
// test if the command is still running after Patience.
func CLI(tb testing.TB, env []string, args ...string) (code int, stdout, stderr string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Patience)
	defer cancel()
	cmd := exec.CommandContext(ctx, Binary(tb), args...)
	cmd.Env = env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		tb.Fatalf("cachesync %s: still running after %v (killed); stderr:\n%s", strings.Join(args, " "), Patience, errOut.String())
	}
	if err != nil && !errors.As(err, new(*exec.ExitError)) {
		tb.Fatalf("cachesync %s: %v", strings.Join(args, " "), err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errOut.String()
}
