package rtsp

import (
	"io"
	"log/slog"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/media/ingest"
)

func TestPaths(t *testing.T) {
	for in, want := range map[string]string{"/demo": "demo", "/demo/": "demo", "demo": "demo"} {
		if got := streamName(in); got != want {
			t.Errorf("streamName(%q) = %q", in, got)
		}
	}
	for in, want := range map[string]string{"/demo/trackID=0": "demo", "/demo": "demo"} {
		if got := setupPath(in); got != want {
			t.Errorf("setupPath(%q) = %q", in, got)
		}
	}
}

func TestCredentialUser(t *testing.T) {
	req := &base.Request{Header: base.Header{"Authorization": base.HeaderValue{"Basic Y3JlYXRvcjpzZWNyZXQ="}}} // creator:secret
	if got := credentialUser(req); got != "creator" {
		t.Errorf("basic user = %q", got)
	}
	if got := credentialUser(&base.Request{Header: base.Header{}}); got != "vitrine" {
		t.Errorf("no credentials: %q", got)
	}
	if got := redact("rtsp://u:p@cam:554/s"); got != "rtsp://cam:554/s" {
		t.Errorf("redact = %q", got)
	}
}

// TestStalledAndGarbageConnections: both end at the read timeout, and
// closing the server leaves no goroutine behind.
func TestStalledAndGarbageConnections(t *testing.T) {
	before := runtime.NumGoroutine()
	s, err := Listen(Config{Address: "127.0.0.1:0", ReadTimeout: 300 * time.Millisecond,
		Stream:  func(string) (*media.Stream, string, bool) { return nil, "", false },
		Metrics: ingest.NewMetrics(prometheus.NewRegistry()), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for _, payload := range []string{"", "\x00\xff not rtsp \r\n\r\n", "OPTIONS rtsp://x/ RTSP/1.0\r\nCSeq: 1"} {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(payload))
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Errorf("%q: server did not close the connection: %v", payload, err)
		}
		c.Close()
	}
	s.Close()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines before, %d after", before, n)
	}
}
