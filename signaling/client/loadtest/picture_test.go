package loadtest

import (
	"cmp"
	"slices"
	"testing"
	"time"
)

// H.264 RTP payloads as the clip's payloader cuts them; b makes each one
// distinct.
func stapSPS(b byte) []byte    { return []byte{0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, b} } // STAP-A: SPS, PPS
func ppsOnly(b byte) []byte    { return []byte{0x68, 0xce, b} }
func fuIDRStart(b byte) []byte { return []byte{0x7c, 0x85, b} }
func fuIDRMid(b byte) []byte   { return []byte{0x7c, 0x05, b} }
func fuIDREnd(b byte) []byte   { return []byte{0x7c, 0x45, b} }
func pSlice(b byte) []byte     { return []byte{0x41, 0x9a, b} }

// sent is one packet as a viewer receives it.
type sent struct {
	seq     uint16
	ts      uint32
	marker  bool
	payload []byte
}

// keyframe is a whole keyframe access unit from seq on: STAP-A with SPS and
// PPS, an IDR in FU-A fragments.
func keyframe(seq uint16, ts uint32, b byte) []sent {
	return []sent{
		{seq, ts, false, stapSPS(b)},
		{seq + 1, ts, false, fuIDRStart(b)},
		{seq + 2, ts, false, fuIDRMid(b)},
		{seq + 3, ts, false, fuIDRMid(b + 1)},
		{seq + 4, ts, true, fuIDREnd(b)},
	}
}

func pframe(seq uint16, ts uint32, b byte) []sent { return []sent{{seq, ts, true, pSlice(b)}} }

// pframes is n one-packet P-frames from seq on.
func pframes(seq uint16, n int) []sent {
	var ps []sent
	for i := range n {
		ps = append(ps, pframe(seq+uint16(i), uint32(i)*3000, byte(i))...)
	}
	return ps
}

func concat(parts ...[]sent) []sent { return slices.Concat(parts...) }

func without(ps []sent, seqs ...uint16) []sent {
	return slices.DeleteFunc(slices.Clone(ps), func(p sent) bool { return slices.Contains(seqs, p.seq) })
}

// TestFirstPicture: a viewer holds a decodable frame when every packet of a
// keyframe access unit arrived, from its first through the marker, without
// a gap; a keyframe with a hole shows nothing until a later whole one (or
// the hole's retransmission). Packet i arrives at i ms; want is the arrival
// (in ms) that completes the first decodable keyframe, -1 for none.
func TestFirstPicture(t *testing.T) {
	kf := keyframe(100, 9000, 1)
	for _, c := range []struct {
		name    string
		packets []sent
		want    int
	}{
		{"keyframe first", kf, 4},
		{"joined mid-GOP", concat(pframe(98, 3000, 7), pframe(99, 6000, 8), kf), 6},
		{"gap inside the first keyframe: the next whole one",
			concat(without(kf, 102), pframe(105, 12000, 3), keyframe(106, 15000, 4)), 4 + 1 + 4},
		{"hole filled by a retransmission after the marker",
			concat(without(kf, 102), pframe(105, 12000, 3), []sent{kf[2]}), 5},
		{"reordered: the marker before a middle packet",
			[]sent{kf[0], kf[1], kf[2], kf[4], kf[3]}, 4},
		{"marker packet lost: the next keyframe",
			concat(without(kf, 104), pframe(105, 12000, 3), keyframe(106, 15000, 4)), 4 + 1 + 4},
		{"wrap-around of sequence numbers", keyframe(65533, 9000, 1), 4},
		{"gap across the wrap-around", concat(without(keyframe(65533, 9000, 1), 0), keyframe(2, 12000, 5)), 4 + 4},
		{"leading SPS/PPS lost: the IDR alone is not a picture",
			concat(pframe(99, 6000, 8), without(kf, 100), pframe(105, 12000, 3), keyframe(106, 15000, 4)), 1 + 4 + 1 + 4},
		{"IDR after a PPS of its own, previous frame's end seen",
			concat(pframe(99, 6000, 8), []sent{{100, 9000, false, ppsOnly(1)}, {101, 9000, false, fuIDRStart(1)}, {102, 9000, true, fuIDREnd(1)}}), 3},
		{"only P-frames", concat(pframe(1, 0, 1), pframe(2, 3000, 2)), -1},
		{"keyframe never ends", kf[:4], -1},
		{"duplicate does not fill a hole", concat(without(kf, 102), []sent{kf[1]}), -1},
		// Every P-frame packet has the marker bit; a window's lap later the
		// keyframe's middle packets sit in the same slots.
		{"marker bits of the window's lap before do not count", concat(pframes(0, seqWindow+50), without(keyframe(seqWindow+50, 9000, 1), seqWindow+53)), -1},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := &viewer{run: &run{}}
			for i, p := range c.packets {
				v.packet(kindVideo, p.payload, rtpHead{seq: p.seq, ts: p.ts, marker: p.marker}, int64(i)*int64(time.Millisecond), true)
			}
			pic := v.kinds[kindVideo].pic
			got := -1
			if pic.done {
				got = int(pic.at / int64(time.Millisecond))
			}
			if got != c.want {
				t.Errorf("decodable at packet %d, want %d", got, c.want)
			}
		})
	}
}

