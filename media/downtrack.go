package media

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/media/alloc"
	"github.com/vitrine-live/vitrine/media/layer"
)

// DownTrack is one viewer's copy of a track. It implements webrtc.TrackLocal:
// pion binds it to the viewer's RTP sender, and the track's shard writes each
// packet to it with the viewer's SSRC and payload type. Sequence numbers and
// timestamps are the track's, which are continuous across creator reconnects,
// so a viewer never renegotiates. A WHEP viewer's video may come from any of
// the creator's simulcast layers (simulcast.go); it still sees one track.
type DownTrack struct {
	track    *Track
	id       string
	streamID string
	joined   time.Time
	sendRTCP func([]rtcp.Packet) error

	bound  atomic.Bool
	ssrc   uint32
	pt     uint8
	rtxSSR uint32
	rtxPT  uint8
	codec  Codec
	writer webrtc.TrackLocalWriter

	// replay is what the viewer gets before live packets when it joins or
	// the creator changes (ReplayOff for RTSP readers).
	replay JoinReplay
	// readyAt is when the viewer's connection came up (unix nanoseconds;
	// 0 before): packets written earlier are dropped by pion.
	readyAt atomic.Int64
	// waiting mirrors needKeyframe for the report goroutine.
	waiting atomic.Bool
	// lastReplay is the viewer's newest replay, for its retransmissions.
	lastReplay atomic.Pointer[replayed]

	// mu serialises what the shards of several layers and the RTCP
	// goroutine do to the viewer's video (writes, retransmissions, layer
	// switches); it is never contended for long. Lock order: DownTrack.mu,
	// then Track.mu.
	mu           sync.Mutex
	hdr          rtp.Header
	epoch        uint32
	needKeyframe bool
	started      bool
	mismatch     bool
	// catchUp is a joining viewer's replay and the live packets that came
	// during it, sent paced (see startReplay); nil once caught up.
	catchUp catchUp

	// Simulcast and bandwidth estimation (simulcast.go), under mu.
	sim simulcast

	rtxSeq uint16
	rtxHdr rtp.Header
	rtxBuf [maxPayload + 2]byte

	packets atomic.Uint32 // for Sender Reports
	octets  atomic.Uint32
	lost    atomic.Uint32 // fraction lost (0-255) from the viewer's last Receiver Report

	onCodecMismatch func()

	// choice is the viewer's pick in the player's quality menu (video).
	choice atomic.Pointer[alloc.Choice]
}

func newDownTrack(t *Track, id, streamID string, sendRTCP func([]rtcp.Packet) error, onCodecMismatch func()) *DownTrack {
	d := &DownTrack{
		track:           t,
		id:              id,
		streamID:        streamID,
		joined:          time.Now(),
		sendRTCP:        sendRTCP,
		needKeyframe:    t.kind == Video,
		replay:          ReplayOff,
		onCodecMismatch: onCodecMismatch,
	}
	d.waiting.Store(d.needKeyframe)
	d.sim.sending = t
	d.sim.rw = layer.New(t.layer)
	if t.kind == Video {
		t.viewing.Add(1)
	}
	return d
}

// ready marks the viewer's connection as up: from now on what is written
// reaches it.
func (d *DownTrack) ready() {
	d.readyAt.CompareAndSwap(0, time.Now().UnixNano())
	d.track.viewerReady()
}

// stalled reports whether the viewer has been able to receive for a second
// and still waits for a keyframe.
func (d *DownTrack) stalled(now time.Time) bool {
	at := d.readyAt.Load()
	return at != 0 && d.waiting.Load() && now.UnixNano()-at > int64(time.Second)
}

func (d *DownTrack) setNeedKeyframe(need bool) {
	d.needKeyframe = need
	d.waiting.Store(need)
}

// ID is the track id in the viewer's SDP.
func (d *DownTrack) ID() string { return d.id }

// RID is empty: a viewer gets one layer.
func (d *DownTrack) RID() string { return "" }

// StreamID is the media stream id in the viewer's SDP.
func (d *DownTrack) StreamID() string { return d.streamID }

// Kind is audio or video.
func (d *DownTrack) Kind() webrtc.RTPCodecType {
	if d.track.kind == Audio {
		return webrtc.RTPCodecTypeAudio
	}
	return webrtc.RTPCodecTypeVideo
}

var errNoCodec = errors.New("media: viewer cannot decode the stream's codec")

