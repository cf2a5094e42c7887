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
	return h264ClipGOP(t, size, seconds, bframes, 60)
}

// h264ClipGOP is h264Clip with a keyframe every gop frames.
func h264ClipGOP(t testing.TB, size string, seconds, bframes, gop int) []h264AU {
	t.Helper()
	ts := filepath.Join(t.TempDir(), "clip.ts")
	out, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error",
		"-f", "lavfi", "-i", "testsrc2=size="+size+":rate=30", "-t", strconv.Itoa(seconds),
		"-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-bf", strconv.Itoa(bframes),
		"-g", strconv.Itoa(gop), "-keyint_min", strconv.Itoa(gop), "-sc_threshold", "0",
		"-b:v", "2500k", "-maxrate", "2500k", "-bufsize", "5000k", "-pix_fmt", "yuv420p",
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
	idr     []bool
	latency []time.Duration
	bSlices int
	bytes   int
}

func (o *videoOut) frame(au [][]byte, pts time.Duration, fedAt time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.pts = append(o.pts, pts)
	o.latency = append(o.latency, time.Since(fedAt))
	if hasBSlice(au) {
		o.bSlices++
	}
	idr := false
	for _, n := range au {
		idr = idr || n[0]&0x1f == nalIDR
		o.bytes += len(n)
	}
	o.idr = append(o.idr, idr)
}

// keyframes lists the presentation times of the IDRs out.
func (o *videoOut) keyframes() []time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []time.Duration
	for i, k := range o.idr {
		if k {
			out = append(out, o.pts[i])
		}
	}
	return out
}

func (o *videoOut) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.pts)
}

func newTestVideoTranscoder(t testing.TB, ffmpeg string, out *videoOut) (*VideoTranscoder, *Metrics) {
	return newTestVideoTranscoderWith(t, VideoTranscoderConfig{FFmpeg: ffmpeg}, out)
}

