package media

import (
	"math"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/media/alloc"
	"github.com/vitrine-live/vitrine/media/bwe"
	"github.com/vitrine-live/vitrine/media/layer"
)

// A WHEP viewer's video comes from one of the creator's simulcast layers
// at a time. Its down-track stays subscribed to the stream's Video (the
// primary layer: Sender Reports, stall checks) and is also subscribed to
// the layer it is sent and, while it switches, to the layer it switches
// to. The switch happens on that layer's first keyframe; the layer
// rewriter keeps the viewer's sequence numbers continuous and puts the new
// layer's timestamps on the primary's clock, which overlay cues are
// stamped in, so cards land on the clicked frame whatever the layer.
//
// Which layer: each viewer's estimator (media/bwe) turns the viewer's
// transport-wide feedback into an estimate of its downlink, and its
// allocator (media/alloc) picks the layer that fits, or the one the viewer
// chose in the player's menu.

// simulcast is a down-track's layer state. Guarded by DownTrack.mu.
type simulcast struct {
	stream   *Stream // nil: the track alone (audio, RTSP readers)
	sending  *Track  // the layer the viewer is sent
	target   *Track  // the layer to switch to on its next keyframe, or nil
	targetAt time.Time
	rw       *layer.Rewriter
	alloc    alloc.Allocator
	decided  time.Time // the allocator's last run

	est    *bwe.Estimator // nil: the viewer sends no transport-wide feedback
	twccID uint8          // its header extension's id
	exts   [1]rtp.Extension
	twcc   [2]byte

	// last is the newest media packet sent (retained, with the viewer's
	// numbers), which probes send copies of.
	last    *Packet
	lastSeq uint16
	lastTS  uint32

	// The viewer's other down-track: audio's video (which takes the
	// feedback that comes on audio), video's audio (which ends each probe
	// step with a packet of padding). Set before either starts.
	video, audio *DownTrack
}

// linkForEstimate links a viewer's audio and video down-tracks.
func linkForEstimate(tracks []*DownTrack) {
	var audio, video *DownTrack
	for _, d := range tracks {
		if d.track.kind == Audio {
			audio = d
		} else {
			video = d
		}
	}
	if audio != nil && video != nil {
		audio.sim.video, video.sim.audio = video, audio
	}
}

const (
	// decideEvery spaces the allocator's runs on feedback (a browser sends
	// it every 50-100 ms).
	decideEvery = 200 * time.Millisecond
	// reaskAfter: a target layer whose keyframe has not come is asked again
	// (the request or the keyframe can be lost).
	reaskAfter = time.Second
	// switchGap is where a new layer's first frame goes when, aligned, it
	// is not later than the last frame sent (the same captured frame, sent
	// by both layers): 1 ms on the 90 kHz clock, so that switches do not
	// add up to a drift away from the primary's clock.
	switchGap = 90
	// probeEvery paces a probe's packets; maxProbeCopies bounds what one
	// step sends.
	probeEvery     = 5 * time.Millisecond
	maxProbeCopies = 8
	// rtpOverhead is what a packet adds to its payload on the wire that the
	// estimator counts: RTP header and the transport-wide extension.
	rtpOverhead = 12 + 8
)

// layerTrack is the track of simulcast layer i, or nil.
func (s *simulcast) layerTrack(i int) *Track {
	if s.stream == nil {
		if i == s.sending.layer {
			return s.sending
		}
		return nil
	}
	return s.stream.madeLayer(i)
}

// bindEstimator starts the viewer's bandwidth estimate when it negotiated
// transport-wide congestion control.
func (d *DownTrack) bindEstimator(exts []webrtc.RTPHeaderExtensionParameter) {
	if d.track.kind != Video || d.sim.stream == nil {
		return
	}
	for _, e := range exts {
		if e.URI == sdp.TransportCCURI && e.ID > 0 && e.ID < 15 {
			d.sim.twccID = uint8(e.ID)
			d.sim.est = bwe.New(bwe.Config{Initial: initialEstimate})
		}
	}
}

// initialEstimate is a viewer's estimate before its first feedback: high
// enough that a viewer starts on the top layer (most viewers can take it,
// and the group-of-pictures cache they start on is the primary's).
const initialEstimate = 5_000_000

// current is the layer the viewer is sent.
func (d *DownTrack) current() *Track {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sim.sending
}

