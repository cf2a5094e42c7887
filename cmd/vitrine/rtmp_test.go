package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	neturl "net/url"
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

	"github.com/bluenviron/gortmplib"
	rtmpcodecs "github.com/bluenviron/gortmplib/pkg/codecs"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/av1"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h264"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/mpeg4audio"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/opus"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/rtp/codecs"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media/oggwriter"
	"github.com/vitrine-live/vitrine/signaling/client"
)

// rtmpApp starts Vitrine with RTMP (and RTSP when rtsp is set) on free
// loopback ports.
func rtmpApp(t *testing.T, rtsp bool, edit func(*Config)) (*app, string) {
	t.Helper()
	return testApp(t, func(c *Config) {
		c.RTMP.Address = "127.0.0.1:0"
		c.RTMP.ReadTimeout = 3 * time.Second
		if rtsp {
			c.RTSP.Address = "127.0.0.1:0"
			rtp, rtcp := freeUDPPair(t)
			c.RTSP.UDPRTPAddress, c.RTSP.UDPRTCPAddress = rtp, rtcp
		}
		if edit != nil {
			edit(c)
		}
	})
}

// freeUDPPair finds an even/odd pair of free loopback UDP ports.
func freeUDPPair(t *testing.T) (string, string) {
	t.Helper()
	for range 50 {
		a, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := a.LocalAddr().(*net.UDPAddr).Port
		a.Close()
		if port%2 == 1 || port > 65000 {
			continue
		}
		b, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port+1))
		if err != nil {
			continue
		}
		b.Close()
		return fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("127.0.0.1:%d", port+1)
	}
	t.Fatal("no free UDP port pair")
	return "", ""
}

// ffmpegPush runs Debian's ffmpeg sending a live test pattern (H.264, no
// B-frames, keyframe every second) with a 440 Hz tone in the given audio
// codec to url, until the test ends or stop is called.
type ffmpegProc struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan struct{}
}

func ffmpegPush(t *testing.T, format, url string, extra ...string) *ffmpegProc {
	t.Helper()
	args := []string{"-hide_banner", "-loglevel", "error", "-nostdin", "-re",
		"-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
		"-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
		"-t", "30",
		"-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30", "-bf", "0", "-pix_fmt", "yuv420p",
		"-c:a", "aac", "-b:a", "96k"}
	args = append(args, extra...)
	args = append(args, "-f", format, url)
	p := &ffmpegProc{cmd: exec.Command("ffmpeg", args...), out: &bytes.Buffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("ffmpeg (the README's test command installs it): %v", err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.kill() })
	return p
}

// kill ends the ffmpeg this test started (SIGKILL: a sudden disconnect).
func (p *ffmpegProc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// stop asks ffmpeg to finish cleanly (it unpublishes, as OBS's Stop does).
func (p *ffmpegProc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.kill()
	}
}

// recorder is a WHEP viewer that keeps every packet and Sender Report.
type recorder struct {
	mu      sync.Mutex
	sess    *client.Session
	pkts    map[string][]*rtp.Packet
	arrived map[string][]time.Time
	mime    map[string]string
	reports map[string][]*rtcp.SenderReport
	states  []string
}

func record(t *testing.T, base, stream string) *recorder {
	t.Helper()
	api, err := client.NewAPI(true)
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{pkts: map[string][]*rtp.Packet{}, arrived: map[string][]time.Time{}, mime: map[string]string{}, reports: map[string][]*rtcp.SenderReport{}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := client.Watch(ctx, api, base+"/whep/"+stream, true, func(pc *webrtc.PeerConnection, dc *webrtc.DataChannel) {
		pc.OnTrack(func(tr *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
			kind := tr.Kind().String()
			r.mu.Lock()
			r.mime[kind] = tr.Codec().MimeType
			r.mu.Unlock()
			go func() {
				for {
					pkts, _, err := recv.ReadRTCP()
					if err != nil {
						return
					}
					for _, p := range pkts {
						if sr, ok := p.(*rtcp.SenderReport); ok && sr.SSRC == uint32(tr.SSRC()) {
							r.mu.Lock()
							r.reports[kind] = append(r.reports[kind], sr)
							r.mu.Unlock()
						}
					}
				}
			}()
			for {
				p, _, err := tr.ReadRTP()
				if err != nil {
					return
				}
				r.mu.Lock()
				r.pkts[kind] = append(r.pkts[kind], p)
				r.arrived[kind] = append(r.arrived[kind], time.Now())
				r.mu.Unlock()
			}
		})
		dc.OnMessage(func(m webrtc.DataChannelMessage) {
			if s := string(m.Data); strings.Contains(s, `"stream.state"`) {
				r.mu.Lock()
				r.states = append(r.states, s)
				r.mu.Unlock()
			}
		})
	})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	r.sess = sess
	t.Cleanup(func() { sess.PC.Close() })
	return r
}

func (r *recorder) count(kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pkts[kind])
}

