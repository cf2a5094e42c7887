// Package loadtest is the engine of `vitrine load`: it publishes a clip to
// a Vitrine stream over WHIP (or leaves publishing to someone else), joins N
// WHEP viewers with the overlay data channel at a given rate, and measures
// delivery, loss, join times (to the first packet, the first keyframe
// packet, the first complete keyframe a decoder could show), how far behind
// live a joiner is, forwarding latency, cue lag and the CPU each side spends
// per packet. The publisher answers keyframe requests like a browser, a
// rate-limited encoder or not at all (Config.PLIAnswer). Viewers are built
// to cost less than the server spends on them, so one machine can load
// another.
package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/signaling/client"
)

// Config says what to load and how.
type Config struct {
	Server string // base URL, e.g. http://10.0.0.5:8080
	// Publish is where the clip is published and cues posted (default
	// Server): another node of a cluster, to load an edge.
	Publish string
	Stream  string
	// Key is the stream key (or admin token). When set the tool publishes
	// Clip itself and posts a timestamped custom cue every second; without
	// it, it only watches what someone else publishes.
	Key      string
	Clip     *Clip // nil: the embedded clip
	Viewers  int
	Rate     float64       // joins per second; <= 0: all at once
	Duration time.Duration // the measured window, after the last join
	// Interval between Progress calls; 0 means a second.
	Interval time.Duration
	Progress func(Progress)
	// MetricsURL is the server's /metrics (default Server + "/metrics"),
	// MetricsToken its bearer token when metrics.token is set.
	MetricsURL   string
	MetricsToken string
	// Loopback keeps ICE on 127.0.0.1 (tests on one machine).
	Loopback bool
	// LocalIP, when set, is the one local address ICE uses, for the
	// publisher and the viewers (a machine with several, a server reached
	// over one interface). Loopback is LocalIP 127.0.0.1.
	LocalIP string
	// NACK makes lite viewers ask for lost video packets again (RTCP NACK,
	// answered with RTX) as browsers do, and count what came back. Without
	// it a viewer's loss is the network's and the server's, unrepaired.
	NACK bool
	// Pace spreads each video frame's packets at this multiple of the
	// clip's bitrate, as browsers' pacers do (Chrome's factor is 2.5); 0
	// sends a frame's packets back to back, as an RTMP ingest does.
	Pace float64
	// PionViewers makes viewers full pion PeerConnections instead of lite
	// viewers (see lite.go): any codec, but about as costly per packet as
	// the server.
	PionViewers bool
	// JoinTimeout bounds one viewer's offer/answer and ICE (default 15 s).
	JoinTimeout time.Duration
	// PLIAnswer is how the publisher answers the server's keyframe
	// requests (PLI, FIR); "" is PLIAnswerAll. With Simulcast each layer
	// answers the requests for its own SSRC, with a throttle of its own.
	PLIAnswer PLIAnswer
	// Simulcast publishes the embedded layers (EmbeddedLayers) in one video
	// m-line, as OBS's WHIP output does: rids "0", "1", "2" (a=simulcast:send
	// 0;1;2), each with its own SSRC, sequence numbers and random timestamp
	// base, all frames of one tick with the same capture time. Viewers'
	// video loss is then counted from their sequence numbers (the server
	// sends each viewer one layer at a time, one continuous track).
	Simulcast bool
	// TWCC makes viewers send transport-wide congestion control feedback
	// (the server's bandwidth estimate for each viewer is made of it): lite
	// viewers about every 100 ms, as Chrome does; pion viewers with pion's
	// TWCC interceptor.
	TWCC bool
	// Netns, NetnsIP, NetnsViewers: NetnsViewers of the lite viewers (spread
	// over the joins) open their UDP socket inside the existing network
	// namespace Netns (/var/run/netns/NAME, as `ip netns add` makes it),
	// bound to NetnsIP, and are reported as the group "constrained". Their
	// HTTP signaling stays in this process's namespace. Linux, and
	// CAP_SYS_ADMIN (root), only.
	Netns        string
	NetnsIP      string
	NetnsViewers int
	// Chatters of the viewers (spread over the joins) chat: each sets a
	// name when its chat snapshot arrives, then posts a message every
	// ChatEvery during the measured window. All come from this machine's
	// address, and the server lets an address create chat.new_names_per_ip
	// names per 10 minutes (default 10): raise it for a load run.
	Chatters  int
	ChatEvery time.Duration
	// Reactions is taps per second in total during the measured window,
	// round-robin over the viewers with a chat snapshot (at most
	// MaxReactionsPerViewer each: the server drops the rest).
	Reactions float64
}

