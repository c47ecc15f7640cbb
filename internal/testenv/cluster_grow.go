package testenv

// Changing a running Cluster as an operator reshards one: a primary added
// (CLUSTER MEET), hash slots moved between primaries with their keys (the
// steps of redis-cli --cluster reshard: CLUSTER SETSLOT IMPORTING and
// MIGRATING, MIGRATE of each slot's keys, CLUSTER SETSLOT NODE), and a
// node taken out (those of redis-cli --cluster del-node: CLUSTER FORGET).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// AddPrimary starts a node, introduces it to the cluster, waits until
// every node knows it and reports the cluster ok, and returns it, added to
// c.Nodes. It holds no slots until MoveSlots gives it some (until then a
// Cluster client, which learns the nodes from CLUSTER SLOTS, does not
// list it). It is stopped at cleanup.
func (c *Cluster) AddPrimary(tb testing.TB) *Redis {
	tb.Helper()
	r := startClusterNode(tb)
	if err := c.meet(r); err != nil {
		tb.Fatal(err)
	}
	return r
}

func (c *Cluster) meet(r *Redis) error {
	c.Nodes = append(c.Nodes, r)
	return c.withNodes(func(ctx context.Context, clients []rueidis.Client) error {
		if err := clients[0].Do(ctx, clients[0].B().ClusterMeet().Ip("127.0.0.1").Port(int64(r.Port)).Build()).Error(); err != nil {
			return fmt.Errorf("cluster meet %s: %w", r.Addr, err)
		}
		return c.waitOK(ctx, clients)
	})
}

// MoveSlots moves the hash slots lo to hi (inclusive) from the primary
// from to the primary to, one slot at a time with its keys (values and
// TTLs kept), while clients keep working (they are redirected with ASK
// during a slot's move and MOVED after), and waits until every node says
// to holds them. Both must be nodes of c; every slot must be from's. A
// primary left without slots becomes a replica of the one that took its
// last (Redis's cluster-allow-replica-migration): RemoveNode takes it out.
func (c *Cluster) MoveSlots(tb testing.TB, from, to *Redis, lo, hi int) {
	tb.Helper()
	if err := c.withNodes(func(ctx context.Context, clients []rueidis.Client) error {
		return c.moveSlots(ctx, clients, from, to, lo, hi)
	}); err != nil {
		tb.Fatalf("move slots %d-%d from %s to %s: %v", lo, hi, from.Addr, to.Addr, err)
	}
}

