package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pion/rtp/codecs"
	"github.com/vitrine-live/vitrine/media"
)

// gopClip encodes seconds of a 640x360 30 fps test pattern with a tone the
// way a hardware encoder or a camera often sends it: no B-frames, 400 kbit/s,
// AAC, a keyframe every gop frames after the last one, and one at each of
// the times given (seconds, comma separated). Pushed with -c copy, it costs
// no CPU while the test measures.
func gopClip(t *testing.T, seconds, gop, keyframes string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "clip.flv")
	out, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
		"-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
		"-t", seconds, "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main", "-bf", "0",
		"-g", gop, "-keyint_min", gop, "-sc_threshold", "0", "-force_key_frames", keyframes,
		"-b:v", "400k", "-maxrate", "400k", "-bufsize", "400k",
		"-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", f).CombinedOutput()
	if err != nil {
		t.Fatalf("ffmpeg (the README's test command installs it): %v %s", err, out)
	}
	return f
}

// nalSet is every NAL unit of a file's H.264, as sent.
func nalSet(t *testing.T, file string) map[string]bool {
	t.Helper()
	raw, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-i", file, "-c:v", "copy",
		"-bsf:v", "h264_mp4toannexb", "-an", "-f", "h264", "-").Output()
	if err != nil {
		t.Fatal(err)
	}
	return splitNALs(raw)
}

func splitNALs(annexB []byte) map[string]bool {
	set := map[string]bool{}
	for _, n := range bytes.Split(annexB, []byte{0, 0, 1}) {
		if n = bytes.TrimRight(n, "\x00"); len(n) > 0 {
			set[string(n)] = true
		}
	}
	return set
}

// slices keeps the coded slices of a set of NAL units (parameter sets, SEI
// and delimiters are repeated or rewritten on the way).
func slicesOf(set map[string]bool) []string {
	var out []string
	for n := range set {
		if typ := n[0] & 0x1f; typ == 1 || typ == 5 {
			out = append(out, n)
		}
	}
	return out
}

// annexB puts the viewer's video back into an H.264 elementary stream.
func (r *recorder) annexB(t *testing.T) []byte {
	t.Helper()
	r.mu.Lock()
	pkts := inOrder(r.pkts["video"])
	r.mu.Unlock()
	var b bytes.Buffer
	var dp codecs.H264Packet
	for _, p := range pkts {
		nal, err := dp.Unmarshal(p.Payload)
		if err != nil {
			t.Fatalf("a video packet is not valid H.264 RTP: %v", err)
		}
		b.Write(nal)
	}
	return b.Bytes()
}

// readRTSP reads frames of a stream's video over RTSP as ffmpeg would
// record it, without decoding.
func readRTSP(t *testing.T, url string, frames string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	var out, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ffmpeg", "-hide_banner", "-loglevel", "error", "-rtsp_transport", "tcp",
		// Up to a GOP before the first keyframe tells the picture size.
		"-analyzeduration", "15000000",
		"-i", url, "-an", "-frames:v", frames, "-c:v", "copy", "-f", "h264", "-")
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ffmpeg reading %s: %v %s", url, err, stderr.String())
	}
	return out.Bytes()
}

