package main

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/signaling"
	"github.com/vitrine-live/vitrine/signaling/client"
)

// TestCodecsPassThrough: VP8, VP9 and AV1 from a creator reach a viewer
// byte-identical, starting on a keyframe. (H.264 and Opus are covered with a
// real clip by TestLiveStream.)
func TestCodecsPassThrough(t *testing.T) {
	cases := []struct {
		mime, fmtp string
		key, inter []byte // first payload bytes of a keyframe start and of an inter frame
	}{
		{webrtc.MimeTypeVP8, "", []byte{0x10, 0x00}, []byte{0x10, 0x01}},
		{webrtc.MimeTypeVP9, "profile-id=0", []byte{0x08}, []byte{0x48}},
		{webrtc.MimeTypeAV1, "", []byte{0x18}, []byte{0x10}},
	}
	for _, c := range cases {
		t.Run(strings.TrimPrefix(c.mime, "video/"), func(t *testing.T) {
			a, base := testApp(t, nil)
			api, err := client.NewAPI(true)
			if err != nil {
				t.Fatal(err)
			}
			track, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: c.mime, ClockRate: 90000, SDPFmtpLine: c.fmtp}, "video", "s")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			pub, err := client.Publish(ctx, api, base+"/whip/demo", a.demo.Key, track)
			if err != nil {
				t.Fatal(err)
			}
			defer pub.PC.Close()
			if err := pub.WaitConnected(5 * time.Second); err != nil {
				t.Fatal(err)
			}
			payload := func(i int) []byte {
				head := c.inter
				if i%10 == 0 {
					head = c.key
				}
				return append(append([]byte{}, head...), bytes.Repeat([]byte{byte(i)}, 200)...)
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					_ = track.WriteRTP(&rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: uint16(i), Timestamp: uint32(i * 3000), Marker: true}, Payload: payload(i)})
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
				}
			}()
			defer func() { close(stop); wg.Wait() }()
			// A browser sends the first codec of the answer, and viewers who
			// join early are bound to it; pion's static track sends its own
			// codec whatever the order. So this viewer joins once the
			// creator's packets have shown the codec.
			_, st, _ := a.streams.Get("demo")
			eventually(t, "the creator's codec known", 5*time.Second, func() bool {
				return strings.EqualFold(st.Video.Codec().MimeType, c.mime)
			})

			var mu sync.Mutex
			var got [][]byte
			var mime string
			sess, err := client.Watch(ctx, api, base+"/whep/demo", false, func(pc *webrtc.PeerConnection, _ *webrtc.DataChannel) {
				pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
					mu.Lock()
					mime = tr.Codec().MimeType
					mu.Unlock()
					for {
						p, _, err := tr.ReadRTP()
						if err != nil {
							return
						}
						mu.Lock()
						got = append(got, p.Payload)
						mu.Unlock()
					}
				})
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sess.PC.Close()
			eventually(t, "30 packets at the viewer", 10*time.Second, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(got) >= 30
			})
			mu.Lock()
			defer mu.Unlock()
			if !strings.EqualFold(mime, c.mime) {
				t.Errorf("viewer negotiated %s, creator sends %s", mime, c.mime)
			}
			if !bytes.HasPrefix(got[0], c.key) {
				t.Errorf("first packet %x is not a keyframe start", got[0][:4])
			}
			// Each packet is a keyframe or inter-frame head followed by 200
			// copies of the publisher's counter byte: anything else was
			// changed on the way. (Order is not checked: a packet repaired
			// by a NACK arrives late.)
			for j, p := range got {
				if len(p) < 200 {
					t.Fatalf("packet %d is %d bytes, shorter than sent", j, len(p))
				}
				head := p[:len(p)-200]
				tail := p[len(p)-200:]
				if !bytes.Equal(tail, bytes.Repeat(tail[:1], 200)) || (!bytes.Equal(head, c.key) && !bytes.Equal(head, c.inter)) {
					t.Fatalf("packet %d differs from what was sent: %x", j, p[:min(8, len(p))])
				}
			}
		})
	}
}

// TestCORSAndICEServers: a page on another origin can publish and watch, and
// configured STUN/TURN servers are offered in Link headers.
func TestCORSAndICEServers(t *testing.T) {
	_, base := testApp(t, func(c *Config) {
		c.WebRTC.ICEServers = []signaling.ICEServer{{URLs: []string{"turn:turn.example.net:3478"}, Username: "u", Credential: "p"}}
	})
	req, _ := http.NewRequest("OPTIONS", base+"/whip/demo", nil)
	req.Header.Set("Origin", "https://shop.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "authorization, content-type")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	h := res.Header
	if res.StatusCode != http.StatusNoContent || h.Get("Access-Control-Allow-Origin") != "*" ||
		!strings.Contains(h.Get("Access-Control-Allow-Methods"), "POST") ||
		!strings.Contains(h.Get("Access-Control-Allow-Headers"), "Authorization") ||
		!strings.Contains(h.Get("Access-Control-Expose-Headers"), "Location") ||
		!strings.Contains(h.Get("Access-Control-Allow-Headers"), "Vitrine-Viewer") ||
		!strings.Contains(h.Get("Access-Control-Expose-Headers"), "Vitrine-Viewer") {
		t.Errorf("preflight: %d %v", res.StatusCode, h)
	}
	if link := h.Get("Link"); !strings.Contains(link, "<turn:turn.example.net:3478>") || !strings.Contains(link, `rel="ice-server"`) ||
		!strings.Contains(link, `username="u"`) {
		t.Errorf("Link header: %q", link)
	}
}
