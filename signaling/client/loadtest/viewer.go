package loadtest

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/signaling/client"
)

const (
	joinPending = iota
	joinOK
	joinFailed
)

// Viewer groups: viewers on this machine's network, and viewers whose
// socket is in Config.Netns.
const (
	groupUnconstrained = iota
	groupConstrained
)

var groupNames = [...]string{"unconstrained", "constrained"}

// viewer is one WHEP session of the run. Its reader goroutines own the
// per-kind stats; what progress reads while they run is atomic.
type viewer struct {
	id    int
	run   *run
	group int // groupUnconstrained, or groupConstrained: its socket is in Config.Netns

	joinAt     int64  // ns since run start: when the offer was made
	sentAtJoin uint64 // packets the publisher had sent then
	state      atomic.Int32
	err        error // set before state becomes joinFailed

	connected   atomic.Bool
	channel     atomic.Bool
	overlay     atomic.Uint64
	firstPacket atomic.Int64 // ns since run start, 0: none yet
	firstKey    atomic.Int64 // the first keyframe packet; kinds[kindVideo].pic has the first decodable one
	kinds       [2]kindStats
	chat        viewerChat

	mu      sync.Mutex
	closed  bool
	sess    *client.Session
	lite    *liteSession
	readers sync.WaitGroup
}

// kindStats is what one track of a viewer received.
type kindStats struct {
	taken    atomic.Bool   // a reader owns it (one track per kind)
	received atomic.Uint64 // distinct packets
	firstOrd atomic.Uint64 // publisher's ordinal of the first packet, 0: none
	seqSpan  atomic.Uint64 // highest - first extended sequence number + 1
	padding  atomic.Uint64 // distinct packets of padding alone: numbered, no media

	foreign          uint64
	duplicates       uint64 // packets that came twice (a retransmission and the original)
	lat              histogram
	gotFirst, gotKey bool

	seqStarted     bool
	seqFirst       uint64
	seqMax, cycles uint64
	seen           [seqWindow / 64]uint64 // bit i%seqWindow: extended sequence number i arrived
	markers        [seqWindow / 64]uint64 // bit i%seqWindow: i arrived with the marker bit

	pic firstPicture // video only

	// Behind live (publishing only): the newest publisher send time among
	// the payloads received, and how far it trailed the publisher's newest
	// send about 2 s after the viewer's first packet.
	newestSent    int64
	behind        int64
	behindSampled bool

	// Simulcast (video, publishing only): 1 + the layer of the newest
	// payload that told one (0: none yet), how often it changed, and when
	// the first payload of the run's lowest layer came (0: none).
	layer    int
	switches int
	lowestAt int64
}

// seqWindow is how far back (in sequence numbers) a late packet is still
// told apart from a repeated one: a few seconds of video.
const seqWindow = 2048

// seq tracks the extended sequence number range, to count what should have
// arrived when the tool does not know what was sent, and reports whether s
// is new: a packet that already arrived (a retransmission whose original
// came too) is not counted twice. ext is s extended across wrap-arounds
// (counted from the viewer's first packet, which may be the first of a
// burst the server replays from its cache: the range starts there).
func (k *kindStats) seq(s uint16) (ext uint64, fresh bool) {
	if !k.seqStarted {
		k.seqStarted, k.seqFirst, k.seqMax = true, uint64(s), uint64(s)
		k.seqSpan.Store(1)
		return k.seqMax, k.mark(k.seqMax)
	}
	last := uint16(k.seqMax)
	if d := int16(s - last); d <= 0 {
		back := uint64(-int32(d))
		if back >= seqWindow || back > k.seqMax-k.seqFirst {
			return 0, false // too old to tell, or before the first
		}
		return k.seqMax - back, k.mark(k.seqMax - back)
	}
	if s < last {
		k.cycles += 1 << 16
	}
	next := k.cycles | uint64(s)
	// Forget the bits of the window's lap before: what lies between is
	// missing so far.
	if next-k.seqMax >= seqWindow {
		k.seen = [seqWindow / 64]uint64{}
		k.markers = [seqWindow / 64]uint64{}
	} else {
		for i := k.seqMax + 1; i <= next; i++ {
			k.seen[i%seqWindow/64] &^= 1 << (i % 64)
			k.markers[i%seqWindow/64] &^= 1 << (i % 64)
		}
	}
	k.seqMax = next
	k.seqSpan.Store(k.seqMax - k.seqFirst + 1)
	return next, k.mark(next)
}

