package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/signaling/client"
)

// TestCluster is issue 16's acceptance run: NATS, PostgreSQL and three
// Vitrine processes on loopback. The creator publishes on A; viewers on A,
// B and C get the creator's payloads with under 0.5 % loss; a card clicked
// on A lands on the same frame on every node; a flash sale of 100 units
// bought 2,000 times over the three nodes sells exactly 100, with stock
// messages coalesced; the creator reconnecting on A keeps B's and C's
// viewers; B killed, its viewer plays again from another node within 5 s;
// C drained by SIGTERM, its viewer moves with a gap under 2 s.
func TestCluster(t *testing.T) {
	dsn := postgresSchema(t)
	nats := startNATS(t)
	clip := testClip(t)
	bin := filepath.Join(t.TempDir(), "vitrine")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	a := startNode(t, bin, "a", dsn, nats)
	b := startNode(t, bin, "b", dsn, nats)
	c := startNode(t, bin, "c", dsn, nats)
	for _, n := range []*clusterNode{a, b, c} {
		eventually(t, n.id+" sees 3 nodes", 10*time.Second, func() bool { return len(n.nodes(t)) == 3 })
	}
	// One catalog for the cluster: created on B, sold on every node.
	if code, out, _ := postJSON(t, b.base+"/api/v1/products", clusterAdmin, map[string]any{
		"sku": "bag-1", "title": "Bag", "price_minor": 12000, "currency": "EUR", "stock": 1000, "per_viewer_limit": 1, "active": true}); code != 201 {
		t.Fatalf("create product: %d %v", code, out)
	}

	api, err := client.NewAPI(true)
	if err != nil {
		t.Fatal(err)
	}
	sent := &sentSet{}
	pub := publish(t, api, a.base, "demo", clusterKey, clip, sent)
	eventually(t, "media flowing", 5*time.Second, func() bool { return pub.lastTS.Load() > 9000 })
	vA := watchNode(t, api, a, "vA", sent)
	vB := watchNode(t, api, b, "vB", sent)
	vC := watchNode(t, api, c, "vC", sent)
	for _, v := range []*nodeViewer{vA, vB, vC} {
		eventually(t, v.name+" gets video", 5*time.Second, func() bool { return v.videoPackets() > 50 })
	}
	if got := b.status(t)["relays"]; fmt.Sprint(got) != "[demo]" {
		t.Errorf("B should relay demo: %v", got)
	}
	_, metrics := scrape(t, a.base+"/metrics", "")
	checkDashboard(t, metrics, func(name string) bool { return strings.HasPrefix(name, "vitrine_cluster_") })

	// A card clicked on A: every node's viewer gets it stamped on the frame
	// (same payload) that A's viewer has at that stamp.
	eventually(t, "a Sender Report from the creator", 10*time.Second, func() bool {
		code, cue, _ := postJSON(t, a.base+"/api/v1/streams/demo/cues", clusterKey,
			map[string]any{"type": "custom", "data": map[string]any{"probe": true}, "click_time_ms": time.Now().UnixMilli()})
		return code == 201 && cue["at_source"] == "click"
	})
	// Sent to C: the cue goes to the node running the show, A.
	code, cue, _ := postJSON(t, c.base+"/api/v1/streams/demo/cues", clusterKey,
		map[string]any{"type": "card.show", "sku": "bag-1", "click_time_ms": time.Now().UnixMilli()})
	if code != 201 || cue["at_source"] != "click" {
		t.Fatalf("card.show through C: %d %v", code, cue)
	}
	for _, v := range []*nodeViewer{vA, vB, vC} {
		m := v.wait(t, "card.show")
		at := uint32(m["at"].(float64))
		eventually(t, v.name+" has the frame the card is stamped on", 3*time.Second, func() bool { return v.frame(at) != "" })
		if v != vA && v.frame(at) != vA.frame(at+v.offset(vA)) {
			t.Errorf("%s: the card's frame is not A's clicked frame", v.name)
		}
	}

	// Flash sale of 100 units; 2,000 buyers, each its own viewer, over A, B
	// and C at once.
	if code, out, _ := postJSON(t, a.base+"/api/v1/streams/demo/cues", clusterKey,
		map[string]any{"type": "sale.start", "sku": "bag-1", "price_minor": 6000, "units": 100, "duration_s": 120}); code != 201 {
		t.Fatalf("sale.start: %d %v", code, out)
	}
	vC.wait(t, "sale.start")
	stockBefore := vC.countType("stock")
	saleStart := time.Now()
	var reserved, soldOut, failed atomic.Int64
	var wg sync.WaitGroup
	nodes := []*clusterNode{a, b, c}
	for w := range 60 {
		wg.Go(func() {
			for i := w; i < 2000; i += 60 {
				code, res, _ := postJSON(t, nodes[i%3].base+"/api/v1/streams/demo/buy", "",
					map[string]any{"sku": "bag-1", "qty": 1, "key": fmt.Sprintf("cluster-buy-%04d", i)})
				switch {
				case code != 200:
					if failed.Add(1) == 1 {
						t.Logf("a buy on %s: %d %v", nodes[i%3].id, code, res)
					}
				case res["outcome"] == "reserved":
					reserved.Add(1)
				default:
					soldOut.Add(1)
				}
			}
		})
	}
	wg.Wait()
	saleTook := time.Since(saleStart)
	t.Logf("2,000 buys over 3 nodes in %s: %d reserved, %d refused, %d failed", saleTook.Round(time.Millisecond), reserved.Load(), soldOut.Load(), failed.Load())
	if reserved.Load() != 100 || failed.Load() != 0 {
		t.Errorf("flash sale of 100 units: %d reserved, %d failed", reserved.Load(), failed.Load())
	}
	eventually(t, "C's viewer sees the sale sold out", 5*time.Second, func() bool { return vC.lastUnitsLeft() == 0 })
	stockMsgs := vC.countType("stock") - stockBefore
	// Coalesced at the origin: at most one per 250 ms (plus the last).
	if limit := int(saleTook/(250*time.Millisecond)) + 3; stockMsgs > limit {
		t.Errorf("%d stock messages at C for a sale of %s: not coalesced (at most %d)", stockMsgs, saleTook, limit)
	}
	t.Logf("stock messages at C during the sale: %d", stockMsgs)

	// Chat spans the nodes: each node has its room for its viewers, and
	// NATS carries messages, moderation and reactions between them.
	bea, cam := &httpChatter{base: b.base}, &httpChatter{base: c.base}
	if code, out, _ := bea.do(t, "PUT", "/api/v1/chat/name", map[string]string{"name": "Bea"}); code != 200 {
		t.Fatalf("name on B: %d %v", code, out)
	}
	if code, out, _ := bea.do(t, "POST", "/api/v1/streams/demo/chat", map[string]any{"text": "hello from B"}); code != 201 {
		t.Fatalf("chat on B: %d %v", code, out)
	}
	var beaID string
	for _, v := range []*nodeViewer{vA, vB, vC} {
		beaID = v.sawChat(t, "hello from B")["viewer"].(string)
	}
	code, mk, _ := postJSON(t, a.base+"/api/v1/streams/demo/chat/moderator-key", clusterKey, nil)
	if code != 201 {
		t.Fatalf("moderator key on A: %d", code)
	}
	mod := mk["key"].(string)
	eventually(t, "C takes A's moderator key", 5*time.Second, func() bool { return getStatus(t, c.base+"/api/v1/streams/demo/chat", mod) == 200 })
	if code, out, _ := postJSON(t, c.base+"/api/v1/streams/demo/chat/actions", mod, map[string]any{"action": "ban", "viewer": beaID}); code != 200 {
		t.Fatalf("ban on C: %d %v", code, out)
	}
	for _, v := range []*nodeViewer{vA, vB} {
		v.wait(t, "chat.delete")
	}
	eventually(t, "B refuses its banned viewer", 5*time.Second, func() bool {
		code, _, _ := bea.do(t, "POST", "/api/v1/streams/demo/chat", map[string]any{"text": "still here?"})
		return code == 403
	})
	if code, out, _ := bea.do(t, "POST", "/api/v1/streams/demo/buy", map[string]any{"sku": "bag-1", "qty": 1, "key": "banned-on-b-1"}); code != 403 {
		t.Errorf("banned viewer buys on B: %d %v", code, out)
	}
	// A question asked on C is about the card A's show has on screen.
	if code, out, _ := cam.do(t, "PUT", "/api/v1/chat/name", map[string]string{"name": "Cam"}); code != 200 {
		t.Fatalf("name on C: %d %v", code, out)
	}
	if code, out, _ := cam.do(t, "POST", "/api/v1/streams/demo/chat", map[string]any{"text": "Is it leather?", "question": true}); code != 201 {
		t.Fatalf("question on C: %d %v", code, out)
	}
	if m := vA.sawChat(t, "Is it leather?"); m["sku"] != "bag-1" {
		t.Errorf("a question asked on C: %v, want it tied to bag-1", m)
	}
	reactionsBefore := vA.reactionCount()
	for range 5 {
		for _, h := range []*httpChatter{{base: b.base}, cam} {
			if code, _, _ := h.do(t, "POST", "/api/v1/streams/demo/reactions", map[string]string{"value": "heart"}); code != 202 {
				t.Fatalf("reaction: %d", code)
			}
		}
	}
	eventually(t, "A's viewer counts the taps on B and C", 5*time.Second, func() bool { return vA.reactionCount()-reactionsBefore == 10 })

	// The creator drops and comes back on A: B's and C's viewers stay.
	pub.stop()
	for _, v := range []*nodeViewer{vB, vC} {
		eventually(t, v.name+" told the creator is reconnecting", 5*time.Second, func() bool { return v.lastState() == "reconnecting" })
	}
	pub = publish(t, api, a.base, "demo", clusterKey, clip, sent)
	for _, v := range []*nodeViewer{vB, vC} {
		n := v.videoPackets()
		eventually(t, v.name+" plays again after the creator's reconnect", 8*time.Second, func() bool {
			return v.lastState() == "live" && v.videoPackets() > n+50
		})
		if v.sawState("ended") {
			t.Errorf("%s: told the stream ended during a reconnect", v.name)
		}
	}
	time.Sleep(time.Second)
	for _, v := range []*nodeViewer{vA, vB, vC} {
		loss, foreign := v.quality()
		t.Logf("%s: %d video packets, loss %.3f %%", v.name, v.videoPackets(), 100*loss)
		if loss > 0.005 || foreign != 0 {
			t.Errorf("%s: loss %.3f %%, %d payloads the creator never sent", v.name, 100*loss, foreign)
		}
	}

	// B dies: its viewer plays again from a node of its welcome list.
	killed := time.Now()
	b.kill(t, syscall.SIGKILL)
	vB2 := vB.failover(t, api, sent)
	eventually(t, "B's viewer plays from another node", 5*time.Second, func() bool { return vB2.videoPackets() > 0 })
	t.Logf("B killed: its viewer plays again from %s after %s", vB2.node, time.Since(killed).Round(time.Millisecond))

	eventually(t, "C sees B gone", 10*time.Second, func() bool { return len(c.nodes(t)) == 2 })
	// C drains: /readyz says so, new viewers are redirected, its viewer
	// moves where it is told with a gap under 2 s, and C exits.
	drained := make(chan error, 1)
	go func() { drained <- c.kill(t, syscall.SIGTERM) }()
	moved := vC.wait(t, "reconnect")
	lastFromC := vC.lastPacket()
	url := moved["url"].(string)
	if url != a.base {
		t.Errorf("C's viewer told to move to %s; the only node left is A (%s)", url, a.base)
	}
	vC2 := watchNode(t, api, &clusterNode{id: "moved", base: url}, "vC2", sent)
	eventually(t, "C's viewer plays from A", 3*time.Second, func() bool { return vC2.videoPackets() > 0 })
	if gap := vC2.firstPacket().Sub(lastFromC); gap > 2*time.Second {
		t.Errorf("C drained: %s between the viewer's last packet from C and its first from A", gap)
	} else {
		t.Logf("C drained: %s between the last packet from C and the first from A", gap.Round(time.Millisecond))
	}
	vC.sess.PC.Close()
	select {
	case err := <-drained:
		if err != nil {
			t.Errorf("C after SIGTERM: %v", err)
		}
	case <-time.After(25 * time.Second):
		t.Error("C did not exit after its drain")
	}
	pub.stop()
}

