package session_test

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/session"
)

const prefix = "test:session:"

// TestIDs: ids are 128 bits from a random source, URL-safe, never twice:
// each of the 128 bits is 0 in some of 2000 ids and 1 in others (a bit
// fixed by mistake is one the same in all; chance fails this 1 in 2^1990).
func TestIDs(t *testing.T) {
	seen := map[string]bool{}
	var ones, zeros [16]byte
	for range 2000 {
		id := session.NewID()
		if seen[id] {
			t.Fatalf("id %s twice", id)
		}
		seen[id] = true
		b, err := base64.RawURLEncoding.Strict().DecodeString(id)
		if err != nil || len(b) != 16 || len(id) != session.IDLen {
			t.Fatalf("id %q: %d bytes, %v; want 16 bytes of base64url in %d characters", id, len(b), err, session.IDLen)
		}
		for i, c := range b {
			ones[i] |= c
			zeros[i] |= ^c
		}
	}
	for i := range 16 {
		if ones[i] != 0xff || zeros[i] != 0xff {
			t.Errorf("byte %d: bits never 1 %08b, never 0 %08b", i, ^ones[i], ^zeros[i])
		}
	}
}

func TestNewRefusesBrace(t *testing.T) {
	if _, err := session.New(nil, "app:{s}:"); err == nil {
		t.Fatal("New took a prefix with {")
	}
}

// TestSession runs every case on one Redis and on a Cluster of three.
func TestSession(t *testing.T) {
	for _, topology := range []string{"single", "cluster"} {
		t.Run(topology, func(t *testing.T) {
			rc := testenv.StartTopology(t, topology)
			s, err := session.New(rc, prefix)
			if err != nil {
				t.Fatal(err)
			}
			for _, tt := range cases {
				t.Run(tt.name, func(t *testing.T) { tt.test(t, &bed{rc: rc, s: s}) })
			}
		})
	}
}

type bed struct {
	rc rueidis.Client
	s  *session.Store
}

