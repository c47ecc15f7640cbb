package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
	"github.com/cachesync/cachesync/pubsub"
)

const (
	topicsRW = "rw-key-0123456789abcdef"
	topicsRO = "ro-key-0123456789abcdef"
)

// topicsBed is a Server serving topics, on a loopback port.
type topicsBed struct {
	t      *testing.T
	url    string
	redis  *testenv.Redis // nil on a Cluster
	client rueidis.Client
	srv    *Server
	stop   func() // shuts the server down
}

// newTopicsBed serves the topics of a Redis of topology with opts, an
// idle stream's heartbeat every, through Serve (the daemon's http.Server
// with its timeouts). The Server has no engine: the topic routes use none.
func newTopicsBed(t *testing.T, topology string, opts pubsub.Options, every time.Duration) *topicsBed {
	b := &topicsBed{t: t}
	if topology == "cluster" {
		b.client = testenv.StartCluster(t, 3).Client(t)
	} else {
		b.redis = testenv.StartRedis(t)
		b.client = b.redis.Client(t)
	}
	s := New(nil, config.HTTP{MaxBody: 64, Keys: []config.APIKey{
		{Name: "app", Key: topicsRW, Scopes: []string{"read", "write"}},
		{Name: "reader", Key: topicsRO, Scopes: []string{"read"}},
	}}, world.Logger())
	s.serveTopics(pubsub.New(b.client, "test:topic:", opts), every)
	b.srv = s
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.url = "http://" + ln.Addr().String()
	b.stop = testenv.Go(t, func(ctx context.Context) error { return s.Serve(ctx, ln) })
	return b
}

// post publishes data to topic, returning the message ID.
func (b *topicsBed) post(topic, data string) string {
	b.t.Helper()
	status, body := b.do("POST", "/v1/topics/"+topic+"/messages", topicsRW, data)
	var reply struct{ ID string }
	if err := json.Unmarshal([]byte(body), &reply); status != http.StatusCreated || err != nil || reply.ID == "" {
		b.t.Fatalf("POST %s: %d %s", topic, status, body)
	}
	return reply.ID
}

// do sends a request with key and body, returning the status and body.
func (b *topicsBed) do(method, path, key, body string) (int, string) {
	b.t.Helper()
	req, err := http.NewRequest(method, b.url+path, strings.NewReader(body))
	if err != nil {
		b.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp.StatusCode, string(out)
}

// stream is an event stream a client reads.
type stream struct {
	t      *testing.T
	resp   *http.Response
	r      *bufio.Reader
	cancel context.CancelFunc
}

// event is one block of an event stream: an event, or a comment.
type event struct {
	id, typ, data string
	comment       bool
}

// subscribe opens the event stream of path with header, once its
// headers came.
func (b *topicsBed) subscribe(path string, header ...string) *stream {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Patience)
	req, err := http.NewRequestWithContext(ctx, "GET", b.url+path, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("X-API-Key", topicsRO)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		body, _ := io.ReadAll(resp.Body)
		b.t.Fatalf("GET %s: %d %s %s", path, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	s := &stream{t: b.t, resp: resp, r: bufio.NewReader(resp.Body), cancel: cancel}
	b.t.Cleanup(s.close)
	return s
}

// close goes away.
func (s *stream) close() {
	s.cancel()
	s.resp.Body.Close()
}

// next reads the next block of the stream, as an EventSource parses it.
func (s *stream) next() (event, error) {
	var e event
	var data []string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return e, err
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			e.data = strings.Join(data, "\n")
			return e, nil
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "":
			e.comment = true
		case "id":
			e.id = value
		case "event":
			e.typ = value
		case "data":
			data = append(data, value)
		default:
			return e, fmt.Errorf("unknown field in %q", line)
		}
	}
}

// events reads n events, skipping comments, and returns them as
// "ID TYPE DATA" lines.
func (s *stream) events(n int) []string {
	s.t.Helper()
	var got []string
	for len(got) < n {
		e, err := s.next()
		if err != nil {
			s.t.Fatalf("after %q: %v", got, err)
		}
		if !e.comment {
			got = append(got, e.id+" "+e.typ+" "+e.data)
		}
	}
	return got
}

