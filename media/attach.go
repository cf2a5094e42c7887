package media

import (
	"errors"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
)

// RTPWriter takes one track's packets for a subscriber that is not a WebRTC
// peer (an RTSP reader). WriteRTP is called on a shard goroutine: it must not
// block, and it must not keep header or payload after it returns.
type RTPWriter interface {
	WriteRTP(h *rtp.Header, payload []byte) (int, error)
}

// Attach subscribes w to the track the way a WHEP viewer is subscribed: it
// gets every packet with the stream's sequence numbers and timestamps, ssrc
// and pt set as given, starting at a keyframe and again at one after each
// creator change. Nothing is allocated per packet. onCodecChange (may be
// nil) is called, once, when a creator sends a codec other than the one the
// track carried at Attach; w gets nothing from then on. detach ends it.
func (t *Track) Attach(w RTPWriter, ssrc uint32, pt uint8, onCodecChange func()) (detach func()) {
	// Its Sender Reports are the subscriber's business (RTSP makes its own).
	d := newDownTrack(t, t.kind.String(), "vitrine-"+t.stream, func([]rtcp.Packet) error { return nil }, onCodecChange)
	d.ssrc, d.pt, d.codec = ssrc, pt, t.Codec()
	d.writer = rtpOnly{w}
	d.bound.Store(true)
	t.addDownTrack(d)
	return func() {
		d.bound.Store(false)
		d.leave()
	}
}

// rtpOnly adapts an RTPWriter to the writer a DownTrack holds.
type rtpOnly struct{ RTPWriter }

var errRTPOnly = errors.New("media: raw writes are not supported")

func (rtpOnly) Write([]byte) (int, error) { return 0, errRTPOnly }

// TimeAt maps a viewers' RTP timestamp of the track back to this server's
// wall clock, through the current source's clock (Sender Reports, or the
// ingest clock of RTMP/RTSP). RTSP readers use it for their Sender Reports.
func (t *Track) TimeAt(rtpTime uint32) (local time.Time, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.clock.valid || t.codec.ClockRate == 0 {
		return time.Time{}, false
	}
	diff := int32(rtpTime - t.clock.rtp)
	return t.clock.local.Add(time.Duration(float64(diff) / float64(t.codec.ClockRate) * float64(time.Second))), true
}
