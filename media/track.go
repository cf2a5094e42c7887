package media

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
)

// Track is one media track of a stream (its video or its audio) as viewers
// see it: one continuous RTP sequence and timestamp space that survives the
// creator reconnecting, changing encoder or changing protocol. Sources (a
// WHIP session, an RTMP connection) write into it; down-tracks read from it.
//
// Fan-out: the ingest goroutine rewrites the packet once, stores it in the
// shared NACK cache and hands it to a few shards; each shard is one goroutine
// that writes the packet to its share of the viewers. No lock is held while
// writing to viewers, and a shard that falls behind drops packets for its own
// viewers only.
type Track struct {
	kind    Kind
	stream  string
	layer   int // simulcast layer: 0 for a stream's Video (the primary) and Audio
	metrics *Metrics
	pool    *sync.Pool
	cache   *packetCache

	keyframeInterval time.Duration // minimum time between requests to the source

	mu        sync.Mutex
	codec     *Codec
	source    *Source // the one source whose packets are forwarded
	epoch     uint32
	haveOut   bool // an output packet exists: later sources continue its numbering
	lastSeq   uint16
	lastTS    uint32
	lastAt    time.Time
	clock     senderClock
	gop       gopCache // video only: what joining viewers start on
	kfLast    time.Time
	kfPending bool
	shards    []*shard
	in        ingestStats
	window    rateWindow // for the creator's health report
	closed    bool
	stop      chan struct{}

	nacks, plis atomic.Uint64 // from viewers' RTCP

	// bitrate is what the source sent over the last two seconds, in bit/s,
	// and rateBytes/rateAt the byte counts and times it is measured from
	// (sendReports measures it each second).
	bitrate   atomic.Int64
	rateBytes [2]uint64
	rateAt    [2]time.Time
	// peak is the highest bitrate of the last peakWindow measurements: what
	// a viewer's link must carry for this layer, and a stable rank among
	// layers whose rates wobble (a browser shifts bitrate between them).
	peak   atomic.Int64
	recent [peakWindow]int64
	rateN  int
	// viewing is how many viewers are sent this track (video: the layer
	// their allocator picked).
	viewing atomic.Int64
}

// senderClock maps the track's output RTP timestamps to time, from the
// source's RTCP Sender Reports (or the ingest clock for RTMP/RTSP).
type senderClock struct {
	valid  bool
	source time.Time // the source's own clock (a browser's NTP time)
	local  time.Time // the same instant on this server's clock
	rtp    uint32    // output timestamp at that instant
}

type shard struct {
	in      chan *Packet
	viewers atomic.Pointer[[]*DownTrack]
	done    chan struct{}
	forward latencyHist
}

// shardQueue is how many packets a shard may lag behind ingest before its
// viewers lose packets: about half a second of 2.5 Mbit/s video.
const shardQueue = 128

func newTrack(kind Kind, stream string, codec Codec, m *Metrics, keyframeInterval time.Duration) *Track {
	// Video's NACK cache covers a replayed group of pictures of a few
	// seconds, whose packets a joining viewer may ask for again.
	cacheSize := 2048
	if kind == Audio {
		cacheSize = 256
	}
	t := &Track{
		kind:    kind,
		stream:  stream,
		metrics: m,

		cache:            newPacketCache(cacheSize),
		keyframeInterval: keyframeInterval,
		codec:            &codec,
		gop:              gopCache{mode: ReplayOff},
		stop:             make(chan struct{}),
	}
	t.pool = newPacketPool(t)
	n := runtime.GOMAXPROCS(0)
	for range n {
		sh := &shard{in: make(chan *Packet, shardQueue), done: make(chan struct{})}
		sh.viewers.Store(&[]*DownTrack{})
		t.shards = append(t.shards, sh)
		go t.runShard(sh)
	}
	go t.sendReports()
	return t
}

// Kind is audio or video.
func (t *Track) Kind() Kind { return t.kind }

// Codec is what the track carries now (or will carry, before the first source).
func (t *Track) Codec() Codec {
	t.mu.Lock()
	defer t.mu.Unlock()
	return *t.codec
}

// Expect sets the codec viewers are bound to before a new source's first
// packet (a creator, or a relay, answered but is not yet sending).
func (t *Track) Expect(c Codec) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.codec = &c
}

