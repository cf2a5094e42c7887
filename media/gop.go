package media

import "time"

// JoinReplay says what a viewer who joins mid-stream is sent before the
// live packets: the cached group of pictures from its keyframe on, so it
// needs no keyframe from the creator. docs/design.md has the Chromium
// figures that chose ReplayOriginal.
type JoinReplay string

const (
	// ReplayOriginal sends the cached frames back to back with their own
	// timestamps. Chromium decodes them as they come and is level with
	// live within a second; no freeze was seen.
	ReplayOriginal JoinReplay = "original"
	// ReplaySqueezed sends them back to back with their timestamps pulled
	// in just before the live one, so a player's jitter buffer is never
	// told they are old. Chromium sometimes found them late and dropped
	// some, then froze until the next keyframe: kept as an option only.
	ReplaySqueezed JoinReplay = "squeezed"
	// ReplayOff sends nothing cached: the viewer waits for a keyframe
	// asked of the creator, or for the encoder's next one.
	ReplayOff JoinReplay = "off"
)

// Defaults for the cache's bounds.
const (
	DefaultGOPCacheBytes = 4 << 20
	DefaultGOPCacheAge   = 5 * time.Second
	// gopRefreshAfter: a viewer who joins on a group of pictures older than
	// this also asks the creator (if it can be asked) for a new keyframe,
	// so that the next joiners' replay stays short. That is fewer keyframe
	// requests than one per join, which is what joins cost without a cache.
	gopRefreshAfter = time.Second
)

// gopCache is a video track's current group of pictures: the packets from
// the newest keyframe's first one on, in sequence order, shared by every
// viewer of the track. It holds a reference to each. It is guarded by the
// track's mu and fed by the ingest goroutine.
type gopCache struct {
	mode     JoinReplay
	maxBytes int
	maxAge   time.Duration

	packets []*Packet
	bytes   int
	ts      uint32    // the keyframe's timestamp
	at      time.Time // when its first packet arrived
	epoch   uint32
}

// add takes the track's newest packet. A keyframe with a new timestamp
// starts a new group; a group that outgrows maxBytes is dropped until the
// next keyframe, when joiners fall back to asking the creator.
func (g *gopCache) add(p *Packet, now time.Time) {
	if g.mode == ReplayOff {
		return
	}
	if p.Keyframe && (len(g.packets) == 0 || p.Header.Timestamp != g.ts || p.Epoch != g.epoch) {
		g.reset()
		g.ts, g.at, g.epoch = p.Header.Timestamp, now, p.Epoch
	} else if len(g.packets) == 0 {
		return
	} else if p.Epoch != g.epoch || g.bytes+len(p.Payload) > g.maxBytes {
		g.reset()
		return
	}
	p.retain()
	g.packets = append(g.packets, p)
	g.bytes += len(p.Payload)
}

func (g *gopCache) reset() {
	for i, p := range g.packets {
		p.release()
		g.packets[i] = nil
	}
	g.packets, g.bytes = g.packets[:0], 0
}

// usable reports whether a viewer joining now can start on the group.
func (g *gopCache) usable(epoch uint32, now time.Time) bool {
	return g.mode != ReplayOff && len(g.packets) > 0 && g.epoch == epoch && now.Sub(g.at) <= g.maxAge
}

// before appends to out, each retained, the cached packets that precede p:
// what a viewer must get before p to decode from the group's keyframe. It
// returns out unchanged when the group cannot serve p (another source, too
// old, or p is itself the group's first packet).
func (g *gopCache) before(p *Packet, now time.Time, out []*Packet) []*Packet {
	if !g.usable(p.Epoch, now) || !seqNewer(p.Header.SequenceNumber, g.packets[0].Header.SequenceNumber) {
		return out
	}
	for _, q := range g.packets {
		if !seqNewer(p.Header.SequenceNumber, q.Header.SequenceNumber) {
			break
		}
		q.retain()
		out = append(out, q)
	}
	return out
}

// squeezeShift sets how much ReplaySqueezed compresses the replayed span:
// 1/256, so a 4 s group of pictures plays out in 16 ms, and frames up to
// 350 per second keep distinct timestamps.
const squeezeShift = 8

// squeezed is the timestamp a replayed packet of timestamp ts gets when the
// live packet that follows the replay has timestamp end.
func squeezed(end, ts uint32) uint32 { return end - (end-ts)>>squeezeShift }

// replayed is the span of sequence numbers a viewer got replayed and the
// live timestamp it was squeezed to, so that its retransmissions carry the
// timestamps the viewer saw first.
type replayed struct {
	first, last uint16
	end         uint32
}

func (r *replayed) timestamp(seq uint16, ts uint32) uint32 {
	// The timestamp check keeps a later packet that reuses a replayed
	// sequence number (minutes later, after wrap-around) as it is.
	if r == nil || seq-r.first > r.last-r.first || int32(r.end-ts) < 0 {
		return ts
	}
	return squeezed(r.end, ts)
}
