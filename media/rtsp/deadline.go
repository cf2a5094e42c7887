package rtsp

import (
	"net"
	"sync"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
)

// handshakeConn bounds each read until the client's first request parses:
// gortsplib sets no deadline before a session exists, so a client that
// connects and stalls, or sends bytes that never make a request, would hold
// its connection and goroutines forever. After the first request gortsplib's
// own timeouts apply.
type handshakeConn struct {
	net.Conn
	timeout time.Duration

	mu          sync.Mutex
	established bool
}

func (c *handshakeConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if !c.established {
		_ = c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
	}
	c.mu.Unlock()
	return c.Conn.Read(b)
}

func (c *handshakeConn) establish() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.established {
		c.established = true
		_ = c.Conn.SetReadDeadline(time.Time{})
	}
}

type handshakeListener struct {
	net.Listener
	timeout time.Duration
}

func (l handshakeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &handshakeConn{Conn: c, timeout: l.timeout}, nil
}

// OnRequest lifts the handshake deadline once a request has parsed.
func (s *Server) OnRequest(sc *gortsplib.ServerConn, _ *base.Request) {
	if c, ok := sc.NetConn().(*handshakeConn); ok {
		c.establish()
	}
}