// Source is one ingest session's feed into a track. Only the newest source
// of a track is forwarded; an older one still writing (a creator's previous
// connection that has not timed out yet) is ignored.
type Source struct {
	track    *Track
	codec    *Codec
	keyframe func() // asks the encoder for a keyframe; nil if it cannot be asked
	// onRequest: the encoder makes a keyframe of the next frame for every
	// request (Vitrine's own re-encode). Joining viewers then ask for one
	// rather than start on the cached group of pictures, which would be a
	// burst of up to the creator's whole keyframe interval.
	onRequest bool
	isKey     func(payload []byte) bool
	started   bool
	seqOffset uint16
	tsOffset  uint32
	seen      seenWindow
}

// seenWindow remembers which of a source's last 1024 sequence numbers came.
// A browser pads its uplink with copies of packets it already sent (RTX
// "redundant payloads", which pion hands over as the originals): forwarded,
// they cost every viewer that bandwidth again and inflate the layer's
// measured bitrate (a low layer read as 2.2 Mbit/s, ranked above the top
// one). A retransmission of a packet that was lost on the way in is new
// here and goes through.
type seenWindow struct {
	bits [1024 / 64]uint64
	top  uint16
	any  bool
}

func (w *seenWindow) flip(seq uint16, on bool) {
	i, b := (seq%1024)/64, uint64(1)<<(seq%64)
	if on {
		w.bits[i] |= b
	} else {
		w.bits[i] &^= b
	}
}

// add records seq and reports whether it is new: not seen, and not older
// than the window.
func (w *seenWindow) add(seq uint16) bool {
	switch d := seq - w.top; {
	case !w.any:
		w.any = true
	case d == 0:
		return false
	case d < 0x8000: // newer: forget what the window slides past
		if d >= 1024 {
			w.bits = [1024 / 64]uint64{}
		} else {
			for x := w.top + 1; x != seq; x++ {
				w.flip(x, false)
			}
		}
	default:
		if w.top-seq >= 1024 || w.bits[(seq%1024)/64]&(1<<(seq%64)) != 0 {
			return false
		}
		w.flip(seq, true)
		return true
	}
	w.top = seq
	w.flip(seq, true)
	return true
}

// NewSource makes s the track's source. requestKeyframe may be nil for
// sources that cannot be asked (RTMP, RTSP).
func (t *Track) NewSource(codec Codec, requestKeyframe func()) *Source {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := &Source{track: t, codec: &codec, keyframe: requestKeyframe}
	if t.kind == Video {
		s.isKey = keyframeDetector(codec.MimeType)
	}
	t.source = s
	t.codec = s.codec
	t.epoch++
	t.clock = senderClock{}
	t.gop.reset()
	// The creator's health is per session: a new encoder has its own
	// keyframe interval and rates (the counters themselves keep counting).
	t.in.newSource()
	t.window = rateWindow{}
	return s
}

// KeyframesOnRequest says the encoder makes a keyframe of the next frame
// whenever asked, so joining viewers ask instead of replaying the cached
// group of pictures. Call it before the first WriteRTP.
func (s *Source) KeyframesOnRequest() {
	s.track.mu.Lock()
	defer s.track.mu.Unlock()
	s.onRequest = true
}

// End stops forwarding from s if it is still the track's source.
func (s *Source) End() {
	t := s.track
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.source == s {
		t.source = nil
	}
}

var errNotSource = errors.New("media: source replaced")

