// Package cluster lets many Vitrine nodes serve one show. PostgreSQL (the
// store) holds what must be consistent: streams, catalog, sales, orders.
// NATS carries what is news: each node's presence and load, the streams it
// originates, and notices (a buy changed stock, stream definitions
// changed). The node a creator publishes to is the stream's origin; any
// other node with viewers of the stream pulls it from the origin over WHEP
// (relay.go) and serves it, video and overlay, to its own viewers.
package cluster

import (
	"cmp"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/overlay/chat"
)

// Config is a node's part of the cluster.
type Config struct {
	NATSURL      string
	AdvertiseURL string // the base URL other nodes and viewers reach this node at
	NodeID       string
	Secret       []byte // shared by every node: signs the pulls between nodes
	MaxViewers   int    // 0: no cap
	// RelayGrace: an edge keeps pulling a stream this long after its last
	// viewer left, so a viewer who reloads finds it still there.
	RelayGrace time.Duration
	// Interval between presence messages; a node silent for three is gone.
	Interval time.Duration
	// ListenIP, when set, is the only address relays use for ICE (the
	// node's own WebRTC address).
	ListenIP string

	// What the cluster asks of the node.
	Streams func() map[string]*media.Stream // this node's streams by name
	Stream  func(name string) *media.Stream // one of them, nil if none
	Viewers func() int                      // WHEP viewers here, not counting other nodes' pulls
	Pulls   func() int                      // other nodes' pulls served here
	// OnRelay is called when this node starts relaying a stream: a show
	// of the stream running here must stop (the origin runs it) and its
	// viewers move to the relay.
	OnRelay func(stream string)
	// Show notices from other nodes.
	OnStock          func(stream, sku string)
	OnExpired        func()
	OnStreamsChanged func()
	// OnChat is an event of a stream's chat room on another node.
	OnChat func(stream string, ev chat.Event)
	Show   overlay.ShowConfig // for the relays' mirrors

	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// Node is a node's presence message, and what GET /api/v1/cluster lists.
type Node struct {
	ID         string  `json:"id"`
	URL        string  `json:"url"`
	Viewers    int     `json:"viewers"`
	MaxViewers int     `json:"max_viewers"`
	CPU        float64 `json:"cpu"` // cores busy with this process, over the last interval
	Draining   bool    `json:"draining"`
	// Origins: streams whose creator is (or, reconnecting, was last) on this
	// node, with their state; Relays: streams it pulls from an origin.
	Origins map[string]media.State `json:"origins"`
	Relays  []string               `json:"relays"`
	Pulls   int                    `json:"pulls"`
	seen    time.Time
}

// Subjects on NATS.
const (
	subjectNodes   = "vitrine.nodes"
	subjectLeave   = "vitrine.leave"
	subjectStock   = "vitrine.stock"   // payload {"stream","sku"}
	subjectExpired = "vitrine.expired" // reservations returned stock somewhere
	subjectStreams = "vitrine.streams" // stream definitions changed
	subjectChat    = "vitrine.chat"    // payload {"node","stream","event"}: a room's event
)

// Cluster is this node's membership.
type Cluster struct {
	cfg     Config
	nc      *nats.Conn
	log     *slog.Logger
	metrics *metrics

	mu       sync.Mutex
	peers    map[string]*Node // by id, without this node
	draining bool
	relays   map[string]*Relay
	mirrors  map[string]*overlay.Mirror // kept across relays, so viewers stay subscribed
	idle     map[string]time.Time       // relays' streams since when without viewers
	cpu      cpuMeter

	stop chan struct{}
	done sync.WaitGroup
}

type metrics struct {
	nodes     prometheus.GaugeFunc
	redirects *prometheus.CounterVec
	draining  prometheus.Gauge
}

// Join connects to NATS, announces this node and starts following the
// others. Close leaves.
func Join(cfg Config) (*Cluster, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.RelayGrace <= 0 {
		cfg.RelayGrace = 30 * time.Second
	}
	if len(cfg.Secret) < 16 {
		return nil, errors.New("cluster: the node secret (cluster.secret) must be at least 16 characters")
	}
	u, err := url.Parse(cfg.AdvertiseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("cluster: advertise_url %q must be the http(s) base URL other nodes reach this node at", cfg.AdvertiseURL)
	}
	cfg.AdvertiseURL = strings.TrimRight(cfg.AdvertiseURL, "/")
	c := &Cluster{cfg: cfg, log: cfg.Log.With("node", cfg.NodeID), peers: map[string]*Node{}, relays: map[string]*Relay{},
		mirrors: map[string]*overlay.Mirror{}, idle: map[string]time.Time{}, stop: make(chan struct{})}
	c.nc, err = nats.Connect(cfg.NATSURL, nats.Name("vitrine "+cfg.NodeID), nats.MaxReconnects(-1),
		nats.ReconnectWait(500*time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { c.log.Warn("cluster: NATS connection lost", "err", err) }),
		nats.ReconnectHandler(func(*nats.Conn) { c.log.Info("cluster: NATS connection back") }))
	if err != nil {
		return nil, fmt.Errorf("cluster: connect to NATS at %s: %w", cfg.NATSURL, err)
	}
	c.registerMetrics()
	subs := []struct {
		subject string
		fn      nats.MsgHandler
	}{
		{subjectNodes, c.onPresence},
		{subjectLeave, func(m *nats.Msg) { c.forget(string(m.Data)) }},
		{subjectStock, c.onStock},
		{subjectExpired, func(*nats.Msg) { call0(cfg.OnExpired) }},
		{subjectChat, c.onChat},
		{subjectStreams, func(m *nats.Msg) {
			if string(m.Data) != cfg.NodeID {
				call0(cfg.OnStreamsChanged)
			}
		}},
	}
	for _, s := range subs {
		if _, err := c.nc.Subscribe(s.subject, s.fn); err != nil {
			c.nc.Close()
			return nil, fmt.Errorf("cluster: subscribe %s: %w", s.subject, err)
		}
	}
	c.announce()
	c.done.Go(c.run)
	c.log.Info("cluster: joined", "nats", cfg.NATSURL, "advertise", cfg.AdvertiseURL)
	return c, nil
}

func call0(fn func()) {
	if fn != nil {
		fn()
	}
}

func (c *Cluster) registerMetrics() {
	m := &metrics{
		nodes: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vitrine_cluster_nodes",
			Help: "Nodes of the cluster this node sees alive, itself included."}, func() float64 {
			c.mu.Lock()
			defer c.mu.Unlock()
			return float64(len(c.peers) + 1)
		}),
		redirects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vitrine_cluster_redirects_total",
			Help: "WHEP requests sent to another node, by reason (full, draining)."}, []string{"reason"}),
		draining: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vitrine_cluster_draining",
			Help: "1 while this node drains (no new viewers; viewers asked to move)."}),
	}
	for _, reason := range []string{"full", "draining"} {
		m.redirects.WithLabelValues(reason)
	}
	relays := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vitrine_cluster_relays",
		Help: "Streams this node relays: as origin, pulls served to other nodes; as edge, streams pulled from an origin."}, []string{"role"})
	c.cfg.Registerer.MustRegister(m.nodes, m.redirects, m.draining, prometheus.CollectorFunc(func(ch chan<- prometheus.Metric) {
		c.mu.Lock()
		edges := len(c.relays)
		c.mu.Unlock()
		relays.WithLabelValues("edge").Set(float64(edges))
		relays.WithLabelValues("origin").Set(float64(c.cfg.Pulls()))
		relays.Collect(ch)
	}))
	c.metrics = m
}

