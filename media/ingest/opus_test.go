package ingest

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bluenviron/mediacommon/v2/pkg/codecs/mpeg4audio"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// aacClip makes seconds of a 440 Hz tone as AAC-LC (44.1 kHz stereo, what
// OBS sends by default) with Debian's ffmpeg and splits it into frames.
func aacClip(t testing.TB, seconds int) (*mpeg4audio.AudioSpecificConfig, [][]byte) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "tone.aac")
	out, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
		"-i", "sine=frequency=440:sample_rate=44100", "-t", strconv.Itoa(seconds), "-ac", "2",
		"-c:a", "aac", "-b:a", "128k", "-f", "adts", f).CombinedOutput()
	if err != nil {
		t.Fatalf("ffmpeg (the README's test command installs it): %v %s", err, out)
	}
	raw, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	var pkts mpeg4audio.ADTSPackets
	if err := pkts.Unmarshal(raw); err != nil {
		t.Fatal(err)
	}
	frames := make([][]byte, len(pkts))
	for i, p := range pkts {
		frames[i] = p.AU
	}
	return &mpeg4audio.AudioSpecificConfig{Type: pkts[0].Type, SampleRate: pkts[0].SampleRate,
		ChannelConfig: pkts[0].ChannelConfig}, frames
}

type opusOut struct {
	mu      sync.Mutex
	pts     []time.Duration
	latency []time.Duration
	sizes   []int
}

func (o *opusOut) packet(pkt []byte, pts time.Duration, fedAt time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.pts = append(o.pts, pts)
	o.latency = append(o.latency, time.Since(fedAt))
	o.sizes = append(o.sizes, len(pkt))
}

func (o *opusOut) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.pts)
}