const (
	clusterAdmin  = "cluster-admin-token-0123456789"
	clusterKey    = "cluster-demo-key-0123456789"
	clusterSecret = "cluster-node-secret-0123456789"
)

// startNATS runs Debian's nats-server on a free loopback port.
func startNATS(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("nats-server not found in CI: .ci/test.sh installs Debian's nats-server")
		}
		t.Skip("nats-server not installed (apt-get install nats-server)")
	}
	port := freePort(t)
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", fmt.Sprint(port))
	cmd.Stderr = testLog{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	eventually(t, "nats-server up", 10*time.Second, func() bool {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	return fmt.Sprintf("nats://127.0.0.1:%d", port)
}

type clusterNode struct {
	id, base string
	cmd      *exec.Cmd
	exited   chan error
}

// startNode runs one node of the cluster, WebRTC on loopback only.
func startNode(t *testing.T, bin, id, dsn, nats string) *clusterNode {
	t.Helper()
	dir := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := filepath.Join(dir, "vitrine.yaml")
	os.WriteFile(cfg, []byte("webrtc:\n  listen_ip: 127.0.0.1\n  udp_port: 0\ncluster:\n  drain_timeout: 10s\n"), 0o600)
	cmd := exec.Command(bin, "-config", cfg, "-data", filepath.Join(dir, "data"), "-http", addr, "-rtmp", "off", "-rtsp", "off")
	cmd.Env = append(os.Environ(), "VITRINE_ADMIN_TOKEN="+clusterAdmin, "VITRINE_DEMO_KEY="+clusterKey,
		"VITRINE_STORE="+dsn, "VITRINE_NATS_URL="+nats, "VITRINE_ADVERTISE_URL=http://"+addr,
		"VITRINE_CLUSTER_SECRET="+clusterSecret, "VITRINE_NODE_ID="+id, "VITRINE_LOG_LEVEL=warn")
	cmd.Stderr = testLog{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n := &clusterNode{id: id, base: "http://" + addr, cmd: cmd, exited: make(chan error, 1)}
	go func() { n.exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); <-n.exited })
	eventually(t, id+" ready", 20*time.Second, func() bool {
		res, err := http.Get(n.base + "/readyz")
		if err == nil {
			res.Body.Close()
		}
		return err == nil && res.StatusCode == 200
	})
	return n
}

// kill signals the node (by its PID) and waits for it to exit.
func (n *clusterNode) kill(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	if err := n.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-n.exited:
		n.exited <- err // for the cleanup
		if sig == syscall.SIGKILL {
			return nil
		}
		return err
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s did not exit within 30 s of %s", n.id, sig)
	}
}

