package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestStandbyTakesOver: two `cachesync run` of one config. The second
// waits quietly, blocked on the slot's lock: one line when it starts
// waiting, none while it waits, one when it takes over. kill -9 of the
// first, under changes; the second carries on and Redis ends equal to the
// table.
func TestStandbyTakesOver(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(1000))
	cfg := w.WriteConfig(itemsCaches)
	active := w.Daemon(cfg)
	active.WaitLog("streaming changes")
	standby := w.Daemon(cfg)
	standby.WaitLog("waiting to take over")
	world.WaitSession(t, w.DB, "the standby waits on the slot's lock", `wait_event_type = 'Lock' AND wait_event = 'advisory' AND datname = current_database()`)
	for i := range 50 {
		w.Exec(`UPDATE items SET val = val + 1 WHERE id = $1`, 1+i)
	}
	waitItems(w)
	if n := len(standby.Stderr.Lines("waiting")); n != 1 {
		t.Fatalf("the standby logged %d lines about waiting while the active one ran, want 1:\n%s", n, standby.Tail(20))
	}
	if got := activeOf(t, cfg); !strings.HasSuffix(got, fmt.Sprintf(":%d", active.PID())) {
		t.Errorf("cachesync status names %q as active, want the first daemon, pid %d", got, active.PID())
	}

	active.Kill()
	w.Exec(`UPDATE items SET val = val + 1, note = 'after the kill' WHERE id BETWEEN 100 AND 150`)
	standby.WaitLog("took over the replication slot")
	waitItems(w)
	if n := len(standby.Stderr.Lines("waiting")); n != 1 {
		t.Errorf("the standby logged %d lines about waiting, want 1:\n%s", n, standby.Tail(20))
	}
	if n := len(standby.Stderr.Lines("took over the replication slot")); n != 1 {
		t.Errorf("the standby logged %d take-overs, want 1:\n%s", n, standby.Tail(20))
	}
	if got := activeOf(t, cfg); !strings.HasSuffix(got, fmt.Sprintf(":%d", standby.PID())) {
		t.Errorf("cachesync status names %q as active, want the standby, pid %d", got, standby.PID())
	}
	standby.Stop()
	if got := activeOf(t, cfg); got != "" {
		t.Errorf("cachesync status names %q as active with no daemon running", got)
	}
}