func newTestTranscoder(t testing.TB, ffmpeg string, conf *mpeg4audio.AudioSpecificConfig, out *opusOut) (*Transcoder, *Metrics) {
	m := NewMetrics(prometheus.NewRegistry())
	tr, err := NewTranscoder(TranscoderConfig{FFmpeg: ffmpeg, Config: conf, Packet: out.packet, Metrics: m,
		Protocol: "test", Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.Close)
	return tr, m
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// feed hands frames to the transcoder at real-time pace, starting at pts0.
func feed(tr *Transcoder, frames [][]byte, rate int, pts0 time.Duration) {
	frame := time.Duration(1024) * time.Second / time.Duration(rate)
	start := time.Now()
	for i, f := range frames {
		tr.Write(f, pts0+time.Duration(i)*frame)
		time.Sleep(time.Until(start.Add(time.Duration(i+1) * frame)))
	}
}

// TestTranscoderTiming: every Opus packet is 20 ms after the one before on
// the source's clock, and the first starts where the AAC did.
func TestTranscoderTiming(t *testing.T) {
	conf, frames := aacClip(t, 2)
	out := &opusOut{}
	tr, _ := newTestTranscoder(t, "", conf, out)
	eventually(t, "ffmpeg running", 5*time.Second, tr.Running)
	pts0 := 7 * time.Second // a source whose clock does not start at 0
	feed(tr, frames, conf.SampleRate, pts0)
	eventually(t, "Opus out", 3*time.Second, func() bool { return out.count() >= 80 })
	out.mu.Lock()
	defer out.mu.Unlock()
	if d := out.pts[0] - pts0; d < 0 || d > time.Millisecond {
		t.Errorf("first Opus packet at %s, want the first AAC frame's %s", out.pts[0], pts0)
	}
	for i := 1; i < len(out.pts); i++ {
		if d := out.pts[i] - out.pts[i-1]; d < 19*time.Millisecond || d > 21*time.Millisecond {
			t.Fatalf("packet %d is %s after the one before, want 20 ms", i, d)
		}
	}
	lat := slices.Clone(out.latency)
	slices.Sort(lat)
	t.Logf("%d Opus packets; AAC in to Opus out: p50 %s, p95 %s", len(lat), lat[len(lat)/2], lat[len(lat)*95/100])
}

// TestTranscoderRestarts: a dead ffmpeg is restarted and audio comes back;
// a missing one is retried and counted.
func TestTranscoderRestarts(t *testing.T) {
	conf, frames := aacClip(t, 2)
	out := &opusOut{}
	tr, m := newTestTranscoder(t, "", conf, out)
	eventually(t, "ffmpeg running", 5*time.Second, tr.Running)
	feed(tr, frames[:20], conf.SampleRate, 0)
	eventually(t, "Opus out", 3*time.Second, func() bool { return out.count() > 0 })
	pid := int(tr.pid.Load())
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil { // the ffmpeg this test's transcoder started
		t.Fatal(err)
	}
	eventually(t, "ffmpeg restarted", 5*time.Second, func() bool { return tr.Running() && int(tr.pid.Load()) != pid })
	n := out.count()
	feed(tr, frames[20:60], conf.SampleRate, time.Second)
	eventually(t, "Opus again after the restart", 3*time.Second, func() bool { return out.count() > n })
	if got := counterValue(t, m.TranscoderRestarts.WithLabelValues("test")); got < 1 {
		t.Errorf("restarts = %v", got)
	}

	missing := &opusOut{}
	_, m2 := newTestTranscoder(t, "/nonexistent/ffmpeg", conf, missing)
	eventually(t, "missing ffmpeg retried", 3*time.Second, func() bool {
		return counterValue(t, m2.TranscoderRestarts.WithLabelValues("test")) >= 2
	})
}

// TestTranscoderCost reports the CPU one transcoded stream costs and the
// latency it adds, over VITRINE_TRANSCODE_SECONDS of real-time audio (3 by
// default; docs/benchmarks.md uses 30).
func TestTranscoderCost(t *testing.T) {
	seconds := 3
	if s, err := strconv.Atoi(os.Getenv("VITRINE_TRANSCODE_SECONDS")); err == nil && s > 0 {
		seconds = s
	}
	conf, frames := aacClip(t, seconds)
	out := &opusOut{}
	tr, _ := newTestTranscoder(t, "", conf, out)
	eventually(t, "ffmpeg running", 5*time.Second, tr.Running)
	pid := int(tr.pid.Load())
	cpu0 := procCPU(t, pid)
	start := time.Now()
	feed(tr, frames, conf.SampleRate, 0)
	wall := time.Since(start)
	cpu := procCPU(t, pid) - cpu0
	rss := procRSS(t, pid)
	out.mu.Lock()
	lat := slices.Clone(out.latency)
	out.mu.Unlock()
	slices.Sort(lat)
	if len(lat) == 0 {
		t.Fatal("no Opus out")
	}
	t.Logf("one AAC->Opus stream (44.1 kHz stereo, 128 kbit/s in, 96 kbit/s Opus out), %s of audio: ffmpeg CPU %.1f%% of a core, RSS %s; "+
		"AAC in to Opus out p50 %s, p95 %s, max %s", wall.Round(time.Millisecond), 100*cpu.Seconds()/wall.Seconds(), rss,
		lat[len(lat)/2].Round(100*time.Microsecond), lat[len(lat)*95/100].Round(100*time.Microsecond), lat[len(lat)-1].Round(100*time.Microsecond))
}

// procCPU is the user+system CPU time of a process, from /proc.
func procCPU(t testing.TB, pid int) time.Duration {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.Atoi(fields[11])
	stime, _ := strconv.Atoi(fields[12])
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// procRSS is a process's resident memory, from /proc.
func procRSS(t testing.TB, pid int) string {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func eventually(t testing.TB, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func counterValue(t testing.TB, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestOpusClockIsSampleExact(t *testing.T) {
	var c opusClock
	// Source times rounded to milliseconds, as RTMP gives them.
	var prev time.Duration
	for i := int64(0); i < 500; i++ {
		source := time.Duration(i*20_000_000+i%3*400_000) / time.Millisecond * time.Millisecond
		got := c.time(source, i*960)
		if i > 0 && got-prev != 20*time.Millisecond {
			t.Fatalf("packet %d is %v after the previous, want 20 ms", i, got-prev)
		}
		prev = got
	}
	// A jump in the source (a discontinuity) moves the clock.
	if got := c.time(prev+time.Second, 500*960); got != prev+time.Second {
		t.Errorf("after a 1 s jump the clock says %v, want %v", got, prev+time.Second)
	}
}
