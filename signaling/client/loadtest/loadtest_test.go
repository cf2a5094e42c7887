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
