package loadtest

import (
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
)

// TestKeyframeThrottle: "all" answers every request, "none" none, "1s" the
// first and then the first one a second or more after the last answered
// one, the requests in between dropped.
func TestKeyframeThrottle(t *testing.T) {
	at := []time.Duration{0, 10 * time.Millisecond, 500 * time.Millisecond, 999 * time.Millisecond,
		time.Second, 1100 * time.Millisecond, 1999 * time.Millisecond, 2500 * time.Millisecond, 6 * time.Second}
	for _, c := range []struct {
		mode PLIAnswer
		want []bool
	}{
		{PLIAnswerAll, []bool{true, true, true, true, true, true, true, true, true}},
		{PLIAnswerNone, []bool{false, false, false, false, false, false, false, false, false}},
		{PLIAnswer1s, []bool{true, false, false, false, true, false, false, true, true}},
	} {
		th := &keyframeThrottle{mode: c.mode}
		for i, d := range at {
			if got := th.answer(int64(d)); got != c.want[i] {
				t.Errorf("%s: request at %v answered %v, want %v", c.mode, d, got, c.want[i])
			}
		}
	}
}

// TestKeyframeWatch: the publisher's interceptor counts every PLI and FIR
// the server sends, answers those the throttle lets through, and a pending
// answer covers the requests until the send loop takes it.
func TestKeyframeWatch(t *testing.T) {
	pli, err := rtcp.Marshal([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: 1}})
	if err != nil {
		t.Fatal(err)
	}
	fir, err := rtcp.Marshal([]rtcp.Packet{&rtcp.FullIntraRequest{MediaSSRC: 1, FIR: []rtcp.FIREntry{{SSRC: 1}}}})
	if err != nil {
		t.Fatal(err)
	}
	rr, err := rtcp.Marshal([]rtcp.Packet{&rtcp.ReceiverReport{SSRC: 2}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		mode              PLIAnswer
		answered, signals uint64
	}{
		{PLIAnswerAll, 4, 2}, // requests 1+2 share one keyframe, 3 and 4 another
		{PLIAnswer1s, 2, 2},  // 0 s and 1.2 s
		{PLIAnswerNone, 0, 0},
	} {
		var now int64
		var counts keyframeCounts
		w := &keyframeWatch{layers: []keyframeLayer{{pli: make(chan struct{}, 1), throttle: &keyframeThrottle{mode: c.mode}}},
			counts: &counts, now: func() int64 { return now }}
		var next []byte
		reader := w.BindRTCPReader(interceptor.RTCPReaderFunc(func(b []byte, a interceptor.Attributes) (int, interceptor.Attributes, error) {
			return copy(b, next), a, nil
		}))
		signals := uint64(0)
		frame := func() { // the send loop's check before each frame
			select {
			case <-w.layers[0].pli:
				signals++
			default:
			}
		}
		buf := make([]byte, 1500)
		for _, r := range []struct {
			at     time.Duration
			packet []byte
		}{{0, pli}, {10 * time.Millisecond, fir}, {20 * time.Millisecond, rr}, {-1, nil},
			{1200 * time.Millisecond, pli}, {1300 * time.Millisecond, pli}, {-1, nil}} {
			if r.at < 0 {
				frame()
				continue
			}
			now, next = int64(r.at), r.packet
			if _, _, err := reader.Read(buf, nil); err != nil {
				t.Fatal(err)
			}
		}
		if counts.reached.Load() != 4 || counts.answered.Load() != c.answered || signals != c.signals {
			t.Errorf("%s: %d requests reached, %d answered, %d keyframes signalled; want 4, %d, %d",
				c.mode, counts.reached.Load(), counts.answered.Load(), signals, c.answered, c.signals)
		}
	}
}

// TestKeyframeWatchLayers: with simulcast each keyframe request goes to the
// layer whose SSRC it names (a PLI's media SSRC, a FIR entry's SSRC), each
// layer with its own throttle; a request for an SSRC that is no layer's is
// counted and not answered.
func TestKeyframeWatchLayers(t *testing.T) {
	var now int64
	var counts keyframeCounts
	w := &keyframeWatch{counts: &counts, now: func() int64 { return now }}
	for range 3 {
		w.layers = append(w.layers, keyframeLayer{pli: make(chan struct{}, 1), throttle: &keyframeThrottle{mode: PLIAnswer1s}})
	}
	w.ssrcs.Store(&map[uint32]int{100: 0, 200: 1, 300: 2})
	var next []byte
	reader := w.BindRTCPReader(interceptor.RTCPReaderFunc(func(b []byte, a interceptor.Attributes) (int, interceptor.Attributes, error) {
		return copy(b, next), a, nil
	}))
	buf := make([]byte, 1500)
	send := func(at time.Duration, p rtcp.Packet) {
		t.Helper()
		raw, err := rtcp.Marshal([]rtcp.Packet{p})
		if err != nil {
			t.Fatal(err)
		}
		now, next = int64(at), raw
		if _, _, err := reader.Read(buf, nil); err != nil {
			t.Fatal(err)
		}
	}
	signalled := func() [3]bool {
		var got [3]bool
		for l := range w.layers {
			select {
			case <-w.layers[l].pli:
				got[l] = true
			default:
			}
		}
		return got
	}
	send(0, &rtcp.PictureLossIndication{MediaSSRC: 300})
	send(10*time.Millisecond, &rtcp.FullIntraRequest{FIR: []rtcp.FIREntry{{SSRC: 200}}})
	send(20*time.Millisecond, &rtcp.PictureLossIndication{MediaSSRC: 999})
	if got := signalled(); got != [3]bool{false, true, true} {
		t.Errorf("layers signalled %v, want layers 1 and 2", got)
	}
	// Layer 2 answered 0.5 s ago: its throttle drops this; layer 0 has its own.
	send(500*time.Millisecond, &rtcp.PictureLossIndication{MediaSSRC: 300})
	send(510*time.Millisecond, &rtcp.PictureLossIndication{MediaSSRC: 100})
	if got := signalled(); got != [3]bool{true, false, false} {
		t.Errorf("layers signalled %v, want layer 0 only", got)
	}
	if counts.reached.Load() != 5 || counts.answered.Load() != 3 {
		t.Errorf("%d requests reached, %d answered; want 5 and 3", counts.reached.Load(), counts.answered.Load())
	}
}