// WriteRTP forwards one packet from the source. It is called by one ingest
// goroutine per source; header and payload are not retained.
func (s *Source) WriteRTP(h *rtp.Header, payload []byte) error {
	t := s.track
	now := time.Now()
	if len(payload) > maxPayload {
		t.metrics.dropped(t.kind, "oversize")
		return fmt.Errorf("media: %d byte payload exceeds %d", len(payload), maxPayload)
	}

	t.mu.Lock()
	if t.source != s || t.closed {
		t.mu.Unlock()
		return errNotSource
	}
	if len(payload) == 0 || !s.seen.add(h.SequenceNumber) {
		// Padding, or a copy of a packet already forwarded.
		t.mu.Unlock()
		t.metrics.dropped(t.kind, "duplicate")
		return nil
	}
	if !s.started {
		s.started = true
		if t.haveOut {
			// Continue the viewers' numbering: the next sequence number, and
			// a timestamp that advanced by the wall time that passed.
			elapsed := now.Sub(t.lastAt)
			ticks := uint32(elapsed.Seconds()*float64(s.codec.ClockRate)) + 1
			s.seqOffset = t.lastSeq + 1 - h.SequenceNumber
			s.tsOffset = t.lastTS + ticks - h.Timestamp
		}
	}
	p := t.pool.Get().(*Packet)
	p.refs.Store(1)
	p.Header = rtp.Header{
		Version:        2,
		Padding:        h.Padding,
		Marker:         h.Marker,
		PayloadType:    h.PayloadType,
		SequenceNumber: h.SequenceNumber + s.seqOffset,
		Timestamp:      h.Timestamp + s.tsOffset,
		PaddingSize:    h.PaddingSize,
	}
	p.Payload = p.buf[:copy(p.buf[:], payload)]
	p.Keyframe = s.isKey != nil && s.isKey(payload)
	p.Epoch = t.epoch
	p.Arrival = monotonic(now)
	if !t.haveOut || seqNewer(p.Header.SequenceNumber, t.lastSeq) {
		t.haveOut = true
		t.lastSeq = p.Header.SequenceNumber
		t.lastTS = p.Header.Timestamp
		t.lastAt = now
		if !s.onRequest {
			t.gop.add(p, now)
		}
	}
	t.cache.put(p)
	t.in.count(p, s.codec.ClockRate)
	// Handing over under t.mu keeps close from closing a shard's channel
	// mid-send; the sends never block.
	behind := 0
	for _, sh := range t.shards {
		viewers := len(*sh.viewers.Load())
		if viewers == 0 {
			continue
		}
		p.retain()
		select {
		case sh.in <- p:
		default:
			p.release()
			behind++
			t.in.slowDrops += uint64(viewers)
		}
	}
	t.mu.Unlock()
	p.release()

	t.metrics.ingested(t.kind, len(payload))
	for range behind {
		t.metrics.dropped(t.kind, "shard_behind")
	}
	return nil
}

// SenderReport records a Sender Report of the source: at sourceTime on the
// source's clock (local on this server's), the source's RTP clock read rtpTime.
func (s *Source) SenderReport(sourceTime, local time.Time, rtpTime uint32) {
	t := s.track
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.source != s {
		return
	}
	t.clock = senderClock{valid: true, source: sourceTime, local: local, rtp: rtpTime + s.tsOffset}
}

// TimestampOffset is what the track adds to this source's timestamps (0
// before its first packet): a time on the source's RTP clock plus the
// offset is the same time on the viewers'. A relay uses it to carry the
// overlay's stamps from the origin's clock to its own.
func (s *Source) TimestampOffset() uint32 {
	s.track.mu.Lock()
	defer s.track.mu.Unlock()
	return s.tsOffset
}

// RTPTimeAt maps an instant on the source's clock (for a browser creator, the
// wall-clock time of a click) to the viewers' RTP timestamp. It needs a Sender
// Report from the current source.
func (t *Track) RTPTimeAt(sourceTime time.Time) (uint32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.clock.valid {
		return 0, false
	}
	return t.clock.rtp + ticks(sourceTime.Sub(t.clock.source), t.codec.ClockRate), true
}

// clockReference is the newest Sender Report of the source: an instant on
// its clock and the track's timestamp then.
func (t *Track) clockReference() (time.Time, uint32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.clock.source, t.clock.rtp, t.clock.valid
}

// LastTimestamp is the viewers' RTP timestamp of the newest packet ingested.
func (t *Track) LastTimestamp() (uint32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastTS, t.haveOut
}

// rtpNow is the RTP timestamp that corresponds to now, for Sender Reports to
// viewers. Audio and video of one source share the source's clock, so their
// reports keep lips in sync.
func (t *Track) rtpNow(now time.Time) (uint32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.clock.valid:
		return t.clock.rtp + ticks(now.Sub(t.clock.local), t.codec.ClockRate), true
	case t.haveOut:
		return t.lastTS + ticks(now.Sub(t.lastAt), t.codec.ClockRate), true
	}
	return 0, false
}