func (n *clusterNode) status(t *testing.T) map[string]any {
	t.Helper()
	req, _ := http.NewRequest("GET", n.base+"/api/v1/cluster", nil)
	req.Header.Set("Authorization", "Bearer "+clusterAdmin)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out struct{ Nodes []map[string]any }
	json.NewDecoder(res.Body).Decode(&out)
	if len(out.Nodes) == 0 {
		t.Fatalf("%s: GET /api/v1/cluster: %d, no nodes", n.id, res.StatusCode)
	}
	return out.Nodes[0]
}

func (n *clusterNode) nodes(t *testing.T) []map[string]any {
	req, _ := http.NewRequest("GET", n.base+"/api/v1/cluster", nil)
	req.Header.Set("Authorization", "Bearer "+clusterAdmin)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer res.Body.Close()
	var out struct{ Nodes []map[string]any }
	json.NewDecoder(res.Body).Decode(&out)
	return out.Nodes
}

// nodeViewer is a pion viewer of one node: it checks payloads against what
// the creator sent, counts lost video packets, keeps a payload digest per
// frame timestamp and every data-channel message.
type nodeViewer struct {
	name, node string
	sess       *client.Session
	sent       *sentSet

	mu      sync.Mutex
	msgs    []map[string]any
	seqs    map[uint16]bool
	first   time.Time
	last    time.Time
	frames  map[uint32]string // first packet's payload digest per timestamp
	foreign int
	nodes   []string
}

