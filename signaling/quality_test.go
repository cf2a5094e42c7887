package signaling

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/overlay/sqlstore"
	"github.com/vitrine-live/vitrine/signaling/client"
)

// liveEdge is a whole HTTP edge with WebRTC on loopback and a real store:
// what a viewer's browser talks to.
type liveEdge struct {
	url string
	reg *prometheus.Registry
}

func newLiveEdge(t *testing.T) *liveEdge {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	reg := prometheus.NewRegistry()
	mm := media.NewMetrics(reg)
	rtc, err := media.NewWebRTC(media.WebRTCConfig{ListenIP: "127.0.0.1", IncludeLoopback: true, TCPPort: -1}, mm, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rtc.Close() })
	dir := t.TempDir()
	streams, err := OpenStreams(filepath.Join(dir, "streams.json"), func(name string) *media.Stream {
		return media.NewStream(name, media.StreamOptions{}, mm, log)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(streams.Close)
	if _, err := streams.Create("demo", ""); err != nil {
		t.Fatal(err)
	}
	store, err := sqlstore.Open(context.Background(), filepath.Join(dir, "vitrine.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	srv := New(Config{AdminToken: testAdminToken, ViewerSecret: []byte("quality-test-secret")}, rtc, streams, store, reg, reg, log)
	ts := httptest.NewServer(srv.Handler(nil))
	t.Cleanup(ts.Close)
	return &liveEdge{url: ts.URL, reg: reg}
}

// counter reads an unlabelled counter from the registry.
func (e *liveEdge) counter(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no counter %s", name)
	return 0
}

// TestQualityMessage: a pion viewer on WHEP picks a quality in the player's
// menu over its data channel; a good value is confirmed, a bad one refused
// and counted, and the channel stays usable.
func TestQualityMessage(t *testing.T) {
	e := newLiveEdge(t)
	api, err := client.NewAPI(true)
	if err != nil {
		t.Fatal(err)
	}
	open := make(chan struct{})
	replies := make(chan viewerReply, 16)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var dc *webrtc.DataChannel
	sess, err := client.Watch(ctx, api, e.url+"/whep/demo", true, func(pc *webrtc.PeerConnection, ch *webrtc.DataChannel) {
		dc = ch
		ch.OnOpen(func() { close(open) })
		ch.OnMessage(func(m webrtc.DataChannelMessage) {
			var r viewerReply
			if err := json.Unmarshal(m.Data, &r); err != nil {
				t.Errorf("server sent non-JSON %q", m.Data)
				return
			}
			replies <- r
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.PC.Close() })
	select {
	case <-open:
	case <-time.After(5 * time.Second):
		t.Fatal("data channel did not open")
	}
	// next skips what the server sends of itself (snapshot, welcome,
	// stream.state) and returns the answer to what the viewer sent.
	next := func() viewerReply {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case r := <-replies:
				if r.Type == "quality.result" || r.Type == "error" {
					return r
				}
			case <-deadline:
				t.Fatal("no answer to the quality message")
			}
		}
	}
	before := e.counter(t, "vitrine_viewer_messages_rejected_total")

	for _, v := range []string{"low", "auto", "high", "medium"} {
		if err := dc.SendText(`{"v":1,"type":"quality","value":"` + v + `"}`); err != nil {
			t.Fatal(err)
		}
		if r := next(); r.V != 1 || r.Type != "quality.result" || r.Value != v {
			t.Fatalf("quality %s: got %+v, want quality.result with value %s", v, r, v)
		}
	}
	if got := e.counter(t, "vitrine_viewer_messages_rejected_total"); got != before {
		t.Errorf("good quality messages counted as rejected: %v, was %v", got, before)
	}

	for i, bad := range []string{
		`{"v":1,"type":"quality","value":"ultra"}`,
		`{"v":1,"type":"quality","value":"LOW"}`,
		`{"v":1,"type":"quality"}`,
	} {
		if err := dc.SendText(bad); err != nil {
			t.Fatal(err)
		}
		r := next()
		if r.Type != "error" || r.Code != "invalid" || r.Message == "" {
			t.Fatalf("%s: got %+v, want an error with code invalid", bad, r)
		}
		if got := e.counter(t, "vitrine_viewer_messages_rejected_total"); got != before+float64(i+1) {
			t.Errorf("%s: rejected counter %v, want %v", bad, got, before+float64(i+1))
		}
	}

	// An unknown type names the types there are.
	if err := dc.SendText(`{"v":1,"type":"zoom"}`); err != nil {
		t.Fatal(err)
	}
	if r := next(); r.Code != "bad_message" || r.Message != "type must be buy, confirm, quality, chat, chat.name or react" {
		t.Fatalf("unknown type: %+v", r)
	}
	// The channel still takes a good one after the refusals.
	if err := dc.SendText(`{"v":1,"type":"quality","value":"auto"}`); err != nil {
		t.Fatal(err)
	}
	if r := next(); r.Type != "quality.result" || r.Value != "auto" {
		t.Fatalf("after the refusals: %+v", r)
	}
}