// PLIAnswer is how the tool's publisher answers keyframe requests.
type PLIAnswer string

const (
	// PLIAnswerAll answers every request with a keyframe at the next
	// frame, as browsers' encoders do.
	PLIAnswerAll PLIAnswer = "all"
	// PLIAnswer1s answers at most one request a second, as rate-limited
	// hardware encoders do: a request answered, those in the second after
	// it are dropped (not deferred), the first one after that is answered.
	PLIAnswer1s PLIAnswer = "1s"
	// PLIAnswerNone never answers, like OBS with a fixed keyframe interval
	// or an RTSP camera: the clip's own keyframes (every 2 s in the
	// embedded clip) are all viewers get.
	PLIAnswerNone PLIAnswer = "none"
)

// ParsePLIAnswer reads a -pli-answer value.
func ParsePLIAnswer(s string) (PLIAnswer, error) {
	switch a := PLIAnswer(s); a {
	case PLIAnswerAll, PLIAnswer1s, PLIAnswerNone:
		return a, nil
	}
	return "", fmt.Errorf("load: keyframe request answer %q: want all, 1s or none", s)
}

// keyframeThrottle decides which keyframe requests the publisher answers.
// Requests come on the RTCP goroutines of both senders.
type keyframeThrottle struct {
	mode     PLIAnswer
	mu       sync.Mutex
	answered bool  // any request answered yet
	last     int64 // ns since run start: when the last answered one came
}

// answer says whether the request that came at now gets a keyframe.
func (t *keyframeThrottle) answer(now int64) bool {
	switch t.mode {
	case PLIAnswerNone:
		return false
	case PLIAnswer1s:
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.answered && now-t.last < int64(time.Second) {
			return false
		}
		t.answered, t.last = true, now
	}
	return true
}

// keyframeCounts is what became of the server's keyframe requests.
type keyframeCounts struct {
	reached  atomic.Uint64 // PLI/FIR that reached the publisher
	answered atomic.Uint64 // of those, answered with a keyframe at the next frame
	made     atomic.Uint64 // keyframes the send loop made for them (requests between two frames share one)
}

// Progress is a live view of a run.
type Progress struct {
	Elapsed   time.Duration
	Phase     string // "joining", "measuring", "draining"
	Joined    int    // offers answered
	Failed    int
	Connected int // peer connections connected now
	WithMedia int
	Rate      float64 // packets/s received by all viewers over the last interval
	Loss      float64 // 1 - delivered/expected so far (publishing only)
	Sent      uint64  // packets the publisher sent so far
	ChatSent  int     // chat messages posted so far
	Taps      uint64  // reaction taps tried so far
}

const (
	kindVideo = 0
	kindAudio = 1
	// ringSize send times are kept per kind: far more than can be in flight.
	ringSize = 1 << 14
)

// payloadIndex maps the hash of each payload in the clip to its class (one
// per distinct payload), and each class to the simulcast layer it belongs
// to. Built before the run and never written again, so viewers read it
// without locks.
type payloadIndex struct {
	seed    maphash.Seed
	classes map[uint64]int32
	layers  []int8 // class -> video layer; noLayer for audio, or a payload two layers share
}

// noLayer marks a class that tells no layer apart.
const noLayer = -1

// add indexes one payload of layer (noLayer for audio) and returns its
// class.
func (p *payloadIndex) add(payload []byte, layer int8) int32 {
	h := maphash.Bytes(p.seed, payload)
	if c, ok := p.classes[h]; ok {
		if p.layers[c] != layer {
			p.layers[c] = noLayer
		}
		return c
	}
	c := int32(len(p.classes))
	p.classes[h] = c
	p.layers = append(p.layers, layer)
	return c
}

