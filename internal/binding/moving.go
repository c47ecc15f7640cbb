package binding

import (
	"context"
	"errors"
	"time"

	"github.com/redis/rueidis"
)

// ErrMoving says that a node no longer serves a key it was sent (a
// script's step was told "non local key": resharding): what did not run
// is sent again once the move ends, as after TRYAGAIN.
var ErrMoving = errors.New("a hash slot is moving between nodes")

// TryAgain tells (in err's chain) the error reply Redis Cluster gives a
// command of several keys of a slot that is moving between nodes when some
// of the keys have moved and others not, or ErrMoving: what did not run
// may be sent again (the move ends).
func TryAgain(err error) bool {
	var re *rueidis.RedisError
	return errors.Is(err, ErrMoving) || errors.As(err, &re) && re.IsTryAgain()
}

// UntilMoved runs do, which sends commands of several keys of one Redis
// Cluster slot each, again while Redis refuses one with TRYAGAIN (or do
// says ErrMoving): the slot is moving between nodes, some of the keys have
// moved and others not, until the move ends. A refused command did not run; the client
// runs one again by itself only if it may run twice, so the caller, who
// knows, does. It gives up when ctx ends, returning the refusal.
func UntilMoved(ctx context.Context, do func() error) error {
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		err := do()
		if !TryAgain(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}
