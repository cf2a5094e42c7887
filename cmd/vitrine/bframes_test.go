package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/rtp"
)

// obsClip encodes seconds of a 720p30 test pattern with a tone the way OBS's
// x264 defaults do (profile high, B-frames, keyframe every 2 s, CBR
// 2.5 Mbit/s, AAC) into an FLV file, so the test pushes it with -c copy and
// spends no CPU encoding while it measures.
func obsClip(t *testing.T, seconds string, bframes string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "obs-bf"+bframes+".flv")
	out, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
		"-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
		"-t", seconds, "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-bf", bframes,
		"-g", "60", "-keyint_min", "60", "-b:v", "2500k", "-maxrate", "2500k", "-bufsize", "5000k",
		"-x264-params", "nal-hrd=cbr", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", f).CombinedOutput()
	if err != nil {
		t.Fatalf("ffmpeg (the README's test command installs it): %v %s", err, out)
	}
	return f
}

// pushFile sends a file over RTMP at its own pace, as an encoder would.
func pushFile(t *testing.T, file, url string) *ffmpegProc {
	t.Helper()
	p := &ffmpegProc{cmd: exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
		"-i", file, "-c", "copy", "-f", "flv", url), out: &bytes.Buffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("ffmpeg: %v", err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.kill() })
	return p
}

// viewerFrames puts a viewer's H.264 packets back into access units:
// each frame's RTP timestamp, arrival and Annex-B bytes.
type viewerFrame struct {
	ts      uint32
	arrived time.Time
	nalus   [][]byte
}

func (r *recorder) frames(t *testing.T) []viewerFrame {
	t.Helper()
	r.mu.Lock()
	pkts := append([]*rtp.Packet(nil), r.pkts["video"]...)
	arrived := map[*rtp.Packet]time.Time{}
	for i, p := range r.pkts["video"] {
		arrived[p] = r.arrived["video"][i]
	}
	r.mu.Unlock()
	var out []viewerFrame
	var fua []byte
	for _, p := range inOrder(pkts) {
		if len(out) == 0 || out[len(out)-1].ts != p.Timestamp {
			out = append(out, viewerFrame{ts: p.Timestamp, arrived: arrived[p]})
		}
		f := &out[len(out)-1]
		if len(p.Payload) < 2 {
			continue
		}
		switch p.Payload[0] & 0x1f {
		case 24: // STAP-A
			b := p.Payload[1:]
			for len(b) > 2 {
				n := int(b[0])<<8 | int(b[1])
				if n == 0 || 2+n > len(b) {
					break
				}
				f.nalus = append(f.nalus, b[2:2+n])
				b = b[2+n:]
			}
		case 28: // FU-A
			if p.Payload[1]&0x80 != 0 {
				fua = []byte{p.Payload[0]&0xe0 | p.Payload[1]&0x1f}
			}
			fua = append(fua, p.Payload[2:]...)
			if p.Payload[1]&0x40 != 0 {
				f.nalus = append(f.nalus, fua)
				fua = nil
			}
		default:
			f.nalus = append(f.nalus, p.Payload)
		}
	}
	return out
}

// pictTypes decodes Annex-B H.264 with ffprobe and returns each frame's
// picture type (I, P, B) in presentation order.
func pictTypes(t *testing.T, annexB []byte) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "v.h264")
	if err := os.WriteFile(f, annexB, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ffprobe", "-v", "error", "-show_entries", "frame=pict_type", "-of", "csv=p=0", f).CombinedOutput()
	if err != nil {
		t.Fatalf("ffprobe: %v %s", err, out)
	}
	return strings.Join(strings.Fields(string(out)), "")
}