// Bind picks, among the codecs the viewer negotiated, the one the track
// carries.
func (d *DownTrack) Bind(ctx webrtc.TrackLocalContext) (webrtc.RTPCodecParameters, error) {
	want := d.track.Codec()
	codecs := ctx.CodecParameters()
	chosen, ok := pickCodec(want, codecs)
	if !ok {
		return webrtc.RTPCodecParameters{}, fmt.Errorf("%w (%s)", errNoCodec, want.MimeType)
	}
	d.ssrc = uint32(ctx.SSRC())
	d.pt = uint8(chosen.PayloadType)
	d.codec = Codec{MimeType: chosen.MimeType, ClockRate: chosen.ClockRate, Channels: chosen.Channels, Fmtp: chosen.SDPFmtpLine}
	d.writer = ctx.WriteStream()
	d.bindEstimator(ctx.HeaderExtensions())
	if rtx := uint32(ctx.SSRCRetransmission()); rtx != 0 {
		for _, c := range codecs {
			if strings.EqualFold(c.MimeType, webrtc.MimeTypeRTX) && c.SDPFmtpLine == fmt.Sprintf("apt=%d", chosen.PayloadType) {
				d.rtxSSR, d.rtxPT = rtx, uint8(c.PayloadType)
			}
		}
	}
	d.bound.Store(true)
	return chosen, nil
}

// pickCodec prefers the exact format (H.264 profile included), then any the
// viewer can decode.
func pickCodec(want Codec, codecs []webrtc.RTPCodecParameters) (webrtc.RTPCodecParameters, bool) {
	var fallback *webrtc.RTPCodecParameters
	for i, c := range codecs {
		have := Codec{MimeType: c.MimeType, Fmtp: c.SDPFmtpLine}
		if !have.SameFormat(want) {
			continue
		}
		if fmtpValue(c.SDPFmtpLine, "profile-level-id") == fmtpValue(want.Fmtp, "profile-level-id") {
			return c, true
		}
		if fallback == nil {
			fallback = &codecs[i]
		}
	}
	if fallback != nil {
		return *fallback, true
	}
	return webrtc.RTPCodecParameters{}, false
}

// Unbind stops writes to the viewer.
func (d *DownTrack) Unbind(webrtc.TrackLocalContext) error {
	d.bound.Store(false)
	return nil
}