// TestRTMPLongKeyframeInterval: an encoder that sends a keyframe every 10 s
// over RTMP (after a few at 1 s, so that the viewer watching from the start
// gets the video as sent first). A viewer who joins halfway between two of
// them gets a keyframe at once instead of seconds later: the server
// re-encodes the video for WebRTC viewers and makes one when a viewer joins.
// The early viewer is switched to the re-encode at one of its keyframes and
// decodes cleanly throughout; RTSP readers get the video as sent; the
// creator is told what it costs and what to change.
func TestRTMPLongKeyframeInterval(t *testing.T) {
	clip := gopClip(t, "15", "300", "0,1,2,3") // then 10 s: the next at 13 s
	sent := nalSet(t, clip)
	a, base := rtmpApp(t, true, nil) // the default: re-encode over 2 s
	_, st, _ := a.streams.Get("demo")
	early := record(t, base, "demo")
	pushed := time.Now()
	pushFile(t, clip, "rtmp://"+a.proto.rtmp.Addr().String()+"/live/"+a.demo.Key)

	eventually(t, "the early viewer gets video", 10*time.Second, func() bool { return early.count("video") > 0 })
	if tc := st.Transcode(); tc.On() {
		t.Fatalf("re-encoded while keyframes come every second: %+v", tc)
	}
	eventually(t, "video re-encoded once keyframes stop", 8*time.Second, func() bool { return st.Transcode().LongGOP })

	// Join halfway between the encoder's keyframes at 3 s and 13 s.
	time.Sleep(time.Until(pushed.Add(8 * time.Second)))
	joined := time.Now()
	late := record(t, base, "demo")
	eventually(t, "the late viewer gets video", 10*time.Second, func() bool { return late.count("video") > 0 })
	late.mu.Lock()
	wait := late.arrived["video"][0].Sub(joined)
	firstPacket := late.pkts["video"][0].Payload
	late.mu.Unlock()
	next := pushed.Add(13 * time.Second).Sub(joined)
	t.Logf("viewer joining mid-GOP: first keyframe %s after joining; the encoder's next keyframe was about %s away", wait.Round(time.Millisecond), next.Round(100*time.Millisecond))
	if !h264Keyframe(firstPacket) {
		t.Errorf("the late viewer's first packet %x does not start a keyframe", firstPacket[:2])
	}
	if wait > next/2 {
		t.Errorf("the late viewer waited %s for a keyframe; the encoder's next one was %s away", wait, next)
	}

	// While the clip (15 s) is still live: the creator is told what the
	// re-encode costs and how to remove it.
	h := st.Health(time.Now())
	var warned *media.Warning
	for i, w := range h.Warnings {
		if w.Code == "keyframe_interval" {
			warned = &h.Warnings[i]
		}
	}
	if warned == nil || !strings.Contains(warned.Message, "re-encodes") || !strings.Contains(warned.Fix, "Keyframe Interval") {
		t.Errorf("the creator is not told about the re-encode and its fix: %+v", h.Warnings)
	}
	if h.Video.BFrames {
		t.Error("health reports B-frames for a stream without")
	}
	if got := metricLine(t, base, `vitrine_video_transcodes_active{stream="demo"}`); got != 1 {
		t.Errorf("vitrine_video_transcodes_active = %v, want 1", got)
	}

	// RTSP readers keep the video as sent: every slice they get is one the
	// encoder made (they start at its next keyframe, 10 s in).
	got := readRTSP(t, "rtsp://"+a.proto.rtsp.Addr().String()+"/demo", "30")
	readerSlices := slicesOf(splitNALs(got))
	for _, n := range readerSlices {
		if !sent[n] {
			t.Fatalf("an RTSP reader got a slice (type %d, %d bytes) the encoder did not send", n[0]&0x1f, len(n))
		}
	}
	if len(readerSlices) < 25 {
		t.Errorf("RTSP reader got %d slices", len(readerSlices))
	}
	// WebRTC viewers get the re-encode.
	reencoded := 0
	for _, n := range slicesOf(splitNALs(late.annexB(t))) {
		if !sent[n] {
			reencoded++
		}
	}
	if reencoded < 25 {
		t.Errorf("only %d slices of the late viewer's video are re-encoded", reencoded)
	}
	// At about the creator's bitrate (400 kbit/s), not what libx264 makes
	// of the picture uncapped (about 1 Mbit/s): a viewer on a slow link
	// gets no more than the creator sent.
	// Over the media time the packets span (RTP timestamps), not their
	// arrival: what the encoder made, whatever a busy machine's delivery
	// bunches up.
	late.mu.Lock()
	lateVideo := late.pkts["video"]
	late.mu.Unlock()
	octets, keyframes := 0, 0
	for _, p := range lateVideo {
		octets += len(p.Payload)
		if h264Keyframe(p.Payload) {
			keyframes++
		}
	}
	span := float64(lateVideo[len(lateVideo)-1].Timestamp-lateVideo[0].Timestamp) / 90000
	lateRate := float64(octets) * 8 / span
	t.Logf("late viewer's video: %.0f kbit/s over %.1f s, %d keyframe packets (the creator sends 400)", lateRate/1000, span, keyframes)
	if lateRate > 600_000 {
		t.Errorf("the re-encode runs at %.0f kbit/s for a 400 kbit/s creator", lateRate/1000)
	}

	// The early viewer went from the video as sent to the re-encode: it
	// decodes without an error, every frame after the one before.
	f := filepath.Join(t.TempDir(), "early.h264")
	if err := os.WriteFile(f, early.annexB(t), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ffmpeg", "-hide_banner", "-v", "error", "-i", f, "-f", "null", "-").CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("the early viewer's video does not decode cleanly: %v %s", err, out)
	}
	frames := early.frames(t)
	var gap time.Duration
	for i := 1; i < len(frames); i++ {
		if d := int32(frames[i].ts - frames[i-1].ts); d <= 0 {
			t.Fatalf("early viewer: frame %d at RTP %d after %d", i, frames[i].ts, frames[i-1].ts)
		}
		gap = max(gap, frames[i].arrived.Sub(frames[i-1].arrived))
	}
	if types := pictTypes(t, early.annexB(t)); strings.Count(types, "I") < 2 || len(types) < 250 {
		t.Errorf("early viewer's picture types %q: want >= 250 frames, the encoder's keyframes and the re-encode's", types)
	}
	t.Logf("early viewer: %d frames, longest gap between two %s (one is the switch to the re-encode)", len(frames), gap.Round(time.Millisecond))

}