// TestRTMPBFramesReencoded is issue 9's main run: an OBS-like push with B-frames is
// re-encoded for WebRTC viewers, who get H.264 without B-frames, in
// presentation order, at the source's 30 fps, and Opus; the creator is told
// once; RTSP readers still get the video as sent, B-frames included.
func TestRTMPBFramesReencoded(t *testing.T) {
	clip := obsClip(t, "20", "2")
	a, base := rtmpApp(t, true, nil)
	v := record(t, base, "demo")
	pushFile(t, clip, "rtmp://"+a.proto.rtmp.Addr().String()+"/live/"+a.demo.Key)
	_, st, _ := a.streams.Get("demo")
	eventually(t, "stream re-encoded", 15*time.Second, func() bool { on, _ := st.Transcoding(); return on })
	if _, reason := st.Transcoding(); !strings.Contains(reason, "bframes=0") {
		t.Errorf("reason for the creator lacks the OBS fix: %q", reason)
	}
	if got := metricLine(t, base, `vitrine_video_transcodes_active{stream="demo"}`); got != 1 {
		t.Errorf("vitrine_video_transcodes_active = %v, want 1", got)
	}
	// RTSP readers get the original, B-frames and all.
	got := probeRTSPPictTypes(t, "rtsp://"+a.proto.rtsp.Addr().String()+"/demo")
	if !strings.Contains(got, "B") {
		t.Errorf("RTSP reader's picture types %q: no B-frames, want the video as sent", got)
	}

	start := v.count("video")
	time.Sleep(5 * time.Second)
	frames := v.frames(t)
	if len(frames) < 100 || start == v.count("video") {
		t.Fatalf("viewer got %d video frames", len(frames))
	}
	// Presentation order: every frame's timestamp after the one before.
	for i := 1; i < len(frames); i++ {
		if d := int32(frames[i].ts - frames[i-1].ts); d <= 0 {
			t.Fatalf("frame %d at RTP %d, after %d: out of order", i, frames[i].ts, frames[i-1].ts)
		}
	}
	// Rate over the last 4 s received.
	last := frames[len(frames)-1].arrived
	n := 0
	for _, f := range frames {
		if last.Sub(f.arrived) < 4*time.Second {
			n++
		}
	}
	if fps := float64(n) / 4; fps < 25 {
		t.Errorf("viewer gets %.1f frames/s, want >= 25", fps)
	} else {
		t.Logf("viewer gets %.1f frames/s, %d frames in all", fps, len(frames))
	}
	var annexB bytes.Buffer
	for _, f := range frames {
		for _, n := range f.nalus {
			annexB.Write([]byte{0, 0, 0, 1})
			annexB.Write(n)
		}
	}
	types := pictTypes(t, annexB.Bytes())
	if strings.Contains(types, "B") || len(types) < 100 {
		t.Errorf("viewer's picture types %q: want >= 100 frames, no B", types)
	}
	v.checkDecodes(t, 100)
	if lat := metricLine(t, base, `vitrine_video_transcode_seconds_count{protocol="rtmp"}`); lat < 100 {
		t.Errorf("re-encoded frames counted: %v", lat)
	}
}

// probeRTSPPictTypes reads 3 s of a stream's video over RTSP with ffprobe.
func probeRTSPPictTypes(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-read_intervals", "%+3",
		"-select_streams", "v:0", "-show_entries", "frame=pict_type", "-of", "csv=p=0", url).CombinedOutput()
	if err != nil {
		t.Fatalf("ffprobe %s: %v\n%s", url, err, out)
	}
	return strings.Join(strings.Fields(string(out)), "")
}

// TestRTMPNoBFrames: without B-frames nothing is re-encoded: no transcoder
// process runs and viewers get the creator's NAL units byte for byte.
func TestRTMPNoBFrames(t *testing.T) {
	clip := obsClip(t, "12", "0")
	raw, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-i", clip, "-c:v", "copy",
		"-bsf:v", "h264_mp4toannexb", "-an", "-f", "h264", "-").Output()
	if err != nil {
		t.Fatal(err)
	}
	sent := map[string]bool{}
	for _, n := range bytes.Split(raw, []byte{0, 0, 1}) {
		if n = bytes.TrimRight(n, "\x00"); len(n) > 0 {
			sent[string(n)] = true
		}
	}
	if types := pictTypes(t, raw); strings.Contains(types, "B") {
		t.Fatalf("the clip has B-frames: %s", types)
	}

	a, base := rtmpApp(t, false, nil)
	v := record(t, base, "demo")
	pushFile(t, clip, "rtmp://"+a.proto.rtmp.Addr().String()+"/live/"+a.demo.Key)
	_, st, _ := a.streams.Get("demo")
	eventually(t, "viewer gets video", 20*time.Second, func() bool { return v.count("video") > 1500 })
	if on, reason := st.Transcoding(); on {
		t.Errorf("stream without B-frames re-encoded: %s", reason)
	}
	m := get(t, base+"/metrics")
	if !strings.Contains(m, "vitrine_video_transcoders_running 0") ||
		!strings.Contains(m, `vitrine_video_transcodes_active{stream="demo"} 0`) {
		t.Error("a video transcoder runs for a stream without B-frames")
	}
	if kids := childCommands(t); strings.Contains(kids, "libx264") {
		t.Errorf("an ffmpeg re-encoding video runs: %s", kids)
	}
	checked := 0
	for _, f := range v.frames(t) {
		for _, n := range f.nalus {
			if typ := n[0] & 0x1f; typ == 7 || typ == 8 {
				continue // parameter sets are repeated before keyframes
			}
			if !sent[string(n)] {
				t.Fatalf("viewer got a NAL unit (type %d, %d bytes) the creator did not send", n[0]&0x1f, len(n))
			}
			checked++
		}
	}
	if checked < 100 {
		t.Errorf("only %d NAL units checked", checked)
	}
	t.Logf("%d NAL units reached the viewer byte-identical", checked)
}

// childCommands lists the command lines of this test process's children.
func childCommands(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ps", "-o", "args=", "--ppid", strconv.Itoa(os.Getpid())).Output()
	if err != nil {
		return ""
	}
	return string(out)
}
