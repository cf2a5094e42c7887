package cluster

import (
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/media"
)

// offline is a cluster that knows its peers without NATS: what placement
// and tokens need.
func offline(t *testing.T, viewers *int, max int, peers ...*Node) *Cluster {
	t.Helper()
	c := &Cluster{cfg: Config{NodeID: "self", Secret: []byte("a-node-secret-of-the-test"), MaxViewers: max,
		Viewers: func() int { return *viewers }, Pulls: func() int { return 0 },
		Streams: func() map[string]*media.Stream { return nil }, Stream: func(string) *media.Stream { return nil },
		Registerer: prometheus.NewRegistry()}, log: slog.Default(), peers: map[string]*Node{}, relays: map[string]*Relay{}}
	c.registerMetrics()
	for _, n := range peers {
		n.seen = time.Now()
		c.peers[n.ID] = n
	}
	return c
}

// TestRedirect: a node under its cap keeps the viewer; a full one sends it
// to the least loaded node with room (never a full or draining one), and
// spreads a burst; with nowhere to go a full node says so and a draining
// one keeps serving.
func TestRedirect(t *testing.T) {
	viewers := 10
	c := offline(t, &viewers, 10,
		&Node{ID: "busy", URL: "http://busy", Viewers: 8, MaxViewers: 10},
		&Node{ID: "idle", URL: "http://idle", Viewers: 1, MaxViewers: 10},
		&Node{ID: "full", URL: "http://full", Viewers: 10, MaxViewers: 10},
		&Node{ID: "leaving", URL: "http://leaving", Draining: true})
	if to, reason := c.Redirect(); to != "http://idle" || reason != "full" {
		t.Fatalf("full node: redirect to %q (%s), want the idle node", to, reason)
	}
	// idle took 1 -> 2 viewers per redirect; after 6 more it is level
	// with busy (8) and the next goes to either.
	got := map[string]int{}
	for range 12 {
		to, _ := c.Redirect()
		got[to]++
	}
	if got["http://full"]+got["http://leaving"] != 0 || got["http://busy"] == 0 || got["http://idle"] < 7 {
		t.Errorf("a burst of 12 from a full node went %v: want idle first, then spread over idle and busy, none to full or draining", got)
	}
	viewers = 3
	if to, reason := c.Redirect(); to != "" || reason != "" {
		t.Errorf("a node under its cap redirected to %q (%s)", to, reason)
	}

	alone := offline(t, &viewers, 3, &Node{ID: "full", URL: "http://full", Viewers: 5, MaxViewers: 5})
	if to, reason := alone.Redirect(); to != "" || reason != "full" {
		t.Errorf("full with nowhere to go: %q %q, want no URL and reason full (503)", to, reason)
	}
	alone.Drain()
	viewers = 0
	if to, reason := alone.Redirect(); to != "" || reason != "" {
		t.Errorf("draining with nowhere to go: %q %q, want to keep serving", to, reason)
	}
	if n := alone.Nodes(); len(n) != 1 || n[0] != "http://full" {
		t.Errorf("Nodes: %v", n)
	}
}

// TestPeerToken: a node's own token passes; one expired, signed with
// another secret, altered or malformed does not.
func TestPeerToken(t *testing.T) {
	viewers := 0
	c := offline(t, &viewers, 0)
	other := offline(t, &viewers, 0)
	other.cfg.Secret = []byte("another-secret-entirely")
	tok := c.NodeToken()
	if !c.PeerToken(tok) {
		t.Fatalf("own token %q refused", tok)
	}
	expired := "self." + strconv.FormatInt(time.Now().Add(-time.Second).Unix(), 10)
	expired += "." + c.sign(expired)
	body := tok[:strings.LastIndexByte(tok, '.')]
	for name, bad := range map[string]string{
		"other secret": other.NodeToken(),
		"expired":      expired,
		"altered id":   "evil" + tok[len("self"):],
		"no signature": body,
		"empty":        "",
		"dots":         "..",
		"bad expiry":   "self.soon." + c.sign("self.soon"),
	} {
		if c.PeerToken(bad) {
			t.Errorf("%s: token %q accepted", name, bad)
		}
	}
}