// sendLog is the publisher's record: per kind the number of packets sent and
// when each recent one was written; per payload class the ordinal of its
// latest send. Written by the two send loops, read by every viewer.
type sendLog struct {
	sent   [2]atomic.Uint64
	times  [2][ringSize]atomic.Int64 // ns since run start, by ordinal % ringSize
	newest [2]atomic.Int64           // ns since run start: the latest send
	last   []atomic.Uint64           // class -> ordinal of its latest send
}

// record notes a packet about to be written.
func (l *sendLog) record(kind int, class int32, now int64) {
	o := l.sent[kind].Add(1)
	l.times[kind][o%ringSize].Store(now)
	l.newest[kind].Store(now)
	l.last[class].Store(o)
}

type run struct {
	cfg    Config
	start  time.Time
	clip   *Clip         // layer 0 and the audio
	layers []*Clip       // the video of each simulcast layer, top first; just clip without simulcast
	lowest int           // the layer with the lowest bitrate
	index  *payloadIndex // nil when watching only
	log    *sendLog
	video  [][][]int32 // class of each payload, per layer, per frame
	audio  []int32

	localIP   netip.Addr // invalid: any
	viewAPI   *webrtc.API
	lite      *liteIdentity // nil: pion viewers
	viewersMu sync.Mutex
	viewers   []*viewer

	keyframes keyframeCounts
	pli       []chan struct{} // per layer: a keyframe request to answer at its next frame
	netns     *netns          // where the constrained viewers' sockets are made, or nil

	cueMu   sync.Mutex
	cueSent []int64 // ns since start, by cue number
	lagMu   sync.Mutex
	lags    []float64

	chat *chatRun // nil: no chat, no reactions
}

func (r *run) now() int64 { return int64(time.Since(r.start)) }

