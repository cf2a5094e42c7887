package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/signaling/client"
)

// protocolRelay is the ingest protocol of a stream pulled from its origin.
const protocolRelay = "relay"

// Relay is an edge's pull of one stream from its origin: a WHEP session
// with Vitrine's own client, authenticated with a node token. Its video and
// audio feed the edge's stream as any creator would; its data channel
// carries the origin's overlay messages (in the origin's order, on the
// origin's media clock, moved to this node's by the source's timestamp
// offset) into the stream's mirror, and the origin's stream state (so a
// creator reconnecting on the origin keeps the edge's viewers waiting, not
// gone).
type Relay struct {
	c      *Cluster
	stream string
	origin string // base URL
	st     *media.Stream
	mirror *overlay.Mirror
	ready  chan struct{} // closed when the video flows, or the pull failed
	once   sync.Once

	last atomic.Int64 // unix nanos of the newest packet

	mu        sync.Mutex
	pc        *webrtc.PeerConnection
	sess      *client.Session
	video     *media.Source
	audio     *media.Source
	published bool
	closed    bool
	skew      time.Duration
	haveSkew  bool
}

// Mirror returns the overlay mirror of a stream another node originates,
// pulling the stream here if it is not yet (waiting a few seconds at most
// for its video to flow, so that viewers are bound to the codec the origin
// sends). nil: the stream is originated here or nowhere, and its show runs
// here.
func (c *Cluster) Mirror(stream string, st *media.Stream) *overlay.Mirror {
	c.mu.Lock()
	origin := c.originLocked(stream, st)
	if origin == "" {
		c.mu.Unlock()
		return nil
	}
	r, started := c.relayLocked(stream, origin, st)
	c.mu.Unlock()
	if started && c.cfg.OnRelay != nil {
		c.cfg.OnRelay(stream)
	}
	select {
	case <-r.ready:
	case <-time.After(3 * time.Second):
	}
	return r.mirror
}

// Mirrored is the mirror of a stream this node relays now, nil if none.
// Unlike Mirror it never starts a relay: a lookup must not pull a stream.
func (c *Cluster) Mirrored(stream string) *overlay.Mirror {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.relays[stream]; r != nil {
		return r.mirror
	}
	return nil
}

// relayLocked returns the stream's relay, starting one from origin if
// there is none; c.mu must be held.
func (c *Cluster) relayLocked(stream, origin string, st *media.Stream) (*Relay, bool) {
	if r := c.relays[stream]; r != nil {
		return r, false
	}
	m := c.mirrors[stream]
	if m == nil {
		m = overlay.NewMirror(stream, streamClock{st}, c.cfg.Show, func(sku string) { c.StockChanged(stream, sku) })
		c.mirrors[stream] = m
	}
	r := &Relay{c: c, stream: stream, origin: origin, st: st, mirror: m, ready: make(chan struct{})}
	c.relays[stream] = r
	delete(c.idle, stream)
	go r.run()
	return r, true
}

// streamClock is the stream's media clock for the mirror's snapshots.
type streamClock struct{ st *media.Stream }

func (s streamClock) Latest() (uint32, bool)        { return s.st.Video.LastTimestamp() }
func (s streamClock) At(t time.Time) (uint32, bool) { return s.st.Video.RTPTimeAt(t) }

// reconcile keeps the relays to what viewers need: one per stream with
// viewers here that another node originates, following the origin when it
// moves; one left without viewers for RelayGrace, or dead, goes.
func (c *Cluster) reconcile() {
	streams := c.cfg.Streams()
	now := time.Now()
	var stop []*Relay
	var started []string
	c.mu.Lock()
	for name, r := range c.relays {
		st := streams[name]
		origin := c.originLocked(name, st)
		switch {
		case st == nil || st != r.st || origin != r.origin || r.dead():
			stop = append(stop, r)
			delete(c.relays, name)
			delete(c.idle, name)
		case st.ViewerCount() > 0:
			delete(c.idle, name)
		case c.idle[name].IsZero():
			c.idle[name] = now
		case now.Sub(c.idle[name]) > c.cfg.RelayGrace:
			c.log.Info("cluster: relay without viewers let go", "stream", name)
			stop = append(stop, r)
			delete(c.relays, name)
			delete(c.idle, name)
		}
	}
	for name, st := range streams {
		if c.relays[name] != nil || st.ViewerCount() == 0 {
			continue
		}
		if origin := c.originLocked(name, st); origin != "" {
			c.relayLocked(name, origin, st)
			started = append(started, name)
		}
	}
	c.mu.Unlock()
	for _, r := range stop {
		r.Close()
	}
	for _, name := range started {
		if c.cfg.OnRelay != nil {
			c.cfg.OnRelay(name)
		}
	}
}

// Protocol, LastActive and Close make the relay the edge stream's ingest.
func (r *Relay) Protocol() string { return protocolRelay }

func (r *Relay) LastActive() time.Time {
	if n := r.last.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Now()
}

// Close ends the pull; the edge's viewers wait for the stream to come back
// (from the same origin or a new one) within the stream's grace.
func (r *Relay) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	pc, sess, published := r.pc, r.sess, r.published
	srcs := []*media.Source{r.video, r.audio}
	r.mu.Unlock()
	for _, src := range srcs {
		if src != nil {
			src.End()
		}
	}
	if published {
		r.st.Unpublish(r, false)
	}
	if sess != nil {
		// Free the origin's session now rather than at its ICE timeout.
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = sess.Delete(ctx)
		}()
	} else if pc != nil {
		_ = pc.Close()
	}
	r.c.log.Info("cluster: relay closed", "stream", r.stream, "origin", r.origin)
}

