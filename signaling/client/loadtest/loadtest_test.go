package loadtest

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestEmbeddedClip(t *testing.T) {
	c, err := EmbeddedClip()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Frames) != 120 || len(c.Audio) < 200 {
		t.Fatalf("%d frames, %d audio packets; want 4 s: 120 and 200 or so", len(c.Frames), len(c.Audio))
	}
	if !c.Frames[0].Key || !isKeyframe(c.Frames[0].Payloads[0]) {
		t.Error("the clip does not start on a keyframe: a loop would not restart cleanly")
	}
	for i, f := range c.Frames {
		for _, p := range f.Payloads {
			if len(p) > rtpMTU {
				t.Fatalf("frame %d: payload of %d bytes", i, len(p))
			}
		}
	}
}

func TestRTPPayload(t *testing.T) {
	pkt := []byte{0x90, 96, 0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 2, // header, X set
		0xbe, 0xde, 0, 1, 1, 2, 3, 4, // one-word extension
		0x65, 0xaa}
	pkt[1] |= 0x80 // marker
	p, h := rtpPayload(pkt)
	if h != (rtpHead{seq: 0x1234, ts: 1, marker: true}) || string(p) != "\x65\xaa" {
		t.Fatalf("payload %x header %+v", p, h)
	}
	for _, bad := range [][]byte{nil, {0x80}, {0x90, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xde, 0, 9}, {0xa0, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200}} {
		if p, _ := rtpPayload(bad); p != nil {
			t.Errorf("%x parsed as %x", bad, p)
		}
	}
}

func TestIsKeyframe(t *testing.T) {
	for _, c := range []struct {
		p   []byte
		key bool
	}{
		{[]byte{0x65, 0}, true},             // IDR
		{[]byte{0x67, 0}, true},             // SPS
		{[]byte{0x41, 0}, false},            // non-IDR
		{[]byte{0x78, 0, 2, 0x67, 0}, true}, // STAP-A with SPS
		{[]byte{0x7c, 0x85}, true},          // FU-A start of IDR
		{[]byte{0x7c, 0x05}, false},         // FU-A middle of IDR
		{[]byte{0x7c, 0x81}, false},         // FU-A start of non-IDR
		{[]byte{0x78}, false},               // truncated
	} {
		if got := isKeyframe(c.p); got != c.key {
			t.Errorf("%x: keyframe %v, want %v", c.p, got, c.key)
		}
	}
}

func TestHistogram(t *testing.T) {
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.add(int64(i) * int64(time.Microsecond))
	}
	s := h.spread()
	for _, c := range []struct{ got, want float64 }{{s.P50, 0.5}, {s.P99, 0.99}, {s.Max, 1}} {
		if math.Abs(c.got-c.want)/c.want > 0.07 {
			t.Errorf("quantile %.4f ms, want %.4f ms within 7%%", c.got, c.want)
		}
	}
	for v := int64(0); v < 1<<20; v += 997 {
		if i := histIndex(v); histValue(i) > v*17/16+1 || histValue(i) < v*15/16-1 {
			t.Fatalf("value %d lands in bucket %d of %d", v, i, histValue(i))
		}
	}
	h.add(-5) // clock oddities land in bucket 0, never out of range
	h.add(math.MaxInt64)
}

func TestSumMetrics(t *testing.T) {
	text := `# HELP process_cpu_seconds_total x
process_cpu_seconds_total 12.5
vitrine_egress_packets_total{kind="audio"} 100
vitrine_egress_packets_total{kind="video"} 1e3 1700000000
vitrine_egress_bytes_total{kind="video"} 999
broken{ 7
`
	got := sumMetrics(strings.NewReader(text), "process_cpu_seconds_total", "vitrine_egress_packets_total")
	if got["process_cpu_seconds_total"] != 12.5 || got["vitrine_egress_packets_total"] != 1100 || len(got) != 2 {
		t.Fatalf("%v", got)
	}
}

