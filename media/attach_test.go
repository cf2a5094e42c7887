package media

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"
)

type countingWriter struct {
	n     atomic.Int64
	first atomic.Bool
	key   atomic.Bool
}

func (w *countingWriter) WriteRTP(h *rtp.Header, payload []byte) (int, error) {
	if !w.first.Swap(true) {
		w.key.Store(h264KeyframeStart(payload))
	}
	w.n.Add(1)
	return len(payload), nil
}

// TestAttach: a non-WebRTC subscriber starts at a keyframe, gets every
// packet after it, costs no allocation per packet, and stops when detached.
func TestAttach(t *testing.T) {
	tr := newTrack(Video, "s", DefaultVideoCodec, NewMetrics(prometheus.NewRegistry()), time.Second)
	defer tr.close()
	src := tr.NewSource(DefaultVideoCodec, nil)
	w := &countingWriter{}
	detach := tr.Attach(w, 1, 96, nil)
	inter, key := []byte{0x41, 1, 2, 3}, []byte{0x65, 1, 2, 3}
	h := rtp.Header{}
	write := func(p []byte) {
		h.SequenceNumber++
		if err := src.WriteRTP(&h, p); err != nil {
			t.Fatal(err)
		}
	}
	write(inter)
	write(key)
	for range 10 {
		write(inter)
	}
	deadline := time.Now().Add(2 * time.Second)
	for w.n.Load() < 11 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if w.n.Load() != 11 || !w.key.Load() {
		t.Fatalf("got %d packets (first a keyframe: %v), want 11 from the keyframe on", w.n.Load(), w.key.Load())
	}
	// Fill the track's NACK cache (2,048 packets): until then each packet is
	// a new one from the pool; after, packets come back to it.
	for range 2100 {
		write(inter)
	}
	allocs := testing.AllocsPerRun(200, func() { write(inter) })
	if allocs > 0.1 {
		t.Errorf("%.2f allocations per packet", allocs)
	}
	detach()
	time.Sleep(50 * time.Millisecond)
	n := w.n.Load()
	write(key)
	time.Sleep(50 * time.Millisecond)
	if w.n.Load() != n {
		t.Error("a detached subscriber still gets packets")
	}
}