// testClip is 2 s at 30 fps with a keyframe at frames 0 and 30 (a 1 s GOP,
// shorter than the loop, as in the embedded clip), every payload distinct.
func testClip() *Clip {
	c := &Clip{FPS: 30}
	for f := range 60 {
		b := byte(f)
		fr := Frame{Payloads: [][]byte{pSlice(b)}}
		if f%30 == 0 {
			fr = Frame{Key: true, Payloads: [][]byte{stapSPS(b), fuIDRStart(b), fuIDRMid(b), fuIDREnd(b)}}
		}
		c.Frames = append(c.Frames, fr)
	}
	return c
}

// simulate plays the publisher for 5 s of testClip and one viewer that
// joins at 1.5 s: burst frames (publisher frame numbers) arrive first, from
// burstAt on, 0.1 ms apart, with timestamps squeezed together as a server
// rewrites them; then every frame from live on arrives delay after it was
// sent. The server numbers what it sends from 1000 on, in arrival order.
func simulate(t *testing.T, burst []int, live int, burstAt, delay time.Duration) (*Report, *viewer) {
	t.Helper()
	r := &run{clip: testClip()}
	r.indexClip()
	v := &viewer{run: r, joinAt: int64(1500 * time.Millisecond)}
	v.state.Store(joinOK)
	r.viewers = []*viewer{v}
	const frame = int64(time.Second / 30)
	type event struct {
		at      int64
		deliver bool // else the publisher sends frame f
		f       int
		ts      uint32
	}
	var events []event
	for f := range 150 {
		events = append(events, event{at: int64(f) * frame, f: f})
		if f >= live {
			events = append(events, event{at: int64(f)*frame + int64(delay), deliver: true, f: f, ts: uint32(f) * 3000})
		}
	}
	for i, f := range burst {
		events = append(events, event{at: int64(burstAt) + int64(i)*int64(100*time.Microsecond), deliver: true, f: f, ts: uint32(i) * 10})
	}
	// Sends before arrivals at the same instant; otherwise by time.
	slices.SortStableFunc(events, func(a, b event) int {
		if c := cmp.Compare(a.at, b.at); c != 0 {
			return c
		}
		return cmp.Compare(btoi(a.deliver), btoi(b.deliver))
	})
	seq := uint16(1000)
	for _, e := range events {
		fr := r.clip.Frames[e.f%len(r.clip.Frames)]
		for j, p := range fr.Payloads {
			if !e.deliver {
				r.log.record(kindVideo, r.video[0][e.f%len(r.clip.Frames)][j], e.at)
				continue
			}
			v.packet(kindVideo, p, rtpHead{seq: seq, ts: e.ts, marker: j == len(fr.Payloads)-1}, e.at, true)
			seq++
		}
	}
	return r.report(), v
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestReplayedBurst: a joining viewer whose first packets are the server's
// cached GOP (frames 30..46, sent up to 0.5 s before the join) then live
// ones: no payload is foreign, nothing counts as lost, the first picture is
// the burst's keyframe, the forwarding latency counts only live packets (1
// ms each, not the burst's age), and 2 s later the viewer is live.
func TestReplayedBurst(t *testing.T) {
	var burst []int
	for f := 30; f <= 46; f++ {
		burst = append(burst, f)
	}
	burstAt := 1520 * time.Millisecond
	rep, _ := simulate(t, burst, 47, burstAt, time.Millisecond)
	vr := rep.Viewers[0]
	if vr.Foreign != 0 || vr.Duplicates != 0 {
		t.Errorf("%d foreign payloads, %d duplicates in a replayed burst", vr.Foreign, vr.Duplicates)
	}
	if vr.Received.Video != vr.Expected.Video || vr.Loss != 0 {
		t.Errorf("received %d of %d expected, loss %.3f: the burst and what followed is all the publisher sent since frame 30",
			vr.Received.Video, vr.Expected.Video, vr.Loss)
	}
	// The keyframe (frame 30) is the burst's first frame.
	if want := ms(burstAt) - 1500; vr.DecodableMS != want {
		t.Errorf("decodable %.2f ms after join, want %.2f (the burst's keyframe)", vr.DecodableMS, want)
	}
	live := 0
	for f := 47; f < 150; f++ {
		live += len(testClip().Frames[f%60].Payloads)
	}
	if rep.Latency.Max > 1.1 || rep.Latency.N != live {
		t.Errorf("latency over %d packets, max %.1f ms: want the %d live packets (frames 47..149) at 1 ms", rep.Latency.N, rep.Latency.Max, live)
	}
	if vr.BehindMS < 0 || vr.BehindMS > 34 {
		t.Errorf("behind live %.1f ms 2 s after join, want under a frame", vr.BehindMS)
	}
}

// TestBehindLive: a viewer whose packets all come 600 ms late is 600 ms (less
// at most a frame) behind live 2 s after its first packet; one that gets
// nothing for 2 s is not sampled.
func TestBehindLive(t *testing.T) {
	rep, _ := simulate(t, nil, 47, 0, 600*time.Millisecond)
	vr := rep.Viewers[0]
	if vr.BehindMS <= 600-34 || vr.BehindMS > 600 {
		t.Errorf("behind live %.1f ms, want 600 ms less at most a frame", vr.BehindMS)
	}
	if rep.BehindLive.N != 1 {
		t.Errorf("%d viewers sampled", rep.BehindLive.N)
	}
	// Only live packets published after the first arrival: 600 ms each
	// (the histogram's buckets are 6.25% wide).
	if rep.Latency.P50 < 560 || rep.Latency.Max > 601 {
		t.Errorf("latency p50 %.1f max %.1f ms, want ~600", rep.Latency.P50, rep.Latency.Max)
	}
	rep, _ = simulate(t, nil, 140, 0, time.Millisecond) // 10 frames before the end
	if vr := rep.Viewers[0]; vr.BehindMS != -1 || rep.BehindLive.N != 0 {
		t.Errorf("sampled %.1f ms behind before 2 s of packets", vr.BehindMS)
	}
}

// TestPacketAllocs: a viewer's per-packet bookkeeping, first-picture search
// and latency rule included, allocates nothing.
func TestPacketAllocs(t *testing.T) {
	r := &run{clip: testClip()}
	r.indexClip()
	v := &viewer{run: r}
	var seq uint16
	var f int
	allocs := testing.AllocsPerRun(2000, func() {
		fr := r.clip.Frames[f%60]
		for j, p := range fr.Payloads {
			r.log.record(kindVideo, r.video[0][f%60][j], int64(f)*int64(time.Millisecond))
			v.packet(kindVideo, p, rtpHead{seq: seq, ts: uint32(f) * 3000, marker: j == len(fr.Payloads)-1}, int64(f)*int64(time.Millisecond)+1, true)
			seq++
		}
		f++
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per frame", allocs)
	}
	if !v.kinds[kindVideo].pic.done || !v.kinds[kindVideo].behindSampled {
		t.Error("the run did not reach a decodable frame and a behind-live sample")
	}
}

// TestPaddingPackets: a packet of padding alone (what the server sends on
// a viewer's audio at the end of each probe step) takes a sequence number
// and carries nothing: it is neither a gap, nor a received packet, nor a
// foreign payload.
func TestPaddingPackets(t *testing.T) {
	for _, publishing := range []bool{false, true} {
		r := &run{clip: testClip()}
		if publishing {
			r.indexClip()
		}
		v := &viewer{run: r}
		v.state.Store(joinOK)
		r.viewers = []*viewer{v}
		seq := uint16(65534)
		for f := range 6 {
			fr := r.clip.Frames[f]
			for j, p := range fr.Payloads {
				if publishing {
					r.log.record(kindVideo, r.video[0][f][j], int64(f))
				}
				v.packet(kindVideo, p, rtpHead{seq: seq, marker: j == len(fr.Payloads)-1}, int64(f)+1, true)
				seq++
			}
			v.packet(kindVideo, []byte{}, rtpHead{seq: seq}, int64(f)+1, true) // padding
			v.packet(kindVideo, []byte{}, rtpHead{seq: seq}, int64(f)+1, true) // the same again
			seq++
		}
		vr := r.report().Viewers[0]
		if vr.Received.Video != 9 || vr.Expected.Video != 9 || vr.Foreign != 0 || vr.Duplicates != 0 {
			t.Errorf("publishing %v: received %d of %d expected, %d foreign, %d duplicates; want 9 of 9, none",
				publishing, vr.Received.Video, vr.Expected.Video, vr.Foreign, vr.Duplicates)
		}
	}
}
