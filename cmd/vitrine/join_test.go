package main

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/signaling/client"
)

// browserEncoder plays the test clip the way a browser's encoder sends
// video: one keyframe when it starts, then only predicted frames, and a new
// keyframe only when asked, at most one per 300 ms (Chromium ignores
// requests closer to the last one it honoured).
type browserEncoder struct {
	c        *clip
	sent     *sentSet
	asked    chan struct{}
	requests atomic.Int32 // keyframe requests that reached the encoder
	honoured atomic.Int32
}

// NewInterceptor makes browserEncoder its own interceptor factory: it
// watches the RTCP that reaches the publisher for keyframe requests.
func (e *browserEncoder) NewInterceptor(string) (interceptor.Interceptor, error) {
	return &keyframeRequests{e: e}, nil
}

type keyframeRequests struct {
	interceptor.NoOp
	e *browserEncoder
}

func (k *keyframeRequests) BindRTCPReader(r interceptor.RTCPReader) interceptor.RTCPReader {
	return interceptor.RTCPReaderFunc(func(b []byte, a interceptor.Attributes) (int, interceptor.Attributes, error) {
		n, a, err := r.Read(b, a)
		if err != nil {
			return n, a, err
		}
		pkts, _ := rtcp.Unmarshal(b[:n])
		for _, p := range pkts {
			switch p.(type) {
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				k.e.requests.Add(1)
				select {
				case k.e.asked <- struct{}{}:
				default:
				}
			}
		}
		return n, a, err
	})
}

// api is a loopback pion API whose peer connections report keyframe
// requests to e.
func (e *browserEncoder) api(t *testing.T) *webrtc.API {
	t.Helper()
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	reg := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(m, reg); err != nil {
		t.Fatal(err)
	}
	reg.Add(e)
	var s webrtc.SettingEngine
	s.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	s.SetIncludeLoopbackCandidate(true)
	s.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	s.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(reg), webrtc.WithSettingEngine(s))
}

// play sends video at 30 fps until ctx ends: the clip's first keyframe,
// then its predicted frames in a loop, and one of its keyframes where a
// request is honoured.
func (e *browserEncoder) play(ctx context.Context, video *webrtc.TrackLocalStaticRTP) {
	var keys, deltas []int
	for i, f := range e.c.video {
		if h264Keyframe(f[0].Payload) {
			keys = append(keys, i)
		} else {
			deltas = append(deltas, i)
		}
	}
	tick := time.NewTicker(time.Second / 30)
	defer tick.Stop()
	ts, seq := uint32(0), uint16(0)
	lastKey := time.Now()
	for i := 0; ; i++ {
		frame := e.c.video[deltas[i%len(deltas)]]
		key := i == 0
		select {
		case <-e.asked:
			if time.Since(lastKey) >= 300*time.Millisecond {
				key = true
				e.honoured.Add(1)
			}
		default:
		}
		if key {
			frame, lastKey = e.c.video[keys[i%len(keys)]], time.Now()
		}
		for j, p := range frame {
			q := *p
			q.Timestamp, q.SequenceNumber, q.Marker = ts, seq, j == len(frame)-1
			seq++
			e.sent.add(q.Payload)
			_ = video.WriteRTP(&q)
		}
		ts += 3000
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// TestGoLiveRace is issue 14's bug: a WHEP viewer that POSTs the moment the
// creator's WHIP session is connected must get a picture, from an encoder
// that, like a browser's, sends one keyframe at the start and then only
// when asked (and ignores requests too close together). The viewer starts
// on the cached first keyframe; with the cache off, on a keyframe request
// repeated while it waits.
func TestGoLiveRace(t *testing.T) {
	for _, replay := range []string{"original", "off"} {
		t.Run(replay, func(t *testing.T) { goLiveRace(t, replay) })
	}
}

func goLiveRace(t *testing.T, replay string) {
	for trial := range 3 {
		a, base := testApp(t, func(c *Config) { c.Streams.JoinReplay = replay })
		sent := &sentSet{}
		enc := &browserEncoder{c: testClip(t), sent: sent, asked: make(chan struct{}, 1)}
		pubAPI := enc.api(t)
		video, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeH264, ClockRate: 90000,
			SDPFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"}, "video", "clip")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		pub, err := client.Publish(ctx, pubAPI, base+"/whip/demo", a.demo.Key, video)
		cancel()
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		connected := make(chan struct{})
		pub.PC.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
			if s == webrtc.PeerConnectionStateConnected {
				close(connected)
			}
		})
		if pub.PC.ConnectionState() == webrtc.PeerConnectionStateConnected {
			t.Fatal("the publisher connected before the test could watch for it")
		}
		select {
		case <-connected:
		case <-time.After(5 * time.Second):
			t.Fatal("publisher not connected")
		}
		// The encoder starts and the viewer POSTs in the same instant.
		playCtx, stop := context.WithCancel(context.Background())
		go enc.play(playCtx, video)
		viewAPI, err := client.NewAPI(true)
		if err != nil {
			t.Fatal(err)
		}
		v := &testViewer{name: "race", sent: sent, tracks: map[string]int{}, packets: map[string]int{}, startedAt: time.Now(),
			reports: map[string]int{}, ssrc: map[string]uint32{}}
		ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
		sess, err := client.Watch(ctx, viewAPI, base+"/whep/demo", false, func(pc *webrtc.PeerConnection, _ *webrtc.DataChannel) {
			pc.OnTrack(v.onTrack)
		})
		cancel()
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		deadline := time.Now().Add(4 * time.Second)
		for v.count("video") == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		v.mu.Lock()
		got, firstKey, foreign, wait := v.packets["video"], v.firstKey, v.foreign, v.firstAt.Sub(v.startedAt)
		v.mu.Unlock()
		stop()
		sess.PC.Close()
		pub.PC.Close()
		if got == 0 {
			t.Fatalf("trial %d: the viewer got no video in 4 s (keyframe requests to the encoder: %d, honoured: %d)",
				trial, enc.requests.Load(), enc.honoured.Load())
		}
		if !firstKey || foreign > 0 {
			t.Errorf("trial %d: first video packet a keyframe: %v; payloads the creator never sent: %d", trial, firstKey, foreign)
		}
		t.Logf("trial %d: first keyframe %s after the WHEP POST (keyframe requests %d, honoured %d)",
			trial, wait.Round(time.Millisecond), enc.requests.Load(), enc.honoured.Load())
	}
}
