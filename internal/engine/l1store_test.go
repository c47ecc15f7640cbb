package engine

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
)

// TestL1Store fills a store past its bound: it keeps within it, counts its
// bytes exactly, keeps the entry just set and the ones in use, and a flush
// empties it.
func TestL1Store(t *testing.T) {
	stats := &L1Stats{}
	rc := testenv.StartRedis(t).Client(t)
	msg := func(s string) rueidis.RedisMessage { // GET's reply, as the store keeps it
		ctx := context.Background()
		if err := rc.Do(ctx, rc.B().Set().Key("m").Value(s).Build()).Error(); err != nil {
			t.Fatal(err)
		}
		m, err := rc.Do(ctx, rc.B().Get().Key("m").Build()).ToMessage()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	v0 := msg("v000")
	one := int64(len("k000GET")+v0.CacheSize()) + l1EntryOverhead
	str := func(m rueidis.RedisMessage) string { v, _ := m.ToString(); return v }
	s := newL1Store(10*one, stats)
	for i := range 30 {
		k := fmt.Sprintf("k%03dGET", i)
		s.Set(k, msg(fmt.Sprintf("v%03d", i)))
		s.Get("k000GET") // in use: the eviction keeps it
		if s.size > s.max {
			t.Fatalf("after %d sets the store holds %d bytes, over its %d", i+1, s.size, s.max)
		}
		if got := str(s.Get(k)); got != fmt.Sprintf("v%03d", i) {
			t.Fatalf("the entry just set reads %q", got)
		}
		if stats.Bytes.Load() != s.size || s.size != int64(len(s.m))*one {
			t.Fatalf("bytes %d, size %d, %d entries of %d", stats.Bytes.Load(), s.size, len(s.m), one)
		}
	}
	if got := str(s.Get("k000GET")); got != "v000" {
		t.Fatalf("the entry read before every set was evicted (%q)", got)
	}
	s.Set("k001GET", msg("v001")) // a replaced entry counts once
	if stats.Bytes.Load() != int64(len(s.m))*one {
		t.Fatalf("bytes %d for %d entries", stats.Bytes.Load(), len(s.m))
	}
	s.Flush()
	if stats.Bytes.Load() != 0 || len(s.m) != 0 || stats.Flushes.Load() != 1 {
		t.Fatalf("after a flush: bytes %d, %d entries, %d flushes", stats.Bytes.Load(), len(s.m), stats.Flushes.Load())
	}
}
