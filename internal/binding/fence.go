package binding

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/rueidis"
)

// Slots is the number of Redis Cluster hash slots.
const Slots = 16384

// FeedFenceKey names the change feed's fence in Redis Cluster hash slot
// slot, for source in the config named config: the token of the session
// that holds the source's replication slot (state.Claim writes it in every
// slot), which that session's writes to the node serving the slot may
// check (Fence checks one slot's per node).
func FeedFenceKey(config, source string, slot uint16) string {
	return Reserved + "fence:{" + slotTags()[slot] + "}:" + config + ":" + source
}

// fenced runs a change feed batch's writes served by one Redis Cluster
// node, in order, only while the fence KEYS[1] (of a slot of that node's)
// holds the writer's token ARGV[1] (FENCED when another's; FENCEGONE when
// none: Redis lost it). ARGV[2:] are the writes, each its word count and
// then its words; their keys lie in the node's slots but not in KEYS[1]'s
// (allow-cross-slot-keys). Every write runs even when one fails (as in a
// pipeline); it returns, for each that failed, its number (from 1) and the
// error: "non local key" for a key the node does not serve (any longer).
const fenced = "#!lua flags=allow-cross-slot-keys\n" + `local holder = redis.call('GET', KEYS[1])
if not holder then return redis.error_reply('FENCEGONE the change feed fence ' .. KEYS[1] .. ' is gone') end
if holder ~= ARGV[1] then return redis.error_reply('FENCED another change feed session writes this source') end
local a, op, failed = 2, 0, {}
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  op = op + 1
  local r = redis.pcall(unpack(ARGV, a + 1, a + n))
  if type(r) == 'table' and r.err then
    failed[#failed + 1] = op
    failed[#failed + 1] = r.err
  end
  a = a + n + 1
end
return failed`

var fencedSHA = func() string {
	h := sha1.Sum([]byte(fenced))
	return hex.EncodeToString(h[:])
}()

// FencedReply tells a Fence call's error reply that the fence holds another
// session's token.
func FencedReply(err error) bool { return replyPrefix(err, "FENCED ") }

// FenceGoneReply tells a Fence call's error reply that the fence is gone:
// Redis lost it (flushed, restarted without it, evicted).
func FenceGoneReply(err error) bool { return replyPrefix(err, "FENCEGONE ") }

func replyPrefix(err error, prefix string) bool {
	ret, ok := rueidis.IsRedisErr(err)
	return ok && strings.HasPrefix(ret.Error(), prefix)
}

// NoScript tells an error reply that Redis does not know the script
// (EVALSHA of a script not loaded on that node): the call ran nothing, and
// Fence's evalsha false sends the script itself.
func NoScript(err error) bool {
	ret, ok := rueidis.IsRedisErr(err)
	return ok && ret.IsNoScript()
}

// Routes tell which node (a primary) of a Redis Cluster serves each hash
// slot, as CLUSTER SLOTS said when ReadRoutes read it, and, per node, its
// address and one slot it serves: the slot whose fence its writes check
// (Fence), and of a key that redirects a client there (EachPrimary).
type Routes struct {
	node [Slots]int // index of the slot's node; -1: none
	slot []uint16   // per node, the first slot it serves
	addr []string   // per node, host:port
}

// ReadRoutes reads the routes of the Cluster behind client (CLUSTER SLOTS).
func ReadRoutes(ctx context.Context, client rueidis.Client) (*Routes, error) {
	ranges, err := client.Do(ctx, client.B().ClusterSlots().Build()).ToArray()
	if err != nil {
		return nil, fmt.Errorf("cluster slots: %w", err)
	}
	r := &Routes{}
	for s := range r.node {
		r.node[s] = -1
	}
	nodes := map[string]int{}
	for _, rg := range ranges {
		// [start, end, [host, port, id, ...], replicas...]
		f, err := rg.ToArray()
		if err != nil || len(f) < 3 {
			return nil, fmt.Errorf("cluster slots: unexpected range %v", rg)
		}
		lo, err1 := f[0].AsInt64()
		hi, err2 := f[1].AsInt64()
		primary, err3 := f[2].ToArray()
		if err1 != nil || err2 != nil || err3 != nil || len(primary) < 2 || lo < 0 || hi >= Slots || lo > hi {
			return nil, fmt.Errorf("cluster slots: unexpected range %v", f)
		}
		host, _ := primary[0].ToString()
		port, _ := primary[1].AsInt64()
		addr := host + ":" + strconv.FormatInt(port, 10)
		n, ok := nodes[addr]
		if !ok {
			n = len(r.slot)
			nodes[addr] = n
			r.slot = append(r.slot, uint16(lo))
			r.addr = append(r.addr, addr)
		}
		for s := lo; s <= hi; s++ {
			r.node[s] = n
		}
	}
	return r, nil
}

