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
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestDashboard drives the daemon's page at / in headless Chromium (through
// chromedriver, the W3C WebDriver protocol) while requests flow, and checks
// that every chart has drawn points from the running daemon and the table
// lists the caches. The screenshot is kept: $CACHESYNC_ARTIFACTS, or the
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
			"--disable-background-networking", "--disable-component-update", "--no-first-run", "--user-data-dir=" + profile, "--window-size=1280,1000"}},
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

	// Traffic while the page watches: hits, misses, a change, write-behind.
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

	if r := call("POST", "/session/"+id+"/url", map[string]any{"url": base + "/"}); r["value"] != nil {
		t.Fatalf("navigate: %v", r)
	}
	var n float64
	if !world.Within(world.Patience, func() bool { n, _ = script(`return window.cachesyncPoints || 0`).(float64); return n >= 4 }) {
		t.Fatalf("the page drew %v reports in %v; summary: %v", n, world.Patience, script(`return document.getElementById("summary").textContent`))
	}
	// Every chart has points, and pixels drawn along a line.
	charts := script(`return [...document.querySelectorAll("canvas")].map(c => {
		const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
		let ink = 0;
		for (let i = 3; i < d.length; i += 4) if (d[i] > 0) ink++;
		return {id: c.id, points: Number(c.dataset.points || 0), ink};
	})`)
	list, _ := charts.([]any)
	if len(list) != 5 {
		t.Fatalf("charts: %v", charts)
	}
	for _, c := range list {
		m := c.(map[string]any)
		if m["points"].(float64) < 3 || m["ink"].(float64) < 200 {
			t.Errorf("chart %v drew %v points, %v pixels", m["id"], m["points"], m["ink"])
		}
	}
	rows := script(`return [...document.querySelectorAll("#caches tbody tr")].map(tr => tr.cells[0].textContent + " " + tr.cells[2].textContent)`)
	if r, _ := rows.([]any); len(r) != 2 || r[0] != "p 100" || !strings.HasPrefix(fmt.Sprint(r[1]), "w ") {
		t.Errorf("table rows: %v", rows) // w's key count is whatever the last count saw
	}
	hit := script(`return document.querySelector("#caches tbody tr").cells[3].textContent`)
	if s, _ := hit.(string); len(s) < 3 || s[0] == '-' {
		t.Errorf("hit ratio cell %q", hit)
	}
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