// Close leaves the cluster: other nodes forget this one at once.
func (c *Cluster) Close() {
	close(c.stop)
	c.done.Wait()
	c.mu.Lock()
	relays := c.relays
	c.relays = map[string]*Relay{}
	c.mu.Unlock()
	for _, r := range relays {
		r.Close()
	}
	_ = c.nc.Publish(subjectLeave, []byte(c.cfg.NodeID))
	_ = c.nc.Flush()
	c.nc.Close()
}

// run announces this node every interval, forgets nodes gone silent and
// keeps the relays to what the viewers need.
func (c *Cluster) run() {
	tick := time.NewTicker(c.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-tick.C:
		}
		c.announce()
		c.mu.Lock()
		for id, n := range c.peers {
			if time.Since(n.seen) > 3*c.cfg.Interval {
				delete(c.peers, id)
				c.log.Warn("cluster: node gone silent", "peer", id)
			}
		}
		c.mu.Unlock()
		c.reconcile()
	}
}

// Changed announces this node now (a creator came or went), rather than at
// the next interval, so that edges find the origin at once.
func (c *Cluster) Changed() {
	c.announce()
	c.reconcile()
}

func (c *Cluster) self() Node {
	n := Node{ID: c.cfg.NodeID, URL: c.cfg.AdvertiseURL, Viewers: c.cfg.Viewers(), MaxViewers: c.cfg.MaxViewers,
		Pulls: c.cfg.Pulls(), Origins: map[string]media.State{}}
	c.mu.Lock()
	n.Draining = c.draining
	n.CPU = c.cpu.read()
	for name := range c.relays {
		n.Relays = append(n.Relays, name)
	}
	relayed := c.relays
	for name, st := range c.cfg.Streams() {
		state, _ := st.State()
		in := st.Ingest()
		switch {
		case in != nil && in.Protocol() != protocolRelay:
			n.Origins[name] = state
		case in == nil && state == media.StateReconnecting && relayed[name] == nil:
			// The creator dropped here and may come back here.
			n.Origins[name] = state
		}
	}
	c.mu.Unlock()
	slices.Sort(n.Relays)
	return n
}