// Run runs a load test and reports on it. It returns an error only when the
// run could not start (bad config, publisher refused); viewers that fail
// are counted in the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Server == "" || cfg.Stream == "" {
		return nil, errors.New("load: server and stream are required")
	}
	if cfg.Viewers < 0 {
		return nil, errors.New("load: negative viewer count")
	}
	base, err := url.Parse(strings.TrimRight(cfg.Server, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("load: server %q is not an http(s) URL", cfg.Server)
	}
	cfg.Server = base.String()
	if cfg.Publish == "" {
		cfg.Publish = cfg.Server
	}
	cfg.Publish = strings.TrimRight(cfg.Publish, "/")
	if cfg.MetricsURL == "" {
		cfg.MetricsURL = cfg.Server + "/metrics"
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.JoinTimeout <= 0 {
		cfg.JoinTimeout = 15 * time.Second
	}
	if cfg.PLIAnswer == "" {
		cfg.PLIAnswer = PLIAnswerAll
	}
	if _, err := ParsePLIAnswer(string(cfg.PLIAnswer)); err != nil {
		return nil, err
	}
	r := &run{cfg: cfg, start: time.Now(), clip: cfg.Clip}
	switch {
	case cfg.Loopback && cfg.LocalIP != "":
		return nil, errors.New("load: loopback and a local IP: choose one")
	case cfg.Loopback:
		r.localIP = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	case cfg.LocalIP != "":
		if r.localIP, err = netip.ParseAddr(cfg.LocalIP); err != nil || !r.localIP.Is4() {
			return nil, fmt.Errorf("load: local IP %q is not an IPv4 address", cfg.LocalIP)
		}
	}
	switch {
	case cfg.Chatters < 0 || cfg.Chatters > cfg.Viewers:
		return nil, fmt.Errorf("load: %d chatters of %d viewers", cfg.Chatters, cfg.Viewers)
	case cfg.Chatters > 0 && cfg.ChatEvery <= 0:
		return nil, errors.New("load: chatters need an interval between messages")
	case cfg.Reactions < 0 || cfg.Reactions > float64(MaxReactionsPerViewer*cfg.Viewers):
		return nil, fmt.Errorf("load: %g reactions/s over %d viewers: the server drops a viewer's taps past %d/s", cfg.Reactions, cfg.Viewers, MaxReactionsPerViewer)
	}
	if cfg.Chatters > 0 || cfg.Reactions > 0 {
		r.chat = newChatRun()
	}
	if cfg.NACK && cfg.PionViewers {
		return nil, errors.New("load: NACK is for lite viewers")
	}
	if cfg.Simulcast && cfg.Clip != nil {
		return nil, errors.New("load: simulcast publishes the embedded layers, not a clip of your own")
	}
	if cfg.NetnsViewers != 0 || cfg.Netns != "" || cfg.NetnsIP != "" {
		ip, err := netip.ParseAddr(cfg.NetnsIP)
		switch {
		case cfg.Netns == "" || cfg.NetnsViewers <= 0:
			return nil, errors.New("load: a network namespace needs its name, its address and a number of viewers in it")
		case err != nil || !ip.Is4():
			return nil, fmt.Errorf("load: namespace address %q is not an IPv4 address", cfg.NetnsIP)
		case cfg.NetnsViewers > cfg.Viewers:
			return nil, fmt.Errorf("load: %d viewers in the namespace, of %d", cfg.NetnsViewers, cfg.Viewers)
		case cfg.PionViewers:
			return nil, errors.New("load: viewers in a network namespace are lite viewers")
		case cfg.Loopback:
			return nil, errors.New("load: a network namespace does not reach this one's loopback: use -local-ip")
		}
		if r.netns, err = openNetns(cfg.Netns, ip); err != nil {
			return nil, err
		}
		defer r.netns.close()
	}
	if cfg.PionViewers {
		if r.viewAPI, err = viewerAPI(r.localIP, cfg.TWCC); err != nil {
			return nil, err
		}
	} else if r.lite, err = newLiteIdentity(); err != nil {
		return nil, err
	}

	var pub *client.Session
	pubCtx, stopPub := context.WithCancel(ctx)
	defer stopPub()
	var pubDone sync.WaitGroup
	if cfg.Key != "" {
		switch {
		case cfg.Simulcast:
			if r.layers, err = EmbeddedLayers(); err != nil {
				return nil, err
			}
			r.clip = r.layers[0]
		case r.clip == nil:
			if r.clip, err = EmbeddedClip(); err != nil {
				return nil, err
			}
			fallthrough
		default:
			r.layers = []*Clip{r.clip}
		}
		r.indexClip()
		watch := &keyframeWatch{counts: &r.keyframes, now: r.now}
		for range r.layers {
			r.pli = append(r.pli, make(chan struct{}, 1))
			watch.layers = append(watch.layers, keyframeLayer{pli: r.pli[len(r.pli)-1], throttle: &keyframeThrottle{mode: cfg.PLIAnswer}})
		}
		api, err := publisherAPI(r.localIP, watch, cfg.Simulcast)
		if err != nil {
			return nil, err
		}
		endpoint := cfg.Publish + "/whip/" + url.PathEscape(cfg.Stream)
		jctx, cancel := context.WithTimeout(ctx, cfg.JoinTimeout)
		var video []*layerOut
		var audio *webrtc.TrackLocalStaticRTP
		if cfg.Simulcast {
			pub, video, audio, err = r.publishSimulcast(jctx, api, endpoint, watch)
		} else {
			var v *webrtc.TrackLocalStaticRTP
			if v, audio, err = r.tracks(); err == nil {
				video = []*layerOut{{track: v}}
				pub, err = client.Publish(jctx, api, endpoint, cfg.Key, v, audio)
			}
		}
		cancel()
		if err != nil {
			return nil, fmt.Errorf("load: publish: %w", err)
		}
		if err := pub.WaitConnected(cfg.JoinTimeout); err != nil {
			pub.Delete(context.Background())
			return nil, fmt.Errorf("load: publish: %w", err)
		}
		pubDone.Go(func() { r.sendVideo(pubCtx, video) })
		if len(r.clip.Audio) > 0 {
			pubDone.Go(func() { r.sendAudio(pubCtx, audio) })
		}
		pubDone.Go(func() { r.postCues(pubCtx) })
	}

	// Progress runs from the first join to the end.
	var phase atomic.Value
	phase.Store("joining")
	progCtx, stopProgress := context.WithCancel(context.Background())
	var progDone sync.WaitGroup
	progDone.Go(func() { r.reportProgress(progCtx, &phase) })

	r.join(ctx)

	// The measured window: steady state, every viewer joined.
	phase.Store("measuring")
	before, scrapeErr := scrape(ctx, cfg.MetricsURL, cfg.MetricsToken)
	cpuBefore, recvBefore, windowStart := processCPU(), r.received(), time.Now()
	chatCtx, stopChat := context.WithCancel(ctx)
	defer stopChat()
	var chatDone sync.WaitGroup
	if r.chat != nil {
		r.startChat(chatCtx, &chatDone)
	}
	select {
	case <-ctx.Done():
	case <-time.After(cfg.Duration):
	}
	after, err := scrape(context.WithoutCancel(ctx), cfg.MetricsURL, cfg.MetricsToken)
	if scrapeErr == nil { // one reason is enough: the report prints it on one line
		scrapeErr = err
	}
	cpuAfter, recvAfter, window := processCPU(), r.received(), time.Since(windowStart)

	// Stop sending, let what is in flight arrive, then hang up.
	phase.Store("draining")
	if r.chat != nil {
		stopChat()
		chatDone.Wait()
		r.stopChat()
		select {
		case <-ctx.Done():
		case <-time.After(chatDrain):
		}
	}
	stopPub()
	pubDone.Wait()
	time.Sleep(500 * time.Millisecond)
	r.closeViewers()
	stopProgress()
	progDone.Wait()
	if pub != nil {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		pub.Delete(dctx)
		cancel()
	}

	rep := r.report()
	if r.chat != nil {
		r.reportChat(rep)
	}
	rep.Window = window.Seconds()
	rep.ToolCPU = cpuOf(cpuAfter-cpuBefore, recvAfter-recvBefore)
	if scrapeErr != nil {
		rep.ServerCPU.Error = "not measured: " + scrapeErr.Error()
	} else {
		rep.ServerCPU = cpuOf(time.Duration((after.cpu-before.cpu)*float64(time.Second)), uint64(max(0, after.egress-before.egress)))
	}
	return rep, nil
}

func cpuOf(d time.Duration, packets uint64) CPU {
	c := CPU{Seconds: d.Seconds(), Packets: packets}
	if packets > 0 {
		c.PerPacket = float64(d.Microseconds()) / float64(packets)
	}
	return c
}

// settings are the ICE settings both sides share: any address, or only
// local (an IPv4 address).
func settings(local netip.Addr) webrtc.SettingEngine {
	var s webrtc.SettingEngine
	s.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	if local.IsValid() {
		s.SetIncludeLoopbackCandidate(local.IsLoopback())
		s.SetIPFilter(func(ip net.IP) bool {
			a, ok := netip.AddrFromSlice(ip)
			return ok && a.Unmap() == local
		})
		s.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	}
	return s
}

// viewerAPI has the codecs and nothing else: no NACK, no reports, and TWCC
// only when asked for (the server's bandwidth estimate needs it). A load
// viewer only counts what arrives; every interceptor would be work per
// packet the server does not have, and lost packets are what it measures.
func viewerAPI(local netip.Addr, twcc bool) (*webrtc.API, error) {
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		return nil, err
	}
	reg := &interceptor.Registry{}
	if twcc {
		if err := webrtc.ConfigureTWCCSender(m, reg); err != nil {
			return nil, err
		}
	}
	s := settings(local)
	s.DisableMediaEngineCopy(true) // one engine for all viewers: they never renegotiate
	// Replays are not what a load viewer guards against; a repeated packet
	// would show as received > expected instead.
	s.DisableSRTPReplayProtection(true)
	s.DisableSRTCPReplayProtection(true)
	return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithSettingEngine(s),
		webrtc.WithInterceptorRegistry(reg)), nil
}