func watchNode(t *testing.T, api *webrtc.API, n *clusterNode, name string, sent *sentSet) *nodeViewer {
	t.Helper()
	v := &nodeViewer{name: name, node: n.base, sent: sent, seqs: map[uint16]bool{}, frames: map[uint32]string{}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := client.Watch(ctx, api, n.base+"/whep/demo", true, func(pc *webrtc.PeerConnection, dc *webrtc.DataChannel) {
		dc.OnMessage(func(m webrtc.DataChannelMessage) {
			var msg map[string]any
			if json.Unmarshal(m.Data, &msg) != nil {
				return
			}
			v.mu.Lock()
			v.msgs = append(v.msgs, msg)
			if msg["type"] == "welcome" {
				v.nodes = nil
				for _, u := range asSlice(msg["nodes"]) {
					v.nodes = append(v.nodes, u.(string))
				}
			}
			v.mu.Unlock()
		})
		pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
			for {
				p, _, err := tr.ReadRTP()
				if err != nil {
					return
				}
				if tr.Kind() != webrtc.RTPCodecTypeVideo {
					continue
				}
				sum := sha256.Sum256(p.Payload)
				v.mu.Lock()
				now := time.Now()
				if v.first.IsZero() {
					v.first = now
				}
				v.last = now
				v.seqs[p.SequenceNumber] = true
				if _, ok := v.frames[p.Timestamp]; !ok {
					v.frames[p.Timestamp] = fmt.Sprintf("%x", sum[:8])
				}
				if !v.sent.has(p.Payload) {
					v.foreign++
				}
				v.mu.Unlock()
			}
		})
	})
	if err != nil {
		t.Fatalf("%s: watch %s: %v", name, n.base, err)
	}
	v.sess = sess
	t.Cleanup(func() { sess.PC.Close() })
	return v
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

