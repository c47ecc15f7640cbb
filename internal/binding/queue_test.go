package binding

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
)

// TestAck: acknowledging the newest queued write of a key ends its pending
// mark and does what the drainer asked, guarded as DESIGN invariants 2 and
// 7 want: the row as stored is written back only if no invalidation of the
// cache came since the batch was read (else the key goes, and the next fill
// reads the row); an entry a newer queued write follows leaves the key and
// the mark to that write; a complete cache's key gone meanwhile is
// reported, to be loaded again.
func TestAck(t *testing.T) {
	rc := testenv.StartRedis(t).Client(t)
	ctx := context.Background()
	b := testBinding(t, FormatString, time.Hour, "")
	for _, tc := range []struct {
		name       string
		writes     int    // PutBehind writes of p:1, values q1, q2...
		acked      int    // how many of them are acknowledged (the first ones)
		action     string // for the last acknowledged
		invalidate bool   // an invalidation of the cache after the batch was read
		evicted    bool   // p:1 is gone before the acknowledgement
		complete   bool
		want       string // p:1 after: "" for none
		marked     bool   // p:1 still pending
		gone       []string
	}{
		{name: "written back", writes: 1, acked: 1, action: AckWrite, want: "stored"},
		{name: "written back over an eviction", writes: 1, acked: 1, action: AckWrite, evicted: true, want: "stored"},
		{name: "invalidated since the read", writes: 1, acked: 1, action: AckWrite, invalidate: true, want: ""},
		{name: "removed", writes: 1, acked: 1, action: AckDelete, want: ""},
		{name: "kept", writes: 1, acked: 1, action: AckKeep, want: "q1"},
		{name: "a newer write queued", writes: 2, acked: 1, action: AckWrite, want: "q2", marked: true},
		{name: "complete, gone meanwhile", writes: 1, acked: 1, action: AckKeep, evicted: true, complete: true, want: "", gone: []string{"p:1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream := StreamKey(b.Name)
			mustDo(t, rc, rc.B().Flushall().Build(), rc.B().Set().Key(OwnerKey(b.Name)).Value("tok").Build(),
				rc.B().XgroupCreate().Key(stream).Group(DrainGroup).Id("$").Mkstream().Build())
			var ids []string
			for i := 1; i <= tc.writes; i++ {
				v := "q" + string(rune('0'+i))
				id, err := rc.Do(ctx, b.QueueCmd(rc.B(), "p:1", &Value{Bytes: []byte(v)}, `{"id":"1"}`, "id")).ToString()
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, id)
			}
			if err := rc.Do(ctx, rc.B().Xreadgroup().Group(DrainGroup, "d").Streams().Key(stream).Id(">").Build()).Error(); err != nil {
				t.Fatal(err)
			}
			removals := "0" // read with the batch
			if tc.invalidate {
				mustDo(t, rc, rc.B().Incr().Key(RemovalsKey(b.Name)).Build())
			}
			if tc.evicted {
				mustDo(t, rc, rc.B().Del().Key("p:1").Build())
			}
			var acked []Acked
			for i, id := range ids[:tc.acked] {
				a := Acked{ID: id, Key: "p:1", Action: AckOnly}
				if i == tc.acked-1 {
					a.Action = tc.action
					if tc.action == AckWrite {
						a.Row = &Value{Bytes: []byte("stored")}
					}
				}
				acked = append(acked, a)
			}
			var gone []string
			for _, r := range rc.DoMulti(ctx, b.AckCmds(rc.B(), "tok", removals, acked, AfterID(ids[tc.acked-1]), tc.complete)...) {
				g, err := r.AsStrSlice()
				if err != nil {
					t.Fatal(err)
				}
				gone = append(gone, g...)
			}
			if v, err := rc.Do(ctx, rc.B().Get().Key("p:1").Build()).ToString(); v != tc.want || (tc.want == "" && !rueidis.IsRedisNil(err)) {
				t.Errorf("p:1 = %q (%v), want %q", v, err, tc.want)
			}
			mark, err := rc.Do(ctx, rc.B().Hget().Key(PendingKey(b.Name)).Field("p:1").Build()).ToString()
			if marked := err == nil; marked != tc.marked || (marked && mark != ids[len(ids)-1]) {
				t.Errorf("pending mark %q (%v), want it there: %v, naming the newest write", mark, err, tc.marked)
			}
			if !slices.Equal(gone, tc.gone) {
				t.Errorf("reported gone %q, want %q", gone, tc.gone)
			}
			// The token fences it: another drainer's acknowledgement changes nothing.
			if err := rc.Do(ctx, b.AckCmds(rc.B(), "other", removals, acked, AfterID(ids[tc.acked-1]), false)[0]).Error(); err == nil {
				t.Error("an acknowledgement with another drainer's token was taken")
			}
		})
	}
}