func (c *Cluster) announce() {
	b, _ := json.Marshal(c.self())
	if err := c.nc.Publish(subjectNodes, b); err != nil {
		c.log.Warn("cluster: announce", "err", err)
	}
}

func (c *Cluster) onPresence(m *nats.Msg) {
	var n Node
	if err := json.Unmarshal(m.Data, &n); err != nil || n.ID == "" {
		c.log.Warn("cluster: bad presence message", "err", err)
		return
	}
	if n.ID == c.cfg.NodeID {
		return
	}
	n.seen = time.Now()
	c.mu.Lock()
	old := c.peers[n.ID]
	c.peers[n.ID] = &n
	c.mu.Unlock()
	if old == nil {
		c.log.Info("cluster: node joined", "peer", n.ID, "url", n.URL)
	}
	if old == nil || !maps.Equal(old.Origins, n.Origins) {
		go c.reconcile()
	}
}

func (c *Cluster) forget(id string) {
	c.mu.Lock()
	_, ok := c.peers[id]
	delete(c.peers, id)
	c.mu.Unlock()
	if ok {
		c.log.Info("cluster: node left", "peer", id)
		go c.reconcile()
	}
}

// Origin is the base URL of the node that originates stream, when that is
// another node: a live creator wins over one reconnecting. "" when the
// creator is here or nowhere.
func (c *Cluster) Origin(stream string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.originLocked(stream, c.cfg.Stream(stream))
}

// originLocked is Origin for st, this node's stream of that name (or nil).
func (c *Cluster) originLocked(stream string, st *media.Stream) string {
	if st != nil {
		if in := st.Ingest(); in != nil && in.Protocol() != protocolRelay {
			return ""
		}
	}
	var best *Node
	for _, n := range c.peers {
		state, ok := n.Origins[stream]
		if !ok {
			continue
		}
		if best == nil || (state == media.StateLive && best.Origins[stream] != media.StateLive) ||
			(state == best.Origins[stream] && n.ID < best.ID) {
			best = n
		}
	}
	if best == nil {
		return ""
	}
	return best.URL
}

// Redirect decides where a new viewer goes: "" to stay here, or the base
// URL of the least loaded node with room, and why (full, draining). A full
// node with nowhere to send says so with full and no URL.
func (c *Cluster) Redirect() (target, reason string) {
	viewers := c.cfg.Viewers()
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.draining:
		reason = "draining"
	case c.cfg.MaxViewers > 0 && viewers >= c.cfg.MaxViewers:
		reason = "full"
	default:
		return "", ""
	}
	n := c.leastLoadedLocked()
	if n == nil {
		if reason == "draining" {
			return "", "" // nowhere better: keep serving
		}
		return "", reason
	}
	// Count the viewer there now: until its next presence message, a
	// burst of joiners spreads instead of all landing on one node.
	n.Viewers++
	c.metrics.redirects.WithLabelValues(reason).Inc()
	return n.URL, reason
}

// leastLoadedLocked is the node with room and the fewest viewers for its
// cap (CPU breaks ties), or nil.
func (c *Cluster) leastLoadedLocked() *Node {
	load := func(n *Node) float64 {
		if n.MaxViewers > 0 {
			return float64(n.Viewers) / float64(n.MaxViewers)
		}
		return float64(n.Viewers) / 1000
	}
	var best *Node
	for _, n := range c.peers {
		if n.Draining || (n.MaxViewers > 0 && n.Viewers >= n.MaxViewers) {
			continue
		}
		if best == nil || load(n) < load(best) || (load(n) == load(best) && n.CPU < best.CPU) {
			best = n
		}
	}
	return best
}

// Elsewhere is where a viewer leaving this node should go: the least loaded
// other node, or "" if none.
func (c *Cluster) Elsewhere() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.leastLoadedLocked()
	if n == nil {
		return ""
	}
	n.Viewers++
	return n.URL
}

// Nodes are the other live nodes' base URLs, least loaded first: a player's
// list to fail over to when its node dies.
func (c *Cluster) Nodes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ns []*Node
	for _, n := range c.peers {
		if !n.Draining {
			ns = append(ns, n)
		}
	}
	slices.SortFunc(ns, func(a, b *Node) int { return cmp.Or(cmp.Compare(a.Viewers, b.Viewers), cmp.Compare(a.ID, b.ID)) })
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.URL
	}
	return out
}