func newTestVideoTranscoderWith(t testing.TB, cfg VideoTranscoderConfig, out *videoOut) (*VideoTranscoder, *Metrics) {
	m := NewMetrics(prometheus.NewRegistry())
	cfg.Frame, cfg.Metrics, cfg.Protocol = out.frame, m, "test"
	cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	tr := NewVideoTranscoder(cfg)
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
	// The re-encode lags on a 2-core machine busy with the rest of the
	// suite: every frame must come out, not within a tight time.
	eventually(t, "frames out", 15*time.Second, func() bool { return out.count() >= len(aus)-3 })
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
// uses 30). The source has B-frames and a keyframe every 2 s unless
// VITRINE_TRANSCODE_BFRAMES and VITRINE_TRANSCODE_GOP (frames) say
// otherwise; VITRINE_TRANSCODE_JOIN_EVERY (a duration) asks for a keyframe
// that often, as joining viewers do.
func TestVideoTranscoderCost(t *testing.T) {
	seconds, bframes, gop := 4, 2, 60
	if s, err := strconv.Atoi(os.Getenv("VITRINE_TRANSCODE_SECONDS")); err == nil && s > 0 {
		seconds = s
	}
	if s, err := strconv.Atoi(os.Getenv("VITRINE_TRANSCODE_BFRAMES")); err == nil && s >= 0 {
		bframes = s
	}
	if s, err := strconv.Atoi(os.Getenv("VITRINE_TRANSCODE_GOP")); err == nil && s > 0 {
		gop = s
	}
	joinEvery, _ := time.ParseDuration(os.Getenv("VITRINE_TRANSCODE_JOIN_EVERY"))
	aus := h264ClipGOP(t, "1280x720", seconds, bframes, gop)
	out := &videoOut{}
	tr, _ := newTestVideoTranscoder(t, "", out)
	eventually(t, "ffmpeg running", 5*time.Second, tr.Running)
	pid := tr.PID()
	cpu0 := procCPU(t, pid)
	start := time.Now()
	lastJoin := start
	for i, au := range aus {
		if joinEvery > 0 && time.Since(lastJoin) >= joinEvery {
			tr.RequestKeyframe()
			lastJoin = time.Now()
		}
		tr.Write(au.nalus, au.pts, au.idr)
		time.Sleep(time.Until(start.Add(time.Duration(i+1) * time.Second / 30)))
	}
	wall := time.Since(start)
	cpu := procCPU(t, pid) - cpu0
	rss := procRSS(t, pid)
	// The re-encode lags on a 2-core machine busy with the rest of the
	// suite: every frame must come out, not within a tight time.
	eventually(t, "frames out", 15*time.Second, func() bool { return out.count() >= len(aus)-3 })
	idrs := len(out.keyframes())
	out.mu.Lock()
	lat := slices.Clone(out.latency)
	bytesOut := out.bytes
	out.mu.Unlock()
	slices.Sort(lat)
	t.Logf("one 720p30 H.264 stream (high, bf %d, keyframe every %d frames, 2.5 Mbit/s, keyframes asked every %s) re-encoded (libx264 veryfast zerolatency), %s: "+
		"ffmpeg CPU %.1f%% of a core, RSS %s; frame in to frame out p50 %s, p95 %s, max %s (%d frames, %d IDRs); re-encode %.0f kbit/s",
		bframes, gop, joinEvery, wall.Round(time.Millisecond), 100*cpu.Seconds()/wall.Seconds(), rss,
		lat[len(lat)/2].Round(100*time.Microsecond), lat[len(lat)*95/100].Round(100*time.Microsecond),
		lat[len(lat)-1].Round(100*time.Microsecond), len(lat), idrs, float64(bytesOut)*8/1000/wall.Seconds())
}

// TestVideoTranscoderKeyframeOnRequest: asked for a keyframe, the transcoder
// makes the next reference frame fed an IDR out, with or without B-frames
// in the source, and makes none unasked between the source's keyframes.
func TestVideoTranscoderKeyframeOnRequest(t *testing.T) {
	for _, bf := range []int{0, 2} {
		t.Run("bframes="+strconv.Itoa(bf), func(t *testing.T) {
			aus := h264ClipGOP(t, "320x240", 4, bf, 300) // one keyframe, at 0
			out := &videoOut{}
			tr, _ := newTestVideoTranscoder(t, "", out)
			eventually(t, "ffmpeg running", 5*time.Second, tr.Running)
			asked := map[int]bool{40: true, 85: true}
			start := time.Now()
			for i, au := range aus {
				if asked[i] {
					tr.RequestKeyframe()
				}
				tr.Write(au.nalus, au.pts, au.idr)
				time.Sleep(time.Until(start.Add(time.Duration(i+1) * time.Second / 30)))
			}
			// The re-encode lags on a 2-core machine busy with the rest of the
			// suite: every frame must come out, not within a tight time.
			eventually(t, "frames out", 15*time.Second, func() bool { return out.count() >= len(aus)-3 })
			keys := out.keyframes()
			if len(keys) != 3 || keys[0] != aus[0].pts {
				t.Fatalf("IDRs out at %v, want at %v and soon after frames 40 and 85 (%v, %v)", keys, aus[0].pts, aus[40].pts, aus[85].pts)
			}
			for j, i := range []int{40, 85} {
				// The frame asked at, or a reference frame fed just after it
				// (a B-frame may be presented a frame or two earlier).
				if d := keys[j+1] - aus[i].pts; d < -100*time.Millisecond || d > 200*time.Millisecond {
					t.Errorf("IDR for the request at frame %d (pts %v) out at pts %v", i, aus[i].pts, keys[j+1])
				}
			}
			out.mu.Lock()
			defer out.mu.Unlock()
			if out.bSlices > 0 {
				t.Errorf("%d frames out with B slices", out.bSlices)
			}
			for i := 1; i < len(out.pts); i++ {
				if out.pts[i] <= out.pts[i-1] {
					t.Fatalf("frame %d out at %v after %v", i, out.pts[i], out.pts[i-1])
				}
			}
		})
	}
}

// TestVideoTranscoderBacklog: a transcoder started mid-way through a long
// group of pictures, fed that group first and held, gives nothing out until
// told, then starts with an IDR at the very next frame written, and every
// frame after it in order.
func TestVideoTranscoderBacklog(t *testing.T) {
	aus := h264ClipGOP(t, "320x240", 5, 0, 300) // one keyframe, at 0
	var backlog []BacklogFrame
	for _, au := range aus[:60] {
		backlog = append(backlog, BacklogFrame{AU: au.nalus, PTS: au.pts, IDR: au.idr})
	}
	out := &videoOut{}
	tr, _ := newTestVideoTranscoderWith(t, VideoTranscoderConfig{Hold: true, Backlog: backlog}, out)
	start := time.Now()
	const switchAt = 100
	for i := 60; i < len(aus); i++ {
		if i == switchAt {
			if !tr.Ready() {
				t.Fatal("not caught up after 40 frames")
			}
			if n := out.count(); n != 0 {
				t.Fatalf("%d frames out before StartOutput", n)
			}
			tr.StartOutput()
		}
		tr.Write(aus[i].nalus, aus[i].pts, aus[i].idr)
		time.Sleep(time.Until(start.Add(time.Duration(i-59) * time.Second / 30)))
	}
	eventually(t, "frames out", 3*time.Second, func() bool { return out.count() >= len(aus)-switchAt-2 })
	out.mu.Lock()
	defer out.mu.Unlock()
	if out.pts[0] != aus[switchAt].pts || !out.idr[0] {
		t.Fatalf("first frame out at %v (IDR %v), want an IDR at %v", out.pts[0], out.idr[0], aus[switchAt].pts)
	}
	for i := 1; i < len(out.pts); i++ {
		if out.pts[i] != aus[switchAt+i].pts {
			t.Fatalf("frame %d out at %v, want %v", i, out.pts[i], aus[switchAt+i].pts)
		}
		if out.idr[i] {
			t.Errorf("unasked IDR out at %v", out.pts[i])
		}
	}
	slices.Sort(out.latency)
	t.Logf("%d frames out from the switch on; frame in to out p50 %s", len(out.pts), out.latency[len(out.latency)/2].Round(100*time.Microsecond))
}

// TestVideoTranscoderRestartMidGOP: an ffmpeg killed between two of the
// source's keyframes (10 s apart) is restarted from the group of pictures
// kept, and video comes back at once, with an IDR, not at the source's next
// keyframe.
func TestVideoTranscoderRestartMidGOP(t *testing.T) {
	aus := h264ClipGOP(t, "320x240", 3, 0, 300) // one keyframe, at 0
	out := &videoOut{}
	tr, _ := newTestVideoTranscoder(t, "", out)
	eventually(t, "ffmpeg running", 5*time.Second, tr.Running)
	feedVideo(tr, aus[:45], 0)
	eventually(t, "frames out", 3*time.Second, func() bool { return out.count() > 30 })
	pid := tr.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil { // the ffmpeg this test's transcoder started
		t.Fatal(err)
	}
	eventually(t, "ffmpeg restarted", 5*time.Second, func() bool { return tr.Running() && tr.PID() != pid })
	n := out.count()
	feedVideo(tr, aus[45:], 0)
	eventually(t, "frames again after the restart", 3*time.Second, func() bool { return out.count() > n+30 })
	out.mu.Lock()
	defer out.mu.Unlock()
	if !out.idr[n] || out.pts[n] > aus[47].pts {
		t.Errorf("first frame after the restart at %v (IDR %v), want an IDR by %v", out.pts[n], out.idr[n], aus[47].pts)
	}
}

// The re-encode's cap follows the creator's bitrate, measured over the group
// of pictures kept, once it spans a second.
func TestReencodeBitrate(t *testing.T) {
	gop := func(frames, size int) []BacklogFrame {
		var g []BacklogFrame
		for i := range frames {
			g = append(g, BacklogFrame{AU: [][]byte{make([]byte, size)}, PTS: time.Duration(i) * time.Second / 30, IDR: i == 0})
		}
		return g
	}
	for _, c := range []struct {
		name string
		gop  []BacklogFrame
		want int
	}{
		{"2 s at 1 Mbit/s", gop(60, 1_000_000/8/30), 1_250_000},
		{"half a second: too little to tell", gop(15, 1_000_000/8/30), 0},
		{"a trickle gets the floor", gop(60, 100), 300_000},
		{"8 Mbit/s gets the default cap", gop(60, 8_000_000/8/30), 4_000_000},
	} {
		got := reencodeBitrate(c.gop)
		if d := got - c.want; d < -c.want/100 || d > c.want/100 {
			t.Errorf("%s: %d bits/s, want %d", c.name, got, c.want)
		}
	}
}
