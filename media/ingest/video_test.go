package ingest

import (
	"bytes"
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

	"github.com/prometheus/client_golang/prometheus"
)

type h264AU struct {
	pts   time.Duration
	nalus [][]byte
	idr   bool
}

// h264Clip encodes seconds of a 30 fps test pattern with libx264 (OBS's
// defaults: profile high, bframes as given, keyframe every 2 s) and returns
// its access units in decode order with their presentation times.
func h264Clip(t testing.TB, size string, seconds int, bframes int) []h264AU {
	t.Helper()
	ts := filepath.Join(t.TempDir(), "clip.ts")
	out, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error",
		"-f", "lavfi", "-i", "testsrc2=size="+size+":rate=30", "-t", strconv.Itoa(seconds),
		"-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-bf", strconv.Itoa(bframes),
		"-g", "60", "-b:v", "2500k", "-maxrate", "2500k", "-bufsize", "5000k", "-pix_fmt", "yuv420p",
		"-x264-params", "aud=1", ts).CombinedOutput()
	if err != nil {
		t.Fatalf("ffmpeg (the README's test command installs it): %v %s", err, out)
	}
	// Presentation times in decode order, then the access units (each
	// starts with an AUD) in the same order.
	pts, err := exec.Command("ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts",
		"-of", "csv=p=0", ts).Output()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-i", ts, "-c", "copy", "-f", "h264", "-").Output()
	if err != nil {
		t.Fatal(err)
	}
	var aus []h264AU
	for _, n := range bytes.Split(raw, []byte{0, 0, 1}) {
		n = bytes.TrimRight(n, "\x00")
		if len(n) == 0 {
			continue
		}
		if n[0]&0x1f == nalAUD || len(aus) == 0 {
			aus = append(aus, h264AU{})
		}
		au := &aus[len(aus)-1]
		au.nalus = append(au.nalus, n)
		au.idr = au.idr || n[0]&0x1f == nalIDR
	}
	lines := strings.Fields(string(pts))
	if len(lines) != len(aus) {
		t.Fatalf("%d packet times for %d access units", len(lines), len(aus))
	}
	for i, l := range lines {
		v, _ := strconv.ParseInt(strings.Trim(l, ","), 10, 64)
		aus[i].pts = time.Duration(v) * time.Second / 90000
	}
	return aus
}

func TestHasBSlice(t *testing.T) {
	for _, bf := range []int{0, 2} {
		n := 0
		for _, au := range h264Clip(t, "320x240", 1, bf) {
			if hasBSlice(au.nalus) {
				n++
			}
		}
		if (bf == 0) != (n == 0) {
			t.Errorf("bframes=%d: %d access units with B slices", bf, n)
		}
	}
	// Malformed input never panics and is "no B".
	for _, au := range [][][]byte{nil, {{}}, {{1}}, {{1, 0, 0, 3}}, {{0x41, 0, 0, 0, 0, 0}}} {
		if hasBSlice(au) {
			t.Errorf("%x: B slice", au)
		}
	}
}

type videoOut struct {
	mu      sync.Mutex
	pts     []time.Duration
	latency []time.Duration
	bSlices int
}

func (o *videoOut) frame(au [][]byte, pts time.Duration, fedAt time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.pts = append(o.pts, pts)
	o.latency = append(o.latency, time.Since(fedAt))
	if hasBSlice(au) {
		o.bSlices++
	}
}

func (o *videoOut) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.pts)
}