// activeOf is the daemon `cachesync status --json` names as streaming the
// config's source db.
func activeOf(t *testing.T, cfg string) string {
	t.Helper()
	code, out, errOut := world.CLI(t, nil, "status", "--config", cfg, "--json")
	if code != 0 {
		t.Fatalf("cachesync status: exit %d: %s", code, errOut)
	}
	var r struct {
		Sources map[string]struct{ Active string } `json:"sources"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("cachesync status --json: %v\n%s", err, out)
	}
	return r.Sources["db"].Active
}

// partitioned starts the daemon that streams, reaching PostgreSQL and Redis
// through proxies that play a network cut, and a standby that reaches
// them directly (with config, its config); it returns them with the
// proxies.
func partitioned(t *testing.T, w *world.World) (active, standby *world.Proc, config string, pgp, rp *testenv.Proxy) {
	t.Helper()
	u, err := url.Parse(w.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	pgp, rp = testenv.StartProxy(t, u.Host), testenv.StartProxy(t, w.Redis.Addr)
	cut := strings.NewReplacer(u.Host, pgp.Addr, w.Redis.Addr, rp.Addr).Replace(w.YAML(itemsCaches))
	active = w.Daemon(w.WriteYAML(cut))
	active.WaitLog("streaming changes")
	config = w.WriteConfig(itemsCaches)
	standby = w.Daemon(config)
	standby.WaitLog("waiting to take over")
	waitItems(w)
	return active, standby, config, pgp, rp
}

// TestPartitionedHolderFenced: the daemon that streams is cut off from
// PostgreSQL and Redis while its write of a change is on the way; the
// standby takes over and applies that change and a newer one; then the
// cut-off daemon's write arrives, late. It must change nothing: Redis
// stays equal to the table.
func TestPartitionedHolderFenced(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(100))
	active, standby, _, pgp, rp := partitioned(t, w)
	writeLate(w, active, standby, pgp, rp, rp.HoldFrom)
}

// writeLate plays the partition of TestPartitionedHolderFenced: hold (of
// rp) starts holding the active daemon's write of a change to item:1, pgp
// is cut, the standby takes over and applies a newer change, and the
// active daemon, killed, has its held write delivered late; Redis must
// equal the table.
func writeLate(w *world.World, active, standby *world.Proc, pgp, rp *testenv.Proxy, hold func(marker []byte)) {
	w.T.Helper()
	hold([]byte("held in the network"))
	w.Exec(`UPDATE items SET note = 'held in the network' WHERE id = 1`)
	world.WaitFor(w.T, "the active daemon's write of the change, held", func() bool {
		return bytes.Contains(rp.Held(), []byte("held in the network"))
	})
	arriveLate(w, active, standby, pgp, rp, `UPDATE items SET note = 'after the takeover' WHERE id = 1`)
}

// arriveLate cuts pgp (PostgreSQL sees the active daemon gone: its lock
// and its replication end), waits for the standby to take over and apply
// change (SQL), kills the active daemon and delivers what rp held of it,
// late; Redis must equal the table.
func arriveLate(w *world.World, active, standby *world.Proc, pgp, rp *testenv.Proxy, change string) {
	w.T.Helper()
	pgp.Cut(nil)
	standby.WaitLog("took over the replication slot")
	w.Exec(change)
	waitItems(w)
	active.Kill()
	rp.Release()
	requireItems(w)
}

// TestPartitionedRebuildFenced: the daemon that streams is cut off from
// PostgreSQL and Redis while the rebuild it starts with is writing; the
// standby takes over, rebuilds, and applies a newer change; then the
// cut-off daemon's rebuild write arrives, late. It must change nothing.
func TestPartitionedRebuildFenced(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(3000))
	rp := testenv.StartProxy(t, w.Redis.Addr)
	pgp, yaml := pgProxied(w)
	rebuildLate(w, pgp, rp, rp.HoldFrom, strings.Replace(yaml, w.Redis.Addr, rp.Addr, 1))
}

// TestPartitionedRebuildFencedCluster: TestPartitionedRebuildFenced on a
// Redis Cluster, the node that holds item:1 reached through a proxy (as in
// TestPartitionedHolderFencedCluster).
func TestPartitionedRebuildFencedCluster(t *testing.T) {
	t.Parallel()
	w, _, rp := ownerProxied(t, 3000)
	pgp, yaml := pgProxied(w)
	rebuildLate(w, pgp, rp, rp.HoldConnFrom, yaml)
}

// rebuildLate plays the partition of TestPartitionedRebuildFenced: hold (of
// rp) holds the rebuild write of item:1 of the daemon started with yaml,
// pgp is cut, a standby takes over and applies a newer change, and the
// first daemon, killed, has its held write delivered late; Redis must equal
// the table.
func rebuildLate(w *world.World, pgp, rp *testenv.Proxy, hold func(marker []byte), yaml string) {
	w.T.Helper()
	w.Exec(`UPDATE items SET note = 'held in the rebuild' WHERE id = 1`)
	hold([]byte("held in the rebuild"))
	active := w.Daemon(w.WriteYAML(yaml))
	world.WaitFor(w.T, "the active daemon's rebuild write of item:1, held", func() bool {
		return bytes.Contains(rp.Held(), []byte("held in the rebuild"))
	})
	standby := w.Daemon(w.WriteConfig(itemsCaches))
	standby.WaitLog("waiting to take over")
	arriveLate(w, active, standby, pgp, rp, `UPDATE items SET note = 'after the takeover' WHERE id = 1`)
}

// TestPartitionedTruncateFenced: the daemon that streams is cut off from
// PostgreSQL and Redis while its clear of a TRUNCATE is on the way; the
// standby takes over, applies the TRUNCATE and a row inserted after it;
// then the cut-off daemon's clear arrives, late. It must remove nothing.
func TestPartitionedTruncateFenced(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(100))
	active, standby, _, pgp, rp := partitioned(t, w)
	rp.HoldFrom([]byte("UNLINK\r\n$6\r\nitem:1\r\n"))
	w.Exec(`TRUNCATE items`)
	world.WaitFor(t, "the active daemon's clear of item:1, held", func() bool {
		return bytes.Contains(rp.Held(), []byte("UNLINK\r\n$6\r\nitem:1\r\n"))
	})
	arriveLate(w, active, standby, pgp, rp, `INSERT INTO items VALUES (1, 10, 'after the takeover')`)
}

// TestPartitionedHolderFencedCluster: TestPartitionedHolderFenced on a
// Redis Cluster, where a batch's writes cannot be one transaction. The node
// that holds item:1 is reached through a proxy (it announces the proxy's
// address), which holds the active daemon's connection that carries its
// write of the change; the late write reaches the node after the
// standby's, and the node's fence refuses it.
func TestPartitionedHolderFencedCluster(t *testing.T) {
	t.Parallel()
	w, owner, rp := ownerProxied(t, 100)
	pgp, yaml := pgProxied(w)
	active := w.Daemon(w.WriteYAML(yaml))
	active.WaitLog("streaming changes")
	standby := w.Daemon(w.WriteConfig(itemsCaches))
	standby.WaitLog("waiting to take over")
	waitItems(w)
	writeLate(w, active, standby, pgp, rp, rp.HoldConnFrom)
	nc := owner.NodeClient(t)
	stats, err := nc.Do(context.Background(), nc.B().Info().Section("errorstats").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stats, "errorstat_FENCED:") {
		t.Fatalf("the late write was not refused by its fence; the node's errors:\n%s", stats)
	}
}

// TestTakeoverEndsLostHoldersReplication: only the session holding the
// slot's lock is cut (PostgreSQL sees it gone; the daemon's replication
// connection is alive). The standby takes the lock, ends the lost holder's
// replication rather than waiting for it, and streams; the lost holder
// stands by.
func TestTakeoverEndsLostHoldersReplication(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(100))
	active, standby, config, pgp, _ := partitioned(t, w)

	if n := pgp.Cut(func(hello []byte) bool { return !testenv.PostgresReplication(hello) }); n == 0 {
		t.Fatal("no connection to cut")
	}
	standby.WaitLog("took over the replication slot")
	if len(standby.Stderr.Lines("ending the replication of a cachesync that lost the slot's lock")) != 1 {
		t.Fatalf("the standby took over without ending the lost holder's replication (did the holder stop it first?):\n%s", standby.Tail(10))
	}
	w.Exec(`UPDATE items SET val = val + 1, note = 'after the takeover' WHERE id <= 10`)
	waitItems(w)
	active.WaitLog("waiting to take over") // its replication ended, it stands by
	w.Exec(`UPDATE items SET val = val + 1 WHERE id > 90`)
	waitItems(w)
	if got := activeOf(t, config); !strings.HasSuffix(got, fmt.Sprintf(":%d", standby.PID())) {
		t.Errorf("cachesync status names %q as active, want the standby, pid %d", got, standby.PID())
	}
}

// TestLockLossEndsSession: the session holding the slot's lock is cut
// (PostgreSQL ends it; the daemon hears nothing): the daemon notices
// within seconds, stops writing, takes the lock again and carries on.
func TestLockLossEndsSession(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(100))
	pgp, yaml := pgProxied(w)
	d := w.Daemon(w.WriteYAML(yaml))
	d.WaitLog("streaming changes")
	waitItems(w)
	holder := func(h []byte) bool { return bytes.Contains(h, []byte(pgsourceHolderPrefix)) }
	if n := pgp.Cut(holder); n != 1 {
		t.Fatalf("cut %d connections holding the lock, want 1", n)
	}
	d.WaitLog("lost the replication slot")
	d.WaitFor("streaming again", func() bool { return len(d.Stderr.Lines("streaming changes")) == 2 })
	w.Exec(`UPDATE items SET val = val + 1, note = 'after the lock was lost' WHERE id <= 10`)
	waitItems(w)
}

// ownerProxied starts a Redis Cluster of 3 primaries and a world of the
// items table with rows 1..n on it, whose primary holding item:1 (owner)
// announces the address of a proxy to it (rp), before the world's client
// learns the topology.
func ownerProxied(t *testing.T, n int) (w *world.World, owner *testenv.Redis, rp *testenv.Proxy) {
	t.Helper()
	c := testenv.StartCluster(t, 3)
	owner = c.Owner(t, "item:1")
	seed := c.Nodes[0]
	if seed == owner {
		seed = c.Nodes[1]
	}
	rp = testenv.StartProxy(t, owner.Addr)
	c.Announce(t, owner, rp.Addr)
	w = world.NewOn(t, seed, itemsSchema(n))
	w.Nodes = c.Nodes
	return w, owner, rp
}

// pgProxied starts a proxy to the world's PostgreSQL and returns it and
// the world's config of the items cache with the source's URL through it.
func pgProxied(w *world.World) (*testenv.Proxy, string) {
	w.T.Helper()
	u, err := url.Parse(w.DBURL)
	if err != nil {
		w.T.Fatal(err)
	}
	pgp := testenv.StartProxy(w.T, u.Host)
	return pgp, strings.Replace(w.YAML(itemsCaches), u.Host, pgp.Addr, 1)
}

// pgsourceHolderPrefix begins the application_name of the session holding
// a slot's lock (pgsource.Holder), which its startup message carries.
const pgsourceHolderPrefix = "application_name\x00cachesync "

// TestStandbyUnderLoad: an active daemon and a standby of one config,
// under changes to a change-feed cache and write-behind writes to another.
// The active one is killed with -9 five times, each time at a random
// moment; the standby takes over and a new daemon becomes the standby.
// Afterwards Redis equals the change-feed table, and the write-behind table
// holds every acknowledged write.
func TestStandbyUnderLoad(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(1000)+`; CREATE TABLE wb (id int PRIMARY KEY, v bigint NOT NULL)`)
	caches := itemsCaches + `  wb: {table: public.wb, key: "wb:{id}", value: {columns: [id, v]}, sync: none, writes: behind}
`
	cfg := w.WriteConfig(caches)
	api := w.Open(w.Config(caches))
	active := w.Daemon(cfg)
	active.WaitLog("streaming changes")

	// The writers stop between writes, so every write they made was
	// answered.
	ctx := t.Context()
	var stopped atomic.Bool
	var wg sync.WaitGroup
	var mu sync.Mutex
	last := map[string]string{} // wb id -> its last acknowledged value
	errs := make(chan error, 3)
	for writer := range 2 { // write-behind, each on keys of its own
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(writer), 9))
			for n := int64(1); !stopped.Load(); n++ {
				id := 2*r.IntN(100) + writer
				if _, err := api.PutBehind(ctx, "wb", map[string]any{"id": id, "v": n}); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				last[strconv.Itoa(id)] = strconv.FormatInt(n, 10)
				mu.Unlock()
			}
		})
	}
	db, err := pgx.Connect(ctx, w.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	wg.Go(func() { // changes to the change-feed table
		r := rand.New(rand.NewPCG(3, 9))
		for !stopped.Load() {
			if _, err := db.Exec(ctx, `UPDATE items SET val = val + 1 WHERE id = $1`, 1+r.IntN(1000)); err != nil {
				errs <- err
				return
			}
		}
	})

	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var took []time.Duration // kill → the standby says it took over (as the test sees it)
	for range 5 {
		standby := w.Daemon(cfg)
		standby.WaitLog("waiting to take over")
		time.Sleep(time.Duration(100+r.IntN(400)) * time.Millisecond) // a random moment, on purpose
		killed := time.Now()
		active.Kill()
		standby.WaitLog("took over the replication slot")
		took = append(took, time.Since(killed).Round(time.Millisecond))
		active = standby
	}
	stopped.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitItems(w)
	var diff string
	if !world.Within(world.Patience, func() bool {
		mu.Lock()
		defer mu.Unlock()
		diff = world.Diff(last, w.Rows(`SELECT id::text, v::text FROM wb`))
		return diff == ""
	}) {
		t.Fatalf("the write-behind table differs from the acknowledged writes:\n%s", diff)
	}
	t.Logf("%d write-behind keys; kill -9 → took over: %v", len(last), took)
}

// TestPartitionedRebuildEntryFenced: the daemon that streams is cut off
// from PostgreSQL and Redis just as it records a finished rebuild (the
// cache's state entry, Writer.SetCache); the standby takes over and, the
// entry being gone, rebuilds the cache, and dies midway (kill -9, a part of
// the rows written after its clear). The cut-off daemon's entry then
// arrives, late: a session that lost its claim must write nothing, so the
// next daemon must still find the cache unfinished and rebuild it. If the
// late entry lands, that daemon takes the half-written cache for complete.
func TestPartitionedRebuildEntryFenced(t *testing.T) {
	t.Parallel()
	w := world.New(t, itemsSchema(3000))
	rp := testenv.StartProxy(t, w.Redis.Addr)
	pgp, yaml := pgProxied(w)
	entry := []byte("$11\r\ncache:items\r\n$") // HSET's field and its value: SetCache, not Forget
	rp.HoldFrom(entry)
	active := w.Daemon(w.WriteYAML(strings.Replace(yaml, w.Redis.Addr, rp.Addr, 1)))
	world.WaitFor(t, "the active daemon's record of its rebuild, held", func() bool {
		return bytes.Contains(rp.Held(), entry)
	})
	// The standby reaches Redis through a proxy of its own, which holds its
	// rebuild's write of item:2500 (after its clear).
	rp2 := testenv.StartProxy(t, w.Redis.Addr)
	mid := []byte("$9\r\nitem:2500\r\n$") // a SET, not a clear's UNLINK
	rp2.HoldConnFrom(mid)
	standby := w.Daemon(w.WriteYAML(strings.Replace(w.YAML(itemsCaches), w.Redis.Addr, rp2.Addr, 1)))
	standby.WaitLog("waiting to take over")
	pgp.Cut(nil) // PostgreSQL sees the active daemon gone: its lock ends
	standby.WaitLog("took over the replication slot")
	world.WaitFor(t, "the standby's rebuild write of item:2500, held", func() bool {
		return bytes.Contains(rp2.Held(), mid)
	})
	active.Kill()
	rp.Release() // the dead daemon's record of its rebuild reaches Redis, late
	standby.Kill()
	next := w.Daemon(w.WriteConfig(itemsCaches))
	next.WaitLog("streaming changes")
	w.Exec(`UPDATE items SET note = 'after the second takeover' WHERE id = 1`)
	world.WaitFor(t, "item:1 updated", func() bool {
		return strings.Contains(w.Snapshot("item:1")["item:1"], "after the second takeover")
	})
	requireItems(w)
}