// RequestKeyframe asks the source for a keyframe, at most once per
// keyframeInterval: requests in between are folded into one sent when the
// interval ends, so a burst of joining viewers costs the creator one keyframe.
func (t *Track) RequestKeyframe() {
	if t.kind != Video {
		return
	}
	t.mu.Lock()
	if t.source == nil || t.source.keyframe == nil {
		t.mu.Unlock()
		return
	}
	now := time.Now()
	if wait := t.kfLast.Add(t.keyframeInterval).Sub(now); wait > 0 {
		if !t.kfPending {
			t.kfPending = true
			time.AfterFunc(wait, t.sendPendingKeyframeRequest)
		}
		t.mu.Unlock()
		return
	}
	t.kfLast = now
	ask := t.source.keyframe
	t.mu.Unlock()
	t.metrics.KeyframeRequests.Inc()
	ask()
}

// enableReplay turns on the group-of-pictures cache that viewers joining
// mid-stream start on (a stream's Video track; not the original video of a
// re-encode, which only RTSP readers take).
func (t *Track) enableReplay(mode JoinReplay, maxBytes int, maxAge time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gop = gopCache{mode: mode, maxBytes: maxBytes, maxAge: maxAge}
}

// replayBefore appends to out, retained, the cached packets a viewer needs
// before p to start decoding; nothing if the cache cannot serve.
func (t *Track) replayBefore(p *Packet, out []*Packet) []*Packet {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.gop.before(p, time.Now(), out)
}

// viewerReady is called when a viewer's connection is up and it can
// receive. It starts on the cached group of pictures if there is one; the
// creator is asked for a keyframe when there is none (the viewer waits for
// it), or when the group is old (so later joiners get a short replay).
func (t *Track) viewerReady() {
	if t.kind != Video {
		return
	}
	t.mu.Lock()
	now := time.Now()
	ask := !t.gop.usable(t.epoch, now) || now.Sub(t.gop.at) > gopRefreshAfter
	t.mu.Unlock()
	if ask {
		t.RequestKeyframe()
	}
}

func (t *Track) sendPendingKeyframeRequest() {
	t.mu.Lock()
	t.kfPending = false
	t.mu.Unlock()
	t.RequestKeyframe()
}

func (t *Track) addDownTrack(d *DownTrack) {
	t.mu.Lock()
	defer t.mu.Unlock()
	best := t.shards[0]
	for _, sh := range t.shards[1:] {
		if len(*sh.viewers.Load()) < len(*best.viewers.Load()) {
			best = sh
		}
	}
	old := *best.viewers.Load()
	next := make([]*DownTrack, len(old), len(old)+1)
	copy(next, old)
	next = append(next, d)
	best.viewers.Store(&next)
}

func (t *Track) removeDownTrack(d *DownTrack) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, sh := range t.shards {
		old := *sh.viewers.Load()
		for i, v := range old {
			if v == d {
				next := make([]*DownTrack, 0, len(old)-1)
				next = append(next, old[:i]...)
				next = append(next, old[i+1:]...)
				sh.viewers.Store(&next)
				return
			}
		}
	}
}

func (t *Track) downTracks() []*DownTrack {
	var all []*DownTrack
	for _, sh := range t.shards {
		all = append(all, *sh.viewers.Load()...)
	}
	return all
}

// shardBurst bounds how many queued packets a shard writes in one pass.
const shardBurst = 16

