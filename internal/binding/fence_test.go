package binding

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
)

// TestFence: on a Redis Cluster, every kind of change-feed write (a string
// with a TTL and an expiry record and a stale copy, a hash with and
// without a TTL, a fresh write, a removal), wrapped by Fence, leaves Redis
// as the plain writes do while the slots' fences hold the writer's token;
// with another's token it writes nothing and every call says FENCED; with
// the fences gone, FENCEGONE. With routes that no longer hold (a slot
// moved), a node runs the writes it serves and names the others.
func TestFence(t *testing.T) {
	rc := testenv.StartCluster(t, 3).Client(t)
	ctx := context.Background()
	rb := rc.B()
	str := testBinding(t, FormatString, time.Hour, RecordKey("p"))
	str.Stale = time.Hour
	hash := testBinding(t, FormatHash, time.Hour, "")
	hash.Name = "h"
	forever := testBinding(t, FormatHash, 0, "")
	var writes []rueidis.Completed
	for i := range 30 {
		key := fmt.Sprintf("p:%d", i)
		var err error
		switch i % 4 {
		case 0:
			writes, err = str.AppendSet(writes, rb, key, [][]byte{[]byte(key), []byte("v" + key)}, i%8 == 0)
		case 1:
			writes, err = hash.AppendSet(writes, rb, key, [][]byte{[]byte(key), []byte("h" + key)}, true)
		case 2:
			writes, err = forever.AppendSet(writes, rb, key, [][]byte{[]byte(key), []byte("f" + key)}, false)
		default:
			writes, err = str.AppendSet(writes, rb, key, [][]byte{[]byte(key), []byte("gone")}, false)
			writes = str.AppendInvalidate(writes, rb, key)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// Fence's commands are sent once (rueidis recycles what it sent): each
	// case builds its own from writes, which are never sent.
	routes, err := ReadRoutes(ctx, rc)
	if err != nil {
		t.Fatal(err)
	}
	fence := func(token string) []rueidis.Completed {
		t.Helper()
		cmds, of, err := Fence(rb, "cfg", "db", token, writes, false, routes)
		if err != nil {
			t.Fatal(err)
		}
		if len(cmds) != 3 {
			t.Fatalf("%d calls, want one per node, 3", len(cmds))
		}
		if n := len(slices.Compact(slices.Sorted(slices.Values(slices.Concat(of...))))); n != len(writes) {
			t.Fatalf("the calls carry %d writes, want %d", n, len(writes))
		}
		return cmds
	}
	claim := func(token string) {
		t.Helper()
		cmds := make(rueidis.Commands, Slots)
		for s := range cmds {
			cmds[s] = rb.Set().Key(FeedFenceKey("cfg", "db", uint16(s))).Value(token).Build()
		}
		mustDo(t, rc, cmds...)
	}

	// What the plain writes leave.
	for i := range writes {
		writes[i] = writes[i].Pin() // sent here, and wrapped again below
	}
	mustDo(t, rc, writes...)
	want := clusterState(t, rc)
	if len(want) < 30 {
		t.Fatalf("the plain writes left %d keys: %v", len(want), want)
	}

	mustFlush(t, rc)
	claim("mine")
	for _, r := range rc.DoMulti(ctx, fence("mine")...) {
		if failed, err := FenceFailures(r); err != nil || len(failed) > 0 {
			t.Fatalf("fenced writes: %v, %v", failed, err)
		}
	}
	if got := clusterState(t, rc); !maps.Equal(got, want) {
		t.Fatalf("fenced writes left\n%v\nwant, as the plain writes,\n%v", got, want)
	}

	mustFlush(t, rc)
	claim("theirs")
	for _, r := range rc.DoMulti(ctx, fence("mine")...) {
		if err := r.Error(); !FencedReply(err) {
			t.Fatalf("a write under another's fence: %v, want FENCED", err)
		}
	}
	if got := clusterState(t, rc); len(got) != 0 {
		t.Fatalf("writes under another's fence left %v", got)
	}

	mustFlush(t, rc)
	for _, r := range rc.DoMulti(ctx, fence("mine")...) {
		if err := r.Error(); !FenceGoneReply(err) || FencedReply(err) {
			t.Fatalf("a write without a fence: %v, want FENCEGONE", err)
		}
	}

	if _, _, err := Fence(rb, "cfg", "db", "mine", []rueidis.Completed{rb.Get().Key("p:1").Build()}, false, routes); err == nil {
		t.Fatal("Fence took a GET")
	}

	// Routes that say one node serves every slot: that node writes the
	// keys it serves and names every other write's steps misrouted.
	mustFlush(t, rc)
	claim("mine")
	stale := *routes
	for s := range stale.node {
		stale.node[s] = 0
	}
	stale.slot = stale.slot[:1]
	cmds, of, err := Fence(rb, "cfg", "db", "mine", writes, false, &stale)
	if err != nil || len(cmds) != 1 {
		t.Fatalf("Fence with one node: %d calls, %v", len(cmds), err)
	}
	failed, err := FenceFailures(rc.Do(ctx, cmds[0]))
	if err != nil {
		t.Fatal(err)
	}
	misrouted := map[int]bool{}
	for _, f := range failed {
		if !f.Misrouted() {
			t.Fatalf("step %d: %s, want misrouted", f.Step, f.Err)
		}
		misrouted[of[0][f.Step]] = true
	}
	for i := range writes {
		_, keys, _ := feedOps(writes[i].Commands())
		if node := routes.node[keySlot(keys[0])]; (node == 0) == misrouted[i] {
			t.Errorf("write %d (%s %s): misrouted %v, though its node is %d", i, writes[i].Commands()[0], keys[0], misrouted[i], node)
		}
	}
}

// TestFenceKeySlots: each slot's fence lies in that slot.
func TestFenceKeySlots(t *testing.T) {
	if got, want := FeedFenceKey("cfg", "db", 0), "cachesync:fence:{1bz}:cfg:db"; got != want {
		t.Errorf("FeedFenceKey(cfg, db, 0) = %q, want %q", got, want)
	}
	for s := range uint16(Slots) {
		if k := FeedFenceKey("a{b}", "c}d", s); keySlot(k) != s {
			t.Fatalf("%s lies in slot %d, want %d", k, keySlot(k), s)
		}
	}
}

// clusterState returns every key of the Cluster behind rc but the fences,
// with its type, value and TTL in minutes.
func clusterState(t *testing.T, rc rueidis.Client) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	for _, n := range rc.Nodes() {
		keys, err := n.Do(ctx, n.B().Keys().Pattern("*").Build()).AsStrSlice()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if strings.HasPrefix(k, Reserved+"fence:") {
				continue
			}
			typ, err := n.Do(ctx, n.B().Type().Key(k).Build()).ToString()
			if err != nil {
				t.Fatal(err)
			}
			var v any
			switch typ {
			case "string":
				v, err = n.Do(ctx, n.B().Get().Key(k).Build()).ToString()
			case "hash":
				v, err = n.Do(ctx, n.B().Hgetall().Key(k).Build()).AsStrMap()
			case "zset":
				v, err = n.Do(ctx, n.B().Zrange().Key(k).Min("0").Max("-1").Build()).AsStrSlice()
			}
			if err != nil {
				t.Fatal(err)
			}
			ttl, err := n.Do(ctx, n.B().Pttl().Key(k).Build()).AsInt64()
			if err != nil {
				t.Fatal(err)
			}
			if ttl > 0 {
				ttl = (ttl + 30_000) / 60_000
			}
			out[k] = fmt.Sprintf("%s %v ttl %d", typ, v, ttl)
		}
	}
	return out
}

// mustFlush empties every node of the Cluster behind rc.
func mustFlush(t *testing.T, rc rueidis.Client) {
	t.Helper()
	for _, n := range rc.Nodes() {
		if err := n.Do(context.Background(), n.B().Flushall().Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
}
