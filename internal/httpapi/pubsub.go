package httpapi

// Topics over HTTP: a POST publishes, a GET subscribes with Server-Sent
// Events and resumes after the Last-Event-ID a reconnecting client sends.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/pubsub"
)

const (
	// heartbeat is how long an event stream stays silent before it gets a
	// comment, so that proxies and clients keep it open.
	heartbeat = 15 * time.Second
	// writeWait bounds one write to an event stream: a client that reads
	// nothing for that long is cut off.
	writeWait = 30 * time.Second
)

// topicsAPI serves a Server's topics.
type topicsAPI struct {
	s         *Server
	topics    *pubsub.Topics
	heartbeat time.Duration
}

// ServeTopics serves topics stored in rc under the key prefix, with
// pubsub's default retention: POST /v1/topics/{topic}/messages publishes
// the body (write scope) and answers 201 {"id": ID}; GET
// /v1/topics/{topic}/events (read scope) streams the messages as
// Server-Sent Events, after the Last-Event-ID header or the last_event_id
// query parameter when given. It panics when prefix contains "{" or "}",
// as a mux does on a bad pattern.
func (s *Server) ServeTopics(rc rueidis.Client, prefix string) {
	s.serveTopics(pubsub.New(rc, prefix, pubsub.Options{}), heartbeat)
}

// serveTopics is ServeTopics with a heartbeat of every.
func (s *Server) serveTopics(topics *pubsub.Topics, every time.Duration) {
	a := &topicsAPI{s: s, topics: topics, heartbeat: every}
	s.mux.HandleFunc("POST /v1/topics/{topic}/messages", s.auth("write", a.publish))
	s.mux.HandleFunc("GET /v1/topics/{topic}/events", untimed(s.auth("read", a.events)))
}

func (a *topicsAPI) publish(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, a.s.cfg.MaxBody))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("the body exceeds %d bytes", a.s.cfg.MaxBody))
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, "bad_body", "reading the body: "+err.Error())
		return
	case !utf8.Valid(body) || bytes.IndexByte(body, '\r') >= 0:
		// An event stream is UTF-8 text whose lines end in LF, CR or CRLF:
		// a CR would come out as a line feed.
		writeError(w, http.StatusBadRequest, "bad_message", "a message is UTF-8 text with LF line breaks, no CR")
		return
	}
	id, err := a.topics.Publish(r.Context(), r.PathValue("topic"), body)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"id": id})
}

// events streams the topic's messages, each an event whose id is the
// message ID and whose data lines are the message's lines. It begins with
// an event of an id alone, the position it starts after (a client that
// reconnects with it misses nothing); an event "reset" says messages after
// the ID in its data are gone; a comment comes when the stream was silent
// for the heartbeat. It ends when the client goes away or the server
// shuts down, not at the API's request timeout.
func (a *topicsAPI) events(w http.ResponseWriter, r *http.Request) {
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = r.URL.Query().Get("last_event_id")
	}
	sub, err := a.topics.Subscribe(r.Context(), r.PathValue("topic"), last)
	if err != nil {
		a.fail(w, err)
		return
	}
	ctx := streamContext(r)
	rc := http.NewResponseController(w)
	// The server's write timeout would cut the stream: each write gets a
	// deadline of its own instead. (Its read timeout does not apply: with
	// the request read, net/http clears the read deadline for the
	// background read that notices the client going away.)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no") // nginx: pass each event on at once
	w.WriteHeader(http.StatusOK)
	var out bytes.Buffer
	fmt.Fprintf(&out, "id: %s\n\n", sub.Position())
	for {
		rc.SetWriteDeadline(time.Now().Add(writeWait))
		if _, err := w.Write(out.Bytes()); err != nil {
			return
		}
		if rc.Flush() != nil {
			return
		}
		out.Reset()
		after := sub.Position()
		wait, cancel := context.WithTimeout(ctx, a.heartbeat)
		msgs, missed, err := sub.Next(wait)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, context.DeadlineExceeded):
			out.WriteString(": keep-alive\n\n")
			continue
		case err != nil:
			// The client reconnects and resumes after the last ID it got.
			a.s.log.Warn("event stream ended", "err", err)
			return
		}
		if missed {
			fmt.Fprintf(&out, "event: reset\ndata: %s\n\n", after)
		}
		for _, m := range msgs {
			writeEvent(&out, m)
		}
	}
}

// writeEvent writes m as an event to out: its ID, and a data field for
// each of its lines, so that a client joins them with line feeds again.
func writeEvent(out *bytes.Buffer, m pubsub.Message) {
	out.WriteString("id: " + m.ID + "\n")
	data := bytes.ReplaceAll(m.Data, []byte("\r\n"), []byte("\n")) // an event stream's line ends: CRLF, CR, LF
	data = bytes.ReplaceAll(data, []byte("\r"), []byte("\n"))
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		out.WriteString("data: ") // the client drops the one space after the colon
		out.Write(line)
		out.WriteByte('\n')
	}
	out.WriteByte('\n')
}

// fail answers with the status and code of a topic's err.
func (a *topicsAPI) fail(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, pubsub.ErrBadTopic):
		writeError(w, http.StatusBadRequest, "bad_topic", err.Error())
	case errors.Is(err, pubsub.ErrBadID):
		writeError(w, http.StatusBadRequest, "bad_event_id", err.Error())
	default:
		a.s.recipeFail(w, err)
	}
}

// streamKey is the context value untimed keeps.
type streamKey struct{}

// untimed keeps the request's context as it came, before auth's
// withTimeout bounds it, for streamContext.
func untimed(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		next(w, r.WithContext(context.WithValue(r.Context(), streamKey{}, r.Context())))
	}
}

// streamContext returns r's context as untimed kept it: it ends when the
// client goes away or the server shuts down, not at the request timeout.
func streamContext(r *http.Request) context.Context {
	if ctx, ok := r.Context().Value(streamKey{}).(context.Context); ok {
		return ctx
	}
	return r.Context()
}
