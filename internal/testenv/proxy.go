package testenv

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy forwards TCP connections to a server and plays the network's
// faults on them: it can hold what clients send (a partition that heals
// later, delivering it late) and cut connections on the server's side only
// (the server sees the client gone; the client hears nothing more, as
// across a partition). A test points one process at Addr instead of the
// server.
type Proxy struct {
	Addr   string // where clients connect: 127.0.0.1:PORT
	target string
	ln     net.Listener
	mu     sync.Mutex
	held   bool
	holdAt []byte // HoldFrom's marker
	oneAt  []byte // HoldConnFrom's marker
	conns  []*proxyConn
	wg     sync.WaitGroup
}

// proxyConn is one client's connection and its server-side twin.
type proxyConn struct {
	client, server net.Conn
	mu             sync.Mutex
	hello          []byte // the first bytes the client sent, up to helloSize
	pending        []byte // held bytes, not yet delivered
	holding        bool   // this connection's bytes are held (HoldConnFrom)
	clientEOF      bool   // the client closed: deliver pending, then close the server's side
	cut            bool   // the server's side is closed: the client's bytes go nowhere
	drained        chan struct{}
}

// helloSize bounds the opening bytes a Proxy keeps of each connection.
const helloSize = 1024

// StartProxy starts a proxy to target (host:port), closed when the test ends.
func StartProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln}
	p.wg.Go(p.accept)
	tb.Cleanup(p.close)
	return p
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		pc := &proxyConn{client: c, server: s, drained: make(chan struct{})}
		p.mu.Lock()
		p.conns = append(p.conns, pc)
		p.mu.Unlock()
		p.wg.Go(func() { p.up(pc) })
		p.wg.Go(func() { pc.down() })
	}
}

// up carries the client's bytes to the server, holding them while the
// proxy holds.
func (p *Proxy) up(pc *proxyConn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := pc.client.Read(buf)
		p.mu.Lock()
		if p.holdAt != nil && bytes.Contains(buf[:n], p.holdAt) {
			p.held, p.holdAt = true, nil
		}
		one := p.oneAt != nil && bytes.Contains(buf[:n], p.oneAt)
		if one {
			p.oneAt = nil
		}
		held := p.held
		p.mu.Unlock()
		pc.mu.Lock()
		pc.holding = pc.holding || one
		held = held || pc.holding
		if len(pc.hello) < helloSize {
			pc.hello = append(pc.hello, buf[:min(n, helloSize-len(pc.hello))]...)
		}
		switch {
		case pc.cut:
		case held || len(pc.pending) > 0:
			pc.pending = append(pc.pending, buf[:n]...)
		default:
			pc.server.Write(buf[:n])
		}
		if err != nil {
			pc.clientEOF = true
			if !held && len(pc.pending) == 0 {
				pc.finish()
			}
			pc.mu.Unlock()
			return
		}
		pc.mu.Unlock()
	}
}

// down carries the server's bytes to the client.
func (pc *proxyConn) down() {
	io.Copy(pc.client, pc.server)
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if !pc.cut {
		pc.client.Close()
	}
	select {
	case <-pc.drained:
	default:
		close(pc.drained)
	}
}

// finish ends the server's side after the client closed: the server
// reads what was sent, then the end. (pc.mu held.)
func (pc *proxyConn) finish() {
	if tc, ok := pc.server.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

// HoldFrom keeps every byte clients send, on every connection, from the
// first read of a client's bytes that contains marker on (that read
// included), until Release: the server gets nothing, the clients are told
// nothing, as in a partition that begins just as a given command is sent.
func (p *Proxy) HoldFrom(marker []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holdAt = marker
}

// HoldConnFrom is HoldFrom for one connection: the first whose client
// sends marker (in one read) is held from that read on, until Release;
// the others, and those made later, are forwarded.
func (p *Proxy) HoldConnFrom(marker []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.oneAt = marker
}

// Held returns the bytes the proxy holds now, of every connection.
func (p *Proxy) Held() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	var all []byte
	for _, pc := range p.conns {
		pc.mu.Lock()
		all = append(all, pc.pending...)
		pc.mu.Unlock()
	}
	return all
}

// Release delivers what HoldFrom and HoldConnFrom kept, late, and forwards
// as before. Of a
// connection whose client has closed meanwhile, the server gets the held
// bytes and then the end of the connection, and Release returns once the
// server has closed it too: it has read and answered all of them.
func (p *Proxy) Release() {
	p.mu.Lock()
	p.held = false
	conns := append([]*proxyConn(nil), p.conns...)
	p.mu.Unlock()
	var wait []chan struct{}
	for _, pc := range conns {
		pc.mu.Lock()
		pc.holding = false
		if !pc.cut && len(pc.pending) > 0 {
			pc.server.Write(pc.pending)
			pc.pending = nil
			if pc.clientEOF {
				pc.finish()
				wait = append(wait, pc.drained)
			}
		}
		pc.mu.Unlock()
	}
	for _, ch := range wait {
		<-ch
	}
}

// Cut closes the server's side of every open connection whose opening
// bytes match (all of them when match is nil): the server sees its client
// gone; the client is left connected to nothing, its bytes dropped, as
// across a partition. Connections made afterwards are forwarded.
func (p *Proxy) Cut(match func(hello []byte) bool) int {
	p.mu.Lock()
	conns := append([]*proxyConn(nil), p.conns...)
	p.mu.Unlock()
	n := 0
	for _, pc := range conns {
		pc.mu.Lock()
		if !pc.cut && (match == nil || match(pc.hello)) {
			pc.cut, pc.pending = true, nil
			pc.server.Close()
			n++
		}
		pc.mu.Unlock()
	}
	return n
}

// PostgresReplication tells a PostgreSQL replication connection by its
// opening bytes (the startup message asks for replication=database), for
// Proxy.Cut.
func PostgresReplication(hello []byte) bool {
	return bytes.Contains(hello, []byte("replication\x00database\x00"))
}

// close stops the proxy and closes every connection.
func (p *Proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, pc := range p.conns {
		pc.client.Close()
		pc.server.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
