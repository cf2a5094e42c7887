package media

import (
	"sync"
	"sync/atomic"

	"github.com/pion/rtp"
)

// maxPayload bounds what one packet may carry. Anything larger than a UDP
// datagram on a normal path is refused at ingest.
const maxPayload = 1500

// Packet is one RTP packet in the track's output numbering, shared by every
// viewer of the track and by the track's NACK cache. It is reference counted
// and goes back to its pool when the last holder releases it, so forwarding
// allocates nothing in the steady state.
type Packet struct {
	Header   rtp.Header // sequence number and timestamp already rewritten
	Payload  []byte     // slice of buf
	Keyframe bool       // a decoder can start at this packet
	Epoch    uint32     // changes when the source changes (creator reconnect)
	Arrival  int64      // monotonic nanoseconds at ingest, for latency figures
	Track    *Track     // the track it belongs to (a viewer may get several simulcast layers)

	buf  [maxPayload]byte
	refs atomic.Int32
	pool *sync.Pool
}

func newPacketPool(t *Track) *sync.Pool {
	p := &sync.Pool{}
	p.New = func() any { return &Packet{pool: p, Track: t} }
	return p
}

func (p *Packet) retain() { p.refs.Add(1) }

func (p *Packet) release() {
	if p.refs.Add(-1) == 0 {
		p.pool.Put(p)
	}
}

// packetCache keeps the last packets of a track by output sequence number so
// that viewers' NACKs are answered from one shared copy instead of a buffer per
// viewer.
type packetCache struct {
	mu    sync.Mutex
	slots []*Packet // len is a power of two
}

func newPacketCache(size int) *packetCache {
	return &packetCache{slots: make([]*Packet, size)}
}

func (c *packetCache) put(p *Packet) {
	p.retain()
	i := int(p.Header.SequenceNumber) & (len(c.slots) - 1)
	c.mu.Lock()
	old := c.slots[i]
	c.slots[i] = p
	c.mu.Unlock()
	if old != nil {
		old.release()
	}
}

// get returns the packet with sequence number seq, retained: the caller must
// release it.
func (c *packetCache) get(seq uint16) *Packet {
	i := int(seq) & (len(c.slots) - 1)
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.slots[i]
	if p == nil || p.Header.SequenceNumber != seq {
		return nil
	}
	p.retain()
	return p
}

func (c *packetCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, p := range c.slots {
		if p != nil {
			p.release()
			c.slots[i] = nil
		}
	}
}