// switchLayer is called with a packet of another layer than the one sent:
// it switches when p starts a keyframe of the target layer, and reports
// whether p is now the viewer's to send.
func (d *DownTrack) switchLayer(p *Packet) bool {
	s := &d.sim
	if p.Track != s.target || !p.Keyframe || d.needKeyframe || !d.codec.SameFormat(p.Track.Codec()) {
		return false
	}
	old := s.sending
	s.rw.Switch(p.Track.layer, p.Header.SequenceNumber, p.Header.Timestamp, d.alignment(p), switchGap)
	s.sending, s.target = p.Track, nil
	d.epoch = p.Epoch
	d.catchUp.drop()
	d.lastReplay.Store(nil)
	old.viewing.Add(-1)
	p.Track.viewing.Add(1)
	if old != d.track {
		old.removeDownTrack(d)
	}
	dir := "up"
	if p.Track.Bitrate() < old.Bitrate() {
		dir = "down"
	}
	d.track.metrics.LayerSwitches.WithLabelValues(dir).Inc()
	return true
}

// alignment is what p's layer adds to its timestamps to be on the primary
// layer's clock: from both layers' Sender Reports (the creator's one
// clock), or failing those from the primary's clock now, as p arrives now.
func (d *DownTrack) alignment(p *Packet) uint32 {
	primary := d.track
	if p.Track == primary {
		return 0
	}
	if src, ts, ok := p.Track.clockReference(); ok {
		if at, ok := primary.RTPTimeAt(src); ok {
			return at - ts
		}
	}
	if at, ok := primary.rtpNow(time.Now()); ok {
		return at - p.Header.Timestamp
	}
	return 0
}

// allocate runs the viewer's allocator and starts a switch to the layer it
// picks. Without force it runs at most every decideEvery.
func (d *DownTrack) allocate(now time.Time, force bool) {
	if ask := d.decide(now, force); ask != nil {
		ask.RequestKeyframe()
	}
}

// decide is allocate under the lock; it returns the layer to ask for a
// keyframe, if any.
func (d *DownTrack) decide(now time.Time, force bool) *Track {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := &d.sim
	if s.stream == nil || !d.bound.Load() || !d.started || d.needKeyframe || d.catchUp.active() {
		return nil
	}
	if !force && now.Sub(s.decided) < decideEvery {
		return nil
	}
	estimate := math.MaxInt32
	if s.est != nil {
		if s.est.Stats().Received == 0 {
			return nil
		}
		estimate = s.est.Estimate()
	}
	s.decided = now
	var rates [maxLayers]int
	n := 0
	for i := range maxLayers {
		t := s.stream.madeLayer(i)
		if t == nil {
			break
		}
		rates[i], n = t.PeakBitrate(), i+1
		if rates[i] < 0 {
			return nil // a layer not measured yet: it may be the best
		}
	}
	if n < 2 {
		return nil // a stream without simulcast
	}
	choice := alloc.Auto
	if c := d.choice.Load(); c != nil {
		choice = *c
	}
	dec := s.alloc.Decide(rates[:n], s.sending.layer, estimate, choice, now)
	if dec.Probe > 0 && s.est != nil && d.rtxSSR != 0 && s.est.Probe(dec.Probe, now) {
		go d.sendProbe()
	}
	want := s.stream.madeLayer(dec.Layer)
	switch {
	case want == nil || want == s.sending:
		d.dropTarget()
		return nil
	case want == s.target:
		if now.Sub(s.targetAt) < reaskAfter {
			return nil
		}
	default:
		d.dropTarget()
		s.target = want
		if want != d.track {
			want.addDownTrack(d)
		}
	}
	s.targetAt = now
	return want
}

// dropTarget abandons a switch that has not happened.
func (d *DownTrack) dropTarget() {
	s := &d.sim
	if s.target != nil && s.target != d.track && s.target != s.sending {
		s.target.removeDownTrack(d)
	}
	s.target = nil
}

// leave unsubscribes the down-track from every layer (the viewer is gone).
func (d *DownTrack) leave() {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := &d.sim
	d.dropTarget()
	if s.sending != d.track {
		s.sending.removeDownTrack(d)
	}
	if s.last != nil {
		s.last.release()
		s.last = nil
	}
	if d.track.kind == Video {
		s.sending.viewing.Add(-1)
	}
	s.sending = d.track
	d.track.removeDownTrack(d)
}

