package media

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// Publisher is a creator's WebRTC session (WHIP).
type Publisher struct {
	stream  *Stream
	pc      *webrtc.PeerConnection
	started time.Time
	last    atomic.Int64 // unix nanos of the newest packet

	// rids are the simulcast layers the offer lists, in its order (none
	// without simulcast): the first is the stream's Video.
	rids []string

	mu      sync.Mutex
	sources []*Source
	links   []sourceLink
	tap     *rtcpTap // nil if the interceptor chain has none
	// skew maps the creator's NTP clock to ours, fixed by the first Sender
	// Report, so audio and video reports translate identically.
	skew     time.Duration
	haveSkew bool
	ended    atomic.Bool
	doneOnce sync.Once
	done     chan struct{}
}

// Publish answers a creator's WHIP offer and makes the session the stream's
// creator. It fails with ErrAlreadyLive (unless takeover), or a *BadOfferError.
func (w *WebRTC) Publish(ctx context.Context, s *Stream, offer string, takeover bool) (*Publisher, string, error) {
	desc, err := checkOffer(offer, "video", "audio")
	if err != nil {
		return nil, "", err
	}
	if !offerHasCodec(desc, "video", "H264") && !offerHasCodec(desc, "video", "VP8") &&
		!offerHasCodec(desc, "video", "VP9") && !offerHasCodec(desc, "video", "AV1") &&
		!offerHasCodec(desc, "audio", "opus") {
		return nil, "", &BadOfferError{Reason: "no codec Vitrine forwards (H264, VP8, VP9, AV1, Opus)"}
	}
	pc, err := w.publishAPI.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, "", fmt.Errorf("whip: new peer connection: %w", err)
	}
	p := &Publisher{stream: s, pc: pc, started: time.Now(), done: make(chan struct{}), tap: w.taps.claim(pc.ID()),
		rids: simulcastRIDs(desc)}
	pc.OnTrack(p.onTrack)
	pc.OnConnectionStateChange(func(st webrtc.PeerConnectionState) {
		if st == webrtc.PeerConnectionStateFailed || st == webrtc.PeerConnectionStateClosed {
			p.finish()
		}
	})
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		pc.Close()
		return nil, "", &BadOfferError{Reason: err.Error()}
	}
	// Ask the creator for the codec the stream's viewers are bound to (H.264
	// until a first creator chose otherwise): the answer lists it first and
	// browsers send the first codec of the answer, so nobody renegotiates.
	prefs := offerPayloadTypes(desc, preferCodec(w.publishVideo, s.Video.Codec().MimeType))
	for _, tr := range pc.GetTransceivers() {
		if tr.Kind() == webrtc.RTPCodecTypeVideo {
			_ = tr.SetCodecPreferences(prefs)
		}
	}
	if err := s.Publish(p, takeover); err != nil {
		pc.Close()
		return nil, "", err
	}
	ans, err := answer(ctx, pc)
	if err != nil {
		p.Close()
		return nil, "", fmt.Errorf("whip: %w", err)
	}
	// Viewers who join between now and the creator's first packet must be
	// bound to the codec the creator will send: the first one the answer
	// lists for each kind.
	for kind, c := range AnswerCodecs(ans) {
		if kind == "video" {
			s.Video.Expect(c)
		} else {
			s.Audio.Expect(c)
		}
	}
	return p, ans, nil
}

