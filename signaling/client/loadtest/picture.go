package loadtest

// firstPicture looks for the first keyframe a viewer could show: every RTP
// packet of one keyframe access unit arrived, from the packet that starts
// it through the one with the marker bit, without a sequence gap. That is
// when a decoder has its first picture, which "first keyframe" (the first
// keyframe packet) does not say: a keyframe missing one packet shows
// nothing, and the viewer waits for the next complete one.
//
// The search follows one candidate, the newest keyframe that started, with
// a frontier: the first sequence number from its start on not yet known to
// have arrived. The frontier moves only when the packet it waits for
// arrives (in order, or late as a retransmission), across the arrived-bits
// the sequence tracking keeps anyway, so a packet costs O(1) amortized and
// nothing is allocated. Timestamps only tell a unit's packets apart when
// they arrive out of order; a replayed burst whose timestamps the server
// rewrote works the same as long as one frame keeps one timestamp.
type firstPicture struct {
	done   bool
	at     int64  // ns since run start: when the unit became complete
	active bool   // a keyframe started: the candidate below
	ts     uint32 // the candidate's RTP timestamp
	start  uint64 // extended sequence number of its keyframe-start packet
	opens  bool   // that packet opens an access unit: none of the unit precedes it
	next   uint64 // the frontier
}

// picture feeds one new video packet, whose extended sequence number ext
// seq has just marked as arrived, to the first-picture search. keyStart:
// the payload starts a keyframe (isKeyframe); opens: it opens an access
// unit (opensAccessUnit).
func (k *kindStats) picture(ext uint64, h rtpHead, keyStart, opens bool, now int64) {
	p := &k.pic
	if p.done {
		return
	}
	if keyStart {
		switch {
		case !p.active || (h.ts != p.ts && ext > p.start):
			// The first keyframe, or a newer one: an older candidate
			// still missing a packet is given up, as a decoder would
			// skip to the newer keyframe.
			*p = firstPicture{active: true, ts: h.ts, start: ext, opens: opens, next: ext}
		case h.ts == p.ts && ext < p.start:
			// An earlier packet of the same keyframe, late.
			p.start, p.opens, p.next = ext, opens, ext
		}
	}
	if !p.active || ext != p.next {
		return
	}
	for ; p.next <= k.seqMax && has(&k.seen, p.next); p.next++ {
		if !has(&k.markers, p.next) {
			continue
		}
		// The marker: every packet from the start on is here. Complete
		// if nothing of the unit can be missing before its start.
		if k.unitStarts(p) {
			p.done, p.at = true, now
		} else {
			p.active = false
		}
		return
	}
}

// unitStarts says whether the candidate's access unit has no packet before
// its keyframe-start packet that did not arrive: the start opens a unit, or
// is the viewer's first packet, or the packets before it (a PPS, an SEI)
// reach back without a gap to the previous frame's marker packet or to the
// viewer's first packet. A lost packet just before the start could be the
// unit's own (its SPS and PPS), so it counts as missing.
func (k *kindStats) unitStarts(p *firstPicture) bool {
	if p.opens || p.start == k.seqFirst {
		return true
	}
	for i := p.start - 1; k.seqMax-i < seqWindow; i-- {
		switch {
		case !has(&k.seen, i):
			return false
		case has(&k.markers, i), i == k.seqFirst:
			return true
		}
	}
	return false
}

// has reports bit i%seqWindow of a window bitmap.
func has(bits *[seqWindow / 64]uint64, i uint64) bool {
	return bits[i%seqWindow/64]&(1<<(i%64)) != 0
}
