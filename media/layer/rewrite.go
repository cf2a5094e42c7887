// Package layer keeps one viewer's video continuous while the simulcast
// layer it is sent changes. Each layer is a track of its own, with its own
// sequence numbers and (for some encoders) its own timestamp base; the
// viewer must see one track whose sequence numbers go up by one and whose
// timestamps are those of the stream's primary layer, because overlay cues
// are stamped in them.
package layer

// Rewriter maps a layer's sequence numbers and timestamps to the viewer's.
// It is not safe for concurrent use.
type Rewriter struct {
	cur     span
	spans   [history]span // the layers before cur, newest first, for NACKs
	started bool          // a packet went out
	lastSeq uint16        // the viewer's newest sequence number
	lastTS  uint32        // and its timestamp
}

// history is how many earlier layers a retransmission can still come from:
// a NACK arrives within a round trip, and switches are seconds apart.
const history = 3

// span is one stretch of the viewer's track taken from one layer.
type span struct {
	layer   int
	from    uint16 // the viewer's first sequence number of the span
	inFrom  uint16 // the layer's sequence number there
	bounded bool   // false for the first span: it has no start to check
	seqOff  uint16
	tsOff   uint32
	valid   bool
}

// New starts on layer with no rewriting: a viewer that never switches sees
// the layer's own numbers.
func New(layer int) *Rewriter {
	return &Rewriter{cur: span{layer: layer, valid: true}}
}

// Layer is the layer being sent.
func (r *Rewriter) Layer() int { return r.cur.layer }

// Switch starts sending layer from its packet (seq, ts), which must begin a
// keyframe. align is what the layer's timestamps need added to be on the
// primary layer's clock (0 when they already are). Should the result not be
// later than what the viewer last got (an alignment that is off), the new
// layer's first frame is placed one frame after the last.
func (r *Rewriter) Switch(layer int, seq uint16, ts, align, frame uint32) {
	copy(r.spans[1:], r.spans[:history-1])
	r.spans[0] = r.cur
	next := span{layer: layer, inFrom: seq, bounded: true, tsOff: align, valid: true}
	if r.started {
		next.from = r.lastSeq + 1
		next.seqOff = next.from - seq
		if int32(ts+align-r.lastTS) <= 0 {
			next.tsOff = r.lastTS + frame - ts
		}
	} else {
		next.from = seq
	}
	r.cur = next
}

// Rewrite maps a packet of the current layer; false for a packet that came
// before the switch point (late or reordered), which the viewer must not get.
func (r *Rewriter) Rewrite(seq uint16, ts uint32) (uint16, uint32, bool) {
	c := &r.cur
	if c.bounded && seq != c.inFrom && !newer(seq, c.inFrom) {
		return 0, 0, false
	}
	out, outTS := seq+c.seqOff, ts+c.tsOff
	if !r.started || newer(out, r.lastSeq) {
		r.started = true
		r.lastSeq, r.lastTS = out, outTS
	}
	return out, outTS, true
}

// Pad takes the viewer's next sequence number for a packet of padding
// alone, and the timestamp to give it; later packets come after it. A
// padded track's earlier numbers are no longer looked up right: only for
// audio, which is never retransmitted. False before the first packet.
func (r *Rewriter) Pad() (uint16, uint32, bool) {
	if !r.started {
		return 0, 0, false
	}
	r.cur.seqOff++
	r.lastSeq++
	return r.lastSeq, r.lastTS, true
}

// Lookup finds where the viewer's sequence number out came from, for a
// retransmission: the layer, the layer's sequence number, and what to add to
// the layer's timestamp. False if it is older than the spans kept.
func (r *Rewriter) Lookup(out uint16) (layer int, seq uint16, tsOff uint32, ok bool) {
	if s := r.cur; !s.bounded || out == s.from || newer(out, s.from) {
		return s.layer, out - s.seqOff, s.tsOff, true
	}
	for _, s := range r.spans {
		if !s.valid {
			break
		}
		if !s.bounded || out == s.from || newer(out, s.from) {
			return s.layer, out - s.seqOff, s.tsOff, true
		}
	}
	return 0, 0, 0, false
}

// newer reports whether a comes after b in 16-bit wrap-around order.
func newer(a, b uint16) bool { return a != b && a-b < 0x8000 }