var cases = []struct {
	name string
	test func(t *testing.T, b *bed)
}{
	{"create and get", func(t *testing.T, b *bed) {
		t0 := b.now(t).Truncate(time.Millisecond) // the script reads whole ms
		sess := b.create(t, `{"user":7}`, session.Options{Idle: time.Minute, Lifetime: time.Hour})
		t1 := b.now(t)
		if sess.TTL != time.Minute || len(sess.ID) != session.IDLen {
			t.Fatalf("created %+v, want a TTL of the idle 1m", sess)
		}
		if sess.Ends.Before(t0.Add(time.Hour)) || sess.Ends.After(t1.Add(time.Hour)) {
			t.Fatalf("ends %v, want an hour after Create, between %v and %v", sess.Ends, t0.Add(time.Hour), t1.Add(time.Hour))
		}
		if p := b.pttl(t, sess.ID); p <= 0 || p > time.Minute {
			t.Fatalf("PTTL %v, want (0, 1m]", p)
		}
		got := b.get(t, sess.ID)
		if string(got.Data) != `{"user":7}` || !got.Ends.Equal(sess.Ends) {
			t.Fatalf("got %+v, want the data and end of %+v", got, sess)
		}
	}},
	{"defaults", func(t *testing.T, b *bed) {
		sess := b.create(t, "x", session.Options{})
		if sess.TTL != session.DefaultIdle {
			t.Fatalf("TTL %v, want %v", sess.TTL, session.DefaultIdle)
		}
		if left := sess.Ends.Sub(b.now(t)); left <= session.DefaultLifetime-time.Minute || left > session.DefaultLifetime {
			t.Fatalf("lifetime left %v, want about %v", left, session.DefaultLifetime)
		}
	}},
	{"get slides the expiry", func(t *testing.T, b *bed) {
		sess := b.create(t, "x", session.Options{Idle: time.Hour, Lifetime: 2 * time.Hour})
		for _, use := range []func() (session.Session, error){
			func() (session.Session, error) { return b.s.Get(t.Context(), sess.ID) },
			func() (session.Session, error) { return b.s.Update(t.Context(), sess.ID, []byte("y")) },
		} {
			b.expireIn(t, sess.ID, time.Minute) // as if it had gone unused for 59 minutes
			got, err := use()
			if err != nil {
				t.Fatal(err)
			}
			if got.TTL != time.Hour {
				t.Fatalf("TTL after a use %v, want the idle 1h", got.TTL)
			}
			if p := b.pttl(t, sess.ID); p <= time.Minute || p > time.Hour {
				t.Fatalf("PTTL after a use %v, want the idle timeout again: (1m, 1h]", p)
			}
		}
	}},
	{"the lifetime caps the sliding expiry", func(t *testing.T, b *bed) {
		sess := b.create(t, "x", session.Options{Idle: 2 * time.Hour, Lifetime: time.Hour})
		if sess.TTL > time.Hour {
			t.Fatalf("TTL %v past the lifetime 1h", sess.TTL)
		}
		b.expireIn(t, sess.ID, time.Minute)
		before := b.now(t).Truncate(time.Millisecond) // the script's clock reads whole ms
		got := b.get(t, sess.ID)
		if left := sess.Ends.Sub(before); got.TTL <= time.Minute || got.TTL > left {
			t.Fatalf("TTL after a get %v, want it slid but within the lifetime left, (1m, %v]", got.TTL, left)
		}
		if p := b.pttl(t, sess.ID); p > sess.Ends.Sub(before) {
			t.Fatalf("PTTL %v past the lifetime's end %v", p, sess.Ends)
		}
	}},
	{"used all the time, it still ends with its lifetime", func(t *testing.T, b *bed) {
		sess := b.create(t, "x", session.Options{Idle: time.Hour, Lifetime: 300 * time.Millisecond})
		testenv.WaitFor(t, "the session ends", func() bool {
			got, err := b.s.Get(t.Context(), sess.ID)
			if errors.Is(err, session.ErrNotFound) {
				return true
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.TTL > 300*time.Millisecond {
				t.Fatalf("a get set the TTL %v, past the lifetime 300ms", got.TTL)
			}
			return false
		})
		b.gone(t, sess.ID)
	}},
	{"unused, it ends after its idle timeout", func(t *testing.T, b *bed) {
		sess := b.create(t, "x", session.Options{Idle: 100 * time.Millisecond, Lifetime: time.Hour})
		testenv.WaitFor(t, "the session expires", func() bool {
			n, err := b.rc.Do(t.Context(), b.rc.B().Exists().Key(b.s.Key(sess.ID)).Build()).AsInt64()
			if err != nil {
				t.Fatal(err)
			}
			return n == 0
		})
		b.gone(t, sess.ID)
	}},
	{"update", func(t *testing.T, b *bed) {
		sess := b.create(t, "old", session.Options{})
		up, err := b.s.Update(t.Context(), sess.ID, []byte("new"))
		if err != nil || string(up.Data) != "new" || !up.Ends.Equal(sess.Ends) {
			t.Fatalf("update: %+v, %v; want the new data, the same end", up, err)
		}
		if got := b.get(t, sess.ID); string(got.Data) != "new" {
			t.Fatalf("get after update: %q", got.Data)
		}
	}},
	{"destroy", func(t *testing.T, b *bed) {
		sess := b.create(t, "x", session.Options{})
		if err := b.s.Destroy(t.Context(), sess.ID); err != nil {
			t.Fatal(err)
		}
		if err := b.s.Destroy(t.Context(), sess.ID); !errors.Is(err, session.ErrNotFound) {
			t.Fatalf("destroy twice: %v, want ErrNotFound", err)
		}
		b.gone(t, sess.ID)
	}},
	{"never created", func(t *testing.T, b *bed) { b.gone(t, session.NewID()) }},
	{"bad ids", func(t *testing.T, b *bed) {
		for _, id := range []string{"", "x", strings.Repeat("A", 21), strings.Repeat("A", 23), "AAAAAAAAAAAAAAAAAAAA{}", "AAAAAAAAAAAAAAAAAAAA/=", "AAAAAAAAAAAAAAAAAAAAAB"} {
			_, gerr := b.s.Get(t.Context(), id)
			_, uerr := b.s.Update(t.Context(), id, nil)
			derr := b.s.Destroy(t.Context(), id)
			for _, err := range []error{gerr, uerr, derr} {
				if !errors.Is(err, session.ErrBadID) {
					t.Fatalf("id %q: %v, want ErrBadID", id, err)
				}
			}
		}
	}},
	{"ids of created sessions differ", func(t *testing.T, b *bed) {
		seen := map[string]bool{}
		for range 200 {
			id := b.create(t, "", session.Options{}).ID
			if seen[id] {
				t.Fatalf("id %s twice", id)
			}
			seen[id] = true
		}
	}},
}

// gone checks that the session id is not found by Get, Update or Destroy,
// and that Update did not make it again.
func (b *bed) gone(t *testing.T, id string) {
	t.Helper()
	_, gerr := b.s.Get(t.Context(), id)
	_, uerr := b.s.Update(t.Context(), id, []byte("again"))
	derr := b.s.Destroy(t.Context(), id)
	for _, err := range []error{gerr, uerr, derr} {
		if !errors.Is(err, session.ErrNotFound) {
			t.Fatalf("session %s: %v, want ErrNotFound", id, err)
		}
	}
}

func (b *bed) create(t *testing.T, data string, opts session.Options) session.Session {
	t.Helper()
	sess, err := b.s.Create(t.Context(), []byte(data), opts)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

func (b *bed) get(t *testing.T, id string) session.Session {
	t.Helper()
	sess, err := b.s.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// now is Redis's clock.
func (b *bed) now(t *testing.T) time.Time {
	t.Helper()
	arr, err := b.rc.Do(t.Context(), b.rc.B().Time().Build()).AsIntSlice()
	if err != nil {
		t.Fatal(err)
	}
	return time.Unix(arr[0], arr[1]*1000)
}

func (b *bed) pttl(t *testing.T, id string) time.Duration {
	t.Helper()
	ms, err := b.rc.Do(t.Context(), b.rc.B().Pttl().Key(b.s.Key(id)).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(ms) * time.Millisecond
}

// expireIn sets the session's TTL to d, as if it had gone unused until d
// was left.
func (b *bed) expireIn(t *testing.T, id string, d time.Duration) {
	t.Helper()
	if err := b.rc.Do(context.Background(), b.rc.B().Pexpire().Key(b.s.Key(id)).Milliseconds(d.Milliseconds()).Build()).Error(); err != nil {
		t.Fatal(err)
	}
}
