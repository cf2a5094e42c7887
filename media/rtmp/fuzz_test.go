package rtmp

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bluenviron/gortmplib"
	"github.com/bluenviron/gortmplib/pkg/codecs"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/mpeg4audio"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/opus"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/media/ingest"
)

const fuzzKey = "fuzzkey"

// fuzzServer is a Server without a listener: connections are handed to
// handle, as accept does. ffmpeg is never found, so neither AAC nor
// B-frames start a child process.
func fuzzServer(tb testing.TB) (*Server, *media.Stream) {
	log := slog.New(slog.DiscardHandler)
	st := media.NewStream("s", media.StreamOptions{}, media.NewMetrics(prometheus.NewRegistry()), log)
	s := &Server{cfg: Config{HandshakeTimeout: 500 * time.Millisecond, ReadTimeout: 500 * time.Millisecond,
		StaleAfter: 3 * time.Second, Takeover: true, FFmpeg: "/nonexistent/ffmpeg",
		StreamByKey: func(key string) (*media.Stream, bool) { return st, key == fuzzKey },
		Metrics:     ingest.NewMetrics(prometheus.NewRegistry()), Log: log}}
	return s, st
}

// recordingConn keeps what the client writes.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	out bytes.Buffer
}

func (c *recordingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.out.Write(b)
	c.mu.Unlock()
	return c.Conn.Write(b)
}

// recordPublish runs an OBS-like publisher (gortmplib's client: handshake,
// connect, publish, H.264 and AAC or Opus with a few frames) against the
// server's handler and returns the bytes it sent: a seed that reaches the
// media path.
func recordPublish(tb testing.TB, s *Server, withOpus bool) []byte {
	client, server := net.Pipe()
	rec := &recordingConn{Conn: client}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.handle(server)
		server.Close()
	}()
	u, _ := url.Parse("rtmp://fuzz:1935/live/" + fuzzKey)
	cl := &gortmplib.Client{URL: u, Publish: true,
		DialContext: func(context.Context, string, string) (net.Conn, error) { return rec, nil }}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cl.Initialize(ctx); err != nil {
		tb.Fatal(err)
	}
	vt := &gortmplib.Track{Codec: &codecs.H264{
		SPS: []byte{0x67, 0x42, 0xc0, 0x28, 0xd9, 0x00, 0x78, 0x02, 0x27, 0xe5, 0x84, 0x00, 0x00, 0x03, 0x00, 0x04,
			0x00, 0x00, 0x03, 0x00, 0xf0, 0x3c, 0x60, 0xc9, 0x20},
		PPS: []byte{0x68, 0xce, 0x3c, 0x80}}}
	at := &gortmplib.Track{Codec: &codecs.MPEG4Audio{Config: &mpeg4audio.AudioSpecificConfig{
		Type: mpeg4audio.ObjectTypeAACLC, SampleRate: 48000, ChannelConfig: 2}}}
	if withOpus {
		at = &gortmplib.Track{Codec: &codecs.Opus{IDHeader: &opus.IDHeader{Version: 1, ChannelCount: 2, PreSkip: 312, InputSampleRate: 48000}}}
	}
	w := &gortmplib.Writer{Conn: cl, Tracks: []*gortmplib.Track{vt, at}}
	if err := w.Initialize(); err != nil {
		tb.Fatal(err)
	}
	for i := range 8 {
		pts := time.Duration(i) * 330 * time.Millisecond // gortmplib reads 2 s of media for the tracks
		au := [][]byte{{0x41, 0x9a, 0x02, 0x04}}         // P slice
		if i%4 == 0 {
			au = [][]byte{{0x09, 0xf0}, {0x65, 0x88, 0x84, 0x00, 0x33}} // AUD, IDR
		}
		if i == 6 {
			au = [][]byte{{0x01, 0x9e, 0x01}} // B slice
		}
		if err := w.WriteH264(vt, pts, pts, au); err != nil {
			tb.Fatal(err)
		}
		if withOpus {
			err := w.WriteOpus(at, pts, []byte{0xfc, 0xff, 0xfe})
			if err != nil {
				tb.Fatal(err)
			}
		} else if err := w.WriteMPEG4Audio(at, pts, []byte{0x21, 0x10, 0x04, 0x60, 0x8c, 0x1c}); err != nil {
			tb.Fatal(err)
		}
	}
	cl.Close()
	<-done
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]byte(nil), rec.out.Bytes()...)
}

// serveBytes writes in to the connection handler as a client would, reading
// and dropping what the server answers, then hangs up; it fails when the
// handler does not return, leaves the stream live, or leaves goroutines.
func serveBytes(tb testing.TB, s *Server, st *media.Stream, in []byte) {
	before := len(ours())
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.handle(server)
		server.Close()
	}()
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		_, _ = io.Copy(io.Discard, client)
	}()
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		_, _ = client.Write(in) // fails once the handler closed the connection
		client.Close()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		buf := make([]byte, 1<<20)
		tb.Fatalf("%q: the handler did not return\n%s", in, buf[:runtime.Stack(buf, true)])
	}
	<-wrote
	<-drained
	if in := st.Ingest(); in != nil {
		tb.Fatalf("%q: the connection ended, the stream is still live from it (%s)", in, in.Protocol())
	}
	// Sampled until it is back to before: a second look could catch the
	// stream's own timer (its grace period) firing, which no connection
	// leaves behind.
	deadline := time.Now().Add(3 * time.Second)
	left := ours()
	for len(left) > before && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
		left = ours()
	}
	if len(left) > before {
		tb.Fatalf("%q: %d goroutines of the RTMP path before, %d after\n%s", in, before, len(left), strings.Join(left, "\n\n"))
	}
}

// ours lists the other goroutines running Vitrine's media code or
// gortmplib. The fuzzing engine's own goroutines come and go; counting all
// of them made every input wait out the deadline.
func ours() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i > 0 && (strings.Contains(g, "gortmplib") || strings.Contains(g, "vitrine/media")) {
			out = append(out, g)
		}
	}
	return out
}

// FuzzConn feeds a connection's bytes, from the first handshake byte on, to
// Vitrine's RTMP connection handler: gortmplib's handshake and chunk
// stream, the connect and publish commands, the tracks and then the media
// into ingest. Whatever comes, the handler returns once the client hangs
// up, without panicking (a parser's panic is caught and ends the
// connection only), without leaving the stream live, and without leaving a
// goroutine behind.
func FuzzConn(f *testing.F) {
	s, st := fuzzServer(f)
	defer st.Close()
	aac := recordPublish(f, s, false)
	opusSeed := recordPublish(f, s, true)
	var live dto.Metric
	if err := s.cfg.Metrics.Connections.WithLabelValues("rtmp", "accepted").Write(&live); err != nil {
		f.Fatal(err)
	}
	if n := live.GetCounter().GetValue(); n != 2 {
		f.Fatalf("%v recorded publishers went live, want 2: the seeds do not reach the media path", n)
	}
	f.Add(aac)
	f.Add(opusSeed)
	hs := 1 + 1536 + 1536 // C0, C1, C2
	f.Add(aac[:hs])
	f.Add(aac[:min(len(aac), hs+200)])
	f.Add(append([]byte{3}, bytes.Repeat([]byte{0xff}, 4000)...))
	f.Add(append([]byte{6}, make([]byte, 3072)...)) // an encrypted handshake's C0
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		serveBytes(t, s, st, in)
	})
}