// tick runs each second from the primary's report loop: the allocator
// runs for viewers that send no feedback too (a layer that stopped, a
// choice in the menu), and the estimate is sampled for the metrics.
func (d *DownTrack) tick(now time.Time) {
	d.allocate(now, false)
	if e := d.sim.est; e != nil && e.Stats().Received > 0 {
		d.track.metrics.EstimateBps.Observe(float64(e.Estimate()))
	}
}

// transportFeedback hands the transport-wide feedback packets of an RTCP
// compound to the estimator, from their bytes, and reports whether there
// was nothing else in it.
func (d *DownTrack) transportFeedback(b []byte) bool {
	only := true
	for len(b) >= 4 {
		n := (int(b[2])<<8 | int(b[3]) + 1) * 4
		if n > len(b) {
			return false
		}
		if b[1] == 205 && b[0]&0x1f == 15 {
			d.feedback(b[:n])
		} else {
			only = false
		}
		b = b[n:]
	}
	return only && len(b) == 0
}

// feedback takes one transport-wide feedback packet, whichever of the
// viewer's down-tracks it came on (Chrome addresses it to the SSRC of the
// last packet it got).
func (d *DownTrack) feedback(fb []byte) {
	if v := d.sim.video; v != nil {
		v.feedback(fb)
		return
	}
	e := d.sim.est
	if e == nil {
		return
	}
	now := time.Now()
	e.Feedback(fb, now)
	d.allocate(now, false)
}

// stamp gives h the viewer's next transport-wide sequence number.
func (d *DownTrack) stamp(h *rtp.Header, payload int, probe bool) {
	s := &d.sim
	if s.est == nil {
		return
	}
	seq := s.est.Sent(payload+rtpOverhead, time.Now(), probe)
	s.twcc[0], s.twcc[1] = byte(seq>>8), byte(seq)
	h.Extensions = s.exts[:0]
	_ = h.SetExtension(s.twccID, s.twcc[:])
}

// keep remembers p, just sent as the viewer's (seq, ts), for probes.
func (d *DownTrack) keep(p *Packet, seq uint16, ts uint32) {
	s := &d.sim
	if s.est == nil {
		return
	}
	p.retain()
	if s.last != nil {
		s.last.release()
	}
	s.last, s.lastSeq, s.lastTS = p, seq, ts
}

// sendProbe sends the probe the estimator started, paced: copies of the
// newest media packet over RTX (the viewer discards them) every few
// milliseconds until the estimator has its cluster, each step ended by a
// packet of audio padding. Chrome addresses its feedback to the SSRC of the
// last packet it got, and pion reads none for the RTX SSRC: without the
// padding the feedback on the probes was lost. Probes are seconds apart,
// so the goroutine is short-lived and rare.
func (d *DownTrack) sendProbe() {
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	for range 40 { // the estimator ends a cluster within 150 ms
		d.mu.Lock()
		want := d.sim.est.ProbeBytes(time.Now(), probeEvery)
		if want < 0 {
			d.mu.Unlock()
			return // the cluster is sent
		}
		p := d.sim.last
		sent := false
		for i := 0; want > 0 && p != nil && d.bound.Load() && i < maxProbeCopies; i++ {
			if d.resend(p, d.sim.lastSeq, d.sim.lastTS, true) != nil {
				break
			}
			sent = true
			want -= len(p.Payload) + 2 + rtpOverhead
		}
		d.mu.Unlock()
		if a := d.sim.audio; a != nil && sent {
			a.pad()
		}
		<-tick.C
	}
}

// padding is an RTP payload of padding alone (RFC 3550: its last octet
// counts the padding octets).
var padding = [4]byte{0, 0, 0, 4}

// pad sends the viewer a packet of padding alone, numbered in its track.
func (d *DownTrack) pad() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.bound.Load() || !d.started {
		return
	}
	seq, ts, ok := d.sim.rw.Pad()
	if !ok {
		return
	}
	h := rtp.Header{Version: 2, Padding: true, PayloadType: d.pt, SequenceNumber: seq, Timestamp: ts, SSRC: d.ssrc}
	_, _ = d.writer.WriteRTP(&h, padding[:])
}