func (v *nodeViewer) videoPackets() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.seqs)
}

func (v *nodeViewer) firstPacket() time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.first
}

func (v *nodeViewer) lastPacket() time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.last
}

// frame is the digest of the frame on screen at media time at: the newest
// frame stamped at most one frame (3,000 ticks) before it, as the player
// places a click cue.
func (v *nodeViewer) frame(at uint32) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	best, found := uint32(0), ""
	for ts, d := range v.frames {
		if back := at - ts; back < 3000 && (found == "" || back < at-best) {
			best, found = ts, d
		}
	}
	return found
}

// offset is what to add to v's timestamps to get o's for the same frame:
// found from a payload both received.
func (v *nodeViewer) offset(o *nodeViewer) uint32 {
	v.mu.Lock()
	defer v.mu.Unlock()
	o.mu.Lock()
	defer o.mu.Unlock()
	byDigest := map[string]uint32{}
	for ts, d := range o.frames {
		byDigest[d] = ts
	}
	for ts, d := range v.frames {
		if ots, ok := byDigest[d]; ok {
			return ots - ts
		}
	}
	return 0
}

// quality is the share of video sequence numbers missing between the
// first and the newest received, and the payloads never sent.
func (v *nodeViewer) quality() (float64, int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	var lo, hi uint16
	firstSeq := true
	for s := range v.seqs {
		if firstSeq {
			lo, hi, firstSeq = s, s, false
			continue
		}
		if int16(s-lo) < 0 {
			lo = s
		}
		if int16(s-hi) > 0 {
			hi = s
		}
	}
	span := int(hi-lo) + 1
	return 1 - float64(len(v.seqs))/float64(span), v.foreign
}

