package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/signaling/client"
)

// simulcastEncoder sends the test clip as three simulcast layers in one
// video m-line, the way OBS's WHIP output offers them (rids "0", "1", "2",
// a=simulcast:send 0;1;2, mid and rid header extensions on every packet).
// Layer 0 is the clip; layers 1 and 2 cut each packet to a third and a
// tenth, so the three bitrates differ as real layers do. Every payload ends
// with its layer's tag byte. Each layer has its own sequence numbers and a
// timestamp base of its own, half a frame apart modulo a frame, so a viewer
// switched without alignment would be visibly off. Keyframes come at the
// start and when a layer is asked (PLI for its SSRC), at most every 300 ms.
type simulcastEncoder struct {
	c      *clip
	tracks [3]*webrtc.TrackLocalStaticRTP
	sender *webrtc.RTPSender
	asked  chan uint32 // SSRCs of keyframe requests

	mu    sync.Mutex
	bases [3]uint32 // each layer's first timestamp
}

var layerRIDs = [3]string{"0", "1", "2"}

const layerTag = 0xE0

func (e *simulcastEncoder) NewInterceptor(string) (interceptor.Interceptor, error) {
	return &layerRequests{e: e}, nil
}

type layerRequests struct {
	interceptor.NoOp
	e *simulcastEncoder
}

func (k *layerRequests) BindRTCPReader(r interceptor.RTCPReader) interceptor.RTCPReader {
	return interceptor.RTCPReaderFunc(func(b []byte, a interceptor.Attributes) (int, interceptor.Attributes, error) {
		n, a, err := r.Read(b, a)
		if err != nil {
			return n, a, err
		}
		pkts, _ := rtcp.Unmarshal(b[:n])
		for _, p := range pkts {
			if pli, ok := p.(*rtcp.PictureLossIndication); ok {
				select {
				case k.e.asked <- pli.MediaSSRC:
				default:
				}
			}
		}
		return n, a, err
	})
}

