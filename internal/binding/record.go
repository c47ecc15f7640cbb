package binding

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// The expiry record of a cache that refreshes (RecordKey) is a sorted set
// of its keys scored by when they expire (unix ms), written with every value,
// so a refresher that was down finds what expired meanwhile.
//
// On one Redis node the scripts that write values write the record in the
// same step. A Redis Cluster keeps the record in a slot of its own, which
// no script may share with the values, so there it is written aside, by a
// rule that may leave a key recorded too early (a refresher then finds it
// present, or reloads it for nothing) but not missing: an entry is added
// (if absent) before a value is written, moved to the value's expiry after
// it is written, and removed only once it is due. The one lateness left is
// a refresh's write racing a change-feed write of the same key: the later
// of the two recorded expiries may be the refresh's, by up to the TTL
// jitter; the key's expired event is unaffected.

// inScript is the record the scripts write: the cache's, unless there is
// none or it lives in another Cluster slot than the keys.
func (b *Binding) inScript(c rueidis.Client) string {
	if b.recordAside(c) {
		return ""
	}
	return b.Record
}

// recordAside tells that the record is written beside the scripts.
func (b *Binding) recordAside(c rueidis.Client) bool {
	return b.Record != "" && c.Mode() == rueidis.ClientModeCluster
}

// record adds keys to the expiry record, each expiring at at[i] (unix ms);
// with onlyNew, keys already there keep their entry.
func (b *Binding) record(ctx context.Context, c rueidis.Client, keys []string, at []int64, onlyNew bool) error {
	if len(keys) == 0 {
		return nil
	}
	args := make([]string, 0, 2*len(keys)+1)
	if onlyNew {
		args = append(args, "NX")
	}
	for i, k := range keys {
		args = append(args, strconv.FormatInt(at[i], 10), k)
	}
	if err := c.Do(ctx, c.B().Arbitrary("ZADD").Keys(b.Record).Args(args...).Build()).Error(); err != nil {
		return fmt.Errorf("expiry record: %w", err)
	}
	return nil
}

// unrecord removes members (ARGV[2:]) of the record KEYS[1] recorded to
// expire by ARGV[1] (unix ms); a later entry is a newer write's.
const unrecord = `local due = tonumber(ARGV[1])
for i = 2, #ARGV do
  local at = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if at and tonumber(at) <= due then redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return 1`

var unrecordScript = newScript(unrecord)

// unrecord removes keys from the expiry record if their recorded expiry is
// by dueBy: keys removed, or kept without a TTL, by a refresh of what was
// due then. A later entry was written by a newer write, and stays.
func (b *Binding) unrecord(ctx context.Context, c rueidis.Client, keys []string, dueBy time.Time) error {
	if len(keys) == 0 {
		return nil
	}
	e := rueidis.LuaExec{Keys: []string{b.Record}, Args: append([]string{strconv.FormatInt(dueBy.UnixMilli(), 10)}, keys...)}
	if err := unrecordScript.do(ctx, c, e).Error(); err != nil {
		return fmt.Errorf("expiry record: %w", err)
	}
	return nil
}
