package main

import (
	"bufio"
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestMain lets the test binary be the demo itself: run with
// CACHESYNC_DEMO_MAIN=1 it runs the demo's main, signal handling and all.
func TestMain(m *testing.M) {
	if os.Getenv("CACHESYNC_DEMO_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	code := m.Run()
	world.RemoveBinary()
	os.Exit(code)
}

// TestDemoFromCloneIn0700Dir is the demo's start from a clone inside a 0700
// directory (issue 12, item 9): as root, say in /root, PostgreSQL runs as
// the postgres user, who cannot reach anything under that directory. The
// demo must still start its servers and do its first step (a price change
// landing in Redis), stop cleanly on Ctrl-C (SIGINT to its process group,
// as a terminal sends it), and leave nothing behind: no file in the clone,
// no temp dir, no process.
func TestDemoFromCloneIn0700Dir(t *testing.T) {
	testenv.NeedServers(t) // the demo starts them
	if os.Geteuid() != 0 {
		t.Log("not root: PostgreSQL runs as us, so the postgres-user path is not exercised")
	}
	private := t.TempDir()
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	clone := filepath.Join(private, "clone")
	for _, d := range []string{"examples", "bin"} {
		if err := os.MkdirAll(filepath.Join(clone, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"grocery.sql", "grocery.yaml"} {
		data, err := os.ReadFile(filepath.Join("..", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(clone, "examples", f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	binary, err := os.ReadFile(world.Binary(t))
	if err == nil {
		err = os.WriteFile(filepath.Join(clone, "bin", "cachesync"), binary, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	cloneBefore := tree(t, clone)

	// The demo's temp dirs land in a TMPDIR of the test's own (searchable
	// by the postgres user, as /tmp is), so whatever it leaves is seen.
	tmp, err := os.MkdirTemp("", "cachesync-demotest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatal(err)
	}

	// Whatever a failed run leaves running is killed at the end.
	t.Cleanup(func() {
		for _, p := range processesUnder(private, tmp) {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	})

	// stdout is a pipe of our own, not cmd.StdoutPipe, so that a process
	// left holding it cannot make the test wait: we stop reading once we
	// have what we want or the demo has exited.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command(os.Args[0])
	cmd.Dir = clone
	cmd.Env = append(os.Environ(), "CACHESYNC_DEMO_MAIN=1", "TMPDIR="+tmp)
	var stderr testenv.LogBuffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,            // a process group of its own, as a shell's job
		Pdeathsig: syscall.SIGKILL, // should the test die first
	}
	err = cmd.Start()
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	lines, done := make(chan string), make(chan struct{})
	defer close(done)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-done:
				return
			}
		}
	}()

	// Up to its first step: the price change landing in Redis.
	var out strings.Builder
	for ready := false; !ready; {
		select {
		case line := <-lines:
			out.WriteString(line + "\n")
			ready = strings.HasPrefix(line, "Press Ctrl-C")
		case err := <-exited:
			t.Fatalf("the demo ended (%v) before it was up:\n--- stdout ---\n%s--- stderr ---\n%s", err, out.String(), stderr.String())
		}
	}
	t.Logf("the demo's output up to Ctrl-C:\n%s", out.String())
	for _, want := range []string{"loaded the grocery catalog", "Redis holds price:apple = {", "->  price:apple = {", "landed in"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}

	// Ctrl-C, as a user ends the demo: the terminal sends SIGINT to the
	// whole foreground process group, cachesync included.
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	go func() {
		for range lines { // drain
		}
	}()
	if err := <-exited; err != nil {
		t.Errorf("the demo exited with %v after SIGINT:\n%s", err, stderr.String())
	}

	if left, err := os.ReadDir(tmp); err != nil || len(left) > 0 {
		t.Errorf("the demo left in TMPDIR: %v %v", left, err)
	}
	if after := tree(t, clone); !slices.Equal(after, cloneBefore) {
		t.Errorf("the demo changed the clone: %q, was %q", after, cloneBefore)
	}
	if procs := processesUnder(private, tmp); len(procs) > 0 {
		t.Errorf("processes left behind: %+v", procs)
	}
}

// tree lists the paths under dir, relative to it.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var paths []string
	err := filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path != dir {
			rel, _ := filepath.Rel(dir, path)
			paths = append(paths, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

// processesUnder lists the processes other than ours whose working
// directory or command line is under one of dirs.
func processesUnder(dirs ...string) []process {
	var found []process
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cwd, _ := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
		for _, d := range dirs {
			if cwd == d || strings.HasPrefix(cwd, d+"/") || strings.Contains(args, d) {
				found = append(found, process{pid, args})
				break
			}
		}
	}
	return found
}

type process struct {
	pid  int
	args string
}
