package media

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// sample finds one sample of a gathered family by its labels.
func sample(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) (*dto.Metric, bool) {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			return m, true
		}
	}
	return nil, false
}

func value(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	m, ok := sample(t, reg, name, labels)
	if !ok {
		t.Fatalf("no sample %s%v", name, labels)
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("%s is neither counter nor gauge", name)
	return 0
}

func testStream(t *testing.T, name string) (*Stream, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	s := NewStream(name, StreamOptions{}, NewMetrics(reg), slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(s.Close)
	return s, reg
}

func TestStreamHealthFromIngestAndViewers(t *testing.T) {
	s, reg := testStream(t, "shop")
	w := &recorder{}
	d := viewer(s.Video, 7, w)
	viewer(s.Video, 8, &recorder{})
	src := s.Video.NewSource(DefaultVideoCodec, nil)
	h := rtp.Header{SequenceNumber: 1, Timestamp: 0, PayloadType: 96}
	// Two keyframes 2 s apart on the 90 kHz clock, P frames at 30 fps in
	// between; the first keyframe spans two packets of one frame.
	frames := 0
	write := func(p []byte) {
		if err := src.WriteRTP(&h, p); err != nil {
			t.Fatal(err)
		}
		h.SequenceNumber++
	}
	write(idr)
	write(idr)
	frames++
	for range 59 {
		h.Timestamp += 3000
		write(pSlice)
		frames++
	}
	h.Timestamp += 3000
	write(idr)
	frames++
	waitFor(t, "all packets forwarded", func() bool { return w.n.Load() == 62 })
	d.lost.Store(64) // the viewer's last Receiver Report: 25 % lost

	video := map[string]string{"stream": "shop", "kind": "video"}
	stream := map[string]string{"stream": "shop"}
	if got := value(t, reg, "vitrine_stream_ingest_packets_total", video); got != 62 {
		t.Errorf("ingest packets %v, want 62", got)
	}
	if got, want := value(t, reg, "vitrine_stream_ingest_bytes_total", video), float64(3*len(idr)+59*len(pSlice)); got != want {
		t.Errorf("ingest bytes %v, want %v", got, want)
	}
	if got := value(t, reg, "vitrine_stream_ingest_frames_total", stream); got != float64(frames) {
		t.Errorf("frames %v, want %d", got, frames)
	}
	if got := value(t, reg, "vitrine_stream_keyframes_total", stream); got != 2 {
		t.Errorf("keyframes %v, want 2", got)
	}
	if got := value(t, reg, "vitrine_stream_keyframe_interval_seconds", stream); got != 2 {
		t.Errorf("keyframe interval %v, want 2", got)
	}
	if got := value(t, reg, "vitrine_stream_viewer_loss_ratio", video); got != 0.125 {
		t.Errorf("mean viewer loss %v, want 0.125", got)
	}
	if got := value(t, reg, "vitrine_stream_viewer_loss_ratio_max", video); got != 0.25 {
		t.Errorf("max viewer loss %v, want 0.25", got)
	}
	if got := value(t, reg, "vitrine_stream_state", map[string]string{"stream": "shop", "state": "waiting"}); got != 1 {
		t.Errorf("state waiting = %v, want 1", got)
	}
	fwd, ok := sample(t, reg, "vitrine_stream_forward_seconds", video)
	if !ok {
		t.Fatal("no forwarding latency histogram")
	}
	// One shard holds both viewers or each holds one: 62 or 124 observations.
	if n := fwd.Histogram.GetSampleCount(); n != 62 && n != 124 {
		t.Errorf("forward histogram count %d, want one per packet per shard", n)
	}
	if _, ok := sample(t, reg, "vitrine_stream_creator_loss_ratio", nil); ok {
		t.Error("creator loss reported without a WebRTC creator")
	}

	// A deleted stream takes its series with it.
	s.Close()
	for _, name := range []string{"vitrine_stream_ingest_packets_total", "vitrine_stream_forward_seconds", "vitrine_stream_state"} {
		if _, ok := sample(t, reg, name, stream); ok {
			t.Errorf("%s still exported after the stream was deleted", name)
		}
	}
}

func TestStreamSeriesCapped(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	m.MaxStreamSeries = 3
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i := range 5 {
		s := NewStream(fmt.Sprintf("s%d", i), StreamOptions{}, m, log)
		t.Cleanup(s.Close)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == "vitrine_stream_ingest_packets_total" && len(f.GetMetric()) != 3*2 {
			t.Errorf("%d ingest series, want 3 streams x 2 kinds", len(f.GetMetric()))
		}
	}
}

func TestRTCPTapKeepsLastReceiverReport(t *testing.T) {
	taps := newRTCPTaps()
	i, err := taps.NewInterceptor("pc-1")
	if err != nil {
		t.Fatal(err)
	}
	var sent int
	w := i.BindRTCPWriter(interceptor.RTCPWriterFunc(func(p []rtcp.Packet, _ interceptor.Attributes) (int, error) {
		sent += len(p)
		return 0, nil
	}))
	rr := func(lost uint8, jitter uint32) []rtcp.Packet {
		return []rtcp.Packet{&rtcp.ReceiverReport{Reports: []rtcp.ReceptionReport{{SSRC: 42, FractionLost: lost, Jitter: jitter}}}}
	}
	_, _ = w.Write(rr(10, 900), nil)
	_, _ = w.Write(rr(128, 4500), nil)
	if sent != 2 {
		t.Errorf("tap passed on %d packets, want 2", sent)
	}
	tap := taps.claim("pc-1")
	if tap == nil || taps.claim("pc-1") != nil {
		t.Fatal("tap not claimed exactly once")
	}
	p := &Publisher{tap: tap, links: []sourceLink{{kind: Video, ssrc: 42, clockRate: 90000}}}
	l := p.creatorLink()
	if !l.haveLoss[Video] || l.loss[Video] != 0.5 || l.jitter[Video] != 0.05 || l.haveLoss[Audio] {
		t.Errorf("creator link %+v, want video 50 %% lost, 50 ms jitter", l)
	}
	_ = i.Close()
}

// session is a creator connection for tests.
type session struct{ name string }

func (s *session) Protocol() string      { return s.name }
func (s *session) LastActive() time.Time { return time.Now() }
func (s *session) Close()                {}

// A creator on a flaky link comes back on a new connection while the old one
// still winds down: what the old one says about the re-encode as it ends
// must not undo what the new one set (RTSP readers would get the re-encode,
// the studio would lose the warning).
func TestReplacedSessionLeavesTranscodeAlone(t *testing.T) {
	s, reg := testStream(t, "shop")
	old, cur := &session{"rtmp"}, &session{"rtmp"}
	if err := s.Publish(old, false); err != nil {
		t.Fatal(err)
	}
	s.SetTranscode(old, Transcode{BFrames: true, Reason: "old"})
	if err := s.Publish(cur, true); err != nil {
		t.Fatal(err)
	}
	if s.Transcode().On() {
		t.Fatal("a new session starts with the previous session's re-encode")
	}
	s.SetTranscode(cur, Transcode{LongGOP: true, Reason: "cur"})
	s.SetTranscode(old, Transcode{})
	s.Unpublish(old, false)
	if tc := s.Transcode(); !tc.LongGOP || tc.Reason != "cur" {
		t.Fatalf("replaced session changed the re-encode to %+v", tc)
	}
	if s.ReaderVideo() == s.Video {
		t.Error("RTSP readers get the re-encode")
	}
	if v := value(t, reg, "vitrine_video_transcodes_active", map[string]string{"stream": "shop"}); v != 1 {
		t.Errorf("vitrine_video_transcodes_active = %v, want 1", v)
	}
	s.Unpublish(cur, true)
	if s.Transcode().On() {
		t.Error("re-encode still reported after the creator ended")
	}
	if v := value(t, reg, "vitrine_video_transcodes_active", map[string]string{"stream": "shop"}); v != 0 {
		t.Errorf("vitrine_video_transcodes_active = %v after the end, want 0", v)
	}
}

// TestPionLogLevels: a leaving viewer's last packets written into its
// closed connection are a debug line, not a warning every operator reads;
// pion's other errors stay warnings.
func TestPionLogLevels(t *testing.T) {
	var out bytes.Buffer
	logs := pionLoggers{log: slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn}))}.NewLogger("udpmux")
	logs.Errorf("Failed to write packet: %v", fmt.Errorf("buffer: %w", io.ErrClosedPipe))
	if out.Len() != 0 {
		t.Errorf("a write into a closed pipe logged a warning: %s", out.String())
	}
	logs.Errorf("Failed to write packet: %v", errors.New("no buffer space"))
	if !strings.Contains(out.String(), "level=WARN") || !strings.Contains(out.String(), "no buffer space") {
		t.Errorf("another pion error: %q, want a warning", out.String())
	}
}