// writePacket runs on the track's shard goroutine, once per packet per
// viewer: it must not block, and allocates only when a viewer starts a
// replay. It reports whether it sent p now. A viewer that needs a keyframe
// first gets the cached group of pictures before p, or waits for a
// keyframe.
func (d *DownTrack) writePacket(p *Packet) bool {
	if !d.bound.Load() || d.mismatch {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if p.Track != d.sim.sending && !d.switchLayer(p) {
		return false
	}
	if p.Epoch != d.epoch {
		// A new source: its codec may differ, and the decoder needs a
		// keyframe from it before anything else.
		d.epoch = p.Epoch
		d.catchUp.drop()
		d.setNeedKeyframe(d.track.kind == Video)
		if c := p.Track.Codec(); !d.codec.SameFormat(c) {
			d.mismatch = true
			if d.onCodecMismatch != nil {
				go d.onCodecMismatch()
			}
			return false
		}
	}
	if d.needKeyframe {
		if d.replay != ReplayOff && d.readyAt.Load() != 0 && d.startReplay(p) {
			return false
		}
		if !p.Keyframe {
			return false
		}
	}
	if d.catchUp.active() {
		p.retain()
		d.catchUp.queue = append(d.catchUp.queue, p)
		d.drain(time.Now())
		return false
	}
	if !d.write(p, nil) {
		return false
	}
	d.setNeedKeyframe(false)
	return true
}

// write sends one packet with the viewer's SSRC and payload type (and the
// timestamp a squeezed replay gave it); false if it did not go out.
func (d *DownTrack) write(p *Packet, r *replayed) bool {
	seq, ts, ok := d.sim.rw.Rewrite(p.Header.SequenceNumber, r.timestamp(p.Header.SequenceNumber, p.Header.Timestamp))
	if !ok {
		return false
	}
	d.hdr = p.Header
	d.hdr.SSRC = d.ssrc
	d.hdr.PayloadType = d.pt
	d.hdr.SequenceNumber, d.hdr.Timestamp = seq, ts
	d.stamp(&d.hdr, len(p.Payload), false)
	n, err := d.writer.WriteRTP(&d.hdr, p.Payload)
	if err != nil {
		d.track.metrics.dropped(d.track.kind, "write_error")
		return false
	}
	if n == 0 {
		// pion drops packets silently until the viewer's DTLS handshake
		// has set up SRTP: nothing was sent, so the keyframe is still
		// needed (before, a viewer lost the keyframe it had asked for and
		// waited for the next one).
		return false
	}
	d.sent(len(p.Payload))
	d.keep(p, seq, ts)
	return true
}

func (d *DownTrack) sent(bytes int) {
	if !d.started {
		d.started = true
		d.track.metrics.JoinSeconds.WithLabelValues(d.track.kind.String()).Observe(time.Since(d.joined).Seconds())
	}
	d.packets.Add(1)
	d.octets.Add(uint32(bytes))
}

// catchUp is a joining viewer's queue: the cached packets from the group's
// keyframe, then the live packets that arrive while they go out. It plays
// them replayPace times faster than real time, by their media timestamps:
// the keyframe at once (the first picture), then each packet when the
// replay's clock reaches its timestamp. So a whole group of pictures (600 KB
// for 2 s at 2.5 Mbit/s) does not go in one burst that overflows the
// viewer's socket or a phone link's queue, whatever the stream's bitrate,
// and the viewer is back at live in a third of the group's length (0.7 s
// for 2 s).
type catchUp struct {
	queue    []*Packet // retained; queue[head:] waits
	head     int
	replayed int       // queue[:replayed] is the replay
	r        *replayed // squeezed timestamps, nil for original ones
	start    time.Time // when the replay began
	from     uint32    // the keyframe's media timestamp
	ticks    float64   // media clock ticks per nanosecond, times replayPace
	until    time.Time // past it, what is left goes at once
}

// replayPace is how much faster than real time the replay plays.
const replayPace = 4

// maxCatchUp bounds how long a joiner is paced: should the media clock
// stall or jump, the viewer does not stay behind.
const maxCatchUp = 2 * time.Second

func (c *catchUp) active() bool { return c.queue != nil }

// drop releases what is queued (a new source: the viewer starts again).
func (c *catchUp) drop() {
	for _, q := range c.queue[c.head:] {
		q.release()
	}
	*c = catchUp{}
}

// startReplay queues the cached packets that precede p, from the group's
// keyframe on, then p, and starts sending them; false if the cache cannot
// serve p. The viewer then decodes p and what follows without waiting for
// a new keyframe. With ReplaySqueezed their timestamps are pulled in just
// before p's.
func (d *DownTrack) startReplay(p *Packet) bool {
	pkts := d.sim.sending.replayBefore(p, nil)
	if len(pkts) == 0 {
		return false
	}
	c := catchUp{queue: pkts, replayed: len(pkts), start: time.Now(), from: pkts[0].Header.Timestamp}
	if d.replay == ReplaySqueezed {
		c.r = &replayed{first: pkts[0].Header.SequenceNumber, last: pkts[len(pkts)-1].Header.SequenceNumber, end: p.Header.Timestamp}
	}
	c.ticks = replayPace * float64(max(1, d.track.Codec().ClockRate)) / float64(time.Second)
	c.until = c.start.Add(maxCatchUp)
	p.retain()
	c.queue = append(c.queue, p)
	d.catchUp = c
	d.lastReplay.Store(c.r)
	m := d.track.metrics
	m.JoinReplays.Inc()
	m.ReplayedPackets.Add(float64(len(pkts)))
	if !d.drain(c.start) {
		// Nothing went out: the viewer still needs its keyframe.
		d.catchUp.drop()
		return false
	}
	d.setNeedKeyframe(false)
	return true
}

// drain sends what the pace allows now, and reports whether it sent the
// first packet of a replay that had sent nothing yet (false otherwise).
func (d *DownTrack) drain(now time.Time) bool {
	c := &d.catchUp
	started := c.head == 0
	// The replay's clock, in media ticks past the keyframe; every packet
	// goes once it is reached.
	elapsed := now.Sub(c.start)
	reached := int64(float64(elapsed) * c.ticks)
	if now.After(c.until) {
		reached = math.MaxInt64
	}
	for c.head < len(c.queue) && int64(int32(c.queue[c.head].Header.Timestamp-c.from)) <= reached {
		q := c.queue[c.head]
		sent := d.write(q, c.r)
		if !sent && c.head == 0 {
			return false
		}
		if sent && c.head >= c.replayed {
			d.track.metrics.forwarded(d.track.kind, 1, len(q.Payload))
		}
		// A replayed packet that did not go out is asked for again (NACK).
		q.release()
		c.queue[c.head] = nil
		c.head++
	}
	first := started && c.head > 0
	if c.head == len(c.queue) {
		*c = catchUp{} // caught up: live packets go straight out again
	}
	return first
}

// readRTCP serves the viewer's feedback for this track until the sender is
// closed: keyframe requests go to the creator (throttled by the track), NACKs
// are answered from the track's shared packet cache.
func (d *DownTrack) readRTCP(sender *webrtc.RTPSender) {
	buf := make([]byte, 1500)
	for {
		n, _, err := sender.Read(buf)
		if err != nil {
			return
		}
		if d.transportFeedback(buf[:n]) {
			continue // feedback alone, read without rtcp.Unmarshal's garbage
		}
		pkts, err := rtcp.Unmarshal(buf[:n])
		if err != nil {
			d.track.metrics.BadRTCP.Inc()
			continue
		}
		for _, pkt := range pkts {
			switch pkt := pkt.(type) {
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				d.track.metrics.PLIs.Inc()
				d.track.plis.Add(1)
				d.current().RequestKeyframe()
			case *rtcp.TransportLayerNack:
				for _, pair := range pkt.Nacks {
					for _, seq := range pair.PacketList() {
						d.retransmit(seq)
					}
				}
			case *rtcp.ReceiverReport:
				for _, r := range pkt.Reports {
					if r.SSRC == d.ssrc {
						d.lost.Store(uint32(r.FractionLost))
					}
				}
			}
		}
	}
}

func (d *DownTrack) retransmit(seq uint16) {
	m := d.track.metrics
	m.NACKs.Inc()
	d.track.nacks.Add(1)
	if !d.bound.Load() {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// The viewer's sequence number may be from a layer it was sent before.
	// Not a packet of an earlier layer: the viewer decodes from the
	// current layer's keyframe on, and after a switch down its link has no
	// room to spare.
	from, inSeq, tsOff, ok := d.sim.rw.Lookup(seq)
	t := d.sim.layerTrack(from)
	if !ok || t == nil || t != d.sim.sending {
		m.Retransmits.WithLabelValues("miss").Inc()
		return
	}
	p := t.cache.get(inSeq)
	if p == nil {
		m.Retransmits.WithLabelValues("miss").Inc()
		return
	}
	defer p.release()
	ts := p.Header.Timestamp
	if t == d.sim.sending {
		ts = d.lastReplay.Load().timestamp(inSeq, ts)
	}
	if err := d.resend(p, seq, ts+tsOff, false); err != nil {
		m.Retransmits.WithLabelValues("error").Inc()
		return
	}
	m.Retransmits.WithLabelValues("sent").Inc()
}

// resend writes p again as the viewer's packet seq (its timestamp ts): over
// RTX when the viewer has it (RFC 4588: the original sequence number, then
// the payload), else as it was. Probes are resends too.
func (d *DownTrack) resend(p *Packet, seq uint16, ts uint32, probe bool) error {
	d.rtxHdr = p.Header
	d.rtxHdr.Timestamp = ts
	if d.rtxSSR == 0 {
		d.rtxHdr.SSRC, d.rtxHdr.PayloadType, d.rtxHdr.SequenceNumber = d.ssrc, d.pt, seq
		d.stamp(&d.rtxHdr, len(p.Payload), probe)
		_, err := d.writer.WriteRTP(&d.rtxHdr, p.Payload)
		return err
	}
	d.rtxHdr.SSRC, d.rtxHdr.PayloadType, d.rtxHdr.SequenceNumber = d.rtxSSR, d.rtxPT, d.rtxSeq
	d.rtxHdr.Padding, d.rtxHdr.PaddingSize = false, 0
	d.rtxSeq++
	d.rtxBuf[0], d.rtxBuf[1] = byte(seq>>8), byte(seq)
	n := copy(d.rtxBuf[2:], p.Payload)
	d.stamp(&d.rtxHdr, 2+n, probe)
	_, err := d.writer.WriteRTP(&d.rtxHdr, d.rtxBuf[:2+n])
	return err
}

// senderReport describes what this down-track has sent, for lip sync and for
// the viewer's statistics. Nil before the first packet.
func (d *DownTrack) senderReport(now time.Time, rtpTime uint32) *rtcp.SenderReport {
	if !d.bound.Load() || d.packets.Load() == 0 {
		return nil
	}
	return &rtcp.SenderReport{
		SSRC:        d.ssrc,
		NTPTime:     ntpTime(now),
		RTPTime:     rtpTime,
		PacketCount: d.packets.Load(),
		OctetCount:  d.octets.Load(),
	}
}

// ntpTime converts to the 64-bit NTP format of RTCP (seconds since 1900 in
// the high 32 bits, fraction in the low 32).
func ntpTime(t time.Time) uint64 {
	const ntpEpochOffset = 2208988800
	nanos := uint64(t.UnixNano())
	secs := nanos/1e9 + ntpEpochOffset
	frac := (nanos % 1e9) << 32 / 1e9
	return secs<<32 | frac
}

// NTPToTime is the inverse of ntpTime.
func NTPToTime(ntp uint64) time.Time {
	const ntpEpochOffset = 2208988800
	secs := int64(ntp>>32) - ntpEpochOffset
	frac := int64(ntp&0xffffffff) * 1e9 >> 32
	return time.Unix(secs, frac)
}
