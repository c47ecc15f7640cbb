package main

import (
	"bufio"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/drain"
	"github.com/cachesync/cachesync/internal/status"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// observeSchema is the tables of observe's caches.
const observeSchema = `CREATE TABLE p (id int PRIMARY KEY, v int NOT NULL);
	INSERT INTO p SELECT g, g FROM generate_series(1, 100) g;
	CREATE TABLE w (id int PRIMARY KEY, v int NOT NULL)`

// observeCaches are a change-feed cache that refreshes on expiry and a
// write-behind cache.
const observeCaches = `  p: {table: p, key: "p:{id}", value: {columns: [id, v]}, ttl: 1h, refresh: on-expiry, fill: on-miss}
  w: {table: w, key: "w:{id}", value: {columns: [id, v]}, sync: none, writes: behind}
`

// observe runs a daemon with HTTP over observeCaches (w made by
// observeSchema), and returns it, its base URL and its config's path.
func observe(w *world.World) (*world.Proc, string, string) {
	w.T.Helper()
	d, base, cfg := serve(w, w.YAML(observeCaches), "")
	// p rebuilt (its keys cleared, then written): from now on its keys stay.
	// (Looking for a key would not tell: a miss is filled, fill: on-miss.)
	d.WaitLog("cache=p rows=100")
	return d, base, cfg
}

// httpDo sends a request (with an API key when one is given) and returns
// the status and body, or 0 and the error.
func httpDo(t testing.TB, method, url, body string, key ...string) (int, string) {
	t.Helper()
	return httpDoWith(t, http.DefaultClient, method, url, body, key...)
}

// httpDoWith is httpDo through client.
func httpDoWith(t testing.TB, client *http.Client, method, url, body string, key ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	for _, k := range key {
		req.Header.Set("Authorization", "Bearer "+k)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

// scrape reads /metrics into "name{labels}" → value.
func scrape(t *testing.T, base string) map[string]float64 {
	t.Helper()
	code, body := httpDo(t, "GET", base+"/metrics", "")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			m[line[:i]] = v
		}
	}
	return m
}

// TestMetricsMove: /metrics counts hits, misses, a change, a refresh and a
// write-behind entry as they happen, and /v1/status and `cachesync status`
// show the caches.
func TestMetricsMove(t *testing.T) {
	w := world.New(t, observeSchema)
	d, base, cfg := observe(w)
	before := scrape(t, base)
	for _, name := range []string{
		`cachesync_gets_total{cache="p",result="hit",target=""}`, `cachesync_changefeed_rows_applied_total{source="db",target=""}`,
		`cachesync_redis_used_memory_bytes`, `cachesync_writebehind_pending{cache="w"}`, `cachesync_refresh_keys_total{cache="p",result="refreshed",target=""}`,
		`cachesync_get_duration_seconds_count{cache="p",target=""}`, `cachesync_changefeed_lag_bytes{source="db",target=""}`,
	} {
		if _, ok := before[name]; !ok {
			t.Errorf("no %s in /metrics", name)
		}
	}
	// moved waits until metric name grew by at least want since before.
	moved := func(name string, want float64) {
		t.Helper()
		var now map[string]float64
		if !world.Within(world.Patience, func() bool { now = scrape(t, base); return now[name]-before[name] >= want }) {
			t.Fatalf("%s went from %v to %v, want +%v", name, before[name], now[name], want)
		}
	}
	for range 3 {
		if code, body := httpDo(t, "GET", base+"/v1/caches/p/p:1", ""); code != 200 {
			t.Fatalf("GET p:1: %d %s", code, body)
		}
	}
	moved(`cachesync_gets_total{cache="p",result="hit",target=""}`, 3)
	w.Do(w.RC.B().Del().Key("p:2").Build())
	if code, _ := httpDo(t, "GET", base+"/v1/caches/p/p:2", ""); code != 200 {
		t.Fatal("GET p:2 after its key was deleted")
	}
	moved(`cachesync_gets_total{cache="p",result="miss",target=""}`, 1)
	moved(`cachesync_fills_total{cache="p",target=""}`, 1)
	w.Exec(`UPDATE p SET v = -3 WHERE id = 3`)
	moved(`cachesync_changefeed_rows_applied_total{source="db",target=""}`, 1)
	moved(`cachesync_changefeed_transactions_total{source="db",target=""}`, 1)
	w.Do(w.RC.B().Pexpire().Key("p:4").Milliseconds(1).Build())
	moved(`cachesync_refresh_keys_total{cache="p",result="refreshed",target=""}`, 1)
	if code, body := httpDo(t, "PUT", base+"/v1/caches/w/w:1?mode=behind", `{"id": 1, "v": 5}`); code != 204 {
		t.Fatalf("PUT behind: %d %s", code, body)
	}
	moved(`cachesync_writebehind_drained_total{cache="w",target=""}`, 1)

	code, body := httpDo(t, "GET", base+"/v1/status", "")
	var r status.Report
	if code != 200 || json.Unmarshal([]byte(body), &r) != nil {
		t.Fatalf("/v1/status: %d %s", code, body)
	}
	if len(r.Caches) != 2 || r.Caches[0].Name != "p" || r.Caches[0].Keys != 100 || r.Caches[0].HitRatio == nil || r.Caches[0].LagBytes == nil ||
		r.Caches[1].Queue == nil || !r.Redis.Up || !r.Live {
		t.Fatalf("/v1/status: %s", body)
	}
	// The Grafana dashboard uses only these metrics.
	scraped := scrape(t, base)
	for _, name := range regexp.MustCompile(`cachesync_[a-z_]+`).FindAllString(readFile(t, "../../docs/grafana.json"), -1) {
		found := false
		for series := range scraped {
			found = found || strings.HasPrefix(series, name+"{") || series == name
		}
		if !found {
			t.Errorf("docs/grafana.json uses %s, which /metrics does not serve", name)
		}
	}
	codeCLI, out, errOut := world.CLI(t, nil, "status", "--config", cfg)
	if codeCLI != 0 || !strings.Contains(out, "CACHE") || !strings.Contains(out, "changefeed, refresh on-expiry, fill on-miss, ttl 1h0m0s") || !strings.Contains(out, "% of ") {
		t.Fatalf("cachesync status: exit %d\n%s%s", codeCLI, out, errOut)
	}
	d.Stop()
	// Without the daemon, status reads Redis and PostgreSQL itself.
	codeCLI, out, errOut = world.CLI(t, nil, "status", "--config", cfg, "--json")
	if codeCLI != 0 || json.Unmarshal([]byte(out), &r) != nil || r.Live || r.Caches[0].Keys != 100 {
		t.Fatalf("cachesync status --json without a daemon: exit %d\n%s%s", codeCLI, out, errOut)
	}
}

// TestCheckCommand: cachesync check exits 0 on a consistent cache, 3 with
// a planted difference (named), and repairs it with --repair.
func TestCheckCommand(t *testing.T) {
	w := world.New(t, observeSchema)
	d, _, cfg := observe(w)
	w.Exec(`CREATE TABLE q (id int PRIMARY KEY, v int NOT NULL); INSERT INTO q SELECT g, g FROM generate_series(1, 50) g`)
	cfg2 := strings.Replace(readFile(t, cfg), "caches:\n", "caches:\n  q: {table: q, key: \"q:{id}\", value: {columns: [id, v]}}\n", 1)
	d.Stop()
	cfg = w.WriteYAML(cfg2)
	d = w.Daemon(cfg)
	d.WaitLog("cachesync running")
	d.WaitFor("check passing on a fresh cache", func() bool { code, _, _ := world.CLI(t, nil, "check", "--config", cfg, "q"); return code == 0 })
	w.Do(w.RC.B().Set().Key("q:5").Value(`{"id":5,"v":0}`).Build())
	code, out, errOut := world.CLI(t, nil, "check", "--config", cfg, "q")
	if code != 3 || !strings.Contains(out, "stale: 1, e.g. q:5") {
		t.Fatalf("check with a stale key: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut = world.CLI(t, nil, "check", "--config", cfg, "--repair", "q"); code != 0 || !strings.Contains(out, "repaired: 1") {
		t.Fatalf("check --repair: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = world.CLI(t, nil, "check", "--config", cfg, "--json", "q")
	type count struct{ Count int }
	var reports []struct {
		Cache                 string
		Keys                  int `json:"keys_checked"`
		Missing, Stale, Extra count
	}
	if err := json.Unmarshal([]byte(out), &reports); code != 0 || err != nil || len(reports) != 1 || reports[0].Cache != "q" || reports[0].Keys == 0 || reports[0].Stale.Count != 0 {
		t.Fatalf("check --json after the repair: exit %d, %v\n%s%s", code, err, out, errOut)
	}
	// A write-behind cache's queued writes are newer than their rows: no repairs there.
	if code, out, errOut = world.CLI(t, nil, "check", "--config", cfg, "--repair", "w"); code != 1 || !strings.Contains(errOut, "writes: behind") {
		t.Fatalf("check --repair of a write-behind cache: exit %d\n%s%s", code, out, errOut)
	}
	d.Stop()
	// With the daemon stopped a write-behind write stays queued: its key
	// holds a value its table has no row for yet, and check says nothing.
	conf, err := config.LoadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Open(conf).PutBehind(t.Context(), "w", map[string]any{"id": 77, "v": 1}); err != nil {
		t.Fatal(err)
	}
	if _, ok := w.Get("w:77"); !ok {
		t.Fatal("w:77 is not in Redis after PutBehind")
	}
	if q := drain.Queues(t.Context(), w.RC, conf); q["w"].Pending != 1 {
		t.Fatalf("queue of w: %+v; want the one write", q)
	}
	// (Its keys compared, the queued one among them: not skipped.)
	code, out, errOut = world.CLI(t, nil, "check", "--config", cfg, "--json", "w")
	reports = nil
	if err := json.Unmarshal([]byte(out), &reports); code != 0 || err != nil || len(reports) != 1 || reports[0].Keys == 0 ||
		reports[0].Missing.Count+reports[0].Stale.Count+reports[0].Extra.Count != 0 {
		t.Fatalf("check of a write-behind cache with a queued write: exit %d, %v\n%s%s", code, err, out, errOut)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestConsistencyMetrics: the daemon checks keys all the time; /metrics
// shows how many, and counts a value planted behind its back once it is
// found (and still wrong when read again).
func TestConsistencyMetrics(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(100))
	_, base, _ := serve(w, w.YAML(itemsCaches), "consistency: {sample_rate: 200}\n")
	waitItems(w)
	checked, bad, nines := `cachesync_consistency_checked_total{cache="items",target=""}`, `cachesync_consistency_inconsistent_total{cache="items",target=""}`, `cachesync_consistency_nines{cache="items",target=""}`
	var m map[string]float64
	world.WaitFor(t, "keys checked", func() bool { m = scrape(t, base); return m[checked] > 0 })
	if m[bad] != 0 || m[nines] <= 0 {
		t.Fatalf("a consistent cache: %s %v, %s %v", bad, m[bad], nines, m[nines])
	}
	w.Do(w.RC.B().Set().Key("item:5").Value("planted").Build())
	world.WaitFor(t, "the planted value counted", func() bool { m = scrape(t, base); return m[bad] > 0 })
	if n := m[nines]; n <= 0 || n > math.Log10(m[checked]) {
		t.Fatalf("%s = %v with %v of %v keys inconsistent", nines, n, m[bad], m[checked])
	}
}

// TestTargetMetrics: with two targets, eu and us, us down at the start,
// the figures of what the daemon runs for each target carry its name.
// Before us answers none has target="us"; once it does, its keymiss
// listener, engine and refresher are in /metrics as soon as they run:
// a fill and a refresh in us count there, and prices, held by both, has a
// series per target. /v1/status gives each cache the counts of its first
// target: stock's (us only) refresh and fill are there, prices' (eu
// first) not.
func TestTargetMetrics(t *testing.T) {
	t.Parallel()
	w := world.New(t, targetsSchema)
	us := w.Target(testenv.StartRedis(t))
	if err := us.Redis.Stop(); err != nil {
		t.Fatal(err)
	}
	caches := `  prices: {table: prices, key: "price:{id}", value: {format: string, column: price}, sync: none, ttl: 1h, refresh: on-expiry}
  stock: {table: stock, key: "stock:{id}", value: {format: string, column: n}, sync: none, targets: [us], fill: on-miss, ttl: 1h, refresh: on-expiry}
`
	d, base, _ := serve(w, twoTargets(w, us, caches), "")
	d.WaitLog("redis target does not answer")
	m := scrape(t, base)
	if _, ok := m[`cachesync_refresh_keys_total{cache="prices",result="refreshed",target="eu"}`]; !ok {
		t.Errorf("/metrics lacks eu's refreshes of prices")
	}
	for series := range m {
		if strings.Contains(series, `target="us"`) {
			t.Errorf("/metrics has %s before us answered", series)
		}
	}

	if err := us.Redis.Start(); err != nil {
		t.Fatal(err)
	}
	d.WaitFor("us's keymiss listener in /metrics", func() bool {
		_, ok := scrape(t, base)[`cachesync_keymiss_events_total{fate="received",target="us"}`]
		return ok
	})
	d.WaitFor("stock:7 filled in us after a miss there", func() bool { v, _ := us.Get("stock:7"); return v == "70" })
	// Keys that expire in us: the refresher writes them back.
	for _, key := range []string{"stock:8", "price:2"} {
		if err := us.RC.Do(t.Context(), us.RC.B().Set().Key(key).Value("set by hand").Px(100*time.Millisecond).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		`cachesync_keymiss_events_total{fate="filled",target="us"}`,
		`cachesync_fills_total{cache="stock",target="us"}`,
		`cachesync_refresh_keys_total{cache="stock",result="refreshed",target="us"}`,
		`cachesync_refresh_keys_total{cache="prices",result="refreshed",target="us"}`,
	}
	d.WaitFor("us's fill and refreshes counted", func() bool {
		m = scrape(t, base)
		for _, series := range want {
			if m[series] < 1 {
				return false
			}
		}
		return true
	})
	if n, ok := m[`cachesync_refresh_keys_total{cache="prices",result="refreshed",target="eu"}`]; !ok || n != 0 {
		t.Errorf("eu's refreshes of prices: %v (present %v), want 0: nothing expired in eu", n, ok)
	}
	if _, ok := m[`cachesync_refresh_keys_total{cache="stock",result="refreshed",target="eu"}`]; ok {
		t.Errorf("/metrics counts refreshes of stock in eu, which does not hold it")
	}

	code, body := httpDo(t, "GET", base+"/v1/status", "")
	var r status.Report
	if code != 200 || json.Unmarshal([]byte(body), &r) != nil || len(r.Caches) != 2 {
		t.Fatalf("/v1/status: %d %s", code, body)
	}
	prices, stock := r.Caches[0], r.Caches[1]
	if stock.Name != "stock" || stock.Refreshed < 1 || stock.Fills < 1 {
		t.Errorf("/v1/status: stock's refresh and fill in us not counted:\n%s", body)
	}
	if prices.Name != "prices" || prices.Refreshed != 0 {
		t.Errorf("/v1/status: prices' refreshed is %d, want 0 (eu's, its first target):\n%s", prices.Refreshed, body)
	}
	d.Stop()
}
