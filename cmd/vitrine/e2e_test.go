package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/signaling/client"
)

// testApp starts Vitrine as `vitrine serve` would, on loopback and free ports.
func testApp(t testing.TB, edit func(*Config)) (*app, string) {
	t.Helper()
	cfg := defaultConfig()
	cfg.HTTP = "127.0.0.1:0"
	cfg.Data = t.TempDir()
	cfg.AdminToken = "test-admin-token-0123456789"
	cfg.WebRTC.ListenIP = "127.0.0.1"
	cfg.WebRTC.UDPPort = 0
	cfg.Log.Level = "warn"
	// RTMP/RTSP only where a test turns them on, on free loopback ports.
	cfg.RTMP.Address, cfg.RTSP.Address = "", ""
	if edit != nil {
		edit(&cfg)
	}
	a, err := start(cfg, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a, "http://" + a.listener.Addr().String()
}

type testLog struct{ t testing.TB }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// testViewer is a pion WHEP viewer that checks every packet it gets.
type testViewer struct {
	name string
	sess *client.Session
	sent *sentSet

	mu        sync.Mutex
	tracks    map[string]int // OnTrack calls per kind: must stay 1 (no renegotiation)
	packets   map[string]int
	foreign   int // payloads that the publisher never sent
	firstKey  bool
	gotFirst  bool
	firstAt   time.Time
	states    []string
	lastSeq   uint16
	seqJumps  int // forward jumps of more than 100 in the video sequence
	startedAt time.Time
	reports   map[string]int // RTCP Sender Reports received per kind
	ssrc      map[string]uint32
}

func watch(t *testing.T, api *webrtc.API, base, stream, name string, sent *sentSet) *testViewer {
	t.Helper()
	v := &testViewer{name: name, sent: sent, tracks: map[string]int{}, packets: map[string]int{}, startedAt: time.Now(),
		reports: map[string]int{}, ssrc: map[string]uint32{}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := client.Watch(ctx, api, base+"/whep/"+stream, true, func(pc *webrtc.PeerConnection, dc *webrtc.DataChannel) {
		pc.OnTrack(v.onTrack)
		dc.OnMessage(func(m webrtc.DataChannelMessage) {
			var msg struct{ Type, State string }
			if json.Unmarshal(m.Data, &msg) == nil && msg.Type == "stream.state" {
				v.mu.Lock()
				v.states = append(v.states, msg.State)
				v.mu.Unlock()
			}
		})
	})
	if err != nil {
		t.Fatalf("%s: watch: %v", name, err)
	}
	v.sess = sess
	t.Cleanup(func() { sess.PC.Close() })
	return v
}

func (v *testViewer) onTrack(tr *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
	kind := tr.Kind().String()
	v.mu.Lock()
	v.tracks[kind]++
	v.ssrc[kind] = uint32(tr.SSRC())
	v.mu.Unlock()
	go func() {
		for {
			pkts, _, err := recv.ReadRTCP()
			if err != nil {
				return
			}
			for _, p := range pkts {
				if sr, ok := p.(*rtcp.SenderReport); ok && sr.SSRC == uint32(tr.SSRC()) && sr.PacketCount > 0 {
					v.mu.Lock()
					v.reports[kind]++
					v.mu.Unlock()
				}
			}
		}
	}()
	for {
		p, _, err := tr.ReadRTP()
		if err != nil {
			return
		}
		v.mu.Lock()
		v.packets[kind]++
		if !v.sent.has(p.Payload) {
			v.foreign++
		}
		if kind == "video" {
			if !v.gotFirst {
				v.gotFirst, v.firstKey, v.firstAt = true, h264Keyframe(p.Payload), time.Now()
			} else if p.SequenceNumber-v.lastSeq > 100 && p.SequenceNumber-v.lastSeq < 0x8000 {
				v.seqJumps++
			}
			v.lastSeq = p.SequenceNumber
		}
		v.mu.Unlock()
	}
}

func (v *testViewer) count(kind string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.packets[kind]
}

func (v *testViewer) lastState() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.states) == 0 {
		return ""
	}
	return v.states[len(v.states)-1]
}

