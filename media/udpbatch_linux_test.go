//go:build linux && (amd64 || arm64)

package media

import (
	"bytes"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// gsoCase is a batch of datagrams to two receivers, in an order that makes
// runs (same address, same size), breaks them (a shorter datagram ends a
// run, a longer one starts the next, another address) and has lone ones.
type gsoCase struct {
	rx   [2]*net.UDPConn
	to   [2]netip.AddrPort
	dest []int // receiver of each datagram
	size []int
}

func newGSOCase(t *testing.T) *gsoCase {
	c := &gsoCase{
		dest: []int{0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0},
		size: []int{1200, 1200, 1200, 700, 1200, 1300, 1300, 1200, 90, 90, 90, 5, 1200, 1200},
	}
	for i := range c.rx {
		rx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rx.Close() })
		c.rx[i], c.to[i] = rx, rx.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	return c
}

// payload is datagram i: its index in every byte, so a datagram cut at the
// wrong place or glued to its neighbour shows.
func (c *gsoCase) payload(i int) []byte { return bytes.Repeat([]byte{byte(i)}, c.size[i]) }

// check reads what each receiver got: every datagram, whole, in order.
func (c *gsoCase) check(t *testing.T) {
	t.Helper()
	buf := make([]byte, 70000)
	for r, rx := range c.rx {
		_ = rx.SetReadDeadline(time.Now().Add(5 * time.Second))
		for i := range c.dest {
			if c.dest[i] != r {
				continue
			}
			n, err := rx.Read(buf)
			if err != nil {
				t.Fatalf("receiver %d, datagram %d: %v", r, i, err)
			}
			if !bytes.Equal(buf[:n], c.payload(i)) {
				t.Fatalf("receiver %d: got %d bytes of %d, want datagram %d (%d bytes)", r, n, buf[0], i, c.size[i])
			}
		}
	}
}

// TestGSORuns: a batch goes out as one message per run, and each receiver
// gets the datagrams exactly as written: the kernel cuts a run back into
// them.
func TestGSORuns(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	out, err := newSender(pc, true)
	if err != nil {
		t.Fatal(err)
	}
	s := out.(*mmsgSender)
	if !s.gso {
		t.Skip("this kernel has no UDP_SEGMENT")
	}
	c := newGSOCase(t)
	b := &batch{}
	for i := range c.dest {
		b.lens[i] = copy(b.bufs[i][:], c.payload(i))
		b.addrs[i] = c.to[c.dest[i]]
		b.n++
	}
	s.build(b, 0)
	// 1200 x3 + 700; 1200; 1300 x2; 1200 + 90 (a run's middle datagrams
	// are as long as its first); 90 x2; 5; 1200 x2.
	want := []int{4, 1, 2, 2, 2, 1, 2}
	if got := s.segs[:s.n]; !slices.Equal(got, want) {
		t.Errorf("datagrams per message %v, want %v", got, want)
	}
	calls, refused := s.send(b)
	if refused != 0 || calls != 1 {
		t.Errorf("%d calls, %d refused; want 1 call, none refused", calls, refused)
	}
	c.check(t)
}

// TestGSORefusedFallsBack: where the kernel refuses segmentation (here: a
// socket with UDP checksums off, which GSO needs), the batch still arrives,
// datagram by datagram, and GSO stays off for the socket.
func TestGSORefusedFallsBack(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := pc.SyscallConn()
	_ = raw.Control(func(fd uintptr) {
		err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_NO_CHECK, 1)
	})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	bc, err := newBatchConn(pc, m, true)
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	if !bc.out.segmenting() {
		t.Skip("this kernel has no UDP_SEGMENT")
	}
	c := newGSOCase(t)
	// Queued under the lock, so the flusher sends them as one batch.
	bc.mu.Lock()
	for i := range c.dest {
		f := bc.filling
		f.lens[f.n] = copy(f.bufs[f.n][:], c.payload(i))
		f.addrs[f.n] = c.to[c.dest[i]]
		f.n++
	}
	bc.mu.Unlock()
	bc.wake <- struct{}{}
	c.check(t)
	for deadline := time.Now().Add(2 * time.Second); counter(t, reg, "vitrine_udp_datagrams_sent_total") < float64(len(c.dest)); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("datagrams not counted")
		}
	}
	if bc.out.segmenting() {
		t.Error("GSO still on after the kernel refused it")
	}
	if v := value(t, reg, "vitrine_udp_gso", nil); v != 0 {
		t.Errorf("vitrine_udp_gso = %v, want 0", v)
	}
	if v := counter(t, reg, "vitrine_udp_send_errors_total"); v != 0 {
		t.Errorf("%v datagrams lost in the fallback", v)
	}
}
