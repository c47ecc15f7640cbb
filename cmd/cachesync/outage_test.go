package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv/world"
)

// outageClientTimeout bounds each request of the outage tests. The daemon
// gives up on a request after 25 s (httpapi's requestTimeout): a status
// that waits for a server that does not answer until then fails here,
// while one that waits only its own probe deadline (about a second) passes
// with a wide margin on a busy machine.
const outageClientTimeout = 20 * time.Second

// outageGet GETs base+path with outageClientTimeout and returns the body;
// it fails the test when no complete 200 answer comes. It logs how long
// the request took (a figure to read, not to assert).
func outageGet(t *testing.T, base, path string) string {
	t.Helper()
	client := &http.Client{Timeout: outageClientTimeout}
	start := time.Now()
	resp, err := client.Get(base + path)
	if err != nil {
		t.Fatalf("GET %s: no answer (after %v): %v", path, time.Since(start).Round(time.Millisecond), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	took := time.Since(start).Round(time.Millisecond)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d after %v, %v: %s", path, resp.StatusCode, took, err, body)
	}
	t.Logf("GET %s answered in %v", path, took)
	return string(body)
}

// outageReport is what the outage tests read of a /v1/status report.
type outageReport struct {
	Redis struct {
		Up    bool   `json:"up"`
		Error string `json:"error"`
	} `json:"redis"`
	Sources map[string]struct {
		Up    bool   `json:"up"`
		Error string `json:"error"`
	} `json:"sources"`
	Caches []json.RawMessage `json:"caches"`
}

// outageAttempts is how many times a test reads a status or metrics again
// until a server that runs is reported up: on a busy machine it may miss
// the daemon's one-second deadline now and then.
const outageAttempts = 10

// outageStatus reads /v1/status until ok holds of it, outageAttempts
// times at most; each answer must be complete.
func outageStatus(t *testing.T, base, what string, ok func(*outageReport) bool) *outageReport {
	t.Helper()
	var body string
	for range outageAttempts {
		body = outageGet(t, base, "/v1/status")
		var r outageReport
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			t.Fatalf("/v1/status: %v: %s", err, body)
		}
		if len(r.Caches) != 2 {
			t.Fatalf("/v1/status is not complete, want caches p and w: %s", body)
		}
		if ok(&r) {
			return &r
		}
	}
	t.Fatalf("%s: /v1/status %d times: %s", what, outageAttempts, body)
	return nil
}

// outageMetrics reads /metrics until it has each of want, outageAttempts
// times at most; each answer must be complete.
func outageMetrics(t *testing.T, base string, want ...string) {
	t.Helper()
	var missing []string
	for range outageAttempts {
		body := outageGet(t, base, "/metrics")
		// Complete: the figures read without a server are there too.
		if !strings.Contains(body, `cachesync_gets_total{cache="p",result="hit",target=""}`) || !strings.Contains(body, "go_goroutines") {
			t.Fatalf("/metrics is not complete (the end of it):\n%s", body[max(0, len(body)-2000):])
		}
		missing = missing[:0]
		for _, w := range want {
			if !strings.Contains(body, "\n"+w+"\n") {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			return
		}
	}
	t.Errorf("/metrics %d times lacks %q", outageAttempts, missing)
}

// unreachable checks that a server's error in the status says so.
func unreachable(t *testing.T, server, got string) {
	t.Helper()
	if !strings.HasPrefix(got, "unreachable: ") {
		t.Errorf("%s error in /v1/status = %q, want unreachable: ...", server, got)
	}
}

// outageCLI runs `cachesync status` against the running daemon and checks
// that it finishes and prints each of want.
func outageCLI(t *testing.T, cfg string, want ...string) {
	t.Helper()
	start := time.Now()
	code, out, errOut := world.CLI(t, nil, "status", "--config", cfg)
	t.Logf("cachesync status finished in %v", time.Since(start).Round(time.Millisecond))
	if code != 0 {
		t.Fatalf("cachesync status: exit %d\n%s%s", code, out, errOut)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("cachesync status lacks %q:\n%s", w, out)
		}
	}
}

// redisDown checks that the status, the metrics and `cachesync status` of
// the daemon at base (of config cfg) say that Redis is unreachable, and
// that PostgreSQL is up.
func redisDown(t *testing.T, base, cfg, what string) {
	t.Helper()
	r := outageStatus(t, base, what+", source db up", func(r *outageReport) bool { return r.Sources["db"].Up })
	if r.Redis.Up {
		t.Errorf("%s: /v1/status says Redis is up", what)
	}
	unreachable(t, "redis", r.Redis.Error)
	outageMetrics(t, base, "cachesync_redis_up 0", `cachesync_source_up{source="db"} 1`)
	outageCLI(t, cfg, "Redis: DOWN (unreachable: ")
}

// TestOutageRedisStopped: with Redis stopped, /v1/status and /metrics
// answer within their own deadline, say that Redis is unreachable, and
// still report PostgreSQL's state; so does `cachesync status`.
func TestOutageRedisStopped(t *testing.T) {
	w := world.New(t, observeSchema)
	_, base, cfg := observe(w)
	if err := w.Redis.Stop(); err != nil {
		t.Fatal(err)
	}
	redisDown(t, base, cfg, "redis stopped")

	// Back up, it says so again.
	if err := w.Redis.Start(); err != nil {
		t.Fatal(err)
	}
	outageStatus(t, base, "redis restarted", func(r *outageReport) bool { return r.Redis.Up && r.Redis.Error == "" })
}

// TestOutageRedisHung: a Redis that accepts connections but never answers
// (SIGSTOPped) is reported unreachable once the probe's deadline passes,
// instead of holding the request until the daemon gives up on it.
func TestOutageRedisHung(t *testing.T) {
	w := world.New(t, observeSchema)
	_, base, cfg := observe(w)
	pid := w.Redis.PID()
	if pid == 0 {
		t.Fatal("redis is not running")
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Runs before the daemons are killed and Redis is stopped.
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	redisDown(t, base, cfg, "redis hung")
}

// TestOutagePostgresStopped: with PostgreSQL stopped, /v1/status and
// /metrics say that the source is unreachable and still report Redis.
func TestOutagePostgresStopped(t *testing.T) {
	w, pg := world.NewOwnPostgres(t, observeSchema)
	_, base, cfg := observe(w)
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	r := outageStatus(t, base, "postgres stopped, redis up", func(r *outageReport) bool { return r.Redis.Up })
	s, ok := r.Sources["db"]
	if !ok || s.Up {
		t.Errorf("/v1/status: source db = %+v (%v), want down", s, ok)
	}
	unreachable(t, "source db", s.Error)
	outageMetrics(t, base, "cachesync_redis_up 1", `cachesync_source_up{source="db"} 0`)
	outageCLI(t, cfg, "source db: DOWN (unreachable: ")
}