// msg is the event of a message as events returns it.
func msg(id, data string) string { return id + "  " + data }

// start is the event that begins a stream, its position.
func start(id string) string { return id + "  " }

func wantEvents(tb testing.TB, got []string, want ...string) {
	tb.Helper()
	if !slices.Equal(got, want) {
		tb.Fatalf("events:\n got %q\nwant %q", got, want)
	}
}

// TestTopics delivers messages in order to an SSE client, and replays
// exactly what a client missed when it reconnects after the last event
// ID it received (as the Last-Event-ID header or the query parameter).
func TestTopics(t *testing.T) {
	world.EachTopology(t, func(t *testing.T, topology string) {
		b := newTopicsBed(t, topology, pubsub.Options{}, heartbeat)
		first := b.post("news", "before")
		s := b.subscribe("/v1/topics/news/events")
		data := []string{"one", "two\nlines\n", "", "  spaced: yes", "data: not a field"}
		var ids []string
		for _, d := range data {
			ids = append(ids, b.post("news", d))
		}
		wantEvents(t, s.events(6), start(first), msg(ids[0], data[0]), msg(ids[1], data[1]), msg(ids[2], data[2]), msg(ids[3], data[3]), msg(ids[4], data[4]))
		s.close()

		// Away, the client misses three messages; back, it gets them and
		// then the live ones.
		after := ids[4] // the last event it received
		for _, how := range []string{"header", "query"} {
			var away []string
			for i := range 3 {
				away = append(away, b.post("news", how+" "+strconv.Itoa(i)))
			}
			var s *stream
			if how == "header" {
				s = b.subscribe("/v1/topics/news/events", "Last-Event-ID", after)
			} else {
				s = b.subscribe("/v1/topics/news/events?last_event_id=" + after)
			}
			wantEvents(t, s.events(4), start(after), msg(away[0], how+" 0"), msg(away[1], how+" 1"), msg(away[2], how+" 2"))
			live := b.post("news", how+" live")
			wantEvents(t, s.events(1), msg(live, how+" live"))
			s.close()
			after = live
		}
	})
}

// TestTopicsReset tells a client that resumes after trimmed messages.
func TestTopicsReset(t *testing.T) {
	b := newTopicsBed(t, "single", pubsub.Options{MaxLen: 2}, heartbeat)
	var ids []string
	for _, d := range []string{"a", "b", "c", "d"} {
		ids = append(ids, b.post("small", d))
	}
	s := b.subscribe("/v1/topics/small/events", "Last-Event-ID", ids[0])
	wantEvents(t, s.events(4), start(ids[0]), " reset "+ids[0], msg(ids[2], "c"), msg(ids[3], "d"))
	s = b.subscribe("/v1/topics/small/events", "Last-Event-ID", ids[1])
	wantEvents(t, s.events(3), start(ids[1]), msg(ids[2], "c"), msg(ids[3], "d"))
}

// TestTopicsBadRequests answers bad input and missing scopes in JSON.
func TestTopicsBadRequests(t *testing.T) {
	b := newTopicsBed(t, "single", pubsub.Options{}, heartbeat)
	long := strings.Repeat("t", pubsub.MaxTopic+1)
	tests := []struct {
		name, method, path, key, body string
		status                        int
		code                          string
	}{
		{"too large", "POST", "/v1/topics/t/messages", topicsRW, strings.Repeat("x", 65), 413, "body_too_large"},
		{"CR", "POST", "/v1/topics/t/messages", topicsRW, "a\r\nb", 400, "bad_message"},
		{"not UTF-8", "POST", "/v1/topics/t/messages", topicsRW, "\xff", 400, "bad_message"},
		{"long topic", "POST", "/v1/topics/" + long + "/messages", topicsRW, "x", 400, "bad_topic"},
		{"long topic events", "GET", "/v1/topics/" + long + "/events", topicsRO, "", 400, "bad_topic"},
		{"bad id", "GET", "/v1/topics/t/events?last_event_id=x", topicsRO, "", 400, "bad_event_id"},
		{"publish needs write", "POST", "/v1/topics/t/messages", topicsRO, "x", 403, "forbidden"},
		{"no key", "GET", "/v1/topics/t/events", "", "", 401, "unauthorized"},
		{"method", "PUT", "/v1/topics/t/messages", topicsRW, "x", 405, "method_not_allowed"},
	}
	for _, tt := range tests {
		status, body := b.do(tt.method, tt.path, tt.key, tt.body)
		var reply struct{ Error struct{ Code string } }
		if err := json.Unmarshal([]byte(body), &reply); status != tt.status || err != nil || reply.Error.Code != tt.code {
			t.Errorf("%s: %d %s, want %d %s", tt.name, status, body, tt.status, tt.code)
		}
	}
}