// mark notes extended sequence number i as arrived; false if it already had.
func (k *kindStats) mark(i uint64) bool {
	w, bit := &k.seen[i%seqWindow/64], uint64(1)<<(i%64)
	if *w&bit != 0 {
		return false
	}
	*w |= bit
	return true
}

// expected is how many packets of kind k the viewer should have had: what
// the publisher sent from the viewer's first packet on, or, watching only,
// the span of sequence numbers seen.
//
// With simulcast a viewer's video is one layer at a time, of the three the
// publisher sends: its sequence numbers (continuous across switches, as
// the server rewrites them) say what it should have had.
func (v *viewer) expected(k int) uint64 {
	ks := &v.kinds[k]
	if v.run.log == nil || k == kindVideo && len(v.run.layers) > 1 {
		return ks.seqSpan.Load() - ks.padding.Load()
	}
	first := ks.firstOrd.Load()
	if first == 0 {
		return 0
	}
	return v.run.log.sent[k].Load() - first + 1
}

func (v *viewer) join(ctx context.Context, endpoint string) {
	v.joinAt = v.run.now()
	if v.run.log != nil {
		v.sentAtJoin = v.run.log.sent[kindVideo].Load() + v.run.log.sent[kindAudio].Load()
	}
	ctx, cancel := context.WithTimeout(ctx, v.run.cfg.JoinTimeout)
	defer cancel()
	if v.run.lite != nil {
		if err := v.joinLite(ctx, endpoint); err != nil {
			v.fail(err)
			return
		}
		v.state.Store(joinOK)
		return
	}
	sess, err := client.Watch(ctx, v.run.viewAPI, endpoint, true, func(pc *webrtc.PeerConnection, dc *webrtc.DataChannel) {
		pc.OnTrack(func(t *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
			if !v.startReader() {
				return
			}
			defer v.readers.Done()
			v.read(t)
		})
		pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
			v.connected.Store(s == webrtc.PeerConnectionStateConnected)
		})
		// The chat's sends are given now, not on open: pion runs OnOpen on a
		// goroutine of its own, and the first messages (the chat snapshot
		// among them) may be read before it runs. SendText refuses until
		// the channel is open.
		v.setChannel(func(b []byte) error { return dc.SendText(string(b)) })
		dc.OnOpen(func() { v.channel.Store(true) })
		dc.OnMessage(func(m webrtc.DataChannelMessage) { v.channelMessage(m.Data, v.run.now()) })
		dc.OnClose(func() { v.channelEnded(v.run.now()) })
	})
	if err != nil {
		v.fail(err)
		return
	}
	v.mu.Lock()
	v.sess = sess
	v.mu.Unlock()
	if err := sess.WaitConnected(time.Until(deadline(ctx))); err != nil {
		v.fail(err)
		return
	}
	v.state.Store(joinOK)
}

func deadline(ctx context.Context) time.Time {
	d, ok := ctx.Deadline()
	if !ok {
		return time.Now().Add(15 * time.Second)
	}
	return d
}

func (v *viewer) fail(err error) {
	var he *client.HTTPError
	if errors.As(err, &he) {
		hint := ""
		if he.Status == 400 && v.run.lite != nil {
			hint = " (lite viewers take H.264 + Opus only; -viewer pion takes any codec)"
		}
		err = fmt.Errorf("WHEP answer %d: %s%s", he.Status, strings.TrimSpace(he.Body), hint)
	}
	v.err = err
	v.state.Store(joinFailed)
}

func (v *viewer) startReader() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return false
	}
	v.readers.Add(1)
	return true
}