// publishSimulcast goes live on the demo stream with the three layers.
func publishSimulcast(t *testing.T, base, key string, c *clip) *simulcastEncoder {
	t.Helper()
	e := &simulcastEncoder{c: c, asked: make(chan uint32, 16)}
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	if err := webrtc.ConfigureSimulcastExtensionHeaders(m); err != nil {
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
	api := webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(reg), webrtc.WithSettingEngine(s))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	codec := webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeH264, ClockRate: 90000,
		SDPFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"}
	for i, rid := range layerRIDs {
		if e.tracks[i], err = webrtc.NewTrackLocalStaticRTP(codec, "video", "obs", webrtc.WithRTPStreamID(rid)); err != nil {
			t.Fatal(err)
		}
	}
	tr, err := pc.AddTransceiverFromTrack(e.tracks[0], webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
	if err != nil {
		t.Fatal(err)
	}
	e.sender = tr.Sender()
	for _, track := range e.tracks[1:] {
		if err := e.sender.AddEncoding(track); err != nil {
			t.Fatal(err)
		}
	}
	// Each layer's RTCP is read (by its rid) so that the keyframe requests
	// for it reach the interceptor.
	for _, rid := range layerRIDs {
		go func() {
			buf := make([]byte, 1500)
			for {
				if _, _, err := e.sender.ReadSimulcast(buf, rid); err != nil {
					return
				}
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := client.Offer(ctx, pc, base+"/whip/demo", key)
	if err != nil {
		t.Fatalf("simulcast publish: %v", err)
	}
	if err := sess.WaitConnected(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	playCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.play(playCtx, tr.Mid())
	}()
	t.Cleanup(func() { stop(); <-done })
	return e
}

func (e *simulcastEncoder) play(ctx context.Context, mid string) {
	params := e.sender.GetParameters()
	var midID, ridID uint8
	for _, x := range params.HeaderExtensions {
		switch x.URI {
		case sdp.SDESMidURI:
			midID = uint8(x.ID)
		case sdp.SDESRTPStreamIDURI:
			ridID = uint8(x.ID)
		}
	}
	layerOf := map[uint32]int{}
	for _, enc := range params.Encodings {
		for i, rid := range layerRIDs {
			if enc.RID == rid {
				layerOf[uint32(enc.SSRC)] = i
			}
		}
	}
	var keys, deltas []int
	for i, f := range e.c.video {
		if h264Keyframe(f[0].Payload) {
			keys = append(keys, i)
		} else {
			deltas = append(deltas, i)
		}
	}
	e.mu.Lock()
	e.bases = [3]uint32{1_000_000, 50_001_500, 90_000_000 + 1500}
	bases := e.bases
	e.mu.Unlock()
	var seqs [3]uint16
	var lastKey [3]time.Time
	wantKey := [3]bool{true, true, true}
	tick := time.NewTicker(time.Second / 30)
	defer tick.Stop()
	for i := 0; ; i++ {
	asks:
		for {
			select {
			case ssrc := <-e.asked:
				if l, ok := layerOf[ssrc]; ok && time.Since(lastKey[l]) >= 300*time.Millisecond {
					wantKey[l] = true
				}
			default:
				break asks
			}
		}
		for l := range 3 {
			frame := e.c.video[deltas[i%len(deltas)]]
			if wantKey[l] {
				frame, wantKey[l], lastKey[l] = e.c.video[keys[i%len(keys)]], false, time.Now()
			}
			for j, p := range frame {
				n := max(2, len(p.Payload)/[3]int{1, 3, 10}[l])
				q := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: p.PayloadType, Marker: j == len(frame)-1,
					SequenceNumber: seqs[l], Timestamp: bases[l] + uint32(i)*3000}}
				q.Payload = append(append([]byte{}, p.Payload[:n]...), layerTag|byte(l))
				seqs[l]++
				_ = q.Header.SetExtension(midID, []byte(mid))
				_ = q.Header.SetExtension(ridID, []byte(layerRIDs[l]))
				_ = e.tracks[l].WriteRTP(&q)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// layerViewer is a pion WHEP viewer that records, for each video packet,
// which layer it came from, its sequence number and its timestamp.
type layerViewer struct {
	mu      sync.Mutex
	pkts    []seenPacket
	ssrcs   map[uint32]bool
	replies []string
	dc      *webrtc.DataChannel
	open    chan struct{}
}

type seenPacket struct {
	layer int
	seq   uint16
	ts    uint32
}

func watchLayers(t *testing.T, base string) *layerViewer {
	t.Helper()
	api, err := client.NewAPI(true)
	if err != nil {
		t.Fatal(err)
	}
	v := &layerViewer{ssrcs: map[uint32]bool{}, open: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := client.Watch(ctx, api, base+"/whep/demo", true, func(pc *webrtc.PeerConnection, dc *webrtc.DataChannel) {
		v.dc = dc
		dc.OnOpen(func() { close(v.open) })
		dc.OnMessage(func(m webrtc.DataChannelMessage) {
			var msg struct{ Type string }
			if json.Unmarshal(m.Data, &msg) == nil && (msg.Type == "quality.result" || msg.Type == "error") {
				v.mu.Lock()
				v.replies = append(v.replies, string(m.Data))
				v.mu.Unlock()
			}
		})
		pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
			if tr.Kind() != webrtc.RTPCodecTypeVideo {
				return
			}
			for {
				p, _, err := tr.ReadRTP()
				if err != nil {
					return
				}
				layer := -1
				if n := len(p.Payload); n > 0 && p.Payload[n-1]&0xF0 == layerTag {
					layer = int(p.Payload[n-1] & 0x0F)
				}
				v.mu.Lock()
				v.ssrcs[p.SSRC] = true
				v.pkts = append(v.pkts, seenPacket{layer: layer, seq: p.SequenceNumber, ts: p.Timestamp})
				v.mu.Unlock()
			}
		})
	})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	t.Cleanup(func() { sess.PC.Close() })
	select {
	case <-v.open:
	case <-time.After(10 * time.Second):
		t.Fatal("the viewer's data channel did not open")
	}
	return v
}

func (v *layerViewer) quality(t *testing.T, value string) {
	t.Helper()
	if err := v.dc.SendText(`{"v":1,"type":"quality","value":"` + value + `"}`); err != nil {
		t.Fatal(err)
	}
}

func (v *layerViewer) snapshot() []seenPacket {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]seenPacket(nil), v.pkts...)
}

// lastLayer is the layer of the newest video packet (-1 before any).
func (v *layerViewer) lastLayer() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.pkts) == 0 {
		return -1
	}
	return v.pkts[len(v.pkts)-1].layer
}

// checkSwitch finds the viewer's switch from layer from to layer to in what
// it got, and checks what a viewer's decoder and the overlay need: the
// sequence number goes on by one, the timestamp moves forward by at most
// two frames, the new layer's timestamps are on the primary layer's clock
// (its frames' timestamps are the primary's, modulo a frame, within maxDrift),
// and the old layer does not come back.
//
// maxDrift: a layer's first frame goes 1 ms after the last one sent when
// they show the same picture (both layers' packets of a frame race on
// their way to the viewer), and the layers' Sender Reports differ by the
// time between their packets: a few milliseconds after a few switches, far
// under a frame, while a layer not aligned is half a frame off here.
const maxDrift = 500

func checkSwitch(t *testing.T, pkts []seenPacket, from, to int, primaryBase uint32) {
	t.Helper()
	at := -1
	for i := 1; i < len(pkts); i++ {
		if pkts[i-1].layer == from && pkts[i].layer == to {
			at = i
		}
	}
	if at < 0 {
		t.Fatalf("no switch from layer %d to layer %d in %d packets", from, to, len(pkts))
	}
	before, after := pkts[at-1], pkts[at]
	if after.seq != before.seq+1 {
		t.Errorf("switch %d->%d: sequence number %d then %d, want continuous", from, to, before.seq, after.seq)
	}
	if d := int32(after.ts - before.ts); d <= 0 || d > 6000 {
		t.Errorf("switch %d->%d: timestamp moved by %d ticks, want (0, 6000]", from, to, d)
	}
	for _, p := range pkts[at:] {
		if p.layer != to {
			t.Errorf("after the switch to layer %d, a packet of layer %d", to, p.layer)
			break
		}
		if off := (p.ts - primaryBase) % 3000; off > maxDrift && off < 3000-maxDrift {
			t.Errorf("layer %d frame at %d is %d ticks off the primary layer's frames", to, p.ts, off)
			break
		}
	}
}

// TestSimulcastSwitch is issue 15's forwarding core with an OBS-like
// simulcast publisher: a viewer starts on the top layer, is moved to the
// low layer and back by the player's quality menu, sees one track with
// continuous sequence numbers and timestamps on the primary layer's clock
// (so cards stay on their frame), and the stream's health and metrics say
// which layer viewers get.
func TestSimulcastSwitch(t *testing.T) {
	c := testClip(t)
	a, base := testApp(t, nil)
	enc := publishSimulcast(t, base, a.demo.Key, c)
	v := watchLayers(t, base)
	other := watchLayers(t, base)

	eventually(t, "the viewer plays the top layer", 5*time.Second, func() bool { return v.lastLayer() == 0 })
	var h media.Health
	health := func() {
		t.Helper()
		req, _ := http.NewRequest("GET", base+"/api/v1/streams/demo/health", nil)
		req.Header.Set("Authorization", "Bearer "+a.demo.Key)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		h = media.Health{}
		if err := json.NewDecoder(res.Body).Decode(&h); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "three layers with bitrates in the health", 5*time.Second, func() bool {
		health()
		l := h.Video.Layers
		return len(l) == 3 && l[2].BitrateBps > 0 && l[0].BitrateBps > 2*l[1].BitrateBps && l[1].BitrateBps > l[2].BitrateBps
	})

	v.quality(t, "low")
	eventually(t, "the viewer is switched to the low layer", 5*time.Second, func() bool { return v.lastLayer() == 2 })
	time.Sleep(time.Second)
	enc.mu.Lock()
	primaryBase := enc.bases[0]
	enc.mu.Unlock()
	checkSwitch(t, v.snapshot(), 0, 2, primaryBase)
	health()
	if l := h.Video.Layers; l[0].Viewers != 1 || l[2].Viewers != 1 {
		t.Errorf("health layers after the switch: %+v, want one viewer on layer 0 and one on layer 2", l)
	}
	if got := metricValue(t, base, `vitrine_layer_viewers{layer="2",stream="demo"}`); got != 1 {
		t.Errorf("vitrine_layer_viewers on layer 2: %v, want 1", got)
	}
	if other.lastLayer() != 0 {
		t.Errorf("the other viewer moved to layer %d", other.lastLayer())
	}

	v.quality(t, "high")
	eventually(t, "the viewer is back on the top layer", 5*time.Second, func() bool { return v.lastLayer() == 0 })
	time.Sleep(500 * time.Millisecond)
	checkSwitch(t, v.snapshot(), 2, 0, primaryBase)

	v.quality(t, "shiny")
	v.quality(t, "auto")
	eventually(t, "an answer to each quality message", 3*time.Second, func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		return len(v.replies) >= 4
	})
	v.mu.Lock()
	if len(v.ssrcs) != 1 {
		t.Errorf("video SSRCs seen: %d, want one track", len(v.ssrcs))
	}
	v.mu.Unlock()
	// On loopback the estimate has room for the top layer: Auto keeps it.
	time.Sleep(2 * time.Second)
	if l := v.lastLayer(); l != 0 {
		t.Errorf("on Auto with an unconstrained link the viewer is on layer %d", l)
	}
	if got := metricValue(t, base, `vitrine_layer_switches_total{direction="down"}`); got < 1 {
		t.Errorf("switches down counted: %v", got)
	}
}