// publisherAPI is a browser-like sender (NACK responder, reports, TWCC) that
// also tells the send loop when to answer the server's keyframe requests;
// with simulcast it has the mid and rid header extensions too.
func publisherAPI(local netip.Addr, watch *keyframeWatch, simulcast bool) (*webrtc.API, error) {
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		return nil, err
	}
	if simulcast {
		if err := webrtc.ConfigureSimulcastExtensionHeaders(m); err != nil {
			return nil, err
		}
	}
	reg := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(m, reg); err != nil {
		return nil, err
	}
	reg.Add(watch)
	s := settings(local)
	return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(reg), webrtc.WithSettingEngine(s)), nil
}

// keyframeWatch is an interceptor (and its own factory: the publisher has
// one peer connection) that counts PLI and FIR from the server and signals
// those its layer's throttle answers to that layer's send loop.
type keyframeWatch struct {
	interceptor.NoOp
	layers []keyframeLayer
	// ssrcs is the layer of each video SSRC (simulcast). Nil: every
	// request is for layer 0, whatever its SSRC.
	ssrcs  atomic.Pointer[map[uint32]int]
	counts *keyframeCounts
	now    func() int64
}

// keyframeLayer is one layer's answer to keyframe requests.
type keyframeLayer struct {
	pli      chan struct{}
	throttle *keyframeThrottle
}