// TestRTMPLongKeyframeIntervalOff: with streams.reencode_keyframes_over 0,
// nothing is re-encoded: viewers get the video as sent.
func TestRTMPLongKeyframeIntervalOff(t *testing.T) {
	clip := gopClip(t, "8", "300", "0,1,2,3")
	a, base := rtmpApp(t, false, func(c *Config) { c.Streams.ReencodeKeyframesOver = 0 })
	_, st, _ := a.streams.Get("demo")
	v := record(t, base, "demo")
	pushFile(t, clip, "rtmp://"+a.proto.rtmp.Addr().String()+"/live/"+a.demo.Key)
	eventually(t, "viewer gets video", 10*time.Second, func() bool { return v.count("video") > 0 })
	time.Sleep(4 * time.Second) // keyframes stopped 3 s in: past the default threshold of 2 s
	if tc := st.Transcode(); tc.On() {
		t.Errorf("re-encoded with the option off: %+v", tc)
	}
	if kids := childCommands(t); strings.Contains(kids, "libx264") {
		t.Errorf("an ffmpeg re-encoding video runs: %s", kids)
	}
}

// TestReencodeKeyframesOverConfig: the threshold comes from the file or the
// environment; 0 turns the re-encode off; nonsense is refused.
func TestReencodeKeyframesOverConfig(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string { return map[string]string{"VITRINE_REENCODE_KEYFRAMES_OVER": v}[k] }
	}
	for v, want := range map[string]time.Duration{"": 2 * time.Second, "0": 0, "4s": 4 * time.Second} {
		c, err := loadConfig(nil, env(v))
		if err != nil || c.Streams.ReencodeKeyframesOver != want {
			t.Errorf("env %q: %v, %v; want %v", v, c.Streams.ReencodeKeyframesOver, err, want)
		}
	}
	if _, err := loadConfig(nil, env("often")); err == nil {
		t.Error("VITRINE_REENCODE_KEYFRAMES_OVER=often accepted")
	}
	file := filepath.Join(t.TempDir(), "v.yaml")
	os.WriteFile(file, []byte("streams:\n  reencode_keyframes_over: -1s\n"), 0o600)
	if _, err := loadConfig([]string{"-config", file}, env("")); err == nil {
		t.Error("a negative reencode_keyframes_over accepted")
	}
}
