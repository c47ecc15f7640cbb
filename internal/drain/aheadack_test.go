package drain_test

import (
	"context"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestReadAheadAckLost: the drainer claims an entry P (t:1 = 1) a crashed
// drainer left pending, reads ahead a newer one U (t:1 = 2), commits P,
// and acknowledges P with the next read ahead, while it commits U. That
// round trip fails (its connection is held by the network until the
// client gives up on it); the session ends acknowledging U. P must not
// stay pending: the next session would commit it again, after U, leaving
// the table at 1 though 2 was the last write acknowledged.
func TestReadAheadAckLost(t *testing.T) {
	e := world.New(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)`)
	e.Exec(`INSERT INTO t VALUES (1, 0)`)
	caches := `  t: {table: t, key: "t:{id}", value: {columns: [id, v]}, sync: none, writes: behind}` + "\n"
	rp := testenv.StartProxy(t, e.Redis.Addr)
	cfg, err := config.Load(strings.NewReader(strings.Replace(e.YAML(caches), e.Redis.Addr, rp.Addr, 1)))
	if err != nil {
		t.Fatal(err)
	}
	c := e.Open(cfg)
	ctx := context.Background()
	stream := binding.StreamKey("t")
	putBehind(t, c, "t", map[string]any{"id": 1, "v": 1}) // P: read by a drainer that crashed
	if err := e.RC.Do(ctx, e.RC.B().XgroupCreate().Key(stream).Group("cachesync").Id("0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := e.RC.Do(ctx, e.RC.B().Xreadgroup().Group("cachesync", "crashed").Count(1000).Streams().Key(stream).Id(">").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	putBehind(t, c, "t", map[string]any{"id": 1, "v": 2}) // U: unread; the read-ahead takes it
	// The first acknowledgement the drainer sends is P's, with the read
	// ahead of U's commit: its connection is held from there on.
	ackMarker := []byte("redis.call('XACK', KEYS[2], ARGV[2], unpack(ids))")
	rp.HoldConnFrom(ackMarker)
	runDrain(t, c)
	world.WaitFor(t, "P's acknowledgement, held", func() bool { return strings.Contains(string(rp.Held()), string(ackMarker)) })
	waitAcked(e, "t") // U's, when the session ends, and P's, by then or by the next session, after committing P again
	waitRows(e, `SELECT id, v::text FROM t`, map[int]string{1: "2"})
}