// layerOf is the layer a keyframe request is for, or -1 for an SSRC that is
// no layer's.
func (k *keyframeWatch) layerOf(p rtcp.Packet) int {
	m := k.ssrcs.Load()
	if m == nil {
		return 0
	}
	var ssrc uint32
	switch p := p.(type) {
	case *rtcp.PictureLossIndication:
		ssrc = p.MediaSSRC
	case *rtcp.FullIntraRequest:
		ssrc = p.MediaSSRC
		if len(p.FIR) > 0 {
			ssrc = p.FIR[0].SSRC
		}
	}
	if l, ok := (*m)[ssrc]; ok {
		return l
	}
	return -1
}

func (k *keyframeWatch) NewInterceptor(string) (interceptor.Interceptor, error) { return k, nil }

func (k *keyframeWatch) BindRTCPReader(r interceptor.RTCPReader) interceptor.RTCPReader {
	return interceptor.RTCPReaderFunc(func(b []byte, a interceptor.Attributes) (int, interceptor.Attributes, error) {
		n, a, err := r.Read(b, a)
		if err != nil {
			return n, a, err
		}
		pkts, perr := rtcp.Unmarshal(b[:n])
		if perr != nil {
			return n, a, err
		}
		for _, p := range pkts {
			switch p.(type) {
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				k.counts.reached.Add(1)
				l := k.layerOf(p)
				if l < 0 || l >= len(k.layers) || !k.layers[l].throttle.answer(k.now()) {
					continue
				}
				k.counts.answered.Add(1)
				select {
				case k.layers[l].pli <- struct{}{}:
				default: // one is pending: the same keyframe answers both
				}
			}
		}
		return n, a, err
	})
}

// indexClip hashes every payload of every layer and of the audio so viewers
// can tell what they got, from which layer, and when it was sent.
func (r *run) indexClip() {
	if r.layers == nil {
		r.layers = []*Clip{r.clip}
	}
	r.index = &payloadIndex{seed: maphash.MakeSeed(), classes: map[uint64]int32{}}
	r.video = make([][][]int32, len(r.layers))
	for l, c := range r.layers {
		for _, f := range c.Frames {
			cls := make([]int32, len(f.Payloads))
			for i, p := range f.Payloads {
				cls[i] = r.index.add(p, int8(l))
			}
			r.video[l] = append(r.video[l], cls)
		}
		if c.bytesPerSecond() < r.layers[r.lowest].bytesPerSecond() {
			r.lowest = l
		}
	}
	for _, p := range r.clip.Audio {
		r.audio = append(r.audio, r.index.add(p, noLayer))
	}
	r.log = &sendLog{last: make([]atomic.Uint64, len(r.index.classes))}
}

