package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// daemon is a running bin/cachesync with its log lines, timestamped as read.
type daemon struct {
	to      target // the Redis it writes into
	cmd     *exec.Cmd
	started time.Time
	logPath string

	mu     sync.Mutex
	lines  []logLine
	notify chan struct{} // closed and replaced on each line
	exited chan struct{}
	err    error
}

type logLine struct {
	at   time.Time
	text string
}

// startDaemon starts bin/cachesync run into to for one case; its stderr
// goes to DIR/daemon-CASE.log and is watched for lines by a goroutine that
// ends when the daemon exits.
func (e *env) startDaemon(to target, name string) (*daemon, error) {
	if e.daemon != nil {
		return nil, errors.New("a daemon is already running")
	}
	d, err := e.spawn(to, name)
	if err != nil {
		return nil, err
	}
	e.daemon = d
	return d, nil
}

// spawn starts bin/cachesync run as startDaemon does, but as one more
// daemon of to's config (a standby), not the env's.
func (e *env) spawn(to target, name string) (*daemon, error) {
	d := &daemon{to: to, logPath: filepath.Join(e.dir, "daemon-"+name+".log"), notify: make(chan struct{}), exited: make(chan struct{})}
	logFile, err := os.Create(d.logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(e.binPath, "run", "--config", to.config)
	cmd.Env = append(os.Environ(), "REDIS_URL="+to.url, "DATABASE_URL="+e.dbURL, "GOTRACEBACK=all")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	cmd.Stdout = logFile
	d.cmd = cmd
	d.started = time.Now()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", e.bin, err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			now := time.Now()
			text := sc.Text()
			fmt.Fprintln(logFile, text)
			if strings.Contains(text, "level=ERROR") || strings.Contains(text, "level=WARN") || strings.HasPrefix(text, "panic") {
				fmt.Println("  daemon:", text)
			}
			d.mu.Lock()
			d.lines = append(d.lines, logLine{now, text})
			close(d.notify)
			d.notify = make(chan struct{})
			d.mu.Unlock()
		}
		err := cmd.Wait()
		logFile.Close()
		d.mu.Lock()
		d.err = err
		d.mu.Unlock()
		close(d.exited)
	}()
	return d, nil
}

// kill ends the daemon with SIGKILL and waits for it.
func (d *daemon) kill() {
	d.cmd.Process.Kill()
	<-d.exited
}

// waitLine waits for a log line containing s (seen before or after the call).
func (d *daemon) waitLine(ctx context.Context, s string, timeout time.Duration) (logLine, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		d.mu.Lock()
		for ; seen < len(d.lines); seen++ {
			if strings.Contains(d.lines[seen].text, s) {
				l := d.lines[seen]
				d.mu.Unlock()
				return l, nil
			}
		}
		ch := d.notify
		d.mu.Unlock()
		select {
		case <-ch:
		case <-d.exited:
			return logLine{}, fmt.Errorf("cachesync exited (%v) before logging %q; see %s", d.err, s, d.logPath)
		case <-deadline.C:
			return logLine{}, fmt.Errorf("cachesync did not log %q within %s; see %s", s, timeout, d.logPath)
		case <-ctx.Done():
			return logLine{}, ctx.Err()
		}
	}
}

// logged reports whether the daemon logged a line containing s.
func (d *daemon) logged(s string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.lines {
		if strings.Contains(l.text, s) {
			return true
		}
	}
	return false
}

// alive returns an error if the daemon has exited.
func (d *daemon) alive() error {
	select {
	case <-d.exited:
		return fmt.Errorf("cachesync exited: %v; see %s", d.err, d.logPath)
	default:
		return nil
	}
}

// stop reads the daemon's peak RSS and CPU time, then stops it with SIGTERM.
func (d *daemon) stop() (procStats, error) {
	ps, perr := readProc(d.cmd.Process.Pid)
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		d.kill()
		return ps, fmt.Errorf("cachesync did not stop within 20s of SIGTERM; killed")
	}
	return ps, perr
}

// stopDaemon stops the current daemon and returns its peak RSS and CPU time.
func (e *env) stopDaemon() (procStats, error) {
	d := e.daemon
	if d == nil {
		return procStats{}, errors.New("no daemon running")
	}
	e.daemon = nil
	return d.stop()
}

// stopStreaming is stopDaemon for a daemon meant to stream changes: one
// that rebuilt a cache instead voids the measurement (the sentinel comes
// from the snapshot, not the stream), which is an error.
func (e *env) stopStreaming() (procStats, error) {
	d := e.daemon
	ps, err := e.stopDaemon()
	if err == nil && d.logged(`msg="cache rebuilt"`) {
		err = fmt.Errorf("cachesync rebuilt the cache instead of streaming the changes, so this case measured a backfill; see %s", d.logPath)
	}
	return ps, err
}

// daemonCPU returns the CPU time so far of the running daemon.
func (e *env) daemonCPU() time.Duration {
	if e.daemon == nil {
		return 0
	}
	ps, _ := readProc(e.daemon.cmd.Process.Pid)
	return ps.CPU
}

// startPerf records the running daemon with perf (-perf) until the returned
// function is called; the profile lands in the work directory.
func (e *env) startPerf(name string) func() {
	if !e.perf || e.daemon == nil {
		return func() {}
	}
	out := filepath.Join(e.dir, "perf-"+name+".data")
	cmd := exec.Command("perf", "record", "-F", "499", "-g", "-o", out, "-p", strconv.Itoa(e.daemon.cmd.Process.Pid))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fmt.Println("   perf:", err)
		return func() {}
	}
	return func() {
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		fmt.Println("   perf profile:", out)
	}
}

// rssRow is the Results row of item 4 for the daemon of case what.
func rssRow(what string, ps procStats) row {
	return row{ID: "4", What: "Daemon peak RSS (VmHWM), " + what, Got: mib(ps.HWM), Ceiling: "—", Ratio: "—",
		Target: "< 200 MB", Met: yes(ps.HWM < 200e6)}
}

// ---- /proc ----

// procStats is what /proc says of a process.
type procStats struct {
	HWM int64         // peak resident set, bytes
	CPU time.Duration // user + system time
}

func readProc(pid int) (procStats, error) {
	var ps procStats
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			ps.HWM = kb << 10
		}
	}
	f := procStat(pid)
	if len(f) < 14 {
		return ps, fmt.Errorf("/proc/%d/stat: unreadable", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	ps.CPU = time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
	return ps, nil
}

// procStat returns the fields of /proc/PID/stat after the command name
// (which is in parentheses): utime is f[11], stime f[12]. It returns nil
// for a process that is gone.
func procStat(pid int) []string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}
