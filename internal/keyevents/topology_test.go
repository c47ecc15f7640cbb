package keyevents_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/keyevents"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestNewPrimaryHeard: a Listen runs on a three-primary Cluster when a
// fourth primary joins and takes slots of the first (resharding). The
// listener's client, made as the daemon makes its own, learns the new
// topology by itself: none of its commands runs into the moved slots.
// Listen then subscribes on the new node and enables its flags there,
// and a key of a moved slot that expires on it is heard.
func TestNewPrimaryHeard(t *testing.T) {
	w := world.NewRedisOnly(t, "cluster")
	c := &testenv.Cluster{Nodes: w.Nodes}
	first := w.Nodes[0]
	var logs testenv.LogBuffer
	l := listen(t, daemonClient(t, first, ""), keyevents.Events{Flags: "Ex", Feature: "test", Every: time.Hour}, &logs)
	l.expires(t, first.NodeClient(t), first.KeyOn(t, "probe:"))

	fourth := c.AddPrimary(t)
	c.MoveSlots(t, first, fourth, 0, 199)
	l.expires(t, fourth.NodeClient(t), fourth.KeyOn(t, "probe:"))
	if n := len(logs.Lines(`msg="enabled keyspace events" redis=` + fourth.Addr + " ")); n != 1 {
		t.Errorf("%d lines saying the new node's events were enabled, want 1; log:\n%s", n, logs.String())
	}
	if n := len(logs.Lines(`msg="listening on a new node" redis=` + fourth.Addr + " ")); n != 1 {
		t.Errorf("%d lines saying the new node is listened to, want 1; log:\n%s", n, logs.String())
	}
	if !l.health.OK() {
		t.Error("not OK")
	}
}

// TestNodeLeft: a primary that refuses CONFIG (its flags set by hand) is
// listened to; it leaves the topology (its slots move to another primary,
// and it is taken out of the cluster). Listen ends its subscription and
// its checks there, which give back its count of refusing nodes (Health
// is OK again), and the keys of the moved slots, expiring on their new
// node, are heard.
func TestNodeLeft(t *testing.T) {
	w := world.NewRedisOnly(t, "cluster")
	c := &testenv.Cluster{Nodes: w.Nodes}
	first := w.Nodes[0]
	fourth := c.AddPrimary(t)
	c.MoveSlots(t, first, fourth, 0, 199)
	for _, n := range c.Nodes {
		n.SetUser(t, "cs", "on", ">pw", "~*", "&*", "+@all")
	}
	fourth.SetUser(t, "cs", "-config")
	setFlags(t, fourth.NodeClient(t), "Ex")

	var logs testenv.LogBuffer
	l := listen(t, daemonClient(t, first, "cs"), keyevents.Events{Flags: "Ex", Feature: "test", Every: 10 * time.Millisecond}, &logs)
	world.WaitFor(t, "the fourth node's refusal counted", func() bool { return l.health.Refused.Load() == 1 })
	key := fourth.KeyOn(t, "probe:")
	l.expires(t, fourth.NodeClient(t), key)
	if l.health.OK() {
		t.Error("OK while a node refuses CONFIG")
	}

	c.MoveSlots(t, fourth, first, 0, 199)
	c.RemoveNode(t, fourth)
	nc := fourth.NodeClient(t)
	world.WaitFor(t, "no subscription left on the node that left", func() bool {
		n, err := nc.Do(context.Background(), nc.B().PubsubNumsub().Channel(l.ev.Channel).Build()).AsIntMap()
		return err == nil && n[l.ev.Channel] == 0
	})
	world.WaitFor(t, "Health OK once the refusing node left", l.health.OK)
	// (Left without slots, it may have been a replica for a while before
	// it was taken out: then it left twice.)
	if n := len(logs.Lines(`msg="node left the topology; no longer listening" redis=` + fourth.Addr + " ")); n == 0 {
		t.Errorf("no line saying the node left; log:\n%s", logs.String())
	}
	l.expires(t, first.NodeClient(t), key)
}

// daemonClient is a Cluster client of node r, made as cachesync makes its
// own (config.RedisOption), logged in as user (password "pw") unless "".
func daemonClient(t *testing.T, r *testenv.Redis, user string) rueidis.Client {
	t.Helper()
	cfg := &config.Config{Redis: config.Redis{URL: r.URL(), Username: user}}
	if user != "" {
		cfg.Redis.Password = "pw"
	}
	opt, err := cfg.RedisOption()
	if err != nil {
		t.Fatal(err)
	}
	opt.DisableCache = true
	rc, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Close)
	return rc
}
