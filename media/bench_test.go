package media

import (
	"fmt"
	"testing"
	"time"

	"github.com/pion/rtp"
)

// BenchmarkFanout measures the forwarding core per packet: rewrite, cache,
// hand-off to the shards and one write per viewer (to a writer that only
// counts, so pion's SRTP and the kernel are left out). ns/op is per ingested
// packet; ns/viewer divides it by the viewers; allocs/op must stay 0.
func BenchmarkFanout(b *testing.B) {
	payload := make([]byte, 1100)
	payload[0] = 0x41
	for _, n := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("viewers=%d", n), func(b *testing.B) {
			tr := testTrack(b, Video)
			src := tr.NewSource(DefaultVideoCodec, nil)
			writers := make([]*recorder, n)
			for i := range writers {
				writers[i] = &recorder{}
				d := viewer(tr, uint32(i), writers[i])
				d.needKeyframe, d.epoch = false, tr.epoch
			}
			h := rtp.Header{PayloadType: 96}
			total := func() (s int64) {
				for _, w := range writers {
					s += w.n.Load()
				}
				return s
			}
			// Ingest in bursts of 32 packets and wait for the shards to
			// write them, so the queues never overflow: every packet reaches
			// every viewer and is counted.
			const burst = 32
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				h.SequenceNumber++
				_ = src.WriteRTP(&h, payload)
				if i%burst == burst-1 || i == b.N-1 {
					for deadline := time.Now().Add(5 * time.Second); total() < int64(i+1)*int64(n); {
						if time.Now().After(deadline) {
							b.Fatalf("packets lost: %d of %d delivered", total(), (i+1)*n)
						}
					}
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/viewer")
		})
	}
}
