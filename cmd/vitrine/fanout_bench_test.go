package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/signaling/client"
)

// BenchmarkCueFanout: one cue from the API to 1,000 viewers' data channels
// (real pion peers on loopback, in this process). One op is one custom cue;
// the figure is the time until the last viewer has it, and the p50 viewer.
func BenchmarkCueFanout(b *testing.B) {
	const viewers = 1000
	a, base := testApp(b, nil)
	if _, err := a.store.CreateProduct(context.Background(), overlay.Product{SKU: "b-1", Title: "B", PriceMinor: 100, Currency: "EUR", Stock: 1, Active: true}); err != nil {
		b.Fatal(err)
	}
	api, err := client.NewAPI(true)
	if err != nil {
		b.Fatal(err)
	}
	var (
		mu      sync.Mutex
		arrived = map[string][]time.Time{} // cue id -> arrival per viewer
		opened  atomic.Int32
	)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range viewers {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			sess, err := client.Watch(ctx, api, base+"/whep/demo", true, func(pc *webrtc.PeerConnection, dc *webrtc.DataChannel) {
				dc.OnOpen(func() { opened.Add(1) })
				dc.OnMessage(func(m webrtc.DataChannelMessage) {
					now := time.Now()
					var msg struct{ Type, ID string }
					if json.Unmarshal(m.Data, &msg) == nil && msg.Type == "custom" {
						mu.Lock()
						arrived[msg.ID] = append(arrived[msg.ID], now)
						mu.Unlock()
					}
				})
			})
			if err != nil {
				b.Errorf("viewer %d: %v", i, err)
				return
			}
			b.Cleanup(func() { sess.PC.Close() })
		})
	}
	wg.Wait()
	deadline := time.Now().Add(60 * time.Second)
	for opened.Load() < viewers && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if opened.Load() < viewers {
		b.Fatalf("only %d of %d data channels opened", opened.Load(), viewers)
	}
	b.ResetTimer()
	var lasts, p50s []time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		code, m, _ := postJSON(b, base+"/api/v1/streams/demo/cues", a.demo.Key, map[string]any{"type": "custom", "data": map[string]any{"n": i}})
		if code != 201 {
			b.Fatalf("cue: %d %v", code, m)
		}
		id := m["id"].(string)
		for {
			mu.Lock()
			n := len(arrived[id])
			mu.Unlock()
			if n == viewers {
				break
			}
			if time.Since(start) > 30*time.Second {
				b.Fatalf("cue %s reached %d of %d viewers", id, n, viewers)
			}
			time.Sleep(time.Millisecond)
		}
		mu.Lock()
		times := append([]time.Time(nil), arrived[id]...)
		mu.Unlock()
		sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
		p50s = append(p50s, times[len(times)/2].Sub(start))
		lasts = append(lasts, times[len(times)-1].Sub(start))
	}
	b.StopTimer()
	sort.Slice(lasts, func(i, j int) bool { return lasts[i] < lasts[j] })
	sort.Slice(p50s, func(i, j int) bool { return p50s[i] < p50s[j] })
	b.ReportMetric(float64(lasts[len(lasts)/2].Microseconds())/1000, "ms-to-last-viewer")
	b.ReportMetric(float64(p50s[len(p50s)/2].Microseconds())/1000, "ms-to-median-viewer")
	fmt.Printf("cue fan-out to %d data channels over %d cues: last viewer p50 %s, max %s\n", viewers, len(lasts), lasts[len(lasts)/2], lasts[len(lasts)-1])
}