// read is the per-packet path: one read into a reused buffer, a header
// walk, a hash and a map lookup, a clock read, a few counters. Nothing is
// allocated.
func (v *viewer) read(t *webrtc.TrackRemote) {
	k := kindAudio
	if t.Kind() == webrtc.RTPCodecTypeVideo {
		k = kindVideo
	}
	ks := &v.kinds[k]
	buf := make([]byte, 1500)
	if !ks.taken.CompareAndSwap(false, true) {
		for { // a second track of a kind is not the stream's: drain it
			if _, _, err := t.Read(buf); err != nil {
				return
			}
		}
	}
	h264 := strings.EqualFold(t.Codec().MimeType, webrtc.MimeTypeH264)
	for {
		n, _, err := t.Read(buf)
		if err != nil {
			return
		}
		now := v.run.now()
		if payload, h := rtpPayload(buf[:n]); payload != nil {
			v.packet(k, payload, h, now, h264)
		}
	}
}

// behindAfter is when, after a viewer's first packet, behind-live is
// sampled: long enough for a replayed burst to have drained.
const behindAfter = int64(2 * time.Second)

// packet is the bookkeeping for one received packet: a few counters, a
// hash and a map lookup, one latency sample. Nothing is allocated. Only one
// goroutine at a time calls it for a kind.
//
// A joining viewer's first packets may be a burst the server replays from
// its cache (the GOP since the last keyframe, sequence numbers and perhaps
// timestamps rewritten) before the live ones. The accounting holds for it:
// sequence tracking and the first-picture search start at the viewer's
// first packet, whatever it is; a replayed payload is byte-identical to one
// the publisher sent, so the payload index finds it (not foreign), and its
// class's latest send is that original (a GOP is shorter than the clip's
// loop), so the expected count runs from the original's ordinal: the burst
// and everything sent after it.
func (v *viewer) packet(k int, payload []byte, h rtpHead, now int64, h264 bool) {
	ks := &v.kinds[k]
	ext, fresh := ks.seq(h.seq)
	if len(payload) == 0 {
		// Padding alone (the server ends each step of a bandwidth probe
		// with one on the audio track): it takes a sequence number, so it
		// is no gap, but it is no media the publisher sent either.
		if fresh {
			ks.padding.Add(1)
		}
		return
	}
	if !fresh {
		ks.duplicates++
		return
	}
	ks.received.Add(1)
	if !ks.gotFirst {
		ks.gotFirst = true
		v.firstPacket.CompareAndSwap(0, now)
	}
	if k == kindVideo {
		key := !h264 || isKeyframe(payload)
		if !ks.gotKey && key {
			ks.gotKey = true
			v.firstKey.Store(now)
		}
		if h.marker {
			ks.markers[ext%seqWindow/64] |= 1 << (ext % 64)
		}
		if h264 && !ks.pic.done {
			ks.picture(ext, h, key, key && opensAccessUnit(payload), now)
		}
	}
	idx := v.run.index
	if idx == nil {
		return
	}
	cls, ok := idx.classes[maphash.Bytes(idx.seed, payload)]
	if !ok {
		ks.foreign++
		return
	}
	if k == kindVideo && ext == ks.seqMax {
		// Only packets in order: a retransmission of the layer left is
		// not a switch back.
		v.layerOf(ks, cls, now)
	}
	log := v.run.log
	o := log.last[cls].Load()
	if ks.firstOrd.Load() == 0 {
		ks.firstOrd.Store(o)
	}
	sent := log.times[k][o%ringSize].Load()
	// Forwarding latency counts only payloads the publisher sent after the
	// viewer's first packet arrived (of either kind): what the server could
	// have forwarded live. A replayed burst's payloads were sent before
	// the viewer could receive anything, and their age is the burst's, not
	// the forwarding path's. Live packets queued behind a burst count, with
	// the delay it caused. Without a burst this drops only the packets in
	// flight when the first one arrived.
	first := v.firstPacket.Load()
	if sent >= first {
		ks.lat.add(now - sent)
	}
	if k == kindVideo {
		ks.newestSent = max(ks.newestSent, sent)
		if !ks.behindSampled && now-first >= behindAfter {
			ks.behindSampled = true
			ks.behind = max(0, log.newest[kindVideo].Load()-ks.newestSent)
		}
	}
}