// h264Keyframe: SPS, IDR, a STAP-A holding an SPS, or the first fragment of
// an IDR.
func h264Keyframe(p []byte) bool {
	if len(p) < 2 {
		return false
	}
	switch p[0] & 0x1f {
	case 5, 7:
		return true
	case 24:
		return len(p) > 3 && p[3]&0x1f == 7
	case 28:
		return p[1]&0x80 != 0 && p[1]&0x1f == 5
	}
	return false
}

func eventually(t *testing.T, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type publisher struct {
	sess   *client.Session
	cancel context.CancelFunc
	done   chan struct{}
	lastTS atomic.Uint32 // timestamp of the video frame being sent
}

// publish goes live with the test clip over WHIP. A 409 is retried as a
// player would (Retry-After), for up to 8 s.
func publish(t *testing.T, api *webrtc.API, base, stream, key string, c *clip, sent *sentSet) *publisher {
	t.Helper()
	deadline := time.Now().Add(8 * time.Second)
	for {
		video, _ := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeH264, ClockRate: 90000,
			SDPFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"}, "video", "clip")
		audio, _ := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", "clip")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		sess, err := client.Publish(ctx, api, base+"/whip/"+stream, key, video, audio)
		cancel()
		var he *client.HTTPError
		if errors.As(err, &he) && he.Status == http.StatusConflict && time.Now().Before(deadline) {
			time.Sleep(500 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		if err := sess.WaitConnected(5 * time.Second); err != nil {
			t.Fatalf("publish: %v", err)
		}
		playCtx, stop := context.WithCancel(context.Background())
		p := &publisher{sess: sess, cancel: stop, done: make(chan struct{})}
		go func() {
			defer close(p.done)
			c.play(playCtx, video, audio, sent, &p.lastTS)
		}()
		t.Cleanup(p.stop)
		return p
	}
}

func (p *publisher) stop() {
	p.cancel()
	<-p.done
	p.sess.PC.Close()
}

// TestLiveStream is issue 2's acceptance run: three viewers wait for the
// creator, one joins mid-stream, the creator drops and comes back, then ends.
func TestLiveStream(t *testing.T) {
	c := testClip(t)
	a, base := testApp(t, nil)
	api, err := client.NewAPI(true)
	if err != nil {
		t.Fatal(err)
	}
	sent := &sentSet{}

	// Viewers who arrive before the creator are told to wait, and stay.
	var viewers []*testViewer
	for i := range 3 {
		v := watch(t, api, base, "demo", fmt.Sprintf("early-%d", i), sent)
		if got := v.sess.Header.Get("Vitrine-Stream-State"); got != "waiting" {
			t.Errorf("%s: Vitrine-Stream-State = %q, want waiting", v.name, got)
		}
		viewers = append(viewers, v)
	}
	for _, v := range viewers {
		eventually(t, v.name+" told the stream is waiting", 5*time.Second, func() bool { return v.lastState() == "waiting" })
	}

	pub := publish(t, api, base, "demo", a.demo.Key, c, sent)
	for _, v := range viewers {
		eventually(t, v.name+" playing after go-live without a new offer", 10*time.Second, func() bool {
			return v.count("video") > 60 && v.count("audio") > 50 && v.lastState() == "live"
		})
	}

	// A second creator on a live stream is refused.
	{
		video, _ := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeH264, ClockRate: 90000}, "v", "s")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := client.Publish(ctx, api, base+"/whip/demo", a.demo.Key, video)
		cancel()
		var he *client.HTTPError
		if !errors.As(err, &he) || he.Status != http.StatusConflict {
			t.Fatalf("second creator: got %v, want HTTP 409", err)
		}
	}

	// A viewer joining mid-stream starts on a keyframe.
	late := watch(t, api, base, "demo", "late", sent)
	eventually(t, "late viewer gets video", 5*time.Second, func() bool { return late.count("video") > 0 })
	late.mu.Lock()
	if !late.firstKey {
		t.Error("late viewer's first video packet is not a keyframe")
	}
	t.Logf("late viewer: first keyframe %s after its offer", late.firstAt.Sub(late.startedAt))
	late.mu.Unlock()
	viewers = append(viewers, late)

	// The creator's connection drops; it comes back with the same key.
	before := map[*testViewer]int{}
	for _, v := range viewers {
		before[v] = v.count("video")
	}
	pub.stop()
	for _, v := range viewers {
		eventually(t, v.name+" told the creator is reconnecting", 5*time.Second, func() bool { return v.lastState() == "reconnecting" })
	}
	pub = publish(t, api, base, "demo", a.demo.Key, c, sent)
	for _, v := range viewers {
		eventually(t, v.name+" receives again after the creator reconnected", 10*time.Second, func() bool {
			return v.count("video") > before[v]+60 && v.lastState() == "live"
		})
	}

	// What every viewer got is what was sent, byte for byte, on the tracks it
	// negotiated once, with sequence numbers continuing across the reconnect.
	for _, v := range viewers {
		v.mu.Lock()
		if v.foreign != 0 {
			t.Errorf("%s: %d payloads differ from what the creator sent", v.name, v.foreign)
		}
		if v.tracks["video"] != 1 || v.tracks["audio"] != 1 {
			t.Errorf("%s: tracks %v, want one video and one audio (no renegotiation)", v.name, v.tracks)
		}
		if !v.firstKey {
			t.Errorf("%s: first video packet is not a keyframe", v.name)
		}
		if v.seqJumps > 0 {
			t.Errorf("%s: %d jumps in the video sequence numbers", v.name, v.seqJumps)
		}
		if v.sess.PC.ConnectionState() != webrtc.PeerConnectionStateConnected {
			t.Errorf("%s: connection %s", v.name, v.sess.PC.ConnectionState())
		}
		v.mu.Unlock()
	}

	// Every viewer gets Sender Reports for both tracks (lip sync), and a
	// viewer's keyframe request reaches the creator's side.
	for _, v := range viewers {
		eventually(t, v.name+" receives Sender Reports", 5*time.Second, func() bool {
			v.mu.Lock()
			defer v.mu.Unlock()
			return v.reports["video"] > 0 && v.reports["audio"] > 0
		})
	}
	plisBefore := metricValue(t, base, "vitrine_plis_received_total")
	late.mu.Lock()
	pli := &rtcp.PictureLossIndication{MediaSSRC: late.ssrc["video"]}
	late.mu.Unlock()
	if err := late.sess.PC.WriteRTCP([]rtcp.Packet{pli}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the server counts the viewer's PLI", 5*time.Second, func() bool {
		return metricValue(t, base, "vitrine_plis_received_total") > plisBefore
	})

	// Metrics show the viewers and the traffic.
	metrics := get(t, base+"/metrics")
	for _, want := range []string{`vitrine_viewers{protocol="whep",stream="demo"} 4`, `vitrine_streams_live 1`, `vitrine_egress_packets_total{kind="video"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// The creator ends the stream: viewers are told.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pub.cancel()
	<-pub.done
	if err := pub.sess.Delete(ctx); err != nil {
		t.Fatalf("DELETE: %v", err)
	}
	for _, v := range viewers {
		eventually(t, v.name+" told the stream ended", 5*time.Second, func() bool { return v.lastState() == "ended" })
	}
	var st struct{ State string }
	if err := json.Unmarshal([]byte(get(t, base+"/api/v1/streams/demo")), &st); err != nil || st.State != "ended" {
		t.Errorf("stream status after DELETE: %+v, %v", st, err)
	}
}

// metricValue reads one unlabelled sample from /metrics.
func metricValue(t *testing.T, base, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(get(t, base+"/metrics"), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

func get(t *testing.T, url string) string {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

// TestTrickleAndICERestart: a viewer trickles a candidate, then restarts ICE
// with a PATCH (RFC 9725 section 4.3), and keeps receiving media.
func TestTrickleAndICERestart(t *testing.T) {
	c := testClip(t)
	a, base := testApp(t, nil)
	api, err := client.NewAPI(true)
	if err != nil {
		t.Fatal(err)
	}
	sent := &sentSet{}
	publish(t, api, base, "demo", a.demo.Key, c, sent)
	v := watch(t, api, base, "demo", "viewer", sent)
	eventually(t, "viewer receives video", 5*time.Second, func() bool { return v.count("video") > 10 })

	patch := func(etag, body string) (*http.Response, string) {
		req, _ := http.NewRequest("PATCH", v.sess.Location, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/trickle-ice-sdpfrag")
		if etag != "" {
			req.Header.Set("If-Match", etag)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, string(b)
	}

	// Trickle: one more candidate of the viewer's, for the current ICE session.
	local := v.sess.PC.LocalDescription().SDP
	cand := firstLine(local, "a=candidate:")
	res, body := patch(v.sess.ETag, "a=ice-ufrag:"+sdpValue(local, "a=ice-ufrag:")+"\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"+cand+"\r\n")
	if res.StatusCode != http.StatusNoContent {
		t.Fatalf("trickle PATCH: %d %s", res.StatusCode, body)
	}
	if res, body := patch(`"stale"`, "a=end-of-candidates\r\n"); res.StatusCode != http.StatusPreconditionFailed {
		t.Fatalf("PATCH with a stale ETag: %d %s, want 412", res.StatusCode, body)
	}

	// ICE restart: new credentials from the viewer, new ones back.
	offer, err := v.sess.PC.CreateOffer(&webrtc.OfferOptions{ICERestart: true})
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(v.sess.PC)
	if err := v.sess.PC.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-gathered
	local = v.sess.PC.LocalDescription().SDP
	frag := "a=ice-ufrag:" + sdpValue(local, "a=ice-ufrag:") + "\r\na=ice-pwd:" + sdpValue(local, "a=ice-pwd:") +
		"\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n" + firstLine(local, "a=candidate:") + "\r\n"
	res, body = patch(v.sess.ETag, frag)
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "application/trickle-ice-sdpfrag" {
		t.Fatalf("ICE restart PATCH: %d %s", res.StatusCode, body)
	}
	if res.Header.Get("ETag") == v.sess.ETag {
		t.Error("ETag unchanged after an ICE restart")
	}
	oldRemote := v.sess.PC.CurrentRemoteDescription().SDP
	newUfrag, newPwd := sdpValue(body, "a=ice-ufrag:"), sdpValue(body, "a=ice-pwd:")
	if newUfrag == "" || newUfrag == sdpValue(oldRemote, "a=ice-ufrag:") || firstLine(body, "a=candidate:") == "" {
		t.Fatalf("ICE restart answer lacks new credentials or candidates:\n%s", body)
	}
	answer := strings.NewReplacer("a=ice-ufrag:"+sdpValue(oldRemote, "a=ice-ufrag:"), "a=ice-ufrag:"+newUfrag,
		"a=ice-pwd:"+sdpValue(oldRemote, "a=ice-pwd:"), "a=ice-pwd:"+newPwd).Replace(oldRemote)
	if err := v.sess.PC.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		t.Fatal(err)
	}
	n := v.count("video")
	eventually(t, "video keeps flowing after the ICE restart", 10*time.Second, func() bool {
		return v.count("video") > n+60 && v.sess.PC.ICEConnectionState() == webrtc.ICEConnectionStateConnected
	})
	if sdpValue(v.sess.PC.CurrentRemoteDescription().SDP, "a=ice-ufrag:") != newUfrag {
		t.Error("viewer is not on the restarted ICE session")
	}
}

func firstLine(sdp, prefix string) string {
	for _, l := range strings.Split(sdp, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

func sdpValue(sdp, prefix string) string {
	return strings.TrimPrefix(firstLine(sdp, prefix), prefix)
}
