package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/dashboard"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestDashboard opens the daemon's page at / in headless Chromium (through
// chromedriver, the W3C WebDriver protocol) after the daemon has run with
// traffic for a few samples of its history, and checks from the DOM that
// the page is full at once: charts drawn from the history with a time
// axis, the change-feed lag in ms beside bytes, a cache's charts, "—" for
// the hit ratio of a cache never read, and the rebuild of the daemon's
// start as a marker. The screenshot is kept: $CACHESYNC_ARTIFACTS, or the
// system temp dir, /cachesync-artifacts/dashboard.png.
func TestDashboard(t *testing.T) {
	w := world.New(t, observeSchema)
	chromium, err1 := exec.LookPath("chromium")
	driver, err2 := exec.LookPath("chromedriver")
	if err1 != nil || err2 != nil {
		t.Fatalf("chromium and chromedriver are needed (make deps installs them): %v, %v", err1, err2)
	}
	d, base, _ := observe(w)
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(driver, fmt.Sprintf("--port=%d", port))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	started := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		runtime.LockOSThread() // Pdeathsig follows the forking thread
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(exited)
	}()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	wd := fmt.Sprintf("http://127.0.0.1:%d", port)
	call := func(method, path string, body any) map[string]any {
		t.Helper()
		var rd io.Reader
		if body != nil {
			js, _ := json.Marshal(body)
			rd = bytes.NewReader(js)
		}
		req, _ := http.NewRequest(method, wd+path, rd)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return map[string]any{"error": err.Error()}
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return out
	}
	world.WaitFor(t, "chromedriver answering", func() bool { return call("GET", "/status", nil)["value"] != nil })
	profile := t.TempDir()
	sess := call("POST", "/session", map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName": "chrome",
		"goog:chromeOptions": map[string]any{"binary": chromium, "args": []string{"--headless", "--no-sandbox", "--disable-gpu",
			"--disable-background-networking", "--disable-component-update", "--no-first-run", "--user-data-dir=" + profile, "--window-size=1280,1900"}},
	}}})
	v, _ := sess["value"].(map[string]any)
	id, _ := v["sessionId"].(string)
	if id == "" {
		t.Fatalf("no WebDriver session: %v", sess)
	}
	defer call("DELETE", "/session/"+id, nil)
	script := func(js string) any {
		t.Helper()
		return call("POST", "/session/"+id+"/execute/sync", map[string]any{"script": js, "args": []any{}})["value"]
	}

	// Traffic before the page opens: hits, misses, changes, write-behind.
	stop := make(chan struct{})
	traffic := make(chan struct{})
	go func() {
		defer close(traffic)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			httpDo(t, "GET", fmt.Sprintf("%s/v1/caches/p/p:%d", base, 1+i%100), "")
			if i%50 == 0 {
				w.DB.Exec(t.Context(), `UPDATE p SET v = v + 1 WHERE id = $1`, 1+i%100)
				httpDo(t, "PUT", fmt.Sprintf("%s/v1/caches/w/w:%d?mode=behind", base, i%10), fmt.Sprintf(`{"id": %d, "v": %d}`, i%10, i))
			}
			time.Sleep(2 * time.Millisecond) // the pace of the traffic, on purpose
		}
	}()
	defer func() { close(stop); <-traffic }()

	// The daemon samples every 5 s: wait until its history holds samples
	// with Gets in them, then open the page.
	var hist dashboard.Snapshot
	const samples = 4
	world.WaitFor(t, fmt.Sprintf("%d samples, Gets in the history", samples), func() bool {
		code, body := httpDo(t, "GET", base+"/v1/history", "")
		hist = dashboard.Snapshot{} // (Unmarshal would keep what a field left out does not overwrite)
		if code != 200 || json.Unmarshal([]byte(body), &hist) != nil || len(hist.Times) < samples {
			return false
		}
		for _, c := range hist.Charts {
			for _, s := range c.Series {
				if c.ID == "cache:p:gets" && s.Name == "hits" && slices.ContainsFunc(s.Values, func(v *float64) bool { return v != nil && *v > 0 }) {
					return true
				}
			}
		}
		return false
	})

	if r := call("POST", "/session/"+id+"/url", map[string]any{"url": base + "/"}); r["value"] != nil {
		t.Fatalf("navigate: %v", r)
	}
	var n float64
	if !world.Within(world.Patience, func() bool { n, _ = script(`return window.cachesyncPolls || 0`).(float64); return n >= 1 }) {
		t.Fatalf("the page drew nothing in %v; summary: %v", world.Patience, script(`return document.getElementById("summary").textContent`))
	}
	// What the page shows, read from its DOM.
	js := func(v any, js string) {
		t.Helper()
		b, _ := json.Marshal(script(js))
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", js, err)
		}
	}
	type figure struct {
		ID, Cache string
		Points    map[string]int    // by series: points drawn
		Legend    map[string]string // by series: the legend's current value
		Ticks     []string          // the time axis
		Markers   []string          // kind: text of each event drawn
	}
	var figs []figure
	js(&figs, `return [...document.querySelectorAll("figure")].map(f => ({
		ID: f.dataset.chart, Cache: f.dataset.cache || "",
		Points: [...f.querySelectorAll("polyline")].reduce((m, p) => (m[p.dataset.series] = (m[p.dataset.series] || 0) + Number(p.dataset.points), m), {}),
		Legend: Object.fromEntries([...f.querySelectorAll(".legend span")].map(s => [s.dataset.series, s.querySelector("b").textContent])),
		Ticks: [...f.querySelectorAll("text.tick-x")].map(t => t.textContent),
		Markers: [...f.querySelectorAll("line.event")].map(l => l.classList[1] + ": " + l.textContent),
	}))`)
	byID := map[string]figure{}
	for _, f := range figs {
		byID[f.ID] = f
	}
	// The overview's charts, full from the history: every sample drawn.
	for _, id := range []string{"hit", "lag_ms", "lag_bytes", "ops", "mem"} {
		f, ok := byID[id]
		if !ok {
			t.Errorf("no chart %s among %v", id, figs)
			continue
		}
		if len(f.Ticks) < 4 || !regexp.MustCompile(`^\d\d:\d\d$`).MatchString(f.Ticks[0]) {
			t.Errorf("chart %s: time axis %q", id, f.Ticks)
		}
	}
	// Every point the history held before the page opened is drawn.
	held := func(chart, series string) int {
		n := 0
		for _, c := range hist.Charts {
			for _, s := range c.Series {
				if c.ID == chart && s.Name == series {
					for _, v := range s.Values {
						if v != nil {
							n++
						}
					}
				}
			}
		}
		return n
	}
	for _, c := range []struct{ chart, series string }{{"mem", "used"}, {"lag_ms", "p"}, {"lag_bytes", "p"}, {"ops", "gets"}, {"cache:p:gets", "hits"}} {
		if got, want := byID[c.chart].Points[c.series], held(c.chart, c.series); got < want || want < samples-2 {
			t.Errorf("chart %s, %s: %d points drawn; the history held %d of %d samples before the page opened", c.chart, c.series, got, want, len(hist.Times))
		}
	}
	if ms, b := byID["lag_ms"].Legend["p"], byID["lag_bytes"].Legend["p"]; !regexp.MustCompile(`^[\d.]+k? ms$`).MatchString(ms) || !regexp.MustCompile(`^[\d.]+ (B|KiB|MiB)$`).MatchString(b) {
		t.Errorf("lag of p: %q and %q", ms, b)
	}
	// The caches' charts; w's queue; w
	// was never read: its hit ratio has no data.
	for _, id := range []string{"cache:p:ratio", "cache:p:fills", "cache:w:gets", "cache:w:ratio"} {
		if _, ok := byID[id]; !ok {
			t.Errorf("no chart %s", id)
		}
	}
	if _, ok := byID["cache:w:wb"].Legend["queue"]; !ok || byID["cache:w:wb"].Cache != "w" {
		t.Errorf("w's write-behind chart: %+v", byID["cache:w:wb"])
	}
	if got := byID["cache:w:ratio"].Legend["w"]; got != "—" {
		t.Errorf("hit ratio of w, never read: %q, want —", got)
	}
	// The rebuild of the daemon's start, a marker on the charts.
	if m := byID["ops"].Markers; !slices.ContainsFunc(m, func(s string) bool { return strings.HasPrefix(s, "rebuild: ") && strings.Contains(s, "rebuilt") }) {
		t.Errorf("markers on the throughput chart: %q", m)
	}
	rows := script(`return [...document.querySelectorAll("#caches tbody tr")].map(tr => [...tr.cells].map(c => c.textContent).join("|"))`)
	if r, _ := rows.([]any); len(r) != 2 || !strings.HasPrefix(fmt.Sprint(r[0]), "p|") || !strings.Contains(fmt.Sprint(r[0]), " ms|") || !strings.HasPrefix(fmt.Sprint(r[1]), "w|") || strings.Split(fmt.Sprint(r[1]), "|")[3] != "—" {
		t.Errorf("table rows: %q", rows)
	}
	// The page appends what the daemon samples after.
	before := byID["mem"].Points["used"]
	world.WaitFor(t, "the page appending a sample", func() bool {
		got, _ := script(`return Number(document.querySelector('figure[data-chart="mem"] polyline').dataset.points)`).(float64)
		return int(got) > before
	})
	shot, _ := call("GET", "/session/"+id+"/screenshot", nil)["value"].(string)
	png, err := base64.StdEncoding.DecodeString(shot)
	if err != nil || len(png) < 1000 {
		t.Fatalf("screenshot: %d bytes, %v", len(png), err)
	}
	dir := os.Getenv("CACHESYNC_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "cachesync-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err == nil {
		path := filepath.Join(dir, "dashboard.png")
		if err := os.WriteFile(path, png, 0o644); err == nil {
			t.Logf("screenshot: %s", path)
		}
	}
	d.Stop()
}

