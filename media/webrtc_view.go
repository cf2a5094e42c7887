package media

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/datachannel"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/media/alloc"
)

// Viewer is one WHEP session: a down-track per kind the viewer asked for,
// and the data channel the viewer opened (if any) for the overlay.
type Viewer struct {
	ID       string
	stream   *Stream
	pc       *webrtc.PeerConnection
	protocol string
	tracks   []*DownTrack
	hooks    ViewerHooks

	channel   atomic.Pointer[datachannel.DataChannel]
	closeOnce sync.Once
	done      chan struct{}
}

// ViewerHooks let the signaling layer speak over the viewer's data channel
// without media knowing what is said. Each may be nil.
type ViewerHooks struct {
	ChannelOpen func(v *Viewer)
	Message     func(v *Viewer, msg []byte)
	Closed      func(v *Viewer)
}

// ErrChannelNotOpen: the viewer has no open data channel.
var ErrChannelNotOpen = errors.New("data channel not open")

// Watch answers a viewer's WHEP offer. The viewer is bound to the stream's
// tracks whether or not the creator is live: media flows as soon as it does,
// without a new offer.
func (w *WebRTC) Watch(ctx context.Context, s *Stream, offer string, hooks ViewerHooks) (*Viewer, string, error) {
	desc, err := checkOffer(offer, "video", "audio")
	if err != nil {
		return nil, "", err
	}
	var tracks []*Track
	for _, t := range []*Track{s.Video, s.Audio} {
		kind := t.Kind().String()
		if !hasSection(desc, kind) {
			continue
		}
		codec := t.Codec()
		if !offerHasCodec(desc, kind, codec.MimeType) {
			return nil, "", &BadOfferError{Reason: fmt.Sprintf("this stream sends %s, which the offer does not list", codec.MimeType)}
		}
		tracks = append(tracks, t)
	}
	pc, err := w.viewAPI.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, "", fmt.Errorf("whep: new peer connection: %w", err)
	}
	v := &Viewer{ID: NewID(), stream: s, pc: pc, protocol: "whep", hooks: hooks, done: make(chan struct{})}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		pc.Close()
		return nil, "", &BadOfferError{Reason: err.Error()}
	}
	var senders []*webrtc.RTPSender
	for _, t := range tracks {
		d := newDownTrack(t, t.Kind().String(), "vitrine-"+s.Name, pc.WriteRTCP, v.Close)
		d.replay = s.opts.JoinReplay
		if t == s.Video {
			d.sim.stream = s
		}
		sender, err := pc.AddTrack(d)
		if err != nil {
			pc.Close()
			return nil, "", fmt.Errorf("whep: add %s track: %w", t.Kind(), err)
		}
		senders = append(senders, sender)
		v.tracks = append(v.tracks, d)
	}
	linkForEstimate(v.tracks)
	for i, d := range v.tracks {
		go d.readRTCP(senders[i])
	}
	pc.OnDataChannel(func(dc *webrtc.DataChannel) {
		dc.OnOpen(func() {
			raw, err := dc.Detach()
			if err != nil {
				return
			}
			ch, ok := raw.(*datachannel.DataChannel)
			if !ok {
				return
			}
			v.channel.Store(ch)
			if hooks.ChannelOpen != nil {
				hooks.ChannelOpen(v)
			}
			go v.readChannel(ch)
		})
	})
	pc.OnConnectionStateChange(func(st webrtc.PeerConnectionState) {
		switch st {
		case webrtc.PeerConnectionStateConnected:
			// The viewer can receive now: it starts on the cached group
			// of pictures, or asks the creator for a keyframe. Before,
			// pion drops what is written (no DTLS keys yet).
			for _, d := range v.tracks {
				d.ready()
			}
		case webrtc.PeerConnectionStateFailed, webrtc.PeerConnectionStateClosed:
			v.Close()
		}
	})
	if err := s.addViewer(v); err != nil {
		pc.Close()
		return nil, "", err
	}
	for _, d := range v.tracks {
		d.track.addDownTrack(d)
	}
	ans, err := answer(ctx, pc)
	if err != nil {
		v.Close()
		return nil, "", fmt.Errorf("whep: %w", err)
	}
	return v, ans, nil
}

func hasSection(desc *sdp.SessionDescription, kind string) bool {
	for _, md := range desc.MediaDescriptions {
		if md.MediaName.Media == kind {
			return true
		}
	}
	return false
}

// Stream is the stream the viewer watches.
func (v *Viewer) Stream() *Stream { return v.stream }

// PeerConnection exposes the session for trickle ICE and ICE restarts.
func (v *Viewer) PeerConnection() *webrtc.PeerConnection { return v.pc }

// Send writes one text message (the overlay's JSON) on the viewer's data
// channel; browsers hand text messages to pages as strings.
func (v *Viewer) Send(msg []byte) error {
	dc := v.channel.Load()
	if dc == nil {
		return ErrChannelNotOpen
	}
	_, err := dc.WriteDataChannel(msg, true)
	return err
}

// Viewers' messages (buy, confirm) are a few hundred bytes. Data channels
// are detached from pion so that each viewer's read loop holds a buffer of
// this size rather than pion's 64 KiB; a longer message (which the overlay
// refuses) is read into a buffer of the largest SCTP message pion accepts,
// allocated for that message only.
const (
	channelBuffer     = 2 << 10
	channelMaxMessage = 64 << 10
)

// readChannel hands each message the viewer sends to the Message hook, until
// the channel closes. The message is not retained after the hook returns.
func (v *Viewer) readChannel(dc *datachannel.DataChannel) {
	buf := make([]byte, channelBuffer)
	for {
		msg := buf
		n, _, err := dc.ReadDataChannel(msg)
		if errors.Is(err, io.ErrShortBuffer) {
			// The message is still queued; pion does not say its size.
			msg = make([]byte, channelMaxMessage)
			n, _, err = dc.ReadDataChannel(msg)
		}
		if err != nil {
			_ = dc.Close()
			return
		}
		if v.hooks.Message != nil {
			v.hooks.Message(v, msg[:n])
		}
	}
}

// SetQuality applies the viewer's choice in the player's quality menu to
// its video: Auto follows the bandwidth estimate, the others pin a layer.
func (v *Viewer) SetQuality(c alloc.Choice) error {
	if !c.Valid() {
		return fmt.Errorf("quality must be auto, high, medium or low, not %q", c)
	}
	for _, d := range v.tracks {
		if d.track.kind == Video {
			d.choice.Store(&c)
			d.allocate(time.Now(), true)
		}
	}
	return nil
}

// Done is closed when the viewer is gone.
func (v *Viewer) Done() <-chan struct{} { return v.done }

// Close ends the session and frees everything the viewer held.
func (v *Viewer) Close() {
	v.closeOnce.Do(func() {
		for _, d := range v.tracks {
			d.leave()
		}
		v.stream.removeViewer(v)
		_ = v.pc.Close()
		close(v.done)
		if v.hooks.Closed != nil {
			v.hooks.Closed(v)
		}
	})
}

func NewID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