// Status is every node, this one first, for GET /api/v1/cluster.
func (c *Cluster) Status() any {
	self := c.self()
	c.mu.Lock()
	nodes := []Node{self}
	for _, n := range c.peers {
		nodes = append(nodes, *n)
	}
	c.mu.Unlock()
	slices.SortFunc(nodes[1:], func(a, b Node) int { return cmp.Compare(a.ID, b.ID) })
	return map[string]any{"node": c.cfg.NodeID, "nodes": nodes}
}

// Drain stops taking viewers: WHEP requests are redirected and presence
// says so. The caller moves the viewers already here (Elsewhere).
func (c *Cluster) Drain() {
	c.mu.Lock()
	c.draining = true
	c.mu.Unlock()
	c.metrics.draining.Set(1)
	c.announce()
}

// Notices to the other nodes.

// StockChanged tells the node running stream's show that a buy here
// changed sku's stock; that node sends the coalesced stock message to
// every viewer of the cluster.
func (c *Cluster) StockChanged(stream, sku string) {
	b, _ := json.Marshal(stockNotice{Stream: stream, SKU: sku})
	_ = c.nc.Publish(subjectStock, b)
}

type stockNotice struct {
	Stream string `json:"stream"`
	SKU    string `json:"sku"`
}

func (c *Cluster) onStock(m *nats.Msg) {
	var n stockNotice
	if json.Unmarshal(m.Data, &n) != nil || n.Stream == "" || n.SKU == "" {
		return
	}
	if c.cfg.OnStock != nil {
		c.cfg.OnStock(n.Stream, n.SKU)
	}
}

type chatNotice struct {
	Node   string     `json:"node"`
	Stream string     `json:"stream"`
	Event  chat.Event `json:"event"`
}

// Share sends a chat room's event to the rooms of the stream on the other
// nodes (chat.Peers).
func (c *Cluster) Share(stream string, ev chat.Event) {
	b, err := json.Marshal(chatNotice{Node: c.cfg.NodeID, Stream: stream, Event: ev})
	if err == nil {
		_ = c.nc.Publish(subjectChat, b)
	}
}

func (c *Cluster) onChat(m *nats.Msg) {
	var n chatNotice
	if json.Unmarshal(m.Data, &n) != nil || n.Stream == "" || n.Node == c.cfg.NodeID || c.cfg.OnChat == nil {
		return
	}
	c.cfg.OnChat(n.Stream, n.Event)
}

// ReservationsExpired tells every node that reservations returned stock,
// so the nodes running shows announce it.
func (c *Cluster) ReservationsExpired() { _ = c.nc.Publish(subjectExpired, nil) }

// StreamsChanged tells the other nodes to reload stream definitions.
func (c *Cluster) StreamsChanged() { _ = c.nc.Publish(subjectStreams, []byte(c.cfg.NodeID)) }

// Tokens between nodes: "node-id.unix-expiry.hmac", signed with the shared
// secret. A pull carries one as its bearer token.

// NodeToken is a token for this node, valid for a minute.
func (c *Cluster) NodeToken() string {
	exp := strconv.FormatInt(time.Now().Add(time.Minute).Unix(), 10)
	return c.cfg.NodeID + "." + exp + "." + c.sign(c.cfg.NodeID+"."+exp)
}

func (c *Cluster) sign(s string) string {
	mac := hmac.New(sha256.New, c.cfg.Secret)
	mac.Write([]byte(s))
	return hex.EncodeToString(mac.Sum(nil))
}

// PeerToken reports whether tok is a valid token of another node.
func (c *Cluster) PeerToken(tok string) bool {
	i := strings.LastIndexByte(tok, '.')
	if i < 0 {
		return false
	}
	body, sig := tok[:i], tok[i+1:]
	j := strings.LastIndexByte(body, '.')
	if j < 0 {
		return false
	}
	exp, err := strconv.ParseInt(body[j+1:], 10, 64)
	if err != nil || time.Now().Unix() > exp {
		return false
	}
	return hmac.Equal([]byte(sig), []byte(c.sign(body)))
}

// cpuMeter reads how many cores this process used since the last read.
type cpuMeter struct {
	last     time.Time
	lastUsed time.Duration
	value    float64
}

func (m *cpuMeter) read() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	used := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	now := time.Now()
	if !m.last.IsZero() && now.Sub(m.last) > 100*time.Millisecond {
		m.value = min(float64(runtime.NumCPU()), (used-m.lastUsed).Seconds()/now.Sub(m.last).Seconds())
		m.last, m.lastUsed = now, used
	} else if m.last.IsZero() {
		m.last, m.lastUsed = now, used
	}
	return m.value
}
