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

// TestLoadChat runs `vitrine load` with chat and reactions against a server
// that lets one address create enough chat names: 20 viewers, 5 of them
// chatting once a second, 50 taps a second, 4 s measured. Every viewer must
// get every message accepted after its chat snapshot came, count every tap
// sent after it, and the video must flow as without chat.
func TestLoadChat(t *testing.T) {
	if testing.Short() {
		t.Skip("load run takes ~8 s")
	}
	a, base := testApp(t, func(c *Config) { c.Chat.NewNamesPerIP = 100 })
	var stdout, stderr bytes.Buffer
	err := load([]string{"-server", base, "-stream", "demo", "-key", a.demo.Key, "-loopback",
		"-viewers", "20", "-rate", "20", "-duration", "4s", "-json",
		"-chatters", "5", "-chat-every", "1s", "-reactions", "50"}, &stdout, &stderr)
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
	if !strings.Contains(table.String(), "chat delivery") || !strings.Contains(table.String(), "reactions per viewer") {
		t.Error("the table has no chat or reactions rows")
	}

	if rep.Joined != 20 || rep.BelowTarget != 0 || rep.Loss.Max >= 0.005 {
		t.Fatalf("joined %d, %d below 99%%, video loss max %.2f%%: %v", rep.Joined, rep.BelowTarget, 100*rep.Loss.Max, rep.Errors)
	}
	c := rep.Chat
	if c == nil {
		t.Fatal("no chat in the report")
	}
	if c.Named != 5 || c.Unnamed != 0 {
		t.Errorf("%d of 5 chatters named, %d not: %v", c.Named, c.Unnamed, c.NamesRefused)
	}
	// 5 chatters at 1/s for 4 s: about 20 (each starts within its first
	// second), all taken.
	if c.Sent < 10 || c.Visible != c.Sent || c.Unconfirmed != 0 || len(c.Refused) != 0 {
		t.Errorf("sent %d: %d visible, %d unanswered, refused %v", c.Sent, c.Visible, c.Unconfirmed, c.Refused)
	}
	if c.Viewers != 20 || c.NoSnapshot != 0 || c.Disconnected != 0 {
		t.Errorf("%d viewers subscribed, %d without a snapshot, %d disconnected", c.Viewers, c.NoSnapshot, c.Disconnected)
	}
	if c.Missing != 0 || c.ViewersMissing != 0 || c.Received != c.Expected || c.Duplicates != 0 {
		t.Errorf("%d of %d deliveries, %d missing (%d viewers), %d duplicates", c.Received, c.Expected, c.Missing, c.ViewersMissing, c.Duplicates)
	}
	var expected uint64
	for _, v := range rep.Viewers {
		expected += v.ChatExpected
		// Snapshots come before the window, so each viewer expects about
		// every visible message, and never more.
		if v.ChatExpected == 0 || v.ChatExpected > uint64(c.Visible) || v.ChatMissing != 0 {
			t.Errorf("viewer %d: expected %d of %d visible, missing %d", v.ID, v.ChatExpected, c.Visible, v.ChatMissing)
		}
	}
	if expected != c.Expected || uint64(c.Latency.N) < c.Received {
		t.Errorf("viewers expected %d in all, the report says %d; %d latency samples for %d deliveries", expected, c.Expected, c.Latency.N, c.Received)
	}
	t.Logf("chat latency p50 %.1f ms, p99 %.1f ms", c.Latency.P50, c.Latency.P99)

	re := rep.Reactions
	if re == nil {
		t.Fatal("no reactions in the report")
	}
	if re.Sent < 100 || re.Failed != 0 || re.ViewersShort != 0 {
		t.Errorf("%d taps sent, %d failed, %d viewers counted fewer than sent", re.Sent, re.Failed, re.ViewersShort)
	}
	for _, v := range rep.Viewers {
		if v.ReactionTapsExpected == 0 || v.ReactionTaps < v.ReactionTapsExpected || v.ReactionTaps > re.Sent {
			t.Errorf("viewer %d counted %d taps, %d sent after its snapshot, %d in all", v.ID, v.ReactionTaps, v.ReactionTapsExpected, re.Sent)
		}
	}
	// At most one reactions message per 250 ms: 4 a second, and the one
	// after the last tap.
	if p := re.PerViewerPerSecond; p.N != 20 || p.P50 < 2 || p.Max > 5 {
		t.Errorf("reactions messages per viewer per second: %+v", p)
	}
}