// layerOf follows the simulcast layer of the viewer's video from the
// class of a payload that just arrived.
func (v *viewer) layerOf(ks *kindStats, cls int32, now int64) {
	l := int(v.run.index.layers[cls])
	if l == noLayer || l+1 == ks.layer {
		return
	}
	if ks.layer != 0 {
		ks.switches++
	}
	ks.layer = l + 1
	if l == v.run.lowest && ks.lowestAt == 0 {
		ks.lowestAt = now
	}
}

// groupStats gathers one group's viewers for its Group.
type groupStats struct {
	failed                int
	viewers               []ViewerReport
	losses, switches, low []float64
}

func (g *groupStats) add(vr ViewerReport) {
	g.viewers = append(g.viewers, vr)
	g.losses = append(g.losses, vr.Loss)
	g.switches = append(g.switches, float64(vr.Switches))
	if vr.LowestMS >= 0 {
		g.low = append(g.low, vr.LowestMS)
	}
}

func (g *groupStats) group(name string, layers int) Group {
	out := Group{Name: name, Viewers: len(g.viewers), Failed: g.failed, Loss: spreadOf(g.losses), Switches: spreadOf(g.switches), ToLowest: spreadOf(g.low)}
	if layers > 0 {
		out.OnLayer = make([]int, layers)
	}
	for _, v := range g.viewers {
		if v.Delivery() < 0.99 {
			out.BelowTarget++
		}
		if v.Layer >= 0 && v.Layer < layers {
			out.OnLayer[v.Layer]++
		} else {
			out.NoLayer++
		}
	}
	return out
}

func (v *viewer) liteSession() *liteSession {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.lite
}

// nackState is the lite viewer's loss recovery, nil without one.
func (v *viewer) nackState() *nackState {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.lite == nil {
		return nil
	}
	return v.lite.nack
}

func (v *viewer) close() {
	v.mu.Lock()
	v.closed = true
	sess, lite := v.sess, v.lite
	v.mu.Unlock()
	if lite != nil {
		lite.close()
	}
	if sess != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = sess.Delete(ctx) // closes the peer connection too
		cancel()
	}
	v.readers.Wait()
}

