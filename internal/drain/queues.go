package drain

import (
	"context"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/binding"
)

// Queue is a write-behind cache's queue: entries waiting for the drainer,
// and dead letters.
type Queue struct {
	Pending     int64 // entries in the stream, not yet applied and deleted
	DeadLetters int64 // entries in the dead-letter stream
}

// Queues reads the queue of every write-behind cache of cfg in one round
// trip; a cache whose queue cannot be read is left out.
func Queues(ctx context.Context, rc rueidis.Client, cfg *config.Config) map[string]Queue {
	var cmds rueidis.Commands
	var behind []string
	for _, name := range cfg.CacheNames() {
		if cfg.Caches[name].Writes == config.WritesBehind {
			behind = append(behind, name)
			cmds = append(cmds, rc.B().Xlen().Key(binding.StreamKey(name)).Build(), rc.B().Xlen().Key(binding.DeadLetterKey(name)).Build())
		}
	}
	out := map[string]Queue{}
	if len(cmds) == 0 {
		return out
	}
	res := rc.DoMulti(ctx, cmds...)
	for i, name := range behind {
		pending, err1 := res[2*i].AsInt64()
		dead, err2 := res[2*i+1].AsInt64()
		if err1 == nil && err2 == nil {
			out[name] = Queue{pending, dead}
		}
	}
	return out
}
