package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/vitrine-live/vitrine/signaling/client/loadtest"
)

// TestLoad runs `vitrine load` as a user would, against a server the test
// starts: the embedded clip published over WHIP, 20 WHEP viewers with the
// overlay channel, 5 s measured. Every viewer must get the clip's payloads
// byte for byte and at least 99% of them.
func TestLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load run takes ~8 s")
	}
	a, base := testApp(t, nil)
	var stdout, stderr bytes.Buffer
	err := load([]string{"-server", base, "-stream", "demo", "-key", a.demo.Key, "-loopback",
		"-viewers", "20", "-rate", "20", "-duration", "5s", "-json"}, &stdout, &stderr)
	t.Log(stderr.String())
	if err != nil {
		t.Fatal(err)
	}
	var rep loadtest.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, stdout.String())
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + table.String())

	if rep.Joined != 20 || rep.Failed != 0 || len(rep.Viewers) != 20 {
		t.Fatalf("joined %d, failed %d of 20: %v", rep.Joined, rep.Failed, rep.Errors)
	}
	if rep.Sent.Video == 0 || rep.Sent.Audio == 0 {
		t.Fatalf("publisher sent %+v", rep.Sent)
	}
	for _, v := range rep.Viewers {
		if v.Received.Video == 0 || v.Received.Audio == 0 {
			t.Errorf("viewer %d got %+v", v.ID, v.Received)
		}
		if v.FirstMS < 0 || v.KeyMS < 0 {
			t.Errorf("viewer %d: no first packet (%v ms) or keyframe (%v ms)", v.ID, v.FirstMS, v.KeyMS)
		}
		if !v.Channel || v.Overlay == 0 {
			t.Errorf("viewer %d: data channel open %v, %d overlay messages", v.ID, v.Channel, v.Overlay)
		}
	}
	if rep.Foreign != 0 {
		t.Errorf("%d payloads that the publisher never sent: not byte-identical", rep.Foreign)
	}
	if rep.BelowTarget != 0 {
		t.Errorf("%d viewers below 99%% delivery (loss max %.2f%%)", rep.BelowTarget, 100*rep.Loss.Max)
	}
	if rep.JoinFirstPacket.N != 20 || rep.JoinFirstKeyframe.N != 20 {
		t.Errorf("join times for %d/%d viewers", rep.JoinFirstPacket.N, rep.JoinFirstKeyframe.N)
	}
	if rep.Latency.N == 0 {
		t.Error("no forwarding latency measured")
	}
	if rep.Overlay.CuesPosted == 0 || rep.Overlay.Lag.N == 0 {
		t.Errorf("overlay: %d cues posted, %d arrivals timed", rep.Overlay.CuesPosted, rep.Overlay.Lag.N)
	}
	if rep.ServerCPU.Error != "" || rep.ServerCPU.Packets == 0 {
		t.Errorf("server CPU not read from /metrics: %+v", rep.ServerCPU)
	}
	if !strings.Contains(stderr.String(), "measuring") {
		t.Error("no progress lines on stderr")
	}
}

// TestLoadPionViewers runs the load tool with full pion PeerConnections as
// viewers (-viewer pion), the implementation the lite viewers are checked
// against.
func TestLoadPionViewers(t *testing.T) {
	if testing.Short() {
		t.Skip("load run takes ~4 s")
	}
	a, base := testApp(t, nil)
	var stdout, stderr bytes.Buffer
	err := load([]string{"-server", base, "-stream", "demo", "-key", a.demo.Key, "-loopback", "-viewer", "pion",
		"-viewers", "5", "-rate", "0", "-duration", "2s", "-json"}, &stdout, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	var rep loadtest.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Joined != 5 || rep.WithMedia != 5 || rep.Channels != 5 || rep.Foreign != 0 || rep.BelowTarget != 0 {
		t.Errorf("joined %d, with media %d, channels %d, foreign %d, below 99%% %d; errors %v",
			rep.Joined, rep.WithMedia, rep.Channels, rep.Foreign, rep.BelowTarget, rep.Errors)
	}
}
