// Package testenv starts private, throw-away redis-server and PostgreSQL
// processes on free 127.0.0.1 ports so tests, the demo and benchmarks run
// against real servers without touching any system-wide instance.
package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// NeedServers skips the test under go test -short: the unit tier runs
// what needs no server. Every starter of a server calls it.
func NeedServers(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("-short: needs redis-server and PostgreSQL")
	}
}

// installHint tells the user how to get missing server binaries.
const installHint = "run scripts/install-deps.sh (or `make test`, which runs it)"

// startAttempts bounds retries when a freshly picked free port is taken
// by someone else before our server binds it.
const startAttempts = 3

// errAddrInUse marks a start failure caused by losing the free-port race.
var errAddrInUse = errors.New("address already in use")

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago, so a
// server can be started on it (another process may still grab it first).
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// proc is a started server process plus the goroutine that reaps it.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd.Wait has returned
}

// startProc starts cmd in its own process group (so a terminal's Ctrl-C
// does not race our shutdown), with stdout and stderr appended to logPath.
// The child gets deathSig if we die without stopping it, so a killed or
// timed-out test binary leaves no orphaned servers behind.
func startProc(cmd *exec.Cmd, logPath string, deathSig syscall.Signal) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = deathSig
	p := &proc{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the OS thread that forked the child exits, so
		// this goroutine stays locked to that thread until the child is
		// reaped; the thread is then discarded along with the goroutine.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			f.Close()
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("exec %s: %w", cmd.Path, err)
	}
	return p, nil
}

// exited reports whether the process has already been reaped.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig to the process and waits up to timeout for it to exit,
// then SIGKILLs its whole process group and waits for good.
func (p *proc) stop(sig syscall.Signal, timeout time.Duration) error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
	}
	p.kill()
	return fmt.Errorf("pid %d did not exit within %v of signal %q; killed", p.cmd.Process.Pid, timeout, sig)
}

// kill SIGKILLs the process group (our server and any children it forked
// without leaving the group) and waits for the process to be reaped.
func (p *proc) kill() {
	if !p.exited() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-p.done
}

// waitReady polls ready every 50ms until it succeeds, the process exits or
// timeout elapses; on failure the process is killed.
func (p *proc) waitReady(timeout time.Duration, ready func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("process exited during startup (%v)", p.cmd.ProcessState)
		}
		if time.Now().After(deadline) {
			p.kill()
			return fmt.Errorf("not ready after %v: %w", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logSize returns the current size of a log file (0 if missing), so a later
// failure can report only what the failed start wrote.
func logSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// startError wraps err with the tail of what was logged since offset and
// marks it with errAddrInUse when the log shows the port was taken.
func startError(err error, logPath string, offset int64) error {
	var tail []byte
	if f, oerr := os.Open(logPath); oerr == nil {
		if _, serr := f.Seek(offset, io.SeekStart); serr == nil {
			tail, _ = io.ReadAll(f)
		}
		f.Close()
	}
	const max = 2048
	if len(tail) > max {
		tail = tail[len(tail)-max:]
	}
	tail = bytes.TrimSpace(tail)
	if bytes.Contains(tail, []byte("Address already in use")) {
		err = fmt.Errorf("%w: %w", errAddrInUse, err)
	}
	return fmt.Errorf("%w\n--- %s (tail) ---\n%s", err, logPath, tail)
}
