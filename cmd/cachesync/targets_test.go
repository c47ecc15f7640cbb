package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// targetsSchema is the tables of targetsCaches.
const targetsSchema = `CREATE TABLE prices (id int PRIMARY KEY, price text NOT NULL);
	INSERT INTO prices SELECT g, g || '.99' FROM generate_series(1, 50) g;
	CREATE TABLE stock (id int PRIMARY KEY, n int NOT NULL);
	INSERT INTO stock SELECT g, g * 10 FROM generate_series(1, 50) g`

// targetsCaches are a cache in both targets and one in the second only.
const targetsCaches = `  prices: {table: prices, key: "price:{id}", value: {format: string, column: price}}
  stock: {table: stock, key: "stock:{id}", value: {format: string, column: n}, targets: [us]}
`

// twoTargets is a config of the world with two Redis targets: eu, the
// world's own Redis, and us, the world us.
func twoTargets(w, us *world.World, caches string) string {
	return w.TargetsYAML(caches, fmt.Sprintf("name: eu, url: %q", w.Redis.URL()), fmt.Sprintf("name: us, url: %q", us.Redis.URL()))
}

// TestTwoTargets: one daemon, two Redis targets. prices lives in both,
// stock in us only. After inserts, updates and deletes each Redis holds
// exactly the rows of its caches (eu no stock key). cachesync check
// passes in both, then reports a key deleted behind cachesync's back in
// us, naming that target; cachesync status lists both targets.
func TestTwoTargets(t *testing.T) {
	t.Parallel()
	w := world.New(t, targetsSchema)
	us := w.Target(testenv.StartRedis(t))
	usRC := us.RC
	d, _, cfg := serve(w, twoTargets(w, us, targetsCaches), "")
	d.WaitLog("streaming changes")

	w.Exec(`INSERT INTO prices VALUES (51, '51.50'), (52, '52.50')`)
	w.Exec(`UPDATE prices SET price = price || '!' WHERE id % 7 = 0`)
	w.Exec(`DELETE FROM prices WHERE id BETWEEN 10 AND 14`)
	w.Exec(`INSERT INTO stock VALUES (51, 1)`)
	w.Exec(`UPDATE stock SET n = n + 1 WHERE id % 5 = 0`)
	w.Exec(`DELETE FROM stock WHERE id > 45 AND id < 51`)

	prices := func() map[string]string { return w.Rows(`SELECT 'price:' || id, price FROM prices`) }
	both := func() map[string]string {
		m := prices()
		for k, v := range w.Rows(`SELECT 'stock:' || id, n::text FROM stock`) {
			m[k] = v
		}
		return m
	}
	w.WaitEqual("*", prices)
	us.WaitEqual("*", both)

	code, out, errOut := world.CLI(t, nil, "check", "--config", cfg)
	if code != 0 {
		t.Fatalf("check: exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"prices in target eu: consistent", "prices in target us: consistent", "stock in target us: consistent"} {
		if !strings.Contains(out, want) {
			t.Errorf("check's output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "stock in target eu") {
		t.Errorf("check checked stock in eu, which does not hold it:\n%s", out)
	}

	// A key deleted behind cachesync's back, in us only.
	if err := usRC.Do(t.Context(), usRC.B().Del().Key("price:3").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = world.CLI(t, nil, "check", "--config", cfg, "--json", "prices")
	if code != 3 {
		t.Fatalf("check after a key was deleted in us: exit %d, want 3\n%s%s", code, out, errOut)
	}
	var reports []struct {
		Target  string `json:"target"`
		Cache   string `json:"cache"`
		Missing struct {
			Count    int      `json:"count"`
			Examples []string `json:"examples"`
		} `json:"missing"`
	}
	if err := json.Unmarshal([]byte(out), &reports); err != nil {
		t.Fatalf("check --json: %v\n%s", err, out)
	}
	missing := map[string][]string{}
	for _, r := range reports {
		missing[r.Target] = r.Missing.Examples
	}
	if len(reports) != 2 || len(missing["eu"]) != 0 || !slices.Equal(missing["us"], []string{"price:3"}) {
		t.Errorf("check --json prices: want price:3 missing in us and nothing in eu, got\n%s", out)
	}
	code, out, _ = world.CLI(t, nil, "check", "--config", cfg, "prices")
	if code != 3 || !strings.Contains(out, "prices in target us: INCONSISTENT") || !strings.Contains(out, "missing: 1, e.g. price:3") {
		t.Errorf("check prices: exit %d, want 3 naming target us:\n%s", code, out)
	}

	st, out := statusOf(t, cfg)
	var names []string
	for _, tg := range st.Targets {
		names = append(names, tg.Name)
		src, ok := tg.Sources["db"]
		if !tg.Up || !ok || src.Applied == 0 || src.Away {
			t.Errorf("status: target %s is not up with source db applied and not away:\n%s", tg.Name, out)
		}
	}
	if !st.Live || !st.Redis.Up || !slices.Equal(names, []string{"eu", "us"}) {
		t.Errorf("status: want the daemon's report, redis up, targets eu and us:\n%s", out)
	}
	d.Stop()
}

// targetStatus is what the targets tests read of a status report.
type targetStatus struct {
	Live  bool `json:"live"`
	Redis struct {
		Up bool `json:"up"`
	} `json:"redis"`
	Targets []struct {
		Name    string `json:"name"`
		Up      bool   `json:"up"`
		Error   string `json:"error"`
		Sources map[string]struct {
			Applied uint64 `json:"applied_lsn"`
			Away    bool   `json:"away"`
		} `json:"sources"`
	} `json:"targets"`
}

// statusOf runs cachesync status --json on cfg.
func statusOf(t *testing.T, cfg string) (*targetStatus, string) {
	t.Helper()
	code, out, errOut := world.CLI(t, nil, "status", "--config", cfg, "--json")
	if code != 0 {
		t.Fatalf("status: exit %d\n%s%s", code, out, errOut)
	}
	var st targetStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return &st, out
}

// TestTwoTargetsServe: the daemon serves each target's caches without the
// change feed (stock in us and stock_eu in eu share their key names). In us, which alone holds stock, a miss of a stock key is
// filled (its keymiss listener) and a stock key that expires is refreshed
// (its refresher). cachesync check finds a stale key in us, naming the
// target, and checks stock in us only. cachesync status lists both
// targets, and with us stopped says it is down while eu is up, the
// daemon running on.
func TestTwoTargetsServe(t *testing.T) {
	t.Parallel()
	w := world.New(t, targetsSchema)
	us := w.Target(testenv.StartRedis(t))
	usRC := us.RC
	caches := `  prices: {table: prices, key: "price:{id}", value: {format: string, column: price}, sync: none}
  stock: {table: stock, key: "stock:{id}", value: {format: string, column: n}, sync: none, targets: [us], fill: on-miss, ttl: 1h, refresh: on-expiry}
  stock_eu: {table: stock, key: "stock:{id}", value: {columns: [id, n]}, sync: none, targets: [eu]}
`
	d, _, cfg := serve(w, twoTargets(w, us, caches), "")
	get := func(rc rueidis.Client, key string) string {
		v, _ := rc.Do(t.Context(), rc.B().Get().Key(key).Build()).ToString()
		return v
	}
	d.WaitFor("stock:7 filled in us after a miss there", func() bool { return get(usRC, "stock:7") == "70" })
	if err := usRC.Do(t.Context(), usRC.B().Set().Key("stock:8").Value("set by hand").Px(300*time.Millisecond).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	d.WaitFor("stock:8 refreshed in us once it expired", func() bool { return get(usRC, "stock:8") == "80" })
	if v := get(w.RC, "stock:7"); v != "" {
		t.Errorf("eu holds stock:7 = %q; it holds no stock (and stock_eu fills on no miss)", v)
	}

	w.Do(w.RC.B().Set().Key("price:1").Value("1.99").Build())
	if err := usRC.Do(t.Context(), usRC.B().Set().Key("price:1").Value("9.99").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := world.CLI(t, nil, "check", "--config", cfg)
	if code != 3 {
		t.Fatalf("check: exit %d, want 3\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"prices in target eu: consistent", "prices in target us: INCONSISTENT", "stale: 1, e.g. price:1", "stock in target us: consistent", "stock_eu in target eu: consistent"} {
		if !strings.Contains(out, want) {
			t.Errorf("check's output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "stock in target eu") {
		t.Errorf("check checked stock in eu, which does not hold it:\n%s", out)
	}

	st, out := statusOf(t, cfg)
	if !st.Live || len(st.Targets) != 2 || st.Targets[0].Name != "eu" || st.Targets[1].Name != "us" || !st.Targets[0].Up || !st.Targets[1].Up {
		t.Errorf("status: want the daemon's report with targets eu and us up:\n%s", out)
	}
	if err := us.Redis.Stop(); err != nil {
		t.Fatal(err)
	}
	// (A status read may miss its deadline on a busy machine: read again.)
	d.WaitFor("status: us down, eu up", func() bool {
		st, out = statusOf(t, cfg)
		return len(st.Targets) == 2 && !st.Targets[1].Up && st.Targets[0].Up && st.Redis.Up
	})
	if !strings.HasPrefix(st.Targets[1].Error, "unreachable: ") {
		t.Errorf("status: us's error %q, want unreachable: ...:\n%s", st.Targets[1].Error, out)
	}
	if d.Exited() {
		t.Fatalf("the daemon exited with us down:\n%s", d.Tail(20))
	}
	d.Stop()
	// Without the daemon, status reads the targets itself.
	st, out = statusOf(t, cfg)
	if st.Live || len(st.Targets) != 2 || !st.Targets[0].Up || st.Targets[1].Up || !strings.HasPrefix(st.Targets[1].Error, "unreachable: ") {
		t.Errorf("status without the daemon: want eu up, us unreachable:\n%s", out)
	}
}

// TestTwoTargetsOneDownAtStart: the daemon starts while us does not
// answer. It streams to eu and says us is down; once us is started, the
// feed builds it, and the daemon serves its caches: a stock key deleted
// there is filled on its first miss (us's keymiss listener).
func TestTwoTargetsOneDownAtStart(t *testing.T) {
	t.Parallel()
	w := world.New(t, targetsSchema)
	us := w.Target(testenv.StartRedis(t))
	if err := us.Redis.Stop(); err != nil {
		t.Fatal(err)
	}
	caches := `  prices: {table: prices, key: "price:{id}", value: {format: string, column: price}}
  stock: {table: stock, key: "stock:{id}", value: {format: string, column: n}, targets: [us], fill: on-miss}
`
	d, _, cfg := serve(w, twoTargets(w, us, caches), "")
	d.WaitLog("redis target does not answer")
	prices := func() map[string]string { return w.Rows(`SELECT 'price:' || id, price FROM prices`) }
	w.Exec(`UPDATE prices SET price = price || '!' WHERE id % 3 = 0`)
	w.WaitEqual("*", prices)
	d.WaitFor("status: eu up, us down", func() bool {
		st, _ := statusOf(t, cfg)
		return len(st.Targets) == 2 && st.Targets[0].Up && !st.Targets[1].Up
	})

	if err := us.Redis.Start(); err != nil {
		t.Fatal(err)
	}
	w.Exec(`DELETE FROM stock WHERE id = 9`)
	us.WaitEqual("*", func() map[string]string {
		m := prices()
		for k, v := range w.Rows(`SELECT 'stock:' || id, n::text FROM stock`) {
			m[k] = v
		}
		return m
	})
	d.WaitLog("redis target answers")
	if err := us.RC.Do(t.Context(), us.RC.B().Del().Key("stock:7").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	d.WaitFor("stock:7 filled in us after a miss there", func() bool { v, _ := us.Get("stock:7"); return v == "70" })
	d.WaitFor("status: both up", func() bool {
		st, _ := statusOf(t, cfg)
		return len(st.Targets) == 2 && st.Targets[0].Up && st.Targets[1].Up
	})
	d.Stop()
}
