package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
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
	r := &recorder{pkts: map[string][]*rtp.Packet{}, mime: map[string]string{}, reports: map[string][]*rtcp.SenderReport{}}
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
