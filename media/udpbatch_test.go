package media

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestBatchConnDelivers sends from several goroutines at once (as the shards
// do) to receivers on IPv4 and IPv6 loopback, through an IPv4 socket and a
// dual-stack one: every datagram arrives intact, each writer's in order.
func TestBatchConnDelivers(t *testing.T) {
	for _, tc := range []struct{ name, listen, peer string }{
		{"ipv4 socket", "127.0.0.1:0", "127.0.0.1:0"},
		{"dual-stack socket, ipv4 peer", "[::]:0", "127.0.0.1:0"},
		{"dual-stack socket, ipv6 peer", "[::]:0", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc, err := net.ListenPacket("udp", tc.listen)
			if err != nil {
				t.Skipf("no %s on this machine: %v", tc.listen, err)
			}
			reg := prometheus.NewRegistry()
			m := NewMetrics(reg)
			c, err := newBatchConn(pc.(*net.UDPConn), m, true)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			rx, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(tc.peer)))
			if err != nil {
				t.Skipf("no %s on this machine: %v", tc.peer, err)
			}
			defer rx.Close()
			_ = rx.SetReadBuffer(8 << 20)
			to := rx.LocalAddr().(*net.UDPAddr).AddrPort()

			const writers, each = 4, 500
			var wg sync.WaitGroup
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, 1200)
					for i := range each {
						binary.BigEndian.PutUint32(buf[0:], uint32(w))
						binary.BigEndian.PutUint32(buf[4:], uint32(i))
						buf[1199] = byte(i) // the end of the datagram too
						if _, err := c.WriteToAddrPort(buf, to); err != nil {
							t.Error(err)
							return
						}
						if i%50 == 0 {
							time.Sleep(time.Millisecond) // let the socket drain
						}
					}
				}()
			}
			next := make([]int, writers)
			buf := make([]byte, 2000)
			_ = rx.SetReadDeadline(time.Now().Add(10 * time.Second))
			for got := 0; got < writers*each; got++ {
				n, err := rx.Read(buf)
				if err != nil {
					t.Fatalf("after %d datagrams: %v", got, err)
				}
				w, i := binary.BigEndian.Uint32(buf[0:]), int(binary.BigEndian.Uint32(buf[4:]))
				if n != 1200 || buf[1199] != byte(i) {
					t.Fatalf("datagram %d of writer %d: %d bytes, last byte %d", i, w, n, buf[1199])
				}
				if i != next[w] {
					t.Fatalf("writer %d: got datagram %d, want %d (order kept per writer)", w, i, next[w])
				}
				next[w]++
			}
			wg.Wait()
			// The flusher counts a batch once its send returns, which may be
			// after the receiver has read it.
			var sent, calls float64
			for deadline := time.Now().Add(2 * time.Second); sent < writers*each && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				sent, calls = counter(t, reg, "vitrine_udp_datagrams_sent_total"), counter(t, reg, "vitrine_udp_send_calls_total")
			}
			if sent != writers*each || calls < 1 || calls > sent {
				t.Errorf("metrics: %v datagrams in %v calls, want %d datagrams", sent, calls, writers*each)
			}
			t.Logf("%v datagrams in %v system calls", sent, calls)
		})
	}
}

// TestBatchConnRefused: a datagram the socket cannot send (an IPv6 peer on
// an IPv4 socket) is dropped and counted; the rest of its batch goes out.
func TestBatchConnRefused(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c, err := newBatchConn(pc.(*net.UDPConn), NewMetrics(reg), true)
	if err != nil {
		t.Fatal(err)
	}
	rx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	to := rx.LocalAddr().(*net.UDPAddr).AddrPort()
	bad := netip.MustParseAddrPort("[2001:db8::1]:9")
	c.WriteToAddrPort([]byte("one"), to)
	c.WriteToAddrPort([]byte("bad"), bad)
	c.WriteToAddrPort([]byte("two"), to)
	buf := make([]byte, 100)
	_ = rx.SetReadDeadline(time.Now().Add(5 * time.Second))
	for _, want := range []string{"one", "two"} {
		n, err := rx.Read(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("got %q, %v; want %q", buf[:n], err, want)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := counter(t, reg, "vitrine_udp_send_errors_total"); got != 1 {
		t.Errorf("send errors %v, want 1", got)
	}
	if _, err := c.WriteToAddrPort([]byte("late"), to); err == nil {
		t.Error("a write after Close succeeded")
	}
}

func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	m, ok := sample(t, reg, name, nil)
	if !ok {
		t.Fatalf("no %s", name)
	}
	return m.GetCounter().GetValue()
}

// BenchmarkUDPSend compares the two ways to send one datagram to each of
// many viewers on loopback: a sendto per datagram (what pion's mux does on a
// plain socket) and batchConn. ns/op is per datagram, allocs/op must be 0.
// Receivers drain their sockets on other goroutines, so both sides of
// loopback are in the figure, as they are in a load test.
func BenchmarkUDPSend(b *testing.B) {
	const viewers = 50
	payload := make([]byte, 1200)
	var to []netip.AddrPort
	for range viewers {
		rx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { rx.Close() })
		_ = rx.SetReadBuffer(4 << 20)
		to = append(to, rx.LocalAddr().(*net.UDPAddr).AddrPort())
		go func() {
			buf := make([]byte, 2000)
			for {
				if _, err := rx.Read(buf); err != nil {
					return
				}
			}
		}()
	}
	// run: datagrams in a row to one viewer, as a shard writes a frame's
	// queued packets.
	for _, mode := range []struct {
		name         string
		batched, gso bool
		run          int
	}{
		{"sendto", false, false, 1},
		{"batched", true, false, 1},
		{"batched/runs=6", true, false, 6},
		{"batched+gso/runs=6", true, true, 6},
	} {
		b.Run(mode.name, func(b *testing.B) {
			pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			_ = pc.SetWriteBuffer(4 << 20)
			write := pc.WriteToUDPAddrPort
			if mode.batched {
				c, err := newBatchConn(pc, NewMetrics(prometheus.NewRegistry()), mode.gso)
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				write = c.WriteToAddrPort
			} else {
				defer pc.Close()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := write(payload, to[i/mode.run%viewers]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