func (r *run) tracks() (video, audio *webrtc.TrackLocalStaticRTP, err error) {
	video, err = webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{
		MimeType: webrtc.MimeTypeH264, ClockRate: 90000,
		SDPFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"}, "video", "vitrine-load")
	if err != nil {
		return nil, nil, err
	}
	audio, err = webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{
		MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", "vitrine-load")
	return video, audio, err
}

// layerOut is one video layer as the send loop writes it: its track, its
// packet (the header reused, with the mid and rid extensions of a simulcast
// layer), its own timestamp base and sequence numbers, its place in its
// clip.
type layerOut struct {
	track *webrtc.TrackLocalStaticRTP
	pkt   rtp.Packet
	base  uint32
	seq   uint16
	frame int
}

// sendVideo plays each layer's frames in a loop at the clip's frame rate,
// with timestamps and sequence numbers that keep increasing; the frames of
// all layers sent on one tick have the same capture time (each on its
// layer's timestamp base). An answered keyframe request for a layer skips
// that layer ahead to its clip's next keyframe, as an encoder would make one.
func (r *run) sendVideo(ctx context.Context, layers []*layerOut) {
	tick := time.NewTicker(time.Second / time.Duration(r.clip.FPS))
	defer tick.Stop()
	step := uint32(90000 / r.clip.FPS)
	var perByte time.Duration // pacing: time one payload byte takes at the paced rate
	if r.cfg.Pace > 0 {
		var rate float64
		for _, c := range r.layers {
			rate += c.bytesPerSecond()
		}
		perByte = time.Duration(float64(time.Second) / (r.cfg.Pace * rate))
	}
	for _, o := range layers {
		o.pkt.Version = 2
	}
	var departure time.Time
	for n := uint32(0); ; n++ {
		for l, o := range layers {
			frames := r.layers[l].Frames
			select {
			case <-r.pli[l]:
				r.keyframes.made.Add(1)
				for j := 0; j < len(frames) && !frames[o.frame].Key; j++ {
					o.frame = (o.frame + 1) % len(frames)
				}
			default:
			}
			f := frames[o.frame]
			for j, p := range f.Payloads {
				if perByte > 0 {
					if wait := time.Until(departure); wait > 0 {
						time.Sleep(wait)
					}
					departure = later(departure, time.Now()).Add(perByte * time.Duration(len(p)))
				}
				o.pkt.Timestamp, o.pkt.SequenceNumber, o.pkt.Marker, o.pkt.Payload = o.base+n*step, o.seq, j == len(f.Payloads)-1, p
				o.seq++
				r.log.record(kindVideo, r.video[l][o.frame][j], r.now())
				_ = o.track.WriteRTP(&o.pkt)
			}
			o.frame = (o.frame + 1) % len(frames)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (r *run) sendAudio(ctx context.Context, track *webrtc.TrackLocalStaticRTP) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var ts uint32
	var seq uint16
	pkt := rtp.Packet{Header: rtp.Header{Version: 2}}
	for i := 0; ; i = (i + 1) % len(r.clip.Audio) {
		pkt.Timestamp, pkt.SequenceNumber, pkt.Payload = ts, seq, r.clip.Audio[i]
		seq++
		r.log.record(kindAudio, r.audio[i], r.now())
		_ = track.WriteRTP(&pkt)
		ts += 960
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// postCues posts a custom cue each second carrying its number, so viewers
// can time its arrival against when it was posted.
func (r *run) postCues(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	endpoint := r.cfg.Publish + "/api/v1/streams/" + url.PathEscape(r.cfg.Stream) + "/cues"
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		body := fmt.Sprintf(`{"type":"custom","data":{"vitrine_load":%d}}`, n)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+r.cfg.Key)
		r.cueMu.Lock()
		r.cueSent = append(r.cueSent, r.now())
		r.cueMu.Unlock()
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			continue
		}
		res.Body.Close()
	}
}

// cueLag times an overlay message if it is one of the tool's cues.
func (r *run) cueLag(msg []byte, at int64) bool {
	if !bytes.Contains(msg, []byte(`"vitrine_load"`)) {
		return false
	}
	var m struct {
		Type string `json:"type"`
		Data struct {
			N *int `json:"vitrine_load"`
		} `json:"data"`
	}
	if json.Unmarshal(msg, &m) != nil || m.Type != "custom" || m.Data.N == nil {
		return false
	}
	r.cueMu.Lock()
	n := *m.Data.N
	ok := n >= 0 && n < len(r.cueSent)
	var sent int64
	if ok {
		sent = r.cueSent[n]
	}
	r.cueMu.Unlock()
	if ok {
		r.lagMu.Lock()
		r.lags = append(r.lags, ms(time.Duration(at-sent)))
		r.lagMu.Unlock()
	}
	return ok
}

// join starts the viewers at the configured rate and waits until each has
// an answer or has failed.
func (r *run) join(ctx context.Context) {
	var every time.Duration
	if r.cfg.Rate > 0 {
		every = time.Duration(float64(time.Second) / r.cfg.Rate)
	}
	endpoint := r.cfg.Server + "/whep/" + url.PathEscape(r.cfg.Stream)
	var wg sync.WaitGroup
	next := time.Now()
	for i := range r.cfg.Viewers {
		if d := time.Until(next); d > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		}
		if ctx.Err() != nil {
			break
		}
		next = next.Add(every)
		v := &viewer{id: i, run: r}
		if n := r.cfg.NetnsViewers; r.netns != nil && spread(i, n, r.cfg.Viewers) {
			v.group = groupConstrained
		}
		if spread(i, r.cfg.Chatters, r.cfg.Viewers) {
			v.chat.chatter, v.chat.named = true, make(chan struct{})
		}
		r.viewersMu.Lock()
		r.viewers = append(r.viewers, v)
		r.viewersMu.Unlock()
		wg.Go(func() { v.join(ctx, endpoint) })
	}
	wg.Wait()
}

// spread says whether join i is one of n of the total, spread over the
// joins: with 12 and 3, joins 3, 7 and 11.
func spread(i, n, total int) bool {
	return (i+1)*n/total > i*n/total
}

func (r *run) received() uint64 {
	var n uint64
	for _, v := range r.viewers {
		n += v.kinds[kindVideo].received.Load() + v.kinds[kindAudio].received.Load()
	}
	return n
}

func (r *run) reportProgress(ctx context.Context, phase *atomic.Value) {
	if r.cfg.Progress == nil {
		return
	}
	tick := time.NewTicker(r.cfg.Interval)
	defer tick.Stop()
	last, lastAt := uint64(0), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		p := Progress{Elapsed: time.Since(r.start), Phase: phase.Load().(string)}
		var recv, expected uint64
		for _, v := range r.viewersSoFar() {
			switch v.state.Load() {
			case joinOK:
				p.Joined++
			case joinFailed:
				p.Failed++
			}
			if v.connected.Load() {
				p.Connected++
			}
			if v.firstPacket.Load() != 0 {
				p.WithMedia++
			}
			// Sequence spans, not the publisher's count: packets in
			// flight are not lost yet.
			for k := range v.kinds {
				recv += v.kinds[k].received.Load()
				expected += v.kinds[k].seqSpan.Load() - v.kinds[k].padding.Load()
			}
		}
		if r.log != nil {
			p.Sent = r.log.sent[kindVideo].Load() + r.log.sent[kindAudio].Load()
		}
		if r.chat != nil {
			p.ChatSent, p.Taps = r.chat.sent(), r.chat.reactTried.Load()
		}
		if expected > 0 {
			p.Loss = max(0, 1-float64(recv)/float64(expected))
		}
		now := time.Now()
		p.Rate = float64(recv-last) / now.Sub(lastAt).Seconds()
		last, lastAt = recv, now
		r.cfg.Progress(p)
	}
}

// viewersSoFar is the viewers started so far; join appends concurrently.
func (r *run) viewersSoFar() []*viewer {
	r.viewersMu.Lock()
	defer r.viewersMu.Unlock()
	return r.viewers
}

func (r *run) closeViewers() {
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, v := range r.viewers {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			v.close()
		})
	}
	wg.Wait()
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