// Fence turns writes, a change feed batch's commands, into what a Redis
// Cluster runs fenced: one script call per node (as routes say) that runs
// the writes of the node's slots, in their order, only while the fence
// (FeedFenceKey) of one of its slots holds token. A transaction cannot span
// slots, so this is how a session that lost its claim on the source writes
// nothing, even when its writes reach Redis late. It sends the script's
// SHA1 (EVALSHA) unless evalsha is false. of gives, for each call, the
// index of the write of each of its steps, in order (FenceFailures names
// steps). The feed's writes are plain commands and the hash write
// (hashSet), whose steps the script runs itself: any other command is an
// error.
func Fence(rb rueidis.Builder, config, source, token string, writes []rueidis.Completed, evalsha bool, routes *Routes) (cmds []rueidis.Completed, of [][]int, err error) {
	type group struct {
		args []string
		of   []int
	}
	groups := make([]*group, len(routes.slot))
	var order []int
	for i := range writes {
		ops, keys, err := feedOps(writes[i].Commands())
		if err != nil {
			return nil, nil, err
		}
		s := keySlot(keys[0])
		for _, k := range keys {
			if keySlot(k) != s {
				return nil, nil, fmt.Errorf("fence: %s writes keys of two hash slots", ops[0][0])
			}
		}
		n := routes.node[s]
		if n < 0 {
			return nil, nil, fmt.Errorf("fence: hash slot %d is served by no node", s)
		}
		g := groups[n]
		if g == nil {
			g = &group{args: []string{token}}
			groups[n] = g
			order = append(order, n)
		}
		for _, op := range ops {
			g.args = append(g.args, strconv.Itoa(len(op)))
			g.args = append(g.args, op...)
			g.of = append(g.of, i)
		}
	}
	cmds, of = make([]rueidis.Completed, len(order)), make([][]int, len(order))
	for i, n := range order {
		g, fence := groups[n], FeedFenceKey(config, source, routes.slot[n])
		of[i] = g.of
		if evalsha {
			cmds[i] = rb.Evalsha().Sha1(fencedSHA).Numkeys(1).Key(fence).Arg(g.args...).Build()
		} else {
			cmds[i] = rb.Eval().Script(fenced).Numkeys(1).Key(fence).Arg(g.args...).Build()
		}
	}
	return cmds, of, nil
}

// FenceFailure is a step of a Fence call that failed.
type FenceFailure struct {
	Step int    // from 0, in the call's of
	Err  string // Redis's error
}

// Misrouted tells a step that failed because the node does not serve its
// key's slot (any longer: resharding): sent again as routes read anew say.
func (f FenceFailure) Misrouted() bool { return strings.Contains(f.Err, "non local key") }

// FenceFailures returns the failed steps a Fence call's reply names.
func FenceFailures(r rueidis.RedisResult) ([]FenceFailure, error) {
	vals, err := r.ToArray()
	if err != nil {
		return nil, err
	}
	var out []FenceFailure
	for i := 0; i+1 < len(vals); i += 2 {
		step, err1 := vals[i].AsInt64()
		msg, err2 := vals[i+1].ToString()
		if err1 != nil || err2 != nil || step < 1 {
			return nil, fmt.Errorf("fence: unexpected reply %v", vals)
		}
		out = append(out, FenceFailure{Step: int(step) - 1, Err: msg})
	}
	return out, nil
}

// feedOps returns the steps of one of the change feed's writes, given as
// its words, and the keys they write.
func feedOps(w []string) (ops [][]string, keys []string, err error) {
	if len(w) < 2 {
		return nil, nil, fmt.Errorf("fence: unexpected write %q", w)
	}
	switch strings.ToUpper(w[0]) {
	case "SET", "INCR", "ZADD", "ZREM", "PEXPIRE", "HSET":
		return [][]string{w}, w[1:2], nil
	case "UNLINK", "DEL":
		return [][]string{w}, w[1:], nil
	case "EVAL":
		// hashSet: KEYS key, lease, neg; ARGV ttl ms, field, value, ...
		if w[1] != hashSet || len(w) < 8 || w[2] != "3" {
			break
		}
		key, ttl := w[3], w[6]
		ops = [][]string{{"DEL", key, w[4], w[5]}, append([]string{"HSET", key}, w[7:]...)}
		if n, err := strconv.ParseInt(ttl, 10, 64); err == nil && n > 0 {
			ops = append(ops, []string{"PEXPIRE", key, ttl})
		}
		return ops, w[3:6], nil
	}
	return nil, nil, fmt.Errorf("fence: unexpected write %s", w[0])
}
