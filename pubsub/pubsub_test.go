package pubsub_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/pubsub"
)

const prefix = "test:topic:"

// next calls sub.Next, failing the test on an error.
func next(tb testing.TB, sub *pubsub.Subscription) (msgs []pubsub.Message, missed bool) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Patience)
	defer cancel()
	msgs, missed, err := sub.Next(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	return msgs, missed
}

// publish publishes each of data to topic, returning their IDs.
func publish(tb testing.TB, t *pubsub.Topics, topic string, data ...string) []string {
	tb.Helper()
	var ids []string
	for _, d := range data {
		id, err := t.Publish(context.Background(), topic, []byte(d))
		if err != nil {
			tb.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// subscribe subscribes to topic after lastID, failing the test on an error.
func subscribe(tb testing.TB, t *pubsub.Topics, topic, lastID string) *pubsub.Subscription {
	tb.Helper()
	sub, err := t.Subscribe(context.Background(), topic, lastID)
	if err != nil {
		tb.Fatal(err)
	}
	return sub
}

// collect reads sub until it has n messages, failing on a missed report.
func collect(tb testing.TB, sub *pubsub.Subscription, n int) []pubsub.Message {
	tb.Helper()
	var got []pubsub.Message
	for len(got) < n {
		msgs, missed := next(tb, sub)
		if missed {
			tb.Fatalf("after %d messages: reported missed", len(got))
		}
		got = append(got, msgs...)
	}
	return got
}

// want checks that msgs are exactly the messages ids with data.
func want(tb testing.TB, msgs []pubsub.Message, ids []string, data []string) {
	tb.Helper()
	var gotIDs, gotData []string
	for _, m := range msgs {
		gotIDs, gotData = append(gotIDs, m.ID), append(gotData, string(m.Data))
	}
	if !slices.Equal(gotIDs, ids) || !slices.Equal(gotData, data) {
		tb.Fatalf("got %q %q, want %q %q", gotIDs, gotData, ids, data)
	}
}

// TestPubSub replays what a subscriber missed, then delivers live
// messages, on one Redis and on a Cluster.
func TestPubSub(t *testing.T) {
	for _, topology := range []string{"single", "cluster"} {
		t.Run(topology, func(t *testing.T) {
			var client rueidis.Client
			var node func(key string) *testenv.Redis
			if topology == "cluster" {
				c := testenv.StartCluster(t, 3)
				client, node = c.Client(t), func(key string) *testenv.Redis { return c.Owner(t, key) }
			} else {
				r := testenv.StartRedis(t)
				client, node = r.Client(t), func(string) *testenv.Redis { return r }
			}
			topics := pubsub.New(client, prefix, pubsub.Options{})
			data := []string{"one", "two\nlines", "", "\x00binary\xff", "five"}
			ids := publish(t, topics, "news", data[:3]...)

			// A subscriber resuming after the first gets the two after it.
			sub := subscribe(t, topics, "news", ids[0])
			if sub.Position() != ids[0] {
				t.Fatalf("before Next, at %s, not %s", sub.Position(), ids[0])
			}
			want(t, collect(t, sub, 2), ids[1:], data[1:3])
			if sub.Position() != ids[2] {
				t.Fatalf("after two, at %s, not %s", sub.Position(), ids[2])
			}

			// Live: Next waits in XREAD until the next publish.
			got := make(chan []pubsub.Message, 1)
			stop := testenv.Go(t, func(ctx context.Context) error {
				msgs, missed, err := sub.Next(ctx)
				if err == nil && missed {
					err = errors.New("live: reported missed")
				}
				got <- msgs
				return err
			})
			owner := node(prefix + "{news}")
			testenv.WaitFor(t, "the subscriber blocked in XREAD", func() bool { return blocked(t, owner) == 1 })
			ids = append(ids, publish(t, topics, "news", data[3])...)
			want(t, <-got, ids[3:], data[3:4])
			stop()

			// A new subscriber starts after the newest; "0" replays all.
			fresh := subscribe(t, topics, "news", "")
			if fresh.Position() != ids[3] {
				t.Fatalf("a new subscription starts after %s, not the newest %s", fresh.Position(), ids[3])
			}
			ids = append(ids, publish(t, topics, "news", data[4])...)
			want(t, collect(t, fresh, 1), ids[4:], data[4:])
			want(t, collect(t, subscribe(t, topics, "news", "0"), 5), ids, data)

			// Other topics are apart, in slots of their own.
			other := publish(t, topics, "sport", "goal")
			want(t, collect(t, subscribe(t, topics, "sport", "0"), 1), other, []string{"goal"})
		})
	}
}

// blocked returns how many clients of r wait in a blocking command.
func blocked(tb testing.TB, r *testenv.Redis) int {
	tb.Helper()
	n, err := strconv.Atoi(r.Info(tb, "clients", "blocked_clients"))
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// TestBatches reads more messages than one read returns, in order, each once.
func TestBatches(t *testing.T) {
	topics := pubsub.New(testenv.StartRedis(t).Client(t), prefix, pubsub.Options{})
	var data []string
	for i := range 250 {
		data = append(data, strconv.Itoa(i))
	}
	ids := publish(t, topics, "many", data...)
	want(t, collect(t, subscribe(t, topics, "many", "0"), 250), ids, data)
}

// redisNow returns the time of Redis, the clock of the IDs and expiries.
func redisNow(tb testing.TB, c rueidis.Client) time.Time {
	tb.Helper()
	t, err := c.Do(context.Background(), c.B().Time().Build()).AsStrSlice()
	if err != nil {
		tb.Fatal(err)
	}
	s, _ := strconv.ParseInt(t[0], 10, 64)
	us, _ := strconv.ParseInt(t[1], 10, 64)
	return time.Unix(s, us*1000)
}

// idTime returns the time of a stream entry ID.
func idTime(tb testing.TB, id string) time.Time {
	tb.Helper()
	ms, err := strconv.ParseInt(strings.Split(id, "-")[0], 10, 64)
	if err != nil {
		tb.Fatal(err)
	}
	return time.UnixMilli(ms)
}

// TestTrimmed reports missed messages exactly: a subscriber resuming
// after an ID is told when a message after it was trimmed, and only then.
func TestTrimmed(t *testing.T) {
	r := testenv.StartRedis(t)
	client := r.Client(t)
	const retention = 200 * time.Millisecond

	t.Run("age", func(t *testing.T) {
		topics := pubsub.New(client, prefix, pubsub.Options{Retention: retention})
		// a and b, then c once Redis's clock, which stamps the IDs, has
		// passed b's retention: c trims a and b. Should c come so late that
		// the idle stream expired (2 retentions), c starts a new one, and
		// the test tries again on another topic.
		var topic string
		var ids []string
		attempt := 0
		testenv.WaitFor(t, "c trimming a and b in their stream", func() bool {
			attempt++
			topic = fmt.Sprintf("age%d", attempt)
			ids = publish(t, topics, topic, "a", "b")
			testenv.WaitFor(t, "b older than the retention", func() bool {
				return redisNow(t, client).Sub(idTime(t, ids[1])) > retention+time.Millisecond
			})
			ids = append(ids, publish(t, topics, topic, "c")...)
			return added(t, client, prefix+"{"+topic+"}") == 3
		})
		tests := []struct {
			after  string
			missed bool
		}{
			{"0", false},    // all there is, whatever went before
			{ids[0], true},  // b is gone
			{ids[1], false}, // b is gone, but nothing after it
		}
		for _, tt := range tests {
			msgs, missed := next(t, subscribe(t, topics, topic, tt.after))
			if missed != tt.missed {
				t.Errorf("after %s: missed %v, want %v", tt.after, missed, tt.missed)
			}
			want(t, msgs, ids[2:], []string{"c"})
		}
	})

	t.Run("length", func(t *testing.T) {
		topics := pubsub.New(client, prefix, pubsub.Options{MaxLen: 2})
		ids := publish(t, topics, "len", "a", "b", "c", "d") // a and b go
		msgs, missed := next(t, subscribe(t, topics, "len", ids[0]))
		if !missed {
			t.Errorf("after a: b is gone, not reported")
		}
		want(t, msgs, ids[2:], []string{"c", "d"})
		want(t, collect(t, subscribe(t, topics, "len", ids[1]), 2), ids[2:], []string{"c", "d"})

		// A subscriber that lags learns it in the middle of the stream.
		lag := subscribe(t, topics, "len", "")
		ids = append(ids, publish(t, topics, "len", "e", "f", "g")...) // d, e go
		msgs, missed = next(t, lag)
		if !missed {
			t.Errorf("a lagging subscriber after d: e is gone, not reported")
		}
		want(t, msgs, ids[5:], []string{"f", "g"})
	})

	t.Run("expired", func(t *testing.T) {
		topics := pubsub.New(client, prefix, pubsub.Options{Retention: retention})
		ids := publish(t, topics, "quiet", "a")
		key := prefix + "{quiet}"
		testenv.WaitFor(t, "the idle topic expired", func() bool {
			n, err := client.Do(context.Background(), client.B().Exists().Key(key).Build()).AsInt64()
			return err == nil && n == 0
		})
		// a may have had successors that expired with it.
		sub := subscribe(t, topics, "quiet", ids[0])
		msgs, missed := next(t, sub)
		if !missed || len(msgs) != 0 {
			t.Errorf("after a, expired: %v missed %v, want none and missed", msgs, missed)
		}
		ids = append(ids, publish(t, topics, "quiet", "b")...)
		// The new stream still counts a's successors as gone.
		msgs, missed = next(t, subscribe(t, topics, "quiet", ids[0]))
		if !missed {
			t.Errorf("after a, in the stream that followed: missed not reported")
		}
		want(t, msgs, ids[1:], []string{"b"})
	})

	t.Run("watched across expiry", func(t *testing.T) {
		// A subscriber that reads on while an idle topic expires (as an
		// event stream's heartbeats make it) is not told of a reset: it
		// saw nothing published after a.
		const retention = time.Second // what may pass between two of its reads, twice
		topics := pubsub.New(client, prefix, pubsub.Options{Retention: retention})
		ids := publish(t, topics, "watched", "a")
		sub := subscribe(t, topics, "watched", ids[0])
		testenv.WaitFor(t, "the idle topic expired", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			defer cancel()
			if msgs, missed, err := sub.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("idle: %v %v %v", msgs, missed, err)
			}
			n, err := client.Do(context.Background(), client.B().Exists().Key(prefix+"{watched}").Build()).AsInt64()
			return err == nil && n == 0
		})
		ids = append(ids, publish(t, topics, "watched", "b")...)
		msgs, missed := next(t, sub)
		if missed {
			t.Error("told of a reset")
		}
		want(t, msgs, ids[1:], []string{"b"})
	})

	t.Run("never published", func(t *testing.T) {
		// A subscriber that started on a topic nobody published to yet
		// resumes with nothing missed.
		topics := pubsub.New(client, prefix, pubsub.Options{})
		resumed := subscribe(t, topics, "never", subscribe(t, topics, "never", "").Position())
		ids := publish(t, topics, "never", "a")
		want(t, collect(t, resumed, 1), ids, []string{"a"})
	})

	t.Run("unknown ID", func(t *testing.T) {
		topics := pubsub.New(client, prefix, pubsub.Options{})
		ids := publish(t, topics, "future", "a")
		sub := subscribe(t, topics, "future", "99999999999999-0")
		if _, missed := next(t, sub); !missed || sub.Position() != ids[0] {
			t.Errorf("after an ID the stream never gave: missed %v at %s, want missed at %s", missed, sub.Position(), ids[0])
		}
	})
}

// added returns how many entries the stream key ever had.
func added(tb testing.TB, c rueidis.Client, key string) int64 {
	tb.Helper()
	info, err := c.Do(context.Background(), c.B().XinfoStream().Key(key).Build()).AsMap()
	if err != nil {
		tb.Fatal(err)
	}
	v := info["entries-added"]
	n, err := v.AsInt64()
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// TestBadInput refuses bad topics and IDs, and spells IDs one way.
func TestBadInput(t *testing.T) {
	topics := pubsub.New(testenv.StartRedis(t).Client(t), prefix, pubsub.Options{})
	ctx := context.Background()
	tests := []struct {
		topic, lastID string
		err           error
		position      string
	}{
		{"", "", pubsub.ErrBadTopic, ""},
		{strings.Repeat("t", pubsub.MaxTopic+1), "", pubsub.ErrBadTopic, ""},
		{"t", "abc", pubsub.ErrBadID, ""},
		{"t", "1-", pubsub.ErrBadID, ""},
		{"t", "-1", pubsub.ErrBadID, ""},
		{"t", "1-2-3", pubsub.ErrBadID, ""},
		{"t", "+1", pubsub.ErrBadID, ""},
		{"t", "18446744073709551616", pubsub.ErrBadID, ""},
		{"t", "5", nil, "5-0"},
		{"t", "007-01", nil, "7-1"},
		{strings.Repeat("t", pubsub.MaxTopic), "0", nil, "0-0"},
		{"{odd}} topic/\x00", "0", nil, "0-0"},
	}
	for _, tt := range tests {
		sub, err := topics.Subscribe(ctx, tt.topic, tt.lastID)
		if !errors.Is(err, tt.err) {
			t.Errorf("Subscribe(%.20q, %q): %v, want %v", tt.topic, tt.lastID, err, tt.err)
			continue
		}
		if err == nil && sub.Position() != tt.position {
			t.Errorf("Subscribe(%.20q, %q) at %s, want %s", tt.topic, tt.lastID, sub.Position(), tt.position)
		}
		if tt.err == pubsub.ErrBadTopic {
			if _, err := topics.Publish(ctx, tt.topic, nil); !errors.Is(err, pubsub.ErrBadTopic) {
				t.Errorf("Publish(%.20q): %v, want %v", tt.topic, err, pubsub.ErrBadTopic)
			}
		}
	}
}

// TestCancel ends a waiting Next when its context ends, and leaves no
// client blocked in Redis.
func TestCancel(t *testing.T) {
	r := testenv.StartRedis(t)
	topics := pubsub.New(r.Client(t), prefix, pubsub.Options{})
	sub := subscribe(t, topics, "idle", "")

	ctx, cancel := context.WithCancel(context.Background()) // no deadline: only cancel ends the wait
	done := make(chan error, 1)
	go func() {
		_, _, err := sub.Next(ctx)
		done <- err
	}()
	testenv.WaitFor(t, "the subscriber blocked in XREAD", func() bool { return blocked(t, r) == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after cancel: %v, want %v", err, context.Canceled)
	}
	testenv.WaitFor(t, "no client blocked", func() bool { return blocked(t, r) == 0 })

	// A deadline ends it too, with the deadline's error.
	dctx, dcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer dcancel()
	if _, _, err := sub.Next(dctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next past its deadline: %v, want %v", err, context.DeadlineExceeded)
	}
	// The subscription goes on where it was.
	ids := publish(t, topics, "idle", "later")
	want(t, collect(t, sub, 1), ids, []string{"later"})
}

// ExampleTopics publishes and reads back from a Redis at localhost:6379.
func ExampleTopics() {
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{"localhost:6379"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()
	topics := pubsub.New(client, "myapp:topic:", pubsub.Options{Retention: time.Hour})
	ctx := context.Background()

	sub, err := topics.Subscribe(ctx, "orders", "") // from now on
	if err != nil {
		fmt.Println(err)
		return
	}
	if _, err := topics.Publish(ctx, "orders", []byte("order 42 shipped")); err != nil {
		fmt.Println(err)
		return
	}
	msgs, missed, err := sub.Next(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(missed, string(msgs[0].Data))
	// A reconnecting subscriber resumes after the last ID it received:
	// topics.Subscribe(ctx, "orders", msgs[len(msgs)-1].ID)
}

// TestLeastPrivilege runs every path of publish and subscribe as a Redis
// user with the rules docs/recipes/pubsub.md gives, and none is refused.
func TestLeastPrivilege(t *testing.T) {
	doc, err := os.ReadFile("../docs/recipes/pubsub.md")
	if err != nil {
		t.Fatal(err)
	}
	var rules []string
	for line := range strings.Lines(string(doc)) {
		if rest, ok := strings.CutPrefix(line, "ACL SETUSER pubsub "); ok {
			rules = strings.Fields(rest)
		}
	}
	if len(rules) == 0 {
		t.Fatal("docs/recipes/pubsub.md has no line ACL SETUSER pubsub ...")
	}
	for i, r := range rules {
		if r == ">SECRET" {
			rules[i] = ">pw-0123456789"
		}
	}
	r := testenv.StartRedis(t)
	r.SetUser(t, "pubsub", rules...)
	topics := pubsub.New(r.ClientAs(t, "pubsub", "pw-0123456789"), "cachesync:topic:", pubsub.Options{MaxLen: 2})

	sub := subscribe(t, topics, "t", "") // no stream yet
	ids := publish(t, topics, "t", "a", "b", "c")
	want(t, collect(t, subscribe(t, topics, "t", ids[1]), 1), ids[2:], []string{"c"})
	if _, missed := next(t, sub); !missed {
		t.Error("a trimmed, not reported")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := sub.Next(ctx)
		done <- err
	}()
	testenv.WaitFor(t, "the subscriber blocked in XREAD", func() bool { return blocked(t, r) == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after cancel: %v", err)
	}
	testenv.WaitFor(t, "no client blocked", func() bool { return blocked(t, r) == 0 })

	admin := r.Client(t)
	log, err := admin.Do(context.Background(), admin.B().AclLog().Count(100).Build()).ToArray()
	if err != nil {
		t.Fatal(err)
	}
	for _, entry := range log {
		m, _ := entry.AsStrMap()
		t.Errorf("refused: %v", m)
	}
}

// BenchmarkPublish publishes from parallel goroutines; BenchmarkXADD is
// a bare XADD with the same data, the ceiling, in the same run.
func BenchmarkPublish(b *testing.B) {
	topics := pubsub.New(testenv.StartRedis(b).Client(b), prefix, pubsub.Options{})
	data := []byte(strings.Repeat("x", 100))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := topics.Publish(context.Background(), "bench", data); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkXADD(b *testing.B) {
	c := testenv.StartRedis(b).Client(b)
	data := strings.Repeat("x", 100)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := c.Do(context.Background(), c.B().Xadd().Key(prefix+"{bench}").Maxlen().Almost().Threshold("10000").Id("*").FieldValue().FieldValue("d", data).Build()).Error(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkDeliver publishes a message and waits until a subscriber
// waiting in XREAD has it: the round trip from publish to delivery.
func BenchmarkDeliver(b *testing.B) {
	topics := pubsub.New(testenv.StartRedis(b).Client(b), prefix, pubsub.Options{})
	sub := subscribe(b, topics, "deliver", "")
	got := make(chan error)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // ends with ctx
		for {
			_, _, err := sub.Next(ctx)
			select {
			case got <- err:
			case <-ctx.Done():
				return
			}
		}
	}()
	b.ResetTimer()
	for range b.N {
		if _, err := topics.Publish(context.Background(), "deliver", []byte("m")); err != nil {
			b.Fatal(err)
		}
		if err := <-got; err != nil {
			b.Fatal(err)
		}
	}
}