// moveSlots moves the slots through clients, one per node of c.Nodes.
func (c *Cluster) moveSlots(ctx context.Context, clients []rueidis.Client, from, to *Redis, lo, hi int) error {
	var src, dst rueidis.Client
	var others []rueidis.Client // every node but src and dst
	for i, n := range c.Nodes {
		switch n {
		case from:
			src = clients[i]
		case to:
			dst = clients[i]
		default:
			others = append(others, clients[i])
		}
	}
	if src == nil || dst == nil {
		return fmt.Errorf("%s or %s is not a node of the cluster", from.Addr, to.Addr)
	}
	// The new owner is told first, then the old one (which then answers
	// MOVED), then the rest (which would learn it from gossip).
	tell := append([]rueidis.Client{dst, src}, others...)
	srcID, err := src.Do(ctx, src.B().ClusterMyid().Build()).ToString()
	if err != nil {
		return err
	}
	dstID, err := dst.Do(ctx, dst.B().ClusterMyid().Build()).ToString()
	if err != nil {
		return err
	}
	for slot := int64(lo); slot <= int64(hi); slot++ {
		if err := dst.Do(ctx, dst.B().ClusterSetslot().Slot(slot).Importing().NodeId(srcID).Build()).Error(); err != nil {
			return fmt.Errorf("slot %d: importing on %s: %w", slot, to.Addr, err)
		}
		if err := src.Do(ctx, src.B().ClusterSetslot().Slot(slot).Migrating().NodeId(dstID).Build()).Error(); err != nil {
			return fmt.Errorf("slot %d: migrating on %s: %w", slot, from.Addr, err)
		}
		for {
			keys, err := src.Do(ctx, src.B().ClusterGetkeysinslot().Slot(slot).Count(100).Build()).AsStrSlice()
			if err != nil {
				return fmt.Errorf("slot %d: keys on %s: %w", slot, from.Addr, err)
			}
			if len(keys) == 0 {
				break
			}
			if err := src.Do(ctx, src.B().Migrate().Host("127.0.0.1").Port(int64(to.Port)).Key("").DestinationDb(0).
				Timeout(clusterPatience.Milliseconds()).Keys(keys...).Build()).Error(); err != nil {
				return fmt.Errorf("slot %d: migrate %d keys to %s: %w", slot, len(keys), to.Addr, err)
			}
		}
		for i, n := range tell {
			err := n.Do(ctx, n.B().ClusterSetslot().Slot(slot).Node().NodeId(dstID).Build()).Error()
			// A replica (from, as soon as it learns that it lost its last
			// slot) refuses, and learns it from its primary.
			if err != nil && (i == 0 || !strings.Contains(err.Error(), "only with masters")) {
				return fmt.Errorf("slot %d: give it to %s: %w", slot, to.Addr, err)
			}
		}
	}
	for i, n := range clients {
		for {
			owner, err := slotOwners(ctx, n)
			if err == nil && owns(owner, lo, hi, to.Port) {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("node %s never said %s holds the slots: %v", c.Nodes[i].Addr, to.Addr, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// StartMove begins the move of slot from the primary from to the primary
// to and moves only keys (keys of the slot) with it: the slot stays
// between the two, importing on to and migrating on from, and Redis
// refuses a command of several of its keys, some moved and some not
// (TRYAGAIN). The move ends with MoveSlots(tb, from, to, slot, slot).
func (c *Cluster) StartMove(tb testing.TB, from, to *Redis, slot int, keys ...string) {
	tb.Helper()
	fc, tc := from.NodeClient(tb), to.NodeClient(tb)
	ctx := context.Background()
	fromID, err := fc.Do(ctx, fc.B().ClusterMyid().Build()).ToString()
	if err != nil {
		tb.Fatal(err)
	}
	toID, err := tc.Do(ctx, tc.B().ClusterMyid().Build()).ToString()
	if err != nil {
		tb.Fatal(err)
	}
	type step struct {
		c   rueidis.Client
		cmd rueidis.Completed
	}
	steps := []step{
		{tc, tc.B().ClusterSetslot().Slot(int64(slot)).Importing().NodeId(fromID).Build()},
		{fc, fc.B().ClusterSetslot().Slot(int64(slot)).Migrating().NodeId(toID).Build()},
	}
	if len(keys) > 0 {
		steps = append(steps, step{fc, fc.B().Migrate().Host("127.0.0.1").Port(int64(to.Port)).Key("").DestinationDb(0).
			Timeout(clusterPatience.Milliseconds()).Keys(keys...).Build()})
	}
	for _, cmd := range steps {
		if err := cmd.c.Do(ctx, cmd.cmd).Error(); err != nil {
			tb.Fatalf("start the move of slot %d from %s to %s: %v", slot, from.Addr, to.Addr, err)
		}
	}
}

// RemoveNode takes r, a node of c that holds no slots, out of the
// cluster: every other node forgets it (CLUSTER FORGET, which keeps it out
// for a minute), then it forgets them (CLUSTER RESET), and it is removed
// from c.Nodes once the others know only each other. It keeps running,
// alone, until cleanup.
func (c *Cluster) RemoveNode(tb testing.TB, r *Redis) {
	tb.Helper()
	i := slices.Index(c.Nodes, r)
	if i < 0 {
		tb.Fatalf("%s is not a node of the cluster", r.Addr)
	}
	c.Nodes = slices.Delete(slices.Clone(c.Nodes), i, i+1)
	nc := r.NodeClient(tb)
	if err := c.withNodes(func(ctx context.Context, clients []rueidis.Client) error {
		id, err := nc.Do(ctx, nc.B().ClusterMyid().Build()).ToString()
		if err != nil {
			return err
		}
		for _, cl := range clients {
			if err := cl.Do(ctx, cl.B().ClusterForget().NodeId(id).Build()).Error(); err != nil {
				return fmt.Errorf("forget: %w", err)
			}
		}
		if err := nc.Do(ctx, nc.B().ClusterReset().Soft().Build()).Error(); err != nil {
			return fmt.Errorf("reset: %w", err)
		}
		return c.waitOK(ctx, clients)
	}); err != nil {
		tb.Fatalf("remove %s from the cluster: %v", r.Addr, err)
	}
}

// slotOwners returns the port of the primary of each slot as node n says
// (CLUSTER SLOTS), 0 for a slot of no node.
func slotOwners(ctx context.Context, n rueidis.Client) (*[16384]int64, error) {
	ranges, err := n.Do(ctx, n.B().ClusterSlots().Build()).ToArray()
	if err != nil {
		return nil, err
	}
	var owner [16384]int64
	for _, r := range ranges {
		// [start, end, [host, port, id, ...], replicas...]
		f, err := r.ToArray()
		if err != nil || len(f) < 3 {
			return nil, fmt.Errorf("CLUSTER SLOTS: unexpected range %v (%v)", r, err)
		}
		start, err1 := f[0].AsInt64()
		end, err2 := f[1].AsInt64()
		primary, err3 := f[2].ToArray()
		if err1 != nil || err2 != nil || err3 != nil || len(primary) < 2 {
			return nil, fmt.Errorf("CLUSTER SLOTS: unexpected range %v", f)
		}
		port, err := primary[1].AsInt64()
		if err != nil {
			return nil, fmt.Errorf("CLUSTER SLOTS: port: %w", err)
		}
		for s := start; s <= end && s < 16384; s++ {
			owner[s] = port
		}
	}
	return &owner, nil
}

// SlotPrimaries returns the primaries (the nodes that hold slots) as the
// first of nodes (a Cluster client's, by address) to answer within 5 s
// says, without a node that failed or left: for each, the client's node,
// or, for a primary the client has not learned of yet (added by
// resharding since it last read the topology), a client of that node
// alone, which done closes.
func SlotPrimaries(ctx context.Context, nodes map[string]rueidis.Client) (primaries map[string]rueidis.Client, done func(), err error) {
	var errs []error
	for _, n := range nodes {
		nctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		owners, err := slotOwners(nctx, n)
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		holds := map[string]bool{}
		for _, port := range owners {
			if port != 0 {
				holds[strconv.FormatInt(port, 10)] = true
			}
		}
		primaries := map[string]rueidis.Client{}
		for addr, n := range nodes {
			if _, port, _ := net.SplitHostPort(addr); holds[port] {
				primaries[addr] = n
				delete(holds, port)
			}
		}
		var own []rueidis.Client
		done := func() {
			for _, c := range own {
				c.Close()
			}
		}
		for port := range holds {
			addr := net.JoinHostPort("127.0.0.1", port) // (the test bed's nodes listen there)
			c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, ForceSingleClient: true, DisableCache: true})
			if err != nil {
				done()
				return nil, nil, fmt.Errorf("redis %s: %w", addr, err)
			}
			own = append(own, c)
			primaries[addr] = c
		}
		return primaries, done, nil
	}
	return nil, nil, fmt.Errorf("CLUSTER SLOTS: no node answered: %w", errors.Join(errs...))
}

// owns reports whether port holds every slot from lo to hi in owner.
func owns(owner *[16384]int64, lo, hi, port int) bool {
	for s := lo; s <= hi; s++ {
		if owner[s] != int64(port) {
			return false
		}
	}
	return true
}

// KeyOn returns prefix followed by the first number that makes a key r
// holds: on a Cluster node, a key of its slots.
func (r *Redis) KeyOn(tb testing.TB, prefix string) string {
	tb.Helper()
	nc, err := r.nodeClient()
	if err != nil {
		tb.Fatal(err)
	}
	defer nc.Close()
	for i := range 100_000 {
		key := prefix + strconv.Itoa(i)
		// A Cluster node answers MOVED for a key of another's slots;
		// OBJECT ENCODING, unlike GET, publishes no keymiss event.
		if err := nc.Do(context.Background(), nc.B().ObjectEncoding().Key(key).Build()).Error(); err == nil || rueidis.IsRedisNil(err) {
			return key
		}
	}
	tb.Fatalf("no key beginning %q is %s's", prefix, r.Addr)
	return ""
}