// runShard writes each packet to the shard's viewers. Packets that queued
// up meanwhile (a frame's packets arrive together; a busy core lets more
// pile up) are written viewer by viewer: each viewer gets its run of
// packets back to back, which the UDP batcher sends to its address in one
// go (GSO on Linux), at a fraction of the kernel's cost per datagram. A
// viewer's last packet of the run goes out no later than packet by packet.
func (t *Track) runShard(sh *shard) {
	defer close(sh.done)
	var burst [shardBurst]*Packet
	var sent [shardBurst]int
	for p := range sh.in {
		burst[0] = p
		n := 1
	drain:
		for n < shardBurst {
			select {
			case q, ok := <-sh.in:
				if !ok {
					break drain
				}
				burst[n] = q
				n++
			default:
				break drain
			}
		}
		for _, d := range *sh.viewers.Load() {
			for i, q := range burst[:n] {
				if d.writePacket(q) {
					sent[i]++
				}
			}
		}
		now := monotonic(time.Now())
		for i, q := range burst[:n] {
			if sent[i] > 0 {
				// Once per packet per shard, not per viewer: the time to
				// the shard's last viewer bounds every viewer's.
				sh.forward.observe(now-q.Arrival, &t.metrics.forwardBounds)
			}
			t.metrics.forwarded(t.kind, sent[i], len(q.Payload))
			q.release()
			burst[i], sent[i] = nil, 0
		}
	}
}

// close stops the shards and frees the cache. The track must not be written
// to afterwards.
func (t *Track) close() {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	t.source = nil
	t.gop.reset()
	t.mu.Unlock()
	close(t.stop)
	for _, sh := range t.shards {
		close(sh.in)
		<-sh.done
	}
	t.cache.clear()
}

// sendReports sends every viewer an RTCP Sender Report each second, from
// counters the down-tracks keep: browsers need them to sync audio with video.
// One goroutine per track does it, instead of an interceptor per viewer.
func (t *Track) sendReports() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case now := <-tick.C:
			t.measureRate()
			if t.layer != 0 {
				// Viewers of a simulcast layer get their reports from the
				// primary, on whose clock their timestamps are.
				continue
			}
			rtpTime, ok := t.rtpNow(now)
			if !ok {
				continue
			}
			for _, d := range t.downTracks() {
				if sr := d.senderReport(now, rtpTime); sr != nil {
					_ = d.sendRTCP([]rtcp.Packet{sr})
				}
				if d.stalled(now) {
					// A keyframe request can be lost (RTCP over UDP) or
					// ignored (a browser's encoder drops requests that
					// come too soon after the last one): ask again while
					// a viewer that can receive still has no picture.
					// Requests are throttled per layer.
					d.current().RequestKeyframe()
				}
				if t.kind == Video {
					d.tick(now)
				}
			}
		}
	}
}

// measureRate updates bitrate, once a second.
func (t *Track) measureRate() {
	now := time.Now()
	t.mu.Lock()
	bytes := t.in.bytes
	live := t.source != nil && now.Sub(t.lastAt) < time.Second
	t.mu.Unlock()
	// Over the last two seconds, or the last one in a track's first two.
	from := 0
	if t.rateAt[0].IsZero() {
		from = 1
	}
	rate, known := int64(0), false
	if live && !t.rateAt[from].IsZero() {
		rate = int64(float64(bytes-t.rateBytes[from]) * 8 / now.Sub(t.rateAt[from]).Seconds())
		known = true
	}
	t.rateBytes[0], t.rateBytes[1] = t.rateBytes[1], bytes
	t.rateAt[0], t.rateAt[1] = t.rateAt[1], now
	t.bitrate.Store(rate)
	t.recent[t.rateN%peakWindow] = rate
	t.rateN++
	peak := int64(0)
	for _, r := range t.recent {
		peak = max(peak, r)
	}
	switch {
	case !live:
		peak = 0 // stopped: not a layer to send
	case !known:
		peak = -1 // sending, not measured yet
	}
	t.peak.Store(peak)
}

// peakWindow is how many seconds the peak bitrate covers.
const peakWindow = 10

// PeakBitrate is the highest bitrate of the last 10 s: 0 while the source
// sends nothing, -1 while it sends but has not been measured yet (its
// first second).
func (t *Track) PeakBitrate() int { return int(t.peak.Load()) }

// Bitrate is what the source sends, in bit/s (0 when it does not).
func (t *Track) Bitrate() int { return int(t.bitrate.Load()) }

// seqNewer reports whether a comes after b in 16-bit wrap-around order.
func seqNewer(a, b uint16) bool { return a != b && a-b < 0x8000 }

func ticks(d time.Duration, clockRate uint32) uint32 {
	return uint32(int64(d.Seconds() * float64(clockRate)))
}

var processStart = time.Now()

func monotonic(t time.Time) int64 { return int64(t.Sub(processStart)) }