func (r *Relay) dead() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return true
	}
	if r.pc == nil {
		return false // negotiating
	}
	s := r.pc.ConnectionState()
	return s == webrtc.PeerConnectionStateFailed || s == webrtc.PeerConnectionStateClosed
}

// run negotiates the pull.
func (r *Relay) run() {
	err := r.negotiate()
	if err != nil {
		r.once.Do(func() { close(r.ready) })
		r.c.log.Warn("cluster: relay from origin failed; trying again", "stream", r.stream, "origin", r.origin, "err", err)
		r.Close()
		return
	}
	r.c.log.Info("cluster: relaying", "stream", r.stream, "origin", r.origin)
}

func (r *Relay) negotiate() error {
	api, err := client.NewAPIOn(net.ParseIP(r.c.cfg.ListenIP))
	if err != nil {
		return err
	}
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return err
	}
	for _, kind := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeVideo, webrtc.RTPCodecTypeAudio} {
		if _, err := pc.AddTransceiverFromKind(kind, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			pc.Close()
			return err
		}
	}
	dc, err := pc.CreateDataChannel("vitrine", nil)
	if err != nil {
		pc.Close()
		return err
	}
	// The top layer: the edge's own viewers adapt from what it has.
	dc.OnOpen(func() { _ = dc.SendText(`{"v":1,"type":"quality","value":"high"}`) })
	dc.OnMessage(func(m webrtc.DataChannelMessage) { r.onMessage(m.Data) })
	pc.OnTrack(r.onTrack)
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateFailed || s == webrtc.PeerConnectionStateClosed {
			go r.c.reconcile()
		}
	})
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		pc.Close()
		return errors.New("closed")
	}
	r.pc = pc
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sess, err := client.Offer(ctx, pc, r.origin+"/whep/"+r.stream, r.c.NodeToken())
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.sess = sess
	closed := r.closed
	r.mu.Unlock()
	if closed {
		_ = sess.Delete(ctx)
		return errors.New("closed")
	}
	return nil
}

func (r *Relay) onTrack(remote *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
	track := r.st.Video
	if remote.Kind() == webrtc.RTPCodecTypeAudio {
		track = r.st.Audio
	}
	c := remote.Codec()
	ssrc := uint32(remote.SSRC())
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	pc := r.pc
	src := track.NewSource(media.Codec{MimeType: c.MimeType, ClockRate: c.ClockRate, Channels: c.Channels, Fmtp: c.SDPFmtpLine}, func() {
		_ = pc.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: ssrc}})
	})
	if track == r.st.Video {
		r.video = src
	} else {
		r.audio = src
	}
	r.mu.Unlock()
	if track == r.st.Video {
		r.once.Do(func() { close(r.ready) })
	}
	go r.readRTCP(recv, src)
	buf := make([]byte, 1600)
	var pkt rtp.Packet
	for {
		n, _, err := remote.Read(buf)
		if err != nil {
			return
		}
		if pkt.Unmarshal(buf[:n]) != nil {
			continue
		}
		r.last.Store(time.Now().UnixNano())
		if err := src.WriteRTP(&pkt.Header, pkt.Payload); err != nil && r.dead() {
			return
		}
	}
}

// readRTCP takes the origin's Sender Reports, which place the stream's
// clock in time for lip sync at this node's viewers.
func (r *Relay) readRTCP(recv *webrtc.RTPReceiver, src *media.Source) {
	for {
		pkts, _, err := recv.ReadRTCP()
		if err != nil {
			return
		}
		for _, p := range pkts {
			sr, ok := p.(*rtcp.SenderReport)
			if !ok {
				continue
			}
			at := media.NTPToTime(sr.NTPTime)
			r.mu.Lock()
			if !r.haveSkew {
				r.skew, r.haveSkew = time.Since(at), true
			}
			local := at.Add(r.skew)
			r.mu.Unlock()
			src.SenderReport(at, local, sr.RTPTime)
		}
	}
}

// onMessage takes one message of the origin's data channel.
func (r *Relay) onMessage(b []byte) {
	var head struct {
		Type  string      `json:"type"`
		State media.State `json:"state"`
	}
	if json.Unmarshal(b, &head) != nil {
		return
	}
	if head.Type == "stream.state" {
		r.followState(head.State)
		return
	}
	var m overlay.Message
	if json.Unmarshal(b, &m) != nil {
		return
	}
	if m.At != nil {
		r.mu.Lock()
		if r.video != nil {
			at := *m.At + r.video.TimestampOffset()
			m.At = &at
		}
		r.mu.Unlock()
	}
	r.mirror.Apply(m) // ignores what is not the show's
}

// followState makes the edge's stream live while the origin's is, and
// reconnecting or ended when it is.
func (r *Relay) followState(state media.State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	switch state {
	case media.StateLive:
		if in := r.st.Ingest(); !r.published && in == nil {
			if r.st.Publish(r, false) == nil {
				r.published = true
			}
		}
	case media.StateReconnecting, media.StateEnded:
		if r.published {
			r.published = false
			r.st.Unpublish(r, state == media.StateEnded)
		}
	}
}
