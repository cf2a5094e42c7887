package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/signaling/client"
)

// noLimits turns the per-address limits off, for a test whose many
// viewers all come from this machine's one address on a test link.
func noLimits(c *Config) {
	c.Limits.OffersPerMinute, c.Limits.Sessions, c.Limits.RequestsPerSecond = 0, 0, 0
	c.Limits.EventStreams, c.Limits.BuysPerSecond, c.Limits.NewBuyersPerIP = 0, 0, 0
}

// offerFrom POSTs a viewer's offer as if from address xff (through the
// trusted proxy at 127.0.0.1) and returns the status and the session URL.
func offerFrom(t *testing.T, api *webrtc.API, base, xff string) (int, string) {
	t.Helper()
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
		t.Fatal(err)
	}
	offer, _ := pc.CreateOffer(nil)
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", base+"/whep/demo", strings.NewReader(offer.SDP))
	req.Header.Set("Content-Type", "application/sdp")
	req.Header.Set("X-Forwarded-For", xff)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode == 429 && res.Header.Get("Retry-After") == "" {
		t.Errorf("429 without Retry-After")
	}
	return res.StatusCode, res.Header.Get("Location")
}

func getFrom(t *testing.T, url, xff string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestLimitsPerAddress: thousands of requests from one address get 429
// with Retry-After past its budget while another address is served; WHEP
// offers, open sessions and SSE streams have budgets of their own; an
// address's X-Forwarded-For counts only through a trusted proxy.
func TestLimitsPerAddress(t *testing.T) {
	_, base := testApp(t, func(c *Config) {
		c.Limits.Exempt = nil // loopback is limited too in this test
		c.Limits.RequestsPerSecond, c.Limits.RequestBurst = 50, 100
		c.Limits.OffersPerMinute, c.Limits.OfferBurst = 1, 5
		c.Limits.Sessions, c.Limits.EventStreams = 3, 2
		c.TrustedProxies = []string{"127.0.0.1"}
	})
	url := base + "/api/v1/streams/demo"

	// 3,000 calls from 127.0.0.1 as fast as 16 workers go. Each refusal is
	// checked as it comes (a call after the burst may find a token the
	// bucket refilled meanwhile: one every 20 ms).
	var ok, limited, other atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < 3000; i += 16 {
				res := getFrom(t, url, "")
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				switch {
				case res.StatusCode == 200:
					ok.Add(1)
				case res.StatusCode == 429 && res.Header.Get("Retry-After") != "" && strings.Contains(string(body), `"rate_limited"`):
					limited.Add(1)
				default:
					other.Add(1)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	allowed := 100 + int64(50*took.Seconds()) + 2
	t.Logf("3,000 calls in %s: %d served, %d refused with 429", took.Round(time.Millisecond), ok.Load(), limited.Load())
	if ok.Load() < 100 || ok.Load() > allowed || other.Load() != 0 || ok.Load()+limited.Load() != 3000 {
		t.Fatalf("%d served (budget %d), %d refused, %d other answers", ok.Load(), allowed, limited.Load(), other.Load())
	}
	// Another address behind the trusted proxy has its own budget.
	if res := getFrom(t, url, "198.51.100.9"); res.StatusCode != 200 {
		t.Errorf("another address: %d", res.StatusCode)
	} else {
		res.Body.Close()
	}
	if v := metricValue(t, base, `vitrine_limit_refusals_total{limit="requests"}`); v < float64(limited.Load()) {
		t.Errorf("refusal metric %v, refused %d", v, limited.Load())
	}

	// Open sessions: 3 from one address, the 4th waits for one to close.
	api, err := client.NewAPI(true)
	if err != nil {
		t.Fatal(err)
	}
	var locations []string
	for i := range 3 {
		code, loc := offerFrom(t, api, base, "198.51.100.30")
		if code != 201 {
			t.Fatalf("session %d: %d", i+1, code)
		}
		locations = append(locations, loc)
	}
	if code, _ := offerFrom(t, api, base, "198.51.100.30"); code != 429 {
		t.Errorf("a 4th open session from one address: %d, want 429", code)
	}
	req, _ := http.NewRequest("DELETE", base+locations[0], nil)
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != 200 {
		t.Fatalf("DELETE: %v", err)
	}
	eventually(t, "a closed session frees its place", 5*time.Second, func() bool {
		code, _ := offerFrom(t, api, base, "198.51.100.30")
		return code == 201
	})
	// Offers: a burst of 5, then 1 a minute (this address has spent 5).
	if code, _ := offerFrom(t, api, base, "198.51.100.30"); code != 429 {
		t.Errorf("a 6th offer in a minute: %d, want 429", code)
	}

	// SSE streams: 2 open from one address.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var open []*http.Response
	for i := range 3 {
		req, _ := http.NewRequestWithContext(ctx, "GET", url+"/events", nil)
		req.Header.Set("X-Forwarded-For", "198.51.100.40")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{true: 200, false: 429}[i < 2]; res.StatusCode != want {
			t.Errorf("event stream %d: %d, want %d", i+1, res.StatusCode, want)
		}
		open = append(open, res)
	}
	open[0].Body.Close()
	eventually(t, "a closed event stream frees its place", 5*time.Second, func() bool {
		req, _ := http.NewRequestWithContext(ctx, "GET", url+"/events", nil)
		req.Header.Set("X-Forwarded-For", "198.51.100.40")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer res.Body.Close()
		return res.StatusCode == 200
	})
	for _, r := range open[1:] {
		r.Body.Close()
	}
	// A client's own X-Forwarded-For is ignored without a trusted proxy.
	_, base2 := testApp(t, func(c *Config) {
		c.Limits.Exempt = nil
		c.Limits.RequestsPerSecond, c.Limits.RequestBurst = 1, 3
	})
	codes := []int{}
	for i := range 5 {
		res := getFrom(t, base2+"/api/v1/streams/demo", fmt.Sprintf("203.0.113.%d", i))
		res.Body.Close()
		codes = append(codes, res.StatusCode)
	}
	if fmt.Sprint(codes) != "[200 200 200 429 429]" {
		t.Errorf("spoofed X-Forwarded-For without a trusted proxy: %v", codes)
	}
}
