package media

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/pion/rtp"

	dto "github.com/prometheus/client_model/go"
)

// replayWait is longer than the replay of these tests' short groups takes
// at its pace (11 frames of 33 ms played 4x faster: 92 ms).
const replayWait = 120 * time.Millisecond

// replayViewer is a viewer that joins with replay mode and whose connection
// is up.
func replayViewer(tr *Track, mode JoinReplay, w *recorder) *DownTrack {
	d := viewer(tr, 77, w)
	d.replay = mode
	d.readyAt.Store(time.Now().UnixNano())
	return d
}

// A viewer joining mid-GOP is sent the group from its keyframe, squeezed
// just before the live packet, then the live packets unchanged, without a
// keyframe request.
func TestJoinReplaySqueezed(t *testing.T) {
	tr := testTrack(t, Video)
	tr.enableReplay(ReplaySqueezed, DefaultGOPCacheBytes, DefaultGOPCacheAge)
	asked := 0
	src := tr.NewSource(DefaultVideoCodec, func() { asked++ })
	send := frames(t, src)
	send(pSlice) // before any keyframe: not cached
	send(idr)
	for range 10 {
		send(pSlice)
	}
	w := &recorder{keep: true}
	replayViewer(tr, ReplaySqueezed, w)
	send(pSlice) // the live packet the joiner's replay comes before
	// The keyframe goes at once, the rest at the replay's pace, as live
	// packets come.
	time.Sleep(replayWait)
	send(pSlice)
	waitFor(t, "replay and two live packets", func() bool { return w.n.Load() == 13 })
	hdrs, payloads := w.got()
	if !bytes.Equal(payloads[0], idr) {
		t.Fatalf("replay starts with %x, want the keyframe", payloads[0])
	}
	live := hdrs[11]
	for i := range 11 {
		if hdrs[i].SequenceNumber != live.SequenceNumber-uint16(11-i) {
			t.Errorf("packet %d: sequence %d, want %d", i, hdrs[i].SequenceNumber, live.SequenceNumber-uint16(11-i))
		}
		if d := live.Timestamp - hdrs[i].Timestamp; d == 0 || d > 3000*11>>squeezeShift+1 {
			t.Errorf("packet %d: %d ticks before live, want a squeezed few", i, d)
		}
		if i > 0 && hdrs[i].Timestamp <= hdrs[i-1].Timestamp {
			t.Errorf("packet %d: timestamp %d not after %d: frames would merge", i, hdrs[i].Timestamp, hdrs[i-1].Timestamp)
		}
	}
	if hdrs[12].Timestamp != live.Timestamp+3000 {
		t.Errorf("live timestamps changed: %d then %d", live.Timestamp, hdrs[12].Timestamp)
	}
	if asked != 0 {
		t.Errorf("%d keyframe requests; a young GOP needs none", asked)
	}
	var m dto.Metric
	if err := tr.metrics.ReplayedPackets.Write(&m); err != nil || m.GetCounter().GetValue() != 11 {
		n := m.GetCounter().GetValue()
		t.Errorf("replayed packets metric %v, want 11", n)
	}
}

// Original mode keeps the cached timestamps; off sends nothing cached.
func TestJoinReplayModes(t *testing.T) {
	for _, mode := range []JoinReplay{ReplayOriginal, ReplayOff} {
		tr := testTrack(t, Video)
		tr.enableReplay(mode, DefaultGOPCacheBytes, DefaultGOPCacheAge)
		src := tr.NewSource(DefaultVideoCodec, nil)
		send := frames(t, src)
		send(idr)
		send(pSlice)
		w := &recorder{keep: true}
		replayViewer(tr, mode, w)
		send(pSlice)
		time.Sleep(replayWait)
		send(idr)
		want := 4 // the cached keyframe and predicted frame, then the live ones
		if mode == ReplayOff {
			want = 1 // only the next keyframe
		}
		waitFor(t, string(mode), func() bool { return w.n.Load() == int64(want) })
		hdrs, _ := w.got()
		if mode == ReplayOriginal && hdrs[1].Timestamp-hdrs[0].Timestamp != 3000 {
			t.Errorf("original: timestamps %d, %d", hdrs[0].Timestamp, hdrs[1].Timestamp)
		}
	}
}

// A group larger than the byte bound, or older than the age bound, is not
// replayed: the viewer waits for a keyframe, and the creator is asked.
func TestJoinReplayBounds(t *testing.T) {
	for _, c := range []struct {
		name  string
		bytes int
		age   time.Duration
		wait  time.Duration
	}{{"too big", len(idr) + 2*len(pSlice), time.Minute, 0}, {"too old", 1 << 20, 50 * time.Millisecond, 100 * time.Millisecond}} {
		tr := testTrack(t, Video)
		tr.enableReplay(ReplaySqueezed, c.bytes, c.age)
		src := tr.NewSource(DefaultVideoCodec, nil)
		send := frames(t, src)
		send(idr)
		for range 5 {
			send(pSlice)
		}
		time.Sleep(c.wait)
		w := &recorder{keep: true}
		replayViewer(tr, ReplaySqueezed, w)
		send(pSlice)
		send(idr)
		waitFor(t, c.name+": the next keyframe", func() bool { return w.n.Load() >= 1 })
		time.Sleep(20 * time.Millisecond)
		if _, p := w.got(); len(p) != 1 || !bytes.Equal(p[0], idr) {
			t.Errorf("%s: got %d packets, want only the next keyframe", c.name, len(p))
		}
	}
}

