package media

import (
	"bytes"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"
)

// recorder stands in for pion's per-viewer SRTP writer: it keeps copies of
// what a down-track writes.
type recorder struct {
	mu      sync.Mutex
	headers []rtp.Header
	payload [][]byte
	n       atomic.Int64
	keep    bool
	notYet  atomic.Bool // drop silently, as pion does before SRTP is ready
	tries   atomic.Int64
}

func (r *recorder) WriteRTP(h *rtp.Header, p []byte) (int, error) {
	r.tries.Add(1)
	if r.notYet.Load() {
		return 0, nil
	}
	r.n.Add(1)
	if r.keep {
		r.mu.Lock()
		r.headers = append(r.headers, *h)
		r.payload = append(r.payload, append([]byte(nil), p...))
		r.mu.Unlock()
	}
	return len(p), nil
}

func (r *recorder) Write(b []byte) (int, error) { return len(b), nil }

func (r *recorder) got() ([]rtp.Header, [][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]rtp.Header(nil), r.headers...), append([][]byte(nil), r.payload...)
}

func testTrack(t testing.TB, kind Kind) *Track {
	codec := DefaultVideoCodec
	if kind == Audio {
		codec = DefaultAudioCodec
	}
	tr := newTrack(kind, "test", codec, NewMetrics(prometheus.NewRegistry()), 200*time.Millisecond)
	t.Cleanup(tr.close)
	return tr
}

// viewer adds a down-track bound as pion would bind it.
func viewer(tr *Track, ssrc uint32, w *recorder) *DownTrack {
	d := newDownTrack(tr, "v", "s", func([]rtcp.Packet) error { return nil }, nil)
	d.ssrc, d.pt, d.writer = ssrc, 102, w
	d.codec = *tr.codec
	d.bound.Store(true)
	tr.addDownTrack(d)
	return d
}

var (
	idr    = []byte{0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce} // STAP-A: SPS, PPS
	pSlice = []byte{0x41, 0x9a, 0x02}
)

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for " + what)
		}
		time.Sleep(time.Millisecond)
	}
}

// frames returns a function that ingests one-packet frames at 30 fps.
func frames(t *testing.T, src *Source) func(payload []byte) {
	h := rtp.Header{SequenceNumber: 100, Timestamp: 9000, PayloadType: 96, SSRC: 5}
	return func(p []byte) {
		if err := src.WriteRTP(&h, p); err != nil {
			t.Fatal(err)
		}
		h.SequenceNumber++
		h.Timestamp += 3000
	}
}

func TestViewerStartsOnKeyframeAndGetsExactPayloads(t *testing.T) {
	tr := testTrack(t, Video)
	src := tr.NewSource(DefaultVideoCodec, nil)
	w := &recorder{keep: true}
	viewer(tr, 1234, w)
	send := frames(t, src)
	send(pSlice) // before any keyframe: not forwarded
	send(idr)
	send(pSlice)
	waitFor(t, "two packets", func() bool { return w.n.Load() == 2 })
	hdrs, payloads := w.got()
	if !bytes.Equal(payloads[0], idr) || !bytes.Equal(payloads[1], pSlice) {
		t.Fatalf("payloads %x", payloads)
	}
	if hdrs[0].SSRC != 1234 || hdrs[0].PayloadType != 102 {
		t.Errorf("viewer header not rewritten: %+v", hdrs[0])
	}
	if hdrs[1].SequenceNumber != hdrs[0].SequenceNumber+1 || hdrs[1].Timestamp != hdrs[0].Timestamp+3000 {
		t.Errorf("numbering not preserved: %+v then %+v", hdrs[0], hdrs[1])
	}
}

// A keyframe written before the viewer's DTLS handshake is done never
// reaches it (pion drops it and says 0 bytes): the viewer must still wait
// for a keyframe, not start on the P-frames after it.
func TestKeyframeBeforeTransportReadyIsNotCounted(t *testing.T) {
	tr := testTrack(t, Video)
	src := tr.NewSource(DefaultVideoCodec, nil)
	w := &recorder{keep: true}
	w.notYet.Store(true)
	viewer(tr, 1234, w)
	send := frames(t, src)
	send(idr) // dropped by the transport
	waitFor(t, "the keyframe written", func() bool { return w.tries.Load() == 1 })
	send(pSlice)
	w.notYet.Store(false)
	send(pSlice) // transport ready, but no keyframe yet
	send(idr)
	send(pSlice)
	waitFor(t, "two packets", func() bool { return w.n.Load() == 2 })
	if _, payloads := w.got(); !bytes.Equal(payloads[0], idr) {
		t.Fatalf("the viewer started on %x, not on a keyframe", payloads[0])
	}
}

func TestNewSourceContinuesNumbering(t *testing.T) {
	tr := testTrack(t, Video)
	w := &recorder{keep: true}
	viewer(tr, 1, w)
	first := tr.NewSource(DefaultVideoCodec, nil)
	h := rtp.Header{SequenceNumber: 65534, Timestamp: 4_000_000_000}
	for _, p := range [][]byte{idr, pSlice, pSlice} {
		_ = first.WriteRTP(&h, p)
		h.SequenceNumber++
		h.Timestamp += 3000
	}
	waitFor(t, "3 packets", func() bool { return w.n.Load() == 3 })
	time.Sleep(100 * time.Millisecond)

	// The creator reconnects: a new SSRC, random numbering.
	second := tr.NewSource(DefaultVideoCodec, nil)
	if err := first.WriteRTP(&h, pSlice); err == nil {
		t.Error("the replaced source can still write")
	}
	h2 := rtp.Header{SequenceNumber: 7, Timestamp: 123}
	_ = second.WriteRTP(&h2, pSlice) // not a keyframe: the viewer waits for one
	h2.SequenceNumber++
	h2.Timestamp += 3000
	_ = second.WriteRTP(&h2, idr)
	waitFor(t, "4 packets", func() bool { return w.n.Load() == 4 })
	hdrs, payloads := w.got()
	last, next := hdrs[2], hdrs[3]
	if !bytes.Equal(payloads[3], idr) {
		t.Errorf("after the new source the viewer got %x first, want the keyframe", payloads[3])
	}
	if next.SequenceNumber != last.SequenceNumber+2 {
		t.Errorf("sequence after reconnect: %d then %d, want +2 (one skipped while waiting)", last.SequenceNumber, next.SequenceNumber)
	}
	gap := next.Timestamp - last.Timestamp
	if gap < 9000 || gap > 90000 { // ~100 ms passed, plus one frame
		t.Errorf("timestamp advanced %d ticks across a ~100 ms gap", gap)
	}
}

