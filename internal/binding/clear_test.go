package binding

import (
	"context"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

// TestClearFindsNewPrimary: a primary added to a Redis Cluster, given
// slots and a key of a cache there, is cleared by a client that has not
// learned of it yet (a client rescans the topology only every few seconds,
// or when redirected): a clear (TRUNCATE, a rebuild) leaves none of the
// cache's keys there.
func TestClearFindsNewPrimary(t *testing.T) {
	c := testenv.StartCluster(t, 3)
	rc := c.Client(t)
	ctx := context.Background()
	if err := rc.Do(ctx, rc.B().Set().Key("p:0").Value("v").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	fourth := c.AddPrimary(t)
	c.MoveSlots(t, c.Owner(t, "p:0"), fourth, 0, 99)
	key := fourth.KeyOn(t, "p:")
	if err := c.Client(t).Do(ctx, rc.B().Set().Key(key).Value("v").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if _, ok := rc.Nodes()[fourth.Addr]; ok {
		t.Fatalf("the client knows %s already: the test tests nothing", fourth.Addr)
	}
	b := testBinding(t, FormatString, time.Hour, "")
	n, err := b.Clear(ctx, rc)
	if err != nil {
		t.Fatal(err)
	}
	if left, err := c.Client(t).Do(ctx, rc.B().Exists().Key(key).Build()).AsInt64(); err != nil || left != 0 {
		t.Fatalf("a clear of the cache (%d keys removed) left %s on the new primary %s (%d, %v)", n, key, fourth.Addr, left, err)
	}
}