// A viewer whose connection is not up yet gets nothing replayed (pion would
// drop it); once it is, the next packet brings the replay.
func TestJoinReplayWaitsForConnection(t *testing.T) {
	tr := testTrack(t, Video)
	tr.enableReplay(ReplaySqueezed, DefaultGOPCacheBytes, DefaultGOPCacheAge)
	src := tr.NewSource(DefaultVideoCodec, nil)
	send := frames(t, src)
	w := &recorder{keep: true}
	w.notYet.Store(true)
	d := viewer(tr, 77, w)
	d.replay = ReplaySqueezed
	send(idr) // the creator's first keyframe, before the viewer can receive
	send(pSlice)
	waitFor(t, "two tries", func() bool { return w.tries.Load() >= 1 })
	w.notYet.Store(false)
	d.ready()
	send(pSlice)
	time.Sleep(replayWait)
	send(pSlice)
	waitFor(t, "replay", func() bool { return w.n.Load() == 4 })
	if _, p := w.got(); !bytes.Equal(p[0], idr) {
		t.Errorf("first packet %x, want the keyframe", p[0])
	}
}

// Retransmissions of replayed packets carry the squeezed timestamps the
// viewer got first.
func TestReplayedRetransmitTimestamps(t *testing.T) {
	r := &replayed{first: 65530, last: 4, end: 100}
	end := uint32(100)
	before := end - 3000 // across the timestamp's wrap-around too
	if got := r.timestamp(65533, before); got != squeezed(100, before) || got == before {
		t.Errorf("inside the span across wrap-around: %d", got)
	}
	if got := r.timestamp(5, 50); got != 50 {
		t.Errorf("after the span: %d, want unchanged", got)
	}
	if got := r.timestamp(2, 5000); got != 5000 {
		t.Errorf("a later packet reusing a replayed sequence number: %d, want unchanged", got)
	}
	var none *replayed
	if none.timestamp(1, 7) != 7 {
		t.Error("no replay: timestamps unchanged")
	}
}

// A joiner gets the cached keyframe at once and the rest of a large group
// of pictures paced, not in one burst that would overflow its socket; then
// it is caught up and gets live packets as they come, every sequence
// number once and in order.
func TestJoinReplayPaced(t *testing.T) {
	tr := testTrack(t, Video)
	tr.enableReplay(ReplayOriginal, DefaultGOPCacheBytes, DefaultGOPCacheAge)
	src := tr.NewSource(DefaultVideoCodec, nil)
	h := rtp.Header{SequenceNumber: 100, Timestamp: 9000, PayloadType: 96, SSRC: 5, Marker: true}
	frame := func(key bool) {
		p := bytes.Repeat([]byte{0x41, 0x9a}, 500) // 1000 bytes, one packet a frame
		if key {
			p = append(slices.Clone(idr), p[:991]...)
		}
		if err := src.WriteRTP(&h, p); err != nil {
			t.Fatal(err)
		}
		h.SequenceNumber++
		h.Timestamp += 3000
	}
	frame(true)
	for range 59 { // 2 s at 30 fps
		frame(false)
	}
	w := &recorder{keep: true}
	replayViewer(tr, ReplayOriginal, w)
	frame(false)
	waitFor(t, "the keyframe", func() bool { return w.n.Load() >= 1 })
	time.Sleep(5 * time.Millisecond)
	if n := w.n.Load(); n != 1 {
		t.Fatalf("%d packets right after the join, want the keyframe alone", n)
	}
	// Live frames at their real pace (one per 33 ms): the replay plays 4x
	// faster, so a 2 s group is done in about 0.7 s, not in one burst.
	time.Sleep(33 * time.Millisecond)
	frame(false)
	time.Sleep(5 * time.Millisecond)
	if n := w.n.Load(); n >= 30 {
		t.Fatalf("%d of 62 packets 40 ms after the join: the replay went in a burst", n)
	}
	live := 2
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); live++ {
		time.Sleep(33 * time.Millisecond)
		if w.n.Load() == int64(60+live) {
			break
		}
		frame(false)
	}
	waitFor(t, "caught up", func() bool { return w.n.Load() == int64(60+live) })
	hdrs, payloads := w.got()
	if payloads[0][0] != idr[0] {
		t.Fatalf("first packet %x, want the keyframe", payloads[0][:2])
	}
	for i := 1; i < len(hdrs); i++ {
		if hdrs[i].SequenceNumber != hdrs[i-1].SequenceNumber+1 {
			t.Fatalf("packet %d: sequence %d after %d", i, hdrs[i].SequenceNumber, hdrs[i-1].SequenceNumber)
		}
	}
	if live > 40 {
		t.Fatalf("caught up after %d live frames, want about 20 (2 s at 4x)", live)
	}
	t.Logf("caught up after %d live frames (%d ms)", live, live*33)
}
