package media

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// batchConn is the WebRTC media socket with its writes gathered into
// batches. The forwarding path writes one packet to every viewer of a shard
// in a row; on Linux one sendmmsg call then sends many datagrams, where a
// sendto each cost most of the server's CPU (the system call, and Go's
// per-write poller bookkeeping around it).
//
// Writers (pion's SRTP, DTLS, SCTP and ICE, all through the ICE UDP mux)
// copy their datagram into the batch being filled and return at once; one
// flusher goroutine sends a batch while the next one fills. Batching needs
// no timer and adds no delay: the flusher takes whatever has queued since
// its last send, so a lone packet goes out alone and at once, and under load
// the batches grow by themselves. When both batches are full, writers wait
// for the flusher: the shards' queues absorb that, as they absorb a slow
// socket.
//
// It implements net.PacketConn and ice.AddrPortReaderWriter, so the mux
// writes netip.AddrPort destinations without allocating.
type batchConn struct {
	conn *net.UDPConn
	out  sender // sendmmsg on Linux, one write per datagram elsewhere

	mu      sync.Mutex
	space   sync.Cond // a full batch was taken by the flusher
	filling *batch
	spare   *batch // nil while the flusher sends it
	closed  bool
	wake    chan struct{}
	done    chan struct{}

	metrics *Metrics
}

// batchSize is how many datagrams one send carries at most; slotSize the
// largest datagram batched (SRTP of a 1,500-byte payload fits; anything
// larger, which pion does not send, goes out directly).
const (
	batchSize = 64
	slotSize  = 1600
)

type batch struct {
	n     int
	lens  [batchSize]int
	addrs [batchSize]netip.AddrPort
	bufs  [batchSize][slotSize]byte
}

// sender sends a batch's datagrams; it reports how many system calls that
// took and how many datagrams the kernel refused (they are dropped, as a
// lost UDP datagram would be).
type sender interface {
	send(b *batch) (calls, refused int)
	// segmenting reports whether runs to one address go as one (GSO).
	segmenting() bool
}

func newBatchConn(conn *net.UDPConn, m *Metrics, gso bool) (*batchConn, error) {
	out, err := newSender(conn, gso)
	if err != nil {
		return nil, err
	}
	c := &batchConn{
		conn:    conn,
		out:     out,
		filling: &batch{},
		spare:   &batch{},
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		metrics: m,
	}
	c.space.L = &c.mu
	m.UDPGSO.Set(gauge(out.segmenting()))
	go c.flush()
	return c, nil
}

// WriteToAddrPort queues b for addr. b is copied; it may be reused at once.
func (c *batchConn) WriteToAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	if len(b) > slotSize || addr.Addr().Zone() != "" {
		return c.conn.WriteToUDPAddrPort(b, addr)
	}
	c.mu.Lock()
	for c.filling.n == batchSize && !c.closed {
		c.space.Wait()
	}
	if c.closed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	f := c.filling
	i := f.n
	f.n++
	f.lens[i] = copy(f.bufs[i][:], b)
	f.addrs[i] = addr
	if i == 0 {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	c.mu.Unlock()
	return len(b), nil
}

// flush sends batches until the connection closes.
func (c *batchConn) flush() {
	defer close(c.done)
	for range c.wake {
		for {
			c.mu.Lock()
			b := c.filling
			if b.n == 0 {
				c.mu.Unlock()
				break
			}
			c.filling, c.spare = c.spare, nil
			c.space.Broadcast()
			c.mu.Unlock()

			calls, refused := c.out.send(b)
			c.metrics.UDPSends.Add(float64(calls))
			c.metrics.UDPDatagrams.Add(float64(b.n - refused))
			if refused > 0 {
				c.metrics.UDPSendErrors.Add(float64(refused))
			}
			c.metrics.UDPGSO.Set(gauge(c.out.segmenting()))
			b.n = 0

			c.mu.Lock()
			c.spare = b
			c.mu.Unlock()
		}
	}
}

// WriteTo is WriteToAddrPort for callers that hold a net.Addr.
func (c *batchConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: net.UnknownNetworkError(addr.Network())}
	}
	return c.WriteToAddrPort(b, ua.AddrPort())
}

// ReadFromAddrPort reads the next datagram.
func (c *batchConn) ReadFromAddrPort(b []byte) (int, netip.AddrPort, error) {
	return c.conn.ReadFromUDPAddrPort(b)
}

// ReadFrom reads the next datagram.
func (c *batchConn) ReadFrom(b []byte) (int, net.Addr, error) { return c.conn.ReadFrom(b) }

// Close sends what is queued, then closes the socket.
func (c *batchConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return net.ErrClosed
	}
	c.closed = true
	c.space.Broadcast()
	c.mu.Unlock()
	close(c.wake)
	<-c.done
	return c.conn.Close()
}

func (c *batchConn) LocalAddr() net.Addr                { return c.conn.LocalAddr() }
func (c *batchConn) SetDeadline(t time.Time) error      { return c.conn.SetDeadline(t) }
func (c *batchConn) SetReadDeadline(t time.Time) error  { return c.conn.SetReadDeadline(t) }
func (c *batchConn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }

func gauge(on bool) float64 {
	if on {
		return 1
	}
	return 0
}