func newTestVideoTranscoder(t testing.TB, ffmpeg string, out *videoOut) (*VideoTranscoder, *Metrics) {
	m := NewMetrics(prometheus.NewRegistry())
	tr := NewVideoTranscoder(VideoTranscoderConfig{FFmpeg: ffmpeg, Frame: out.frame, Metrics: m, Protocol: "test",
		Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	t.Cleanup(tr.Close)
	return tr, m
}

// feedVideo hands access units to the transcoder at 30 fps, in decode
// order, from pts0 on.
func feedVideo(tr *VideoTranscoder, aus []h264AU, pts0 time.Duration) {
	start := time.Now()
	for i, au := range aus {
		tr.Write(au.nalus, pts0+au.pts, au.idr)
		time.Sleep(time.Until(start.Add(time.Duration(i+1) * time.Second / 30)))
	}
}

// TestVideoTranscoderOrder: frames out carry no B slices and the source's
// presentation times, each 1/30 s after the one before.
func TestVideoTranscoderOrder(t *testing.T) {
	aus := h264Clip(t, "320x240", 3, 2)
	out := &videoOut{}
	tr, _ := newTestVideoTranscoder(t, "", out)
	eventually(t, "ffmpeg running", 5*time.Second, tr.Running)
	feedVideo(tr, aus, 5*time.Second)
	eventually(t, "frames out", 3*time.Second, func() bool { return out.count() >= len(aus)-3 })
	out.mu.Lock()
	defer out.mu.Unlock()
	if out.bSlices > 0 {
		t.Errorf("%d frames out with B slices", out.bSlices)
	}
	for i := 1; i < len(out.pts); i++ {
		if d := out.pts[i] - out.pts[i-1]; d < 33*time.Millisecond || d > 34*time.Millisecond {
			t.Fatalf("frame %d is %s after the one before, want 1/30 s; out %v; in %v", i, d, out.pts[:min(8, len(out.pts))], aus[:4])
		}
	}
}

// TestVideoTranscoderRestarts: a killed ffmpeg is restarted and frames come
// back; a missing one is retried and counted.
func TestVideoTranscoderRestarts(t *testing.T) {
	aus := h264Clip(t, "320x240", 4, 2)
	out := &videoOut{}
	tr, m := newTestVideoTranscoder(t, "", out)
	eventually(t, "ffmpeg running", 5*time.Second, tr.Running)
	feedVideo(tr, aus[:60], 0)
	eventually(t, "frames out", 3*time.Second, func() bool { return out.count() > 0 })
	pid := tr.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil { // the ffmpeg this test's transcoder started
		t.Fatal(err)
	}
	eventually(t, "ffmpeg restarted", 5*time.Second, func() bool { return tr.Running() && tr.PID() != pid })
	n := out.count()
	feedVideo(tr, aus[60:], 0)
	eventually(t, "frames again after the restart", 3*time.Second, func() bool { return out.count() > n+30 })
	if got := counterValue(t, m.VideoTranscoderRestarts.WithLabelValues("test")); got < 1 {
		t.Errorf("restarts = %v", got)
	}
	_, m2 := newTestVideoTranscoder(t, "/nonexistent/ffmpeg", &videoOut{})
	eventually(t, "missing ffmpeg retried", 3*time.Second, func() bool {
		return counterValue(t, m2.VideoTranscoderRestarts.WithLabelValues("test")) >= 2
	})
}

// TestVideoTranscoderCost reports the CPU one re-encoded 720p30 stream costs
// and the delay it adds (frame in to frame out), over
// VITRINE_TRANSCODE_SECONDS of video (4 by default; docs/benchmarks.md
// uses 30).
func TestVideoTranscoderCost(t *testing.T) {
	seconds := 4
	if s, err := strconv.Atoi(os.Getenv("VITRINE_TRANSCODE_SECONDS")); err == nil && s > 0 {
		seconds = s
	}
	aus := h264Clip(t, "1280x720", seconds, 2)
	out := &videoOut{}
	tr, _ := newTestVideoTranscoder(t, "", out)
	eventually(t, "ffmpeg running", 5*time.Second, tr.Running)
	pid := tr.PID()
	cpu0 := procCPU(t, pid)
	start := time.Now()
	feedVideo(tr, aus, 0)
	wall := time.Since(start)
	cpu := procCPU(t, pid) - cpu0
	rss := procRSS(t, pid)
	eventually(t, "frames out", 3*time.Second, func() bool { return out.count() >= len(aus)-3 })
	out.mu.Lock()
	lat := slices.Clone(out.latency)
	out.mu.Unlock()
	slices.Sort(lat)
	t.Logf("one 720p30 H.264 stream with B-frames (high, bf 2, 2.5 Mbit/s) re-encoded (libx264 veryfast zerolatency), %s: "+
		"ffmpeg CPU %.1f%% of a core, RSS %s; frame in to frame out p50 %s, p95 %s, max %s (%d frames)",
		wall.Round(time.Millisecond), 100*cpu.Seconds()/wall.Seconds(), rss,
		lat[len(lat)/2].Round(100*time.Microsecond), lat[len(lat)*95/100].Round(100*time.Microsecond),
		lat[len(lat)-1].Round(100*time.Microsecond), len(lat))
}
