package rtmp

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/url"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/media/ingest"
)

func TestStreamKey(t *testing.T) {
	for raw, want := range map[string]string{
		"rtmp://h/live/abc":           "abc",
		"rtmp://h:1935/live/abc?x=1":  "abc",
		"rtmp://h/live":               "",
		"rtmp://h/live/":              "",
		"rtmp://h/other/abc":          "",
		"rtmp://h/live/abc/def":       "",
		"rtmp://h/live/key-with_dash": "key-with_dash",
	} {
		u, _ := url.Parse(raw)
		got, ok := streamKey(u)
		if got != want || ok != (want != "") {
			t.Errorf("streamKey(%s) = %q, %v; want %q", raw, got, ok, want)
		}
	}
	if _, ok := streamKey(nil); ok {
		t.Error("nil URL has a key")
	}
}

// TestBadConnectionsLeaveNothing: garbage, a stalled handshake and a client
// that vanishes mid-handshake each end their connection, and closing the
// server leaves no goroutine behind.
func TestBadConnectionsLeaveNothing(t *testing.T) {
	before := runtime.NumGoroutine()
	m := ingest.NewMetrics(prometheus.NewRegistry())
	s, err := Listen(Config{Address: "127.0.0.1:0", HandshakeTimeout: 300 * time.Millisecond, ReadTimeout: 300 * time.Millisecond,
		StreamByKey: func(string) (*media.Stream, bool) { return nil, false }, Metrics: m, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	dial := func() net.Conn {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	garbage := dial()
	garbage.Write(bytes.Repeat([]byte{0x03, 0xff, 0x00}, 1000)) // a valid C0, then noise
	stalled := dial()
	vanished := dial()
	vanished.Write([]byte{3, 0, 0})
	vanished.Close()
	for _, c := range []net.Conn{garbage, stalled} {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Errorf("server did not close a bad connection: %v", err)
		}
		c.Close()
	}
	deadline := time.Now().Add(3 * time.Second)
	for s.Connections() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := s.Connections(); n != 0 {
		t.Errorf("%d connections still open", n)
	}
	s.Close()
	deadline = time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines before, %d after", before, n)
	}
}
