// Package lock is a lease lock in one Redis: a holder acquires a name with a
// random token and a TTL, only the holder (its token) releases or extends
// it, and each acquisition gets a fencing token that is greater than every
// earlier one of the name, for the protected resource to check.
//
// A lock in one Redis is not safe across a failover (the replica may not
// have the lock yet) nor against a holder paused past its TTL: see
// docs/recipes/lock.md for what it guarantees and what to use when that is
// not enough.
package lock

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Errors of the package.
var (
	// ErrHeld is TryAcquire's answer when another holder has the lock.
	ErrHeld = errors.New("lock: held by another holder")
	// ErrNotHeld is Release's and Extend's answer when the token does not
	// hold the lock (any more): it expired, and maybe another took it.
	ErrNotHeld = errors.New("lock: not held by this token")
	// ErrName is returned for a name that cannot be hash-tagged: empty, or
	// beginning with '}'.
	ErrName = errors.New("lock: a name must not be empty nor begin with '}'")
	// ErrTTL is returned for a TTL below a millisecond.
	ErrTTL = errors.New("lock: a TTL must be at least 1ms")
)

// Locks acquires and releases named locks in one Redis.
type Locks struct {
	client rueidis.Client
	prefix string
}

// New returns the locks of client, keyed under prefix (which should contain
// no '{'): the lock NAME is PREFIX{NAME}, its fencing counter
// PREFIX{NAME}:fence, in one Cluster slot.
func New(client rueidis.Client, prefix string) *Locks {
	return &Locks{client: client, prefix: prefix}
}

// Lease is one acquisition of a lock.
type Lease struct {
	Name  string
	Token string // random, 128 bits, hex: it proves who holds the lock
	// Fence is greater than the Fence of every earlier acquisition of the
	// name: a resource that refuses a write with a lower Fence than one it
	// has seen is safe from a holder that lost the lock without knowing.
	Fence int64
	TTL   time.Duration
}

// keys returns the lock's key and its fencing counter's.
func (l *Locks) keys(name string) ([]string, error) {
	if name == "" || strings.HasPrefix(name, "}") {
		return nil, ErrName
	}
	k := l.prefix + "{" + name + "}"
	return []string{k, k + ":fence"}, nil
}

// acquireScript sets the lock with NX and a TTL and, only then, INCRs the
// fencing counter, which never expires. It returns the fence, or 0 and the
// lock's PTTL when another holds it.
var acquireScript = rueidis.NewLuaScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {redis.call('INCR', KEYS[2]), 0}
end
return {0, redis.call('PTTL', KEYS[1])}
`)

// releaseScript deletes the lock if ARGV[1] holds it.
var releaseScript = rueidis.NewLuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// extendScript sets the lock's TTL to ARGV[2] ms if ARGV[1] holds it.
var extendScript = rueidis.NewLuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// TryAcquire takes the lock name for ttl if no one holds it, else returns
// ErrHeld.
func (l *Locks) TryAcquire(ctx context.Context, name string, ttl time.Duration) (Lease, error) {
	lease, _, err := l.try(ctx, name, ttl)
	return lease, err
}

// try is TryAcquire that also returns, when the lock is held, how long it
// is held for yet.
func (l *Locks) try(ctx context.Context, name string, ttl time.Duration) (Lease, time.Duration, error) {
	keys, err := l.keys(name)
	if err != nil {
		return Lease{}, 0, err
	}
	if ttl < time.Millisecond {
		return Lease{}, 0, ErrTTL
	}
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand, Go 1.24+)
	token := hex.EncodeToString(b[:])
	got, err := acquireScript.Exec(ctx, l.client, keys, []string{token, strconv.FormatInt(ttl.Milliseconds(), 10)}).AsIntSlice()
	if err != nil {
		return Lease{}, 0, fmt.Errorf("lock %q: acquire: %w", name, err)
	}
	if len(got) != 2 {
		return Lease{}, 0, fmt.Errorf("lock %q: acquire: the script returned %v", name, got)
	}
	if got[0] == 0 {
		return Lease{}, time.Duration(got[1]) * time.Millisecond, fmt.Errorf("lock %q: %w", name, ErrHeld)
	}
	return Lease{Name: name, Token: token, Fence: got[0], TTL: ttl.Truncate(time.Millisecond)}, 0, nil
}

// Backoff bounds the pause of Acquire between two tries: it starts at
// MinBackoff, doubles up to MaxBackoff, and each pause is drawn at random
// from its upper half, so that waiters do not retry in step.
const (
	MinBackoff = 5 * time.Millisecond
	MaxBackoff = 500 * time.Millisecond
)

// Acquire takes the lock name for ttl, waiting while another holds it
// until ctx ends; then it returns ctx's error.
func (l *Locks) Acquire(ctx context.Context, name string, ttl time.Duration) (Lease, error) {
	pause := MinBackoff
	for {
		lease, left, err := l.try(ctx, name, ttl)
		if err != nil && !errors.Is(err, ErrHeld) && ended(ctx, err) {
			// the try was cut short by ctx's end: say so, as a wait would
			return Lease{}, fmt.Errorf("lock %q: waiting: %w", name, context.Cause(ctx))
		}
		if !errors.Is(err, ErrHeld) {
			return lease, err
		}
		d := pause/2 + mrand.N(pause/2+1)
		if left > 0 {
			d = min(d, left) // no point sleeping past the holder's TTL
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return Lease{}, fmt.Errorf("lock %q: waiting: %w", name, context.Cause(ctx))
		case <-t.C:
		}
		pause = min(2*pause, MaxBackoff)
	}
}

// ended tells whether err is ctx's end. rueidis gives a command the
// connection's deadline of ctx's and answers context.DeadlineExceeded when
// that passes, which may be before ctx itself says it is done: then it is
// waited for (its deadline has passed: at once), so context.Cause tells why.
func ended(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return true
	}
	if dl, ok := ctx.Deadline(); ok && errors.Is(err, context.DeadlineExceeded) && !time.Now().Before(dl) {
		<-ctx.Done()
		return true
	}
	return false
}

// Release frees the lock name if token holds it, else returns ErrNotHeld.
func (l *Locks) Release(ctx context.Context, name, token string) error {
	return l.ifHolder(ctx, releaseScript, "release", name, token)
}

// Extend sets the TTL of the lock name to ttl from now if token holds it,
// else returns ErrNotHeld.
func (l *Locks) Extend(ctx context.Context, name, token string, ttl time.Duration) error {
	if ttl < time.Millisecond {
		return ErrTTL
	}
	return l.ifHolder(ctx, extendScript, "extend", name, token, strconv.FormatInt(ttl.Milliseconds(), 10))
}

// ifHolder runs script, which acts if token holds the lock name.
func (l *Locks) ifHolder(ctx context.Context, script *rueidis.Lua, what, name, token string, args ...string) error {
	keys, err := l.keys(name)
	if err != nil {
		return err
	}
	n, err := script.Exec(ctx, l.client, keys[:1], append([]string{token}, args...)).AsInt64()
	if err != nil {
		return fmt.Errorf("lock %q: %s: %w", name, what, err)
	}
	if n == 0 {
		return fmt.Errorf("lock %q: %s: %w", name, what, ErrNotHeld)
	}
	return nil
}