// offerPayloadTypes renumbers the preferred video codecs with the payload
// types the offer gave them: pion answers with a preference's own number,
// and a browser that numbered H.264 109 where Vitrine says 102 (Chromium
// 148) then sends packets the answer never named. A codec, or an RTX whose
// codec, the offer lacks is left out.
func offerPayloadTypes(offer *sdp.SessionDescription, prefs []webrtc.RTPCodecParameters) []webrtc.RTPCodecParameters {
	var video *sdp.MediaDescription
	for _, md := range offer.MediaDescriptions {
		if md.MediaName.Media == "video" {
			video = md
			break
		}
	}
	if video == nil {
		return prefs
	}
	type offered struct {
		pt   webrtc.PayloadType
		name string
		fmtp string
	}
	var codecs []offered
	for _, f := range video.MediaName.Formats {
		pt, err := strconv.Atoi(f)
		if err != nil || pt < 0 || pt > 127 {
			continue // RTP payload types are 7 bits: 877 must not become 109
		}
		c, err := offer.GetCodecForPayloadType(uint8(pt))
		if err != nil {
			continue
		}
		codecs = append(codecs, offered{pt: webrtc.PayloadType(pt), name: strings.ToLower(c.Name), fmtp: c.Fmtp})
	}
	renumbered := map[webrtc.PayloadType]webrtc.PayloadType{} // ours -> the offer's
	used := map[webrtc.PayloadType]bool{}
	var out []webrtc.RTPCodecParameters
	for _, p := range prefs {
		name := strings.ToLower(strings.TrimPrefix(strings.ToLower(p.MimeType), "video/"))
		if name == "rtx" {
			continue // after their codecs, below
		}
		for _, o := range codecs {
			if o.name == name && !used[o.pt] && sameFormat(name, o.fmtp, p.SDPFmtpLine) {
				used[o.pt] = true
				renumbered[p.PayloadType] = o.pt
				p.PayloadType = o.pt
				out = append(out, p)
				break
			}
		}
	}
	for _, p := range prefs {
		if !strings.EqualFold(p.MimeType, "video/rtx") {
			continue
		}
		ours, ok := renumbered[webrtc.PayloadType(fmtpInt(p.SDPFmtpLine, "apt"))]
		if !ok {
			continue
		}
		for _, o := range codecs {
			if o.name == "rtx" && fmtpInt(o.fmtp, "apt") == int(ours) {
				p.PayloadType = o.pt
				p.SDPFmtpLine = fmt.Sprintf("apt=%d", ours)
				out = append(out, p)
				break
			}
		}
	}
	if len(out) == 0 {
		return prefs
	}
	return out
}

// sameFormat: H.264 must agree on packetization mode and profile (the
// first byte of profile-level-id); VP9 and AV1 on their profile.
func sameFormat(name, a, b string) bool {
	switch name {
	case "h264":
		pa, pb := fmtpString(a, "profile-level-id"), fmtpString(b, "profile-level-id")
		return fmtpInt(a, "packetization-mode") == fmtpInt(b, "packetization-mode") &&
			len(pa) >= 2 && len(pb) >= 2 && strings.EqualFold(pa[:2], pb[:2])
	case "vp9":
		return fmtpInt(a, "profile-id") == fmtpInt(b, "profile-id")
	case "av1":
		return fmtpInt(a, "profile") == fmtpInt(b, "profile")
	}
	return true
}

func fmtpString(fmtp, key string) string {
	for _, kv := range strings.Split(fmtp, ";") {
		if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok && strings.EqualFold(k, key) {
			return v
		}
	}
	return ""
}

func fmtpInt(fmtp, key string) int {
	n, _ := strconv.Atoi(fmtpString(fmtp, key))
	return n
}

// AnswerCodecs returns, per kind, the first codec of the answer's media
// sections: the one a WebRTC sender uses.
func AnswerCodecs(answer string) map[string]Codec {
	var desc sdp.SessionDescription
	out := map[string]Codec{}
	if desc.UnmarshalString(answer) != nil {
		return out
	}
	for _, md := range desc.MediaDescriptions {
		kind := md.MediaName.Media
		if (kind != "video" && kind != "audio") || len(md.MediaName.Formats) == 0 || md.MediaName.Port.Value == 0 {
			continue
		}
		if _, done := out[kind]; done {
			continue
		}
		pt := md.MediaName.Formats[0]
		var c Codec
		for _, a := range md.Attributes {
			switch {
			case a.Key == "rtpmap" && strings.HasPrefix(a.Value, pt+" "):
				enc := strings.Split(strings.TrimPrefix(a.Value, pt+" "), "/")
				c.MimeType = kind + "/" + enc[0]
				if len(enc) > 1 {
					rate, _ := strconv.Atoi(enc[1])
					c.ClockRate = uint32(rate)
				}
				if len(enc) > 2 {
					ch, _ := strconv.Atoi(enc[2])
					c.Channels = uint16(ch)
				}
			case a.Key == "fmtp" && strings.HasPrefix(a.Value, pt+" "):
				c.Fmtp = strings.TrimPrefix(a.Value, pt+" ")
			}
		}
		if c.MimeType != "" {
			out[kind] = c
		}
	}
	return out
}

// simulcastRIDs reads the video section's a=simulcast:send list (RFC 8853):
// layers separated by ';', alternatives by ',' (the first is taken), a '~'
// marks a layer that starts paused.
func simulcastRIDs(desc *sdp.SessionDescription) []string {
	for _, md := range desc.MediaDescriptions {
		if md.MediaName.Media != "video" {
			continue
		}
		v, ok := md.Attribute("simulcast")
		if !ok {
			return nil
		}
		fields := strings.Fields(v)
		for i := 0; i+1 < len(fields); i += 2 {
			if fields[i] != "send" {
				continue
			}
			var rids []string
			for _, layer := range strings.Split(fields[i+1], ";") {
				rid, _, _ := strings.Cut(layer, ",")
				if rid = strings.TrimPrefix(rid, "~"); rid != "" {
					rids = append(rids, rid)
				}
			}
			return rids
		}
	}
	return nil
}