func (v *nodeViewer) wait(t *testing.T, typ string) map[string]any {
	t.Helper()
	var found map[string]any
	eventually(t, v.name+" gets "+typ, 5*time.Second, func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		for _, m := range v.msgs {
			if m["type"] == typ {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

// sawChat waits for a chat message with text.
func (v *nodeViewer) sawChat(t *testing.T, text string) map[string]any {
	t.Helper()
	var found map[string]any
	eventually(t, v.name+" gets chat "+text, 5*time.Second, func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		for _, m := range v.msgs {
			for _, c := range asSlice(m["messages"]) {
				if m["type"] == "chat" && c.(map[string]any)["text"] == text {
					found = c.(map[string]any)
					return true
				}
			}
		}
		return false
	})
	return found
}

// reactionCounts is the reaction counts a message carries: a `reactions`
// message's, or those riding in a `chat` batch; nil for none.
func reactionCounts(m map[string]any) map[string]any {
	switch m["type"] {
	case "reactions":
		c, _ := m["counts"].(map[string]any)
		return c
	case "chat":
		c, _ := m["reactions"].(map[string]any)
		return c
	}
	return nil
}

// reactionCount sums the hearts counted so far.
func (v *nodeViewer) reactionCount() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, m := range v.msgs {
		h, _ := reactionCounts(m)["heart"].(float64)
		n += int(h)
	}
	return n
}

func (v *nodeViewer) countType(typ string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, m := range v.msgs {
		if m["type"] == typ {
			n++
		}
	}
	return n
}

func (v *nodeViewer) lastUnitsLeft() float64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	left := -1.0
	for _, m := range v.msgs {
		for _, s := range asSlice(m["stock"]) {
			if u, ok := s.(map[string]any)["units_left"].(float64); ok {
				left = u
			}
		}
	}
	return left
}

func (v *nodeViewer) lastState() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	state := ""
	for _, m := range v.msgs {
		if m["type"] == "stream.state" {
			state = m["state"].(string)
		}
	}
	return state
}

func (v *nodeViewer) sawState(state string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, m := range v.msgs {
		if m["type"] == "stream.state" && m["state"] == state {
			return true
		}
	}
	return false
}

// failover does what the player does when its node dies: once video stops
// for a second and the node's /healthz does not answer, it watches from
// the first node of its welcome list that answers.
func (v *nodeViewer) failover(t *testing.T, api *webrtc.API, sent *sentSet) *nodeViewer {
	t.Helper()
	eventually(t, v.name+": video stops", 5*time.Second, func() bool { return time.Since(v.lastPacket()) > time.Second })
	hc := http.Client{Timeout: time.Second}
	if res, err := hc.Get(v.node + "/healthz"); err == nil {
		res.Body.Close()
		t.Fatalf("%s: its node still answers", v.name)
	}
	v.mu.Lock()
	nodes := v.nodes
	v.mu.Unlock()
	if len(nodes) != 2 {
		t.Fatalf("%s: welcome listed %v; want the 2 other nodes", v.name, nodes)
	}
	v.sess.PC.Close()
	return watchNode(t, api, &clusterNode{id: "next", base: strings.TrimRight(nodes[0], "/")}, v.name+"-next", sent)
}