// TestEmbeddedLayers: the three simulcast layers are 4 s at 30 fps with the
// same keyframes (frames 0 and 60), their bitrates in the order of their
// rids, and every video payload of theirs tells its layer apart in the
// payload index, so a viewer's layer is known from what it receives.
func TestEmbeddedLayers(t *testing.T) {
	layers, err := EmbeddedLayers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != len(LayerRIDs) {
		t.Fatalf("%d layers for %d rids", len(layers), len(LayerRIDs))
	}
	for l, c := range layers {
		if len(c.Frames) != 120 || c.FPS != 30 {
			t.Errorf("layer %d: %d frames at %d fps, want 120 at 30", l, len(c.Frames), c.FPS)
		}
		for i, f := range c.Frames {
			if f.Key != (i%60 == 0) {
				t.Errorf("layer %d: frame %d keyframe %v", l, i, f.Key)
			}
		}
		if l > 0 && c.bytesPerSecond() >= layers[l-1].bytesPerSecond() {
			t.Errorf("layer %d: %.0f kbit/s, not under layer %d's %.0f", l, c.bytesPerSecond()*8/1000, l-1, layers[l-1].bytesPerSecond()*8/1000)
		}
		if l > 0 && len(c.Audio) != 0 {
			t.Errorf("layer %d has audio", l)
		}
	}
	if len(layers[0].Audio) == 0 {
		t.Error("layer 0 has no audio")
	}
	r := &run{clip: layers[0], layers: layers}
	r.indexClip()
	if r.lowest != 2 {
		t.Errorf("lowest layer %d, want 2", r.lowest)
	}
	for l := range layers {
		for i, f := range r.video[l] {
			for j, cls := range f {
				if got := r.index.layers[cls]; int(got) != l {
					t.Fatalf("layer %d frame %d payload %d indexed as layer %d", l, i, j, got)
				}
			}
		}
	}
	for _, cls := range r.audio {
		if r.index.layers[cls] != noLayer {
			t.Fatalf("an audio payload indexed as layer %d", r.index.layers[cls])
		}
	}
}

// TestParseAnswer: what a lite viewer takes from a WHEP answer: the
// transport-wide sequence number's id when it offered it (and none when the
// answer leaves it out), the video SSRC (the FID group's first: not its
// RTX), RTX, and every IPv4 UDP candidate, best first.
func TestParseAnswer(t *testing.T) {
	answer := strings.Join([]string{"v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
		"a=ice-ufrag:abcd", "a=ice-pwd:0123456789abcdef0123456789",
		"m=video 9 UDP/TLS/RTP/SAVPF 102 103",
		"a=candidate:1 1 udp 2130706431 192.0.2.2 8189 typ host",
		"a=candidate:2 1 udp 2130706000 198.18.0.1 8189 typ host",
		"a=candidate:3 1 udp 2130706500 10.0.0.1 8189 typ host",
		"a=candidate:4 1 tcp 1671430143 192.0.2.2 8189 typ host tcptype passive",
		"a=candidate:5 1 udp 2130706431 ::1 8189 typ host",
		"a=extmap:4 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
		"a=rtpmap:102 H264/90000", "a=rtpmap:103 rtx/90000", "a=fmtp:103 apt=102",
		"a=ssrc-group:FID 1111 2222", "a=ssrc:2222 cname:x", "a=ssrc:1111 cname:x",
		"m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=rtpmap:111 opus/48000/2", "a=ssrc:3333 cname:x", ""}, "\r\n")
	s := &liteSession{twccID: twccOfferID, rtxPT: 103}
	if err := s.parseAnswer(answer, false); err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.1:8189", "192.0.2.2:8189", "198.18.0.1:8189"}
	var got []string
	for _, c := range s.cands {
		got = append(got, c.String())
	}
	if strings.Join(got, " ") != strings.Join(want, " ") || s.remote.String() != want[0] {
		t.Errorf("candidates %v (remote %v), want %v", got, s.remote, want)
	}
	if s.twccID != 4 || s.videoSSRC != 1111 || s.videoPT != 102 || s.rtxPT != 103 || s.audioPT != 111 {
		t.Errorf("twcc id %d, video SSRC %d, payload types %d/%d/%d; want 4, 1111, 102/103/111", s.twccID, s.videoSSRC, s.videoPT, s.rtxPT, s.audioPT)
	}
	s = &liteSession{twccID: twccOfferID}
	if err := s.parseAnswer(strings.Replace(answer, "a=extmap:4", "a=extmap:4 urn:something-else x-", 1), false); err != nil {
		t.Fatal(err)
	}
	if s.twccID != 0 {
		t.Errorf("twcc id %d from an answer without the extension", s.twccID)
	}
	s = &liteSession{}
	if err := s.parseAnswer(answer, false); err != nil || s.twccID != 0 {
		t.Errorf("twcc id %d (%v) without offering it", s.twccID, err)
	}
}