// Protocol names the ingest for metrics and logs.
func (p *Publisher) Protocol() string { return "whip" }

// LastActive is the newest packet's arrival, or the session start.
func (p *Publisher) LastActive() time.Time {
	if n := p.last.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return p.started
}

// PeerConnection exposes the session for trickle ICE and ICE restarts.
func (p *Publisher) PeerConnection() *webrtc.PeerConnection { return p.pc }

// Close drops the connection; viewers wait out the grace period.
func (p *Publisher) Close() { _ = p.pc.Close() }

// End ends the broadcast on the creator's request (WHIP DELETE).
func (p *Publisher) End() {
	p.ended.Store(true)
	_ = p.pc.Close()
	p.finish()
}

func (p *Publisher) finish() {
	p.mu.Lock()
	for _, src := range p.sources {
		src.End()
	}
	p.sources = nil
	p.mu.Unlock()
	p.stream.Unpublish(p, p.ended.Load())
	p.doneOnce.Do(func() { close(p.done) })
}

// Done is closed when the session is over.
func (p *Publisher) Done() <-chan struct{} { return p.done }

func (p *Publisher) onTrack(remote *webrtc.TrackRemote, receiver *webrtc.RTPReceiver) {
	track := p.stream.Video
	if remote.Kind() == webrtc.RTPCodecTypeAudio {
		track = p.stream.Audio
	} else if rid := remote.RID(); rid != "" {
		track = p.stream.SimulcastLayer(slices.Index(p.rids, rid))
		if track == nil {
			p.stream.log.Warn("simulcast layer ignored", "rid", rid, "layers", len(p.rids))
			return
		}
	}
	c := remote.Codec()
	codec := Codec{MimeType: c.MimeType, ClockRate: c.ClockRate, Channels: c.Channels, Fmtp: c.SDPFmtpLine}
	ssrc := uint32(remote.SSRC())
	src := track.NewSource(codec, func() {
		_ = p.pc.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: ssrc}})
	})
	kind := Video
	if track == p.stream.Audio {
		kind = Audio
	}
	p.mu.Lock()
	p.sources = append(p.sources, src)
	if track.layer == 0 {
		// The creator's health is its primary layer's.
		p.links = append(p.links, sourceLink{kind: kind, ssrc: ssrc, clockRate: codec.ClockRate})
	}
	p.mu.Unlock()
	track.RequestKeyframe()
	// A simulcast layer's RTCP is read by its rid: pion has one receiver
	// for the layers, and its plain ReadRTCP fails on them.
	read := func() ([]rtcp.Packet, error) { pkts, _, err := receiver.ReadRTCP(); return pkts, err }
	if rid := remote.RID(); rid != "" {
		read = func() ([]rtcp.Packet, error) { pkts, _, err := receiver.ReadSimulcastRTCP(rid); return pkts, err }
	}
	go p.readRTCP(read, src, codec.ClockRate)
	p.readRTP(remote, src)
}

func (p *Publisher) readRTP(remote *webrtc.TrackRemote, src *Source) {
	buf := make([]byte, 1600)
	var pkt rtp.Packet
	for {
		n, _, err := remote.Read(buf)
		if err != nil {
			return
		}
		if err := pkt.Unmarshal(buf[:n]); err != nil {
			continue
		}
		p.last.Store(time.Now().UnixNano())
		if err := src.WriteRTP(&pkt.Header, pkt.Payload); errors.Is(err, errNotSource) {
			return
		}
	}
}

// readRTCP takes the creator's Sender Reports: they place the stream's RTP
// clock in time, for lip sync at viewers and to stamp overlay cues.
func (p *Publisher) readRTCP(read func() ([]rtcp.Packet, error), src *Source, clockRate uint32) {
	for {
		pkts, err := read()
		if err != nil {
			return
		}
		for _, pkt := range pkts {
			sr, ok := pkt.(*rtcp.SenderReport)
			if !ok {
				continue
			}
			sourceTime := NTPToTime(sr.NTPTime)
			p.mu.Lock()
			if !p.haveSkew {
				p.skew, p.haveSkew = time.Since(sourceTime), true
			}
			local := sourceTime.Add(p.skew)
			p.mu.Unlock()
			src.SenderReport(sourceTime, local, sr.RTPTime)
		}
	}
}