// TestHistoryTargets: with two targets, /v1/history has each cache's
// charts and lag, its Gets from the HTTP API, the rebuild of each target
// at the start as an event naming it, and target us going down as an
// event, while the daemon goes on.
func TestHistoryTargets(t *testing.T) {
	t.Parallel()
	w := world.New(t, targetsSchema)
	us := w.Target(testenv.StartRedis(t))
	d, base, _ := serve(w, twoTargets(w, us, targetsCaches), "")
	d.WaitLog("streaming changes")
	var hist dashboard.Snapshot
	read := func() bool {
		code, body := httpDo(t, "GET", base+"/v1/history", "")
		hist = dashboard.Snapshot{} // (Unmarshal would keep what a field left out does not overwrite)
		return code == 200 && json.Unmarshal([]byte(body), &hist) == nil
	}
	has := func(chart, series string, ok func(v float64) bool) bool {
		for _, c := range hist.Charts {
			for _, s := range c.Series {
				if c.ID == chart && s.Name == series && slices.ContainsFunc(s.Values, func(v *float64) bool { return v != nil && ok(*v) }) {
					return true
				}
			}
		}
		return false
	}
	event := func(kind, text string) bool {
		return slices.ContainsFunc(hist.Events, func(e dashboard.Event) bool { return e.Kind == kind && strings.Contains(e.Text, text) })
	}
	some := func(float64) bool { return true }
	for i := 1; i <= 20; i++ {
		httpDo(t, "GET", fmt.Sprintf("%s/v1/caches/prices/price:%d", base, i), "")
	}
	d.WaitFor("both caches' charts and lag, prices' Gets, both rebuilds in the history", func() bool {
		return read() && has("cache:prices:gets", "hits", func(v float64) bool { return v > 0 }) && has("cache:stock:gets", "hits", some) &&
			has("lag_ms", "prices", some) && has("lag_ms", "stock", some) &&
			event("rebuild", "(target eu)") && event("rebuild", "(target us)")
	})
	if err := us.Redis.Stop(); err != nil {
		t.Fatal(err)
	}
	d.WaitFor("an event: target us down", func() bool { return read() && event("down", "target us is down") })
	if event("down", "target eu") || event("down", "Redis") {
		t.Errorf("events: %+v, want only us down", hist.Events)
	}
	if d.Exited() {
		t.Fatalf("the daemon exited with us down:\n%s", d.Tail(20))
	}
	d.Stop()
}