func TestNACKAnsweredFromSharedCache(t *testing.T) {
	tr := testTrack(t, Video)
	src := tr.NewSource(DefaultVideoCodec, nil)
	plain, withRTX := &recorder{keep: true}, &recorder{keep: true}
	d1 := viewer(tr, 1, plain)
	d2 := viewer(tr, 2, withRTX)
	d2.rtxSSR, d2.rtxPT = 22, 103
	h := rtp.Header{SequenceNumber: 10}
	_ = src.WriteRTP(&h, idr)
	h.SequenceNumber++
	_ = src.WriteRTP(&h, pSlice)
	waitFor(t, "delivery", func() bool { return plain.n.Load() == 2 && withRTX.n.Load() == 2 })
	hdrs, _ := plain.got()
	seq := hdrs[1].SequenceNumber

	d1.retransmit(seq)
	d2.retransmit(seq)
	d1.retransmit(seq + 500) // never sent: a miss, not a crash

	ph, pp := plain.got()
	if len(ph) != 3 || ph[2].SequenceNumber != seq || ph[2].SSRC != 1 || !bytes.Equal(pp[2], pSlice) {
		t.Errorf("plain retransmit: %+v %x", ph, pp)
	}
	rh, rp := withRTX.got()
	want := append([]byte{byte(seq >> 8), byte(seq)}, pSlice...)
	if len(rh) != 3 || rh[2].SSRC != 22 || rh[2].PayloadType != 103 || !bytes.Equal(rp[2], want) {
		t.Errorf("RTX retransmit: %+v %x", rh[2], rp[2])
	}
}

func TestKeyframeRequestsAreThrottled(t *testing.T) {
	tr := testTrack(t, Video)
	var asked atomic.Int32
	tr.NewSource(DefaultVideoCodec, func() { asked.Add(1) })
	for range 50 {
		tr.RequestKeyframe()
	}
	if n := asked.Load(); n != 1 {
		t.Fatalf("%d requests at once, want 1", n)
	}
	waitFor(t, "the folded request", func() bool { return asked.Load() == 2 })
	time.Sleep(300 * time.Millisecond)
	if n := asked.Load(); n != 2 {
		t.Errorf("%d requests for a burst of 50, want 2", n)
	}
}

func TestSlowShardDoesNotBlockIngest(t *testing.T) {
	tr := testTrack(t, Video)
	src := tr.NewSource(DefaultVideoCodec, nil)
	block := make(chan struct{})
	slow := &blockingWriter{release: block}
	d := newDownTrack(tr, "v", "s", nil, nil)
	d.writer = slow
	d.bound.Store(true)
	tr.addDownTrack(d)
	h := rtp.Header{}
	start := time.Now()
	for i := range shardQueue * 4 {
		h.SequenceNumber = uint16(i)
		p := pSlice
		if i == 0 {
			p = idr
		}
		if err := src.WriteRTP(&h, p); err != nil {
			t.Fatal(err)
		}
	}
	if time.Since(start) > time.Second {
		t.Error("ingest waited for a blocked viewer")
	}
	close(block)
}

type blockingWriter struct{ release chan struct{} }

func (b *blockingWriter) WriteRTP(*rtp.Header, []byte) (int, error) { <-b.release; return 0, nil }
func (b *blockingWriter) Write([]byte) (int, error)                 { return 0, nil }

func TestPacketsReturnToPool(t *testing.T) {
	tr := testTrack(t, Audio)
	src := tr.NewSource(DefaultAudioCodec, nil)
	w := &recorder{}
	viewer(tr, 1, w)
	h := rtp.Header{}
	for i := range 600 {
		h.SequenceNumber = uint16(i)
		_ = src.WriteRTP(&h, []byte{1, 2, 3})
		waitFor(t, "delivery", func() bool { return w.n.Load() == int64(i+1) })
	}
	// Delivered and evicted packets went back to the pool; the cache's own
	// hold is the only reference left on what it keeps.
	waitFor(t, "shards to let go", func() bool {
		tr.cache.mu.Lock()
		defer tr.cache.mu.Unlock()
		for _, p := range tr.cache.slots {
			if p == nil || p.refs.Load() != 1 {
				return false
			}
		}
		return true
	})
}

func TestSeenWindow(t *testing.T) {
	var w seenWindow
	steps := []struct {
		seq uint16
		new bool
	}{
		{65530, true}, {65531, true}, {65531, false}, {65533, true}, // a gap at 65532
		{65532, true}, {65532, false}, {2, true}, {65535, true}, {0, true}, {65534, true}, {65534, false},
		{3000, true}, {2, false}, // far behind now: too old
		{2999, true}, {2999, false}, {3000, false},
	}
	for i, s := range steps {
		if got := w.add(s.seq); got != s.new {
			t.Errorf("step %d: add(%d) = %v, want %v", i, s.seq, got, s.new)
		}
	}
}