func (r *recorder) lastState() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.states) == 0 {
		return ""
	}
	s := r.states[len(r.states)-1]
	for _, st := range []string{"waiting", "reconnecting", "live", "ended"} {
		if strings.Contains(s, `"state":"`+st+`"`) {
			return st
		}
	}
	return s
}

// checkDecodes writes what the viewer got to files and has ffmpeg decode
// them: the H.264 must give frames, the Opus must decode without error.
func (r *recorder) checkDecodes(t *testing.T, minFrames int) {
	t.Helper()
	r.mu.Lock()
	video := append([]*rtp.Packet(nil), r.pkts["video"]...)
	audio := append([]*rtp.Packet(nil), r.pkts["audio"]...)
	r.mu.Unlock()
	dir := t.TempDir()

	// Repaired packets arrive late: put them back in order, once each.
	video = inOrder(video)
	audio = inOrder(audio)
	var h264 bytes.Buffer
	var dp codecs.H264Packet
	for _, p := range video {
		b, err := dp.Unmarshal(p.Payload)
		if err != nil {
			t.Fatalf("a video packet is not valid H.264 RTP: %v", err)
		}
		h264.Write(b)
	}
	vf := filepath.Join(dir, "got.h264")
	os.WriteFile(vf, h264.Bytes(), 0o600)
	out, err := exec.Command("ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
		"-show_entries", "stream=codec_name,nb_read_frames", "-of", "csv=p=0", vf).CombinedOutput()
	if err != nil {
		t.Fatalf("ffprobe on the viewer's video: %v %s", err, out)
	}
	fields := strings.Split(strings.TrimSpace(string(out)), ",")
	if n, _ := strconv.Atoi(fields[len(fields)-1]); fields[0] != "h264" || n < minFrames {
		t.Errorf("viewer's video decodes to %q, want h264 with at least %d frames", out, minFrames)
	}

	af := filepath.Join(dir, "got.ogg")
	w, err := oggwriter.New(af, 48000, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range audio {
		if d := opus.PacketDuration2(p.Payload); d != 960 {
			t.Fatalf("Opus packet of %d samples, want 960 (20 ms)", d)
		}
		if err := w.WriteRTP(p); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	out, err = exec.Command("ffmpeg", "-v", "error", "-xerror", "-i", af, "-f", "null", "-").CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("viewer's Opus does not decode cleanly: %v %s", err, out)
	}
}

// syncSkew compares the two tracks' Sender Reports: the source time each
// track's RTP clock reads at one instant. The stream is fresh, so viewers'
// timestamps are the source's timestamps on 90 kHz and 48 kHz.
func (r *recorder) syncSkew(t *testing.T) time.Duration {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	v, a := r.reports["video"], r.reports["audio"]
	if len(v) == 0 || len(a) == 0 {
		t.Fatal("no Sender Reports")
	}
	sv, sa := v[len(v)-1], a[len(a)-1]
	ntp := func(x uint64) float64 { return float64(x>>32) + float64(x&0xffffffff)/(1<<32) }
	// Bring the audio report to the video report's instant.
	aAtV := float64(sa.RTPTime) + (ntp(sv.NTPTime)-ntp(sa.NTPTime))*48000
	return time.Duration((float64(sv.RTPTime)/90000 - aAtV/48000) * float64(time.Second))
}

// TestRTMPIngest is issue 5's main run: ffmpeg pushes H.264 + AAC over RTMP
// as OBS does; a WHEP viewer gets H.264 that decodes and Opus that decodes,
// in sync, and the stream ends when the creator stops.
func TestRTMPIngest(t *testing.T) {
	a, base := rtmpApp(t, false, nil)
	v := record(t, base, "demo")
	addr := a.proto.rtmp.Addr().String()
	// OBS style: server rtmp://host/live, the key as stream name.
	ff := ffmpegPush(t, "flv", "rtmp://"+addr+"/live/"+a.demo.Key)
	t.Cleanup(func() { ff.kill(); t.Log(ff.output()) })
	eventually(t, "viewer gets H.264 and Opus", 15*time.Second, func() bool {
		return v.count("video") > 300 && v.count("audio") > 150 && v.lastState() == "live"
	})
	v.mu.Lock()
	if !strings.EqualFold(v.mime["video"], webrtc.MimeTypeH264) || !strings.EqualFold(v.mime["audio"], webrtc.MimeTypeOpus) {
		t.Errorf("viewer's codecs: %v", v.mime)
	}
	first := v.pkts["video"][0].Payload
	v.mu.Unlock()
	if !h264Keyframe(first) {
		t.Errorf("first video packet %x is not a keyframe start", first[:2])
	}
	eventually(t, "Sender Reports for both tracks", 5*time.Second, func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		return len(v.reports["video"]) > 0 && len(v.reports["audio"]) > 0
	})
	if skew := v.syncSkew(t); skew > 40*time.Millisecond || skew < -40*time.Millisecond {
		t.Errorf("audio and video clocks %s apart, want within 40 ms", skew)
	} else {
		t.Logf("A/V clock skew at the viewer: %s", skew)
	}
	v.checkDecodes(t, 60)

	metrics := get(t, base+"/metrics")
	for _, want := range []string{`vitrine_ingest_connections_total{protocol="rtmp",result="accepted"} 1`,
		`vitrine_transcoders_running 1`, `vitrine_ingest_active{protocol="rtmp"} 1`, `vitrine_publish_sessions_total{protocol="rtmp"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// Stopping the encoder unpublishes: the stream ends.
	ff.stop()
	eventually(t, "viewer told the stream ended", 5*time.Second, func() bool { return v.lastState() == "ended" })
	eventually(t, "transcoder stopped", 5*time.Second, func() bool {
		return strings.Contains(get(t, base+"/metrics"), "vitrine_transcoders_running 0")
	})
}

func (p *ffmpegProc) output() string {
	select {
	case <-p.done:
		return p.out.String()
	default:
		return "(running)"
	}
}

// inOrder sorts packets by (unwrapped) sequence number and drops duplicates.
func inOrder(pkts []*rtp.Packet) []*rtp.Packet {
	if len(pkts) == 0 {
		return nil
	}
	first := pkts[0].SequenceNumber
	bySeq := map[int]*rtp.Packet{}
	for _, p := range pkts {
		bySeq[int(int16(p.SequenceNumber-first))] = p
	}
	keys := make([]int, 0, len(bySeq))
	for k := range bySeq {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]*rtp.Packet, 0, len(keys))
	for _, k := range keys {
		out = append(out, bySeq[k])
	}
	return out
}

// metricLine returns the sample of a labelled series, or -1.
func metricLine(t *testing.T, base, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(get(t, base+"/metrics"), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// TestRTMPBadInput: garbage, a stalled handshake, a wrong key and a codec
// nobody can play each close their connection with a log line and a metric,
// leave no goroutine behind, and do not disturb the stream.
func TestRTMPBadInput(t *testing.T) {
	a, base := rtmpApp(t, false, func(c *Config) { c.RTMP.ReadTimeout = time.Second })
	addr := a.proto.rtmp.Addr().String()
	result := func(r string) float64 {
		return metricLine(t, base, `vitrine_ingest_connections_total{protocol="rtmp",result="`+r+`"}`)
	}
	closedByServer := func(c net.Conn, within time.Duration) bool {
		c.SetReadDeadline(time.Now().Add(within))
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				var ne net.Error
				return !(errors.As(err, &ne) && ne.Timeout())
			}
		}
	}

	t.Run("garbage", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		junk := bytes.Repeat([]byte("not rtmp at all \x00\xff"), 200)
		c.Write(junk)
		if !closedByServer(c, 5*time.Second) {
			t.Error("server kept a garbage connection open")
		}
		eventually(t, "bad_input counted", 3*time.Second, func() bool { return result("bad_input") >= 1 })
	})
	t.Run("stalled handshake", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte{3}) // C0, then nothing
		start := time.Now()
		if !closedByServer(c, 5*time.Second) {
			t.Fatal("server kept a stalled handshake open")
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("stalled handshake closed after %s, want about the 1 s read timeout", d)
		}
		eventually(t, "timeout counted", 3*time.Second, func() bool { return result("timeout") >= 1 })
	})
	t.Run("wrong key", func(t *testing.T) {
		ff := ffmpegPush(t, "flv", "rtmp://"+addr+"/live/not-the-key-0123456789")
		select {
		case <-ff.done:
		case <-time.After(10 * time.Second):
			t.Fatal("ffmpeg still publishing with a wrong key")
		}
		if ff.cmd.ProcessState.Success() {
			t.Error("ffmpeg was not refused")
		}
		eventually(t, "wrong_key counted", 3*time.Second, func() bool { return result("wrong_key") >= 1 })
	})
	t.Run("codec nobody can play", func(t *testing.T) {
		// MP3 audio only: no track Vitrine can forward.
		cmd := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
			"-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "10",
			"-c:a", "libmp3lame", "-f", "flv", "rtmp://"+addr+"/live/"+a.demo.Key)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		defer func() { cmd.Process.Kill(); <-done }()
		eventually(t, "unsupported_codec counted", 10*time.Second, func() bool { return result("unsupported_codec") >= 1 })
	})
	eventually(t, "every connection goroutine gone", 5*time.Second, func() bool { return a.proto.rtmp.Connections() == 0 })
	_, st, _ := a.streams.Get("demo")
	if s, _ := st.State(); s != "waiting" && s != "ended" {
		t.Errorf("stream state %s after refused connections", s)
	}
}

// TestRTMPReconnectAndConflict: a second encoder on a live stream is refused;
// when the first drops (killed), viewers stay connected through the grace
// period and resume when it comes back, on the same tracks.
func TestRTMPReconnectAndConflict(t *testing.T) {
	a, base := rtmpApp(t, false, nil)
	url := "rtmp://" + a.proto.rtmp.Addr().String() + "/live/" + a.demo.Key
	v := record(t, base, "demo")
	first := ffmpegPush(t, "flv", url)
	eventually(t, "viewer plays", 15*time.Second, func() bool { return v.count("video") > 30 && v.lastState() == "live" })

	second := ffmpegPush(t, "flv", url)
	select {
	case <-second.done:
	case <-time.After(10 * time.Second):
		t.Fatal("a second encoder was let in while the first is live")
	}
	eventually(t, "already_live counted", 3*time.Second, func() bool {
		return metricLine(t, base, `vitrine_ingest_connections_total{protocol="rtmp",result="already_live"}`) >= 1
	})

	first.kill() // a sudden disconnect: no unpublish
	eventually(t, "viewer told the creator is reconnecting", 15*time.Second, func() bool { return v.lastState() == "reconnecting" })
	n := v.count("video")
	ffmpegPush(t, "flv", url)
	eventually(t, "viewer plays again after the reconnect", 15*time.Second, func() bool {
		return v.count("video") > n+60 && v.lastState() == "live"
	})
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.sess.PC.ConnectionState() != webrtc.PeerConnectionStateConnected {
		t.Errorf("viewer connection %s", v.sess.PC.ConnectionState())
	}
}

// TestRTMPTranscoderMissing: without ffmpeg for the audio, video goes on, and
// the failure is counted while the transcoder keeps retrying.
func TestRTMPTranscoderMissing(t *testing.T) {
	a, base := rtmpApp(t, false, func(c *Config) { c.FFmpeg = "/nonexistent/ffmpeg" })
	v := record(t, base, "demo")
	ffmpegPush(t, "flv", "rtmp://"+a.proto.rtmp.Addr().String()+"/live/"+a.demo.Key)
	eventually(t, "video plays without the transcoder", 15*time.Second, func() bool { return v.count("video") > 60 })
	eventually(t, "restarts counted", 5*time.Second, func() bool {
		return metricLine(t, base, `vitrine_transcoder_restarts_total{protocol="rtmp"}`) >= 1
	})
	if v.count("audio") != 0 {
		t.Errorf("%d audio packets without a transcoder", v.count("audio"))
	}
}

// rtmpPublisher is an in-process RTMP encoder (gortmplib's client) sending
// the test clip's H.264 and either its Opus (Enhanced RTMP) or AAC, at
// real-time pace, remembering when each frame left.
type rtmpPublisher struct {
	mu        sync.Mutex
	videoSent map[int]time.Time // by frame index (30 fps)
	audioSent map[int]time.Time // by audio frame index
	opusSent  *sentSet
}

// clipAUs turns the clip's RTP frames back into access units.
func clipAUs(t *testing.T, c *clip) [][][]byte {
	t.Helper()
	var aus [][][]byte
	for _, frame := range c.video {
		var dp codecs.H264Packet
		var annexB []byte
		for _, p := range frame {
			b, err := dp.Unmarshal(p.Payload)
			if err != nil {
				t.Fatal(err)
			}
			annexB = append(annexB, b...)
		}
		var au h264.AnnexB
		if err := au.Unmarshal(annexB); err != nil {
			t.Fatal(err)
		}
		aus = append(aus, au)
	}
	return aus
}

// aacFrames makes 2 s of AAC-LC (48 kHz stereo) with ffmpeg.
func aacFrames(t *testing.T) (*mpeg4audio.AudioSpecificConfig, [][]byte) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "tone.aac")
	out, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
		"-i", "sine=frequency=440:sample_rate=48000", "-t", "2", "-ac", "2", "-c:a", "aac", "-f", "adts", f).CombinedOutput()
	if err != nil {
		t.Fatalf("ffmpeg: %v %s", err, out)
	}
	raw, _ := os.ReadFile(f)
	var pkts mpeg4audio.ADTSPackets
	if err := pkts.Unmarshal(raw); err != nil {
		t.Fatal(err)
	}
	var frames [][]byte
	for _, p := range pkts {
		frames = append(frames, p.AU)
	}
	return &mpeg4audio.AudioSpecificConfig{Type: pkts[0].Type, SampleRate: pkts[0].SampleRate, ChannelConfig: pkts[0].ChannelConfig}, frames
}

// run publishes until ctx ends. audio is "opus" or "aac".
func (p *rtmpPublisher) run(ctx context.Context, t *testing.T, url, audio string, c *clip) error {
	u, _ := neturl.Parse(url)
	cl := &gortmplib.Client{URL: u, Publish: true}
	if err := cl.Initialize(ctx); err != nil {
		return err
	}
	defer cl.Close()
	aus := clipAUs(t, c)
	var sps, pps []byte
	for _, n := range aus[0] {
		switch n[0] & 0x1f {
		case 7:
			sps = n
		case 8:
			pps = n
		}
	}
	vt := &gortmplib.Track{Codec: &rtmpcodecs.H264{SPS: sps, PPS: pps}}
	var at *gortmplib.Track
	var aacConf *mpeg4audio.AudioSpecificConfig
	var aac [][]byte
	audioFrame := 20 * time.Millisecond
	if audio == "opus" {
		at = &gortmplib.Track{Codec: &rtmpcodecs.Opus{IDHeader: &opus.IDHeader{Version: 1, ChannelCount: 2, PreSkip: 312, InputSampleRate: 48000}}}
	} else {
		aacConf, aac = aacFrames(t)
		at = &gortmplib.Track{Codec: &rtmpcodecs.MPEG4Audio{Config: aacConf}}
		audioFrame = 1024 * time.Second / 48000
	}
	w := &gortmplib.Writer{Conn: cl, Tracks: []*gortmplib.Track{vt, at}}
	if err := w.Initialize(); err != nil {
		return err
	}
	start := time.Now()
	vi, ai := 0, 0
	for {
		nextV := start.Add(time.Duration(vi) * time.Second / 30)
		nextA := start.Add(time.Duration(ai) * audioFrame)
		next := nextV
		if nextA.Before(next) {
			next = nextA
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(next)):
		}
		now := time.Now()
		var err error
		if !nextA.After(nextV) || !nextA.After(now) {
			pts := time.Duration(ai) * audioFrame
			if audio == "opus" {
				pkt := c.audio[ai%len(c.audio)].Payload
				p.opusSent.add(pkt)
				err = w.WriteOpus(at, pts, pkt)
			} else {
				err = w.WriteMPEG4Audio(at, pts, aac[ai%len(aac)])
			}
			p.mu.Lock()
			p.audioSent[ai] = now
			p.mu.Unlock()
			ai++
		}
		if !nextV.After(now) {
			pts := time.Duration(vi) * time.Second / 30
			err = errors.Join(err, w.WriteH264(vt, pts, pts, aus[vi%len(aus)]))
			p.mu.Lock()
			p.videoSent[vi] = now
			p.mu.Unlock()
			vi++
		}
		if err != nil {
			return err
		}
	}
}

// latencies matches what the viewer got with when it was sent, by RTP
// timestamp (the stream is fresh: viewers' timestamps are the source's).
func (p *rtmpPublisher) latencies(r *recorder, kind string, rate, perFrame float64) []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	sent := p.videoSent
	if kind == "audio" {
		sent = p.audioSent
	}
	seen := map[int]bool{}
	var out []time.Duration
	for i, pkt := range r.pkts[kind] {
		idx := int(float64(pkt.Timestamp)/rate/perFrame + 0.5)
		if seen[idx] || float64(idx)*perFrame < 3 {
			continue // later packets of the same frame; the first 3 s (the server reads 2 s of tracks, then catches up)
		}
		seen[idx] = true
		if at, ok := sent[idx]; ok {
			out = append(out, r.arrived[kind][i].Sub(at))
		}
	}
	slices.Sort(out)
	return out
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, len(d)*p/100)].Round(100 * time.Microsecond)
}

// TestRTMPEnhancedOpusAndLatency: Opus over Enhanced RTMP reaches viewers
// untouched; and the ingest-to-viewer latency of RTMP video and audio (AAC:
// transcoding included) is logged for docs/benchmarks.md. Live seconds:
// VITRINE_RTMP_BENCH_SECONDS (4 by default).
func TestRTMPEnhancedOpusAndLatency(t *testing.T) {
	c := testClip(t)
	seconds := 4
	if s, err := strconv.Atoi(os.Getenv("VITRINE_RTMP_BENCH_SECONDS")); err == nil && s > 0 {
		seconds = s
	}
	for _, audio := range []string{"opus", "aac"} {
		t.Run(audio, func(t *testing.T) {
			a, base := rtmpApp(t, false, nil)
			v := record(t, base, "demo")
			p := &rtmpPublisher{videoSent: map[int]time.Time{}, audioSent: map[int]time.Time{}, opusSent: &sentSet{}}
			// 2 s go to the server reading the tracks, then live.
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds+2)*time.Second)
			defer cancel()
			if err := p.run(ctx, t, "rtmp://"+a.proto.rtmp.Addr().String()+"/live/"+a.demo.Key, audio, c); err != nil {
				t.Fatal(err)
			}
			if v.count("video") < 30 || v.count("audio") < 50 {
				t.Fatalf("viewer got %d video, %d audio packets", v.count("video"), v.count("audio"))
			}
			if audio == "opus" {
				v.mu.Lock()
				for _, pkt := range v.pkts["audio"] {
					if !p.opusSent.has(pkt.Payload) {
						t.Fatal("an Opus packet differs from what the encoder sent")
					}
				}
				v.mu.Unlock()
			}
			vl := p.latencies(v, "video", 90000, 1.0/30)
			al := p.latencies(v, "audio", 48000, map[string]float64{"opus": 0.02, "aac": 1024.0 / 48000}[audio])
			t.Logf("RTMP (%s audio) to WHEP viewer on loopback, %d s live: video p50 %s p95 %s (%d frames); audio p50 %s p95 %s (%d packets)",
				audio, seconds, pct(vl, 50), pct(vl, 95), len(vl), pct(al, 50), pct(al, 95), len(al))
		})
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile
}

// TestRTMPS: an encoder publishes over RTMP in TLS with the configured
// certificate.
func TestRTMPS(t *testing.T) {
	cert, key := selfSigned(t)
	a, base := rtmpApp(t, false, func(c *Config) {
		c.RTMP.TLSAddress, c.RTMP.CertFile, c.RTMP.KeyFile = "127.0.0.1:0", cert, key
	})
	v := record(t, base, "demo")
	ffmpegPush(t, "flv", "rtmps://"+a.proto.rtmps.Addr().String()+"/live/"+a.demo.Key)
	eventually(t, "viewer plays an RTMPS stream", 15*time.Second, func() bool {
		return v.count("video") > 60 && v.count("audio") > 30
	})
}

// av1TUs makes 2 s of AV1 (30 fps, a keyframe each second) with ffmpeg and
// splits it into temporal units.
func av1TUs(t *testing.T) [][][]byte {
	t.Helper()
	f := filepath.Join(t.TempDir(), "clip.obu")
	out, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
		"-t", "2", "-c:v", "libsvtav1", "-preset", "12", "-g", "30", "-pix_fmt", "yuv420p", "-f", "obu", f).CombinedOutput()
	if err != nil {
		t.Skipf("no AV1 encoder in this ffmpeg: %v %s", err, out)
	}
	raw, _ := os.ReadFile(f)
	var obus av1.Bitstream
	if err := obus.Unmarshal(raw); err != nil {
		t.Fatal(err)
	}
	var tus [][][]byte
	for _, o := range obus {
		if av1.OBUType((o[0]>>3)&0x0f) == av1.OBUTypeTemporalDelimiter {
			tus = append(tus, nil)
			continue
		}
		if len(tus) > 0 {
			tus[len(tus)-1] = append(tus[len(tus)-1], o)
		}
	}
	return tus
}

// TestRTMPEnhancedAV1: AV1 over Enhanced RTMP reaches a WHEP viewer that
// negotiates AV1, starting at a keyframe.
func TestRTMPEnhancedAV1(t *testing.T) {
	tus := av1TUs(t)
	a, base := rtmpApp(t, false, nil)
	u, _ := neturl.Parse("rtmp://" + a.proto.rtmp.Addr().String() + "/live/" + a.demo.Key)
	cl := &gortmplib.Client{URL: u, Publish: true}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := cl.Initialize(ctx); err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	track := &gortmplib.Track{Codec: &rtmpcodecs.AV1{}}
	w := &gortmplib.Writer{Conn: cl, Tracks: []*gortmplib.Track{track}}
	if err := w.Initialize(); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		start := time.Now()
		for i := 0; ; i++ {
			pts := time.Duration(i) * time.Second / 30
			if w.WriteAV1(track, pts, tus[i%len(tus)]) != nil {
				return
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Until(start.Add(pts + time.Second/30))):
			}
		}
	}()
	defer func() { close(stop); cl.Close(); <-done }()
	_, st, _ := a.streams.Get("demo")
	eventually(t, "the stream carries AV1", 10*time.Second, func() bool { return strings.EqualFold(st.Video.Codec().MimeType, "video/AV1") })
	v := record(t, base, "demo")
	eventually(t, "viewer gets AV1", 10*time.Second, func() bool { return v.count("video") > 30 })
	v.mu.Lock()
	defer v.mu.Unlock()
	if !strings.EqualFold(v.mime["video"], webrtc.MimeTypeAV1) {
		t.Errorf("viewer negotiated %s", v.mime["video"])
	}
	if first := v.pkts["video"][0].Payload; first[0]&0x08 == 0 {
		t.Errorf("first AV1 packet %x does not start a coded video sequence", first[0])
	}
}

// TestRTMPBFrames: B-frames (out of scope until issue 9) do not break
// anything: the stream goes on and viewers get video.
func TestRTMPBFrames(t *testing.T) {
	a, base := rtmpApp(t, false, nil)
	v := record(t, base, "demo")
	// Later -c:v options win: a preset that makes B-frames.
	ffmpegPush(t, "flv", "rtmp://"+a.proto.rtmp.Addr().String()+"/live/"+a.demo.Key, "-preset", "veryfast", "-tune", "film", "-bf", "2")
	eventually(t, "viewer gets video with B-frames", 15*time.Second, func() bool { return v.count("video") > 60 && v.lastState() == "live" })
}

// TestRTMPCueTiming: a cue on an RTMP stream is stamped with the newest
// ingested frame, on the clock viewers receive: a timestamp the viewer has
// just been sent (or is about to be).
func TestRTMPCueTiming(t *testing.T) {
	a, base := rtmpApp(t, false, nil)
	v := record(t, base, "demo")
	ffmpegPush(t, "flv", "rtmp://"+a.proto.rtmp.Addr().String()+"/live/"+a.demo.Key)
	eventually(t, "viewer plays", 15*time.Second, func() bool { return v.count("video") > 60 })
	code, m, _ := postJSON(t, base+"/api/v1/streams/demo/cues", a.demo.Key, map[string]any{"type": "custom", "data": map[string]any{"n": 1}})
	if code != 201 || m["at_source"] != "frame" {
		t.Fatalf("cue: %d %v", code, m)
	}
	at := uint32(m["at"].(float64))
	eventually(t, "the cue's frame reaches the viewer", 3*time.Second, func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		for _, p := range v.pkts["video"] {
			if p.Timestamp == at {
				return true
			}
		}
		return false
	})
}
