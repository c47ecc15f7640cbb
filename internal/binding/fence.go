package binding

import (
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
// slot), which each of that session's writes in the slot checks (Fence).
func FeedFenceKey(config, source string, slot uint16) string {
	return Reserved + "fence:{" + slotTags()[slot] + "}:" + config + ":" + source
}

// fenced runs a change feed batch's writes of one hash slot, in order, only
// while the slot's fence KEYS[1] holds the writer's token ARGV[1] (FENCED
// when another's; FENCEGONE when none: Redis lost it). KEYS[2:]
// are the writes' keys; ARGV[2:] the writes, each its word count and then
// its words. Every write runs even when one fails (as in a pipeline); the
// first failure is the reply.
const fenced = `local holder = redis.call('GET', KEYS[1])
if not holder then return redis.error_reply('FENCEGONE the change feed fence ' .. KEYS[1] .. ' is gone') end
if holder ~= ARGV[1] then return redis.error_reply('FENCED another change feed session writes this source') end
local a, failed = 2, nil
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  local r = redis.pcall(unpack(ARGV, a + 1, a + n))
  if type(r) == 'table' and r.err and not failed then failed = r end
  a = a + n + 1
end
if failed then return failed end
return 1`

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

// Fence turns writes, a change feed batch's commands, into what a Redis
// Cluster runs fenced: one script call per hash slot that runs the slot's
// writes, in their order, only while the slot's fence (FeedFenceKey) holds
// token. A transaction cannot span slots, so this is how a session that
// lost its claim on the source writes nothing, even when its writes reach
// Redis late. It sends the script's SHA1 (EVALSHA) unless evalsha is false;
// slots gives the slot of each call. The feed's writes are plain commands
// and the hash write (hashSet), whose steps the script runs itself: any
// other command is an error. of gives, for each call, the indexes of its
// writes.
func Fence(rb rueidis.Builder, config, source, token string, writes []rueidis.Completed, evalsha bool) (cmds []rueidis.Completed, of [][]int, err error) {
	type group struct {
		keys, args []string
		of         []int
	}
	var order []uint16
	groups := map[uint16]*group{}
	for i := range writes {
		ops, keys, err := feedOps(writes[i].Commands())
		if err != nil {
			return nil, nil, err
		}
		s := keySlot(keys[0])
		g := groups[s]
		if g == nil {
			g = &group{keys: []string{FeedFenceKey(config, source, s)}, args: []string{token}}
			groups[s] = g
			order = append(order, s)
		}
		for _, k := range keys {
			if keySlot(k) != s {
				return nil, nil, fmt.Errorf("fence: %s writes keys of two hash slots", ops[0][0])
			}
		}
		g.keys = append(g.keys, keys...)
		g.of = append(g.of, i)
		for _, op := range ops {
			g.args = append(g.args, strconv.Itoa(len(op)))
			g.args = append(g.args, op...)
		}
	}
	cmds, of = make([]rueidis.Completed, len(order)), make([][]int, len(order))
	for i, s := range order {
		g := groups[s]
		of[i] = g.of
		if evalsha {
			cmds[i] = rb.Evalsha().Sha1(fencedSHA).Numkeys(int64(len(g.keys))).Key(g.keys...).Arg(g.args...).Build()
		} else {
			cmds[i] = rb.Eval().Script(fenced).Numkeys(int64(len(g.keys))).Key(g.keys...).Arg(g.args...).Build()
		}
	}
	return cmds, of, nil
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
