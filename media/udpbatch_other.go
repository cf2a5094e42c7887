//go:build !(linux && (amd64 || arm64))

package media

import "net"

// writeSender sends a batch one datagram at a time, where sendmmsg is not
// available: batching still moves the writes off the forwarding goroutines.
type writeSender struct{ conn *net.UDPConn }

func newSender(conn *net.UDPConn, _ bool) (sender, error) { return writeSender{conn}, nil }

func (writeSender) segmenting() bool { return false }

func (s writeSender) send(b *batch) (calls, refused int) {
	for i := 0; i < b.n; i++ {
		if _, err := s.conn.WriteToUDPAddrPort(b.bufs[i][:b.lens[i]], b.addrs[i]); err != nil {
			refused++
		}
	}
	return b.n, refused
}