// TestTopicsRedisDown answers 503 when Redis does not answer.
func TestTopicsRedisDown(t *testing.T) {
	b := newTopicsBed(t, "single", pubsub.Options{}, heartbeat)
	if err := b.redis.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, req := range []struct{ method, path, key string }{
		{"POST", "/v1/topics/t/messages", topicsRW},
		{"GET", "/v1/topics/t/events", topicsRO},
	} {
		status, body := b.do(req.method, req.path, req.key, "x")
		var reply struct{ Error struct{ Code string } }
		if err := json.Unmarshal([]byte(body), &reply); status != http.StatusServiceUnavailable || err != nil || reply.Error.Code != "unavailable" {
			t.Errorf("%s %s with Redis down: %d %s", req.method, req.path, status, body)
		}
	}
}

// TestTopicsStreamOutlivesTimeouts keeps a stream open past an
// http.Server's read and write timeouts, with heartbeats while idle.
func TestTopicsStreamOutlivesTimeouts(t *testing.T) {
	const timeout = 200 * time.Millisecond
	b := newTopicsBed(t, "single", pubsub.Options{}, timeout/4)
	// The same API behind an http.Server whose timeouts come soon.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: b.srv.Handler(), ReadTimeout: timeout, WriteTimeout: timeout}
	testenv.Go(t, func(ctx context.Context) error {
		context.AfterFunc(ctx, func() { srv.Close() })
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	b.url = "http://" + ln.Addr().String()

	s := b.subscribe("/v1/topics/quiet/events")
	opened := time.Now()
	for comments := 0; comments < 3 || time.Since(opened) < 3*timeout; {
		e, err := s.next()
		if err != nil {
			t.Fatalf("after %d heartbeats, %v: %v", comments, time.Since(opened), err)
		}
		if e.comment {
			comments++
		}
	}
	id := b.post("quiet", "still here")
	wantEvents(t, s.events(1), msg(id, "still here"))
}

// TestTopicsStreamEnds ends a stream whose client went away, leaving no
// client blocked in Redis, and every stream when the server shuts down.
func TestTopicsStreamEnds(t *testing.T) {
	b := newTopicsBed(t, "single", pubsub.Options{}, heartbeat)
	blocked := func() int {
		n, err := strconv.Atoi(b.redis.Info(t, "clients", "blocked_clients"))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	s := b.subscribe("/v1/topics/t/events")
	testenv.WaitFor(t, "the stream waiting in XREAD", func() bool { return blocked() == 1 })
	s.close()
	testenv.WaitFor(t, "no client blocked once the client went away", func() bool { return blocked() == 0 })

	s = b.subscribe("/v1/topics/t/events")
	s.events(1) // the start
	b.stop()    // returns once Serve did, failing the test on its error
	for {
		e, err := s.next()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			t.Fatalf("stream at shutdown: %v", err)
		}
		if !e.comment {
			t.Fatalf("stream at shutdown: %+v", e)
		}
	}
	testenv.WaitFor(t, "no client blocked after shutdown", func() bool { return blocked() == 0 })
}

// TestStreamContext gives an event stream the request's context without
// the API's request timeout, which still bounds the other requests.
func TestStreamContext(t *testing.T) {
	s := New(nil, config.HTTP{}, world.Logger())
	var streamed, timed bool
	h := untimed(s.auth("read", func(w http.ResponseWriter, r *http.Request) {
		_, timed = r.Context().Deadline()
		_, streamed = streamContext(r).Deadline()
		streamed = !streamed
	}))
	h(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	if !timed || !streamed {
		t.Fatalf("request context bounded %v, stream context unbounded %v; want both", timed, streamed)
	}
}