// report puts the viewers' numbers together. Call it after closeViewers:
// the reader goroutines have ended.
func (r *run) report() *Report {
	rep := &Report{Server: r.cfg.Server, Stream: r.cfg.Stream, Publish: r.log != nil, Requested: r.cfg.Viewers,
		KeyframeRequests: r.keyframes.reached.Load()}
	if r.log != nil {
		rep.Sent = Packets{Video: r.log.sent[kindVideo].Load(), Audio: r.log.sent[kindAudio].Load()}
		rep.PLIAnswer = r.cfg.PLIAnswer
		rep.KeyframeRequestsAnswered = r.keyframes.answered.Load()
		rep.KeyframesOnRequest = r.keyframes.made.Load()
	}
	var lat histogram
	var losses, firsts, keys, decodables, behinds, rtts []float64
	if r.cfg.NACK {
		rep.Recovery = &Recovery{}
	}
	if r.log != nil {
		for l, c := range r.layers {
			info := LayerInfo{Kbps: c.bytesPerSecond() * 8 / 1000}
			if len(r.layers) > 1 {
				info.RID = LayerRIDs[l]
			}
			rep.Layers = append(rep.Layers, info)
		}
		rep.Lowest = r.lowest
	}
	groups := make([]groupStats, len(groupNames))
	for _, v := range r.viewers {
		vr := ViewerReport{ID: v.id, Group: groupNames[v.group], FirstMS: -1, KeyMS: -1, DecodableMS: -1, BehindMS: -1, LowestMS: -1,
			Channel: v.channel.Load(), Overlay: v.overlay.Load()}
		g := &groups[v.group]
		ks := &v.kinds[kindVideo]
		vr.Layer, vr.Switches = ks.layer-1, ks.switches
		if ks.lowestAt != 0 {
			vr.LowestMS = ms(time.Duration(ks.lowestAt - v.joinAt))
		}
		if lite := v.liteSession(); lite != nil {
			vr.Feedback = lite.feedback.Load()
		}
		rep.Overlay.Messages += vr.Overlay
		if vr.Channel {
			rep.Channels++
		}
		vr.Received = Packets{Video: v.kinds[kindVideo].received.Load(), Audio: v.kinds[kindAudio].received.Load()}
		vr.Expected = Packets{Video: v.expected(kindVideo), Audio: v.expected(kindAudio)}
		for k := range v.kinds {
			vr.Foreign += v.kinds[k].foreign
			vr.Duplicates += v.kinds[k].duplicates
			lat.merge(&v.kinds[k].lat)
		}
		if rc := rep.Recovery; rc != nil {
			if n := v.nackState(); n != nil {
				vr.Asked, vr.Recovered = n.asked, n.recovered
				rc.Asked += n.asked
				rc.Requests += n.requests
				rc.Recovered += n.recovered
				if n.srtt > 0 {
					vr.RTTMS = ms(time.Duration(n.srtt))
					rtts = append(rtts, vr.RTTMS)
				}
			}
			rc.Duplicates += vr.Duplicates
		}
		if vr.Received.Total() == 0 && r.log != nil {
			// Nothing arrived: everything sent since the offer was lost.
			vr.Expected.Video = rep.Sent.Total() - v.sentAtJoin
		}
		if fp := v.firstPacket.Load(); fp != 0 {
			rep.WithMedia++
			vr.FirstMS = ms(time.Duration(fp - v.joinAt))
			firsts = append(firsts, vr.FirstMS)
		}
		if fk := v.firstKey.Load(); fk != 0 {
			vr.KeyMS = ms(time.Duration(fk - v.joinAt))
			keys = append(keys, vr.KeyMS)
		}
		if p := &v.kinds[kindVideo].pic; p.done {
			vr.DecodableMS = ms(time.Duration(p.at - v.joinAt))
			decodables = append(decodables, vr.DecodableMS)
		}
		if ks := &v.kinds[kindVideo]; ks.behindSampled {
			vr.BehindMS = ms(time.Duration(ks.behind))
			behinds = append(behinds, vr.BehindMS)
		}
		switch v.state.Load() {
		case joinOK:
			rep.Joined++
			vr.Loss = 1 - vr.Delivery()
			losses = append(losses, vr.Loss)
			if vr.Delivery() < 0.99 {
				rep.BelowTarget++
			}
			g.add(vr)
		case joinFailed:
			rep.Failed++
			g.failed++
			vr.Error = v.err.Error()
			if len(rep.Errors) < 5 {
				rep.Errors = append(rep.Errors, fmt.Sprintf("viewer %d: %s", v.id, vr.Error))
			}
		}
		rep.Delivered.Video += vr.Received.Video
		rep.Delivered.Audio += vr.Received.Audio
		rep.Expected.Video += vr.Expected.Video
		rep.Expected.Audio += vr.Expected.Audio
		rep.Foreign += vr.Foreign
		rep.Viewers = append(rep.Viewers, vr)
	}
	rep.Loss = spreadOf(losses)
	for i, g := range groups {
		if i == groupUnconstrained || r.netns != nil {
			rep.Groups = append(rep.Groups, g.group(groupNames[i], len(rep.Layers)))
		}
	}
	if rep.Recovery != nil {
		rep.Recovery.RTT = spreadOf(rtts)
	}
	rep.JoinFirstPacket = spreadOf(firsts)
	rep.JoinFirstKeyframe = spreadOf(keys)
	rep.JoinFirstDecodable = spreadOf(decodables)
	rep.BehindLive = spreadOf(behinds)
	rep.Latency = lat.spread()
	r.cueMu.Lock()
	rep.Overlay.CuesPosted = len(r.cueSent)
	r.cueMu.Unlock()
	r.lagMu.Lock()
	rep.Overlay.Lag = spreadOf(r.lags)
	r.lagMu.Unlock()
	return rep
}
