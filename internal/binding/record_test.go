package binding

import (
	"context"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
)

// TestRecordNeverLate: on one node (record written by the scripts) and on
// a Redis Cluster (record written beside them), the expiry record follows
// what refreshes do and is never left later than a key's real expiry: a
// fill that loses leaves the key due; a written value is recorded with its
// TTL; a kept key is recorded anew; a key whose row is gone leaves it.
func TestRecordNeverLate(t *testing.T) {
	for _, topology := range []string{"single", "cluster"} {
		t.Run(topology, func(t *testing.T) {
			rc := testenv.StartTopology(t, topology)
			ctx := context.Background()
			record := RecordKey("p")
			b := testBinding(t, FormatString, time.Hour, record)
			recorded := func(key string) time.Duration { // until the recorded expiry; -1h when not recorded
				t.Helper()
				at, err := rc.Do(ctx, rc.B().Zscore().Key(record).Member(key).Build()).AsFloat64()
				if rueidis.IsRedisNil(err) {
					return -time.Hour
				}
				if err != nil {
					t.Fatal(err)
				}
				return time.Until(time.UnixMilli(int64(at)))
			}
			due := func(key string) {
				mustDo(t, rc, rc.B().Zadd().Key(record).ScoreMember().ScoreMember(float64(time.Now().Add(-time.Second).UnixMilli()), key).Build())
			}
			v := &Value{Bytes: []byte("1")}
			claim := func(key string) Claimed {
				t.Helper()
				c, err := b.ExecClaims(ctx, rc, []string{key}, ClaimRecord, "tok", time.Minute, time.Now(), time.Now())
				if err != nil || len(c) != 1 {
					t.Fatalf("claim %s: %v, %v", key, c, err)
				}
				return c[0]
			}
			fill := func(f Fill) int64 {
				t.Helper()
				n, err := b.ExecFills(ctx, rc, "tok", []Fill{f}, time.Now())
				if err != nil || len(n) != 1 {
					t.Fatalf("fill %s: %v, %v", f.Key, n, err)
				}
				return n[0]
			}

			// A fill whose lease ran out loses, and the key stays due.
			due("p:1")
			if c := claim("p:1"); !c.Load || c.Present {
				t.Fatalf("claim of a missing key: %+v", c)
			}
			mustDo(t, rc, rc.B().Del().Key(CompanionsOf("p:1").Lease).Build())
			if n := fill(b.Fill("p:1", v, false, false, 0)); n != 0 {
				t.Fatalf("a fill without its lease wrote (%d)", n)
			}
			if d := recorded("p:1"); d > 0 || d == -time.Hour {
				t.Fatalf("after a lost fill p:1 is recorded to expire in %v (-1h: not recorded), want still due", d)
			}

			// A fill that holds its lease writes, and records the TTL.
			claim("p:1")
			if n := fill(b.Fill("p:1", v, false, false, 0)); n != 1 {
				t.Fatalf("the fill did not write (%d)", n)
			}
			if d := recorded("p:1"); d < 59*time.Minute || d > time.Hour {
				t.Fatalf("after its fill p:1 is recorded to expire in %v, want the hour", d)
			}

			// A present key is kept and recorded anew at its real expiry.
			mustDo(t, rc, rc.B().Set().Key("p:2").Value("2").Px(10*time.Minute).Build())
			due("p:2")
			if c := claim("p:2"); c.Load || !c.Present || c.TTL <= 9*time.Minute {
				t.Fatalf("claim of a present key: %+v", c)
			}
			if d := recorded("p:2"); d < 9*time.Minute || d > 10*time.Minute {
				t.Fatalf("kept p:2 is recorded to expire in %v, want its 10 minutes", d)
			}

			// A key whose row is gone leaves the record.
			due("p:3")
			claim("p:3")
			if n := fill(b.Fill("p:3", nil, false, false, 0)); n != 1 {
				t.Fatalf("the deletion was not done (%d)", n)
			}
			if d := recorded("p:3"); d != -time.Hour {
				t.Fatalf("deleted p:3 is still recorded (%v)", d)
			}
		})
	}
}
