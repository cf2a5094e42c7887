//go:build linux && (amd64 || arm64)

package media

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"unsafe"
)

// mmsgSender sends a batch with sendmmsg(2): one system call for up to
// batchSize datagrams. Consecutive datagrams to one address, of one size
// (the last may be shorter), go as one message with UDP generic
// segmentation offload (UDP_SEGMENT, Linux 4.18+): the kernel routes and
// builds one buffer for the run and cuts it into datagrams at the end, so a
// viewer's run of packets costs little more than one. The shards write each
// viewer's queued packets back to back to make such runs. Message headers
// point into the batch's buffers and are rebuilt for each batch, so sending
// allocates nothing.
type mmsgSender struct {
	raw  syscall.RawConn
	ipv6 bool // the socket is AF_INET6 (IPv4 peers as ::ffff:a.b.c.d)
	gso  bool // the kernel takes UDP_SEGMENT on this socket

	msgs  [batchSize]mmsghdr
	iovs  [batchSize]syscall.Iovec
	names [batchSize]syscall.RawSockaddrInet6 // or RawSockaddrInet4 in its first bytes
	cmsgs [batchSize][gsoCmsgSpace]byte       // each message's UDP_SEGMENT size
	first [batchSize]int                      // message -> its first datagram in the batch
	segs  [batchSize]int                      // message -> how many datagrams it carries

	// The messages of the batch being sent, how far the kernel got and what
	// it cost, for sendFn, which is bound once so that RawConn.Write gets
	// no new closure per call.
	from, n   int
	done      int // datagrams the kernel took
	calls     int
	gsoFailed bool // the kernel refused a segmented message: resend without
	sendFn    func(fd uintptr) bool
}

// mmsghdr is struct mmsghdr of <sys/socket.h> on 64-bit Linux.
type mmsghdr struct {
	hdr syscall.Msghdr
	len uint32
	_   [4]byte
}

const (
	solUDP     = 17  // SOL_UDP
	udpSegment = 103 // UDP_SEGMENT
	// gsoCmsgSpace is CMSG_SPACE(sizeof(uint16)) on 64-bit Linux.
	gsoCmsgSpace = 24
	// One segmented message carries at most this many datagrams and bytes
	// (the kernel's limits are 64 or 128 segments, 64 KiB).
	gsoMaxSegments = 32
	gsoMaxBytes    = 60000
)

func newSender(conn *net.UDPConn, gso bool) (sender, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("webrtc: udp socket: %w", err)
	}
	s := &mmsgSender{raw: raw}
	var family int
	var nameErr error
	if err := raw.Control(func(fd uintptr) {
		var sa syscall.Sockaddr
		sa, nameErr = syscall.Getsockname(int(fd))
		if _, ok := sa.(*syscall.SockaddrInet6); ok {
			family = syscall.AF_INET6
		}
		if gso {
			// Kernels before 4.18 do not know the option.
			_, err := syscall.GetsockoptInt(int(fd), solUDP, udpSegment)
			s.gso = err == nil
		}
	}); err != nil || nameErr != nil {
		return nil, fmt.Errorf("webrtc: udp socket address: %w", errors.Join(err, nameErr))
	}
	s.ipv6 = family == syscall.AF_INET6
	s.sendFn = s.sendSome
	for i := range s.cmsgs {
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&s.cmsgs[i][0]))
		h.Level, h.Type = solUDP, udpSegment
		h.SetLen(syscall.CmsgLen(2))
	}
	return s, nil
}

func (s *mmsgSender) segmenting() bool { return s.gso }

func (s *mmsgSender) send(b *batch) (calls, refused int) {
	s.build(b, 0)
	for s.from < s.n {
		if err := s.raw.Write(s.sendFn); err != nil {
			break // the socket is closed: what is left is lost
		}
		if s.gsoFailed {
			// This socket's path cannot segment (EIO: an IPsec route;
			// EINVAL: UDP checksums off): from the refused message on, and
			// from now on, one datagram per message.
			s.gsoFailed, s.gso = false, false
			s.build(b, s.first[s.from])
		}
	}
	calls, refused = s.calls, b.n-s.done
	s.calls, s.done = 0, 0
	return calls, refused
}

// build makes the messages for the batch's datagrams from index start on.
func (s *mmsgSender) build(b *batch, start int) {
	n := 0
	for i := start; i < b.n; {
		if !s.address(n, b, i) {
			i++ // dropped: counted as refused
			continue
		}
		size, bytes := b.lens[i], b.lens[i]
		j := i + 1
		// A run: the same address, every datagram but the last as long as
		// the first.
		for s.gso && j < b.n && j-i < gsoMaxSegments && b.addrs[j] == b.addrs[i] &&
			b.lens[j-1] == size && b.lens[j] <= size && bytes+b.lens[j] <= gsoMaxBytes {
			bytes += b.lens[j]
			j++
		}
		for k := i; k < j; k++ {
			s.iovs[k] = syscall.Iovec{Base: &b.bufs[k][0]}
			s.iovs[k].SetLen(b.lens[k])
		}
		m := &s.msgs[n].hdr
		m.Iov, m.Iovlen = &s.iovs[i], uint64(j-i)
		m.Control, m.Controllen = nil, 0
		if j-i > 1 {
			c := &s.cmsgs[n]
			*(*uint16)(unsafe.Pointer(&c[syscall.CmsgLen(0)])) = uint16(size)
			m.Control = &c[0]
			m.SetControllen(gsoCmsgSpace)
		}
		s.first[n], s.segs[n] = i, j-i
		n++
		i = j
	}
	s.from, s.n = 0, n
}

// address writes datagram i's destination into message slot n; false if the
// socket cannot reach it (an IPv6 peer on an IPv4 socket).
func (s *mmsgSender) address(n int, b *batch, i int) bool {
	ap := b.addrs[i]
	name := &s.names[n]
	port := ap.Port()
	if s.ipv6 {
		*name = syscall.RawSockaddrInet6{Family: syscall.AF_INET6, Addr: ap.Addr().As16()}
		p := (*[2]byte)(unsafe.Pointer(&name.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		s.msgs[n].hdr.Name = (*byte)(unsafe.Pointer(name))
		s.msgs[n].hdr.Namelen = syscall.SizeofSockaddrInet6
		return true
	}
	addr := ap.Addr().Unmap()
	if !addr.Is4() {
		return false
	}
	v4 := (*syscall.RawSockaddrInet4)(unsafe.Pointer(name))
	*v4 = syscall.RawSockaddrInet4{Family: syscall.AF_INET, Addr: addr.As4()}
	p := (*[2]byte)(unsafe.Pointer(&v4.Port))
	p[0], p[1] = byte(port>>8), byte(port)
	s.msgs[n].hdr.Name = (*byte)(unsafe.Pointer(v4))
	s.msgs[n].hdr.Namelen = syscall.SizeofSockaddrInet4
	return true
}

// sendSome runs inside RawConn.Write: false asks the poller to wait until
// the socket is writable again.
//
// It is a raw system call: the socket is non-blocking, so sendmmsg returns
// as soon as the kernel has the datagrams (or EAGAIN), and the goroutine
// keeps its P. Through syscall.Syscall6 a batch long enough for sysmon to
// notice (tens of microseconds) had its P handed to another thread, a
// thread switch per batch on a busy core: 7.8-8.3 against 6.6-7.6 us of
// server CPU per delivered packet, 200 viewers, back to back.
func (s *mmsgSender) sendSome(fd uintptr) bool {
	for s.from < s.n {
		sent, _, errno := syscall.RawSyscall6(sysSendmmsg, fd,
			uintptr(unsafe.Pointer(&s.msgs[s.from])), uintptr(s.n-s.from), 0, 0, 0)
		s.calls++
		switch {
		case errno == syscall.EAGAIN:
			return false
		case errno == syscall.EINTR:
			continue
		case errno != 0 && s.segs[s.from] > 1 && (errno == syscall.EIO || errno == syscall.EINVAL):
			s.gsoFailed = true
			return true
		case errno != 0:
			// The kernel refused the first message left (an unreachable
			// address, say): drop it and go on with the rest.
			s.from++
		default:
			for _, k := range s.segs[s.from : s.from+int(sent)] {
				s.done += k
			}
			s.from += int(sent)
		}
	}
	return true
}
