package media

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/logging"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// WebRTCConfig says where WebRTC media flows.
type WebRTCConfig struct {
	// ListenIP restricts ICE to one address ("" = all interfaces).
	ListenIP string
	// UDPPort carries all WebRTC media over one socket (pion's UDP mux).
	UDPPort int
	// TCPPort is the ICE-TCP fallback for networks that block UDP; 0 means
	// the same number as UDPPort (a random one when UDPPort is 0), -1
	// disables it.
	TCPPort int
	// NAT1To1IPs are public addresses to announce when the server sits
	// behind a 1:1 NAT (a cloud VM's public IP).
	NAT1To1IPs []string
	// IncludeLoopback offers 127.0.0.1 candidates, for viewers on the same
	// machine (the demo, tests).
	IncludeLoopback bool
	// SocketBuffer is the UDP socket's send and receive buffer in bytes:
	// the kernel default drops bursts of keyframes to many viewers.
	SocketBuffer int
	// NoGSO sends every datagram on its own instead of segmenting a
	// viewer's runs of packets in the kernel (UDP GSO).
	NoGSO bool
}

// WebRTC owns the ICE sockets and the two pion APIs: one for creators, with
// the full set of interceptors (NACK generation, receiver reports, TWCC) so
// the creator's encoder adapts, and one for viewers with none, because every
// per-viewer interceptor costs CPU per packet and memory per viewer; the
// forwarding core answers viewers' NACKs and sends their Sender Reports itself.
type WebRTC struct {
	publishAPI *webrtc.API
	viewAPI    *webrtc.API
	udp        *net.UDPConn
	batch      *batchConn // udp with its writes batched
	tcp        net.Listener
	udpMux     ice.UDPMux
	tcpMux     ice.TCPMux
	log        *slog.Logger
	metrics    *Metrics
	taps       *rtcpTaps // creators' Receiver Reports, for health metrics
	// publishVideo is the creators' video codec list, in preference order.
	publishVideo []webrtc.RTPCodecParameters
}

// NewWebRTC opens the ICE sockets.
func NewWebRTC(cfg WebRTCConfig, m *Metrics, log *slog.Logger) (*WebRTC, error) {
	w := &WebRTC{log: log, metrics: m, taps: newRTCPTaps()}
	udpAddr := net.JoinHostPort(cfg.ListenIP, strconv.Itoa(cfg.UDPPort))
	pc, err := net.ListenPacket("udp", udpAddr)
	if err != nil {
		return nil, fmt.Errorf("webrtc: listen udp %s: %w", udpAddr, err)
	}
	w.udp = pc.(*net.UDPConn)
	if cfg.SocketBuffer > 0 {
		// The kernel caps these at net.core.[rw]mem_max; what it grants is
		// logged so an operator can raise the sysctl.
		_ = w.udp.SetReadBuffer(cfg.SocketBuffer)
		_ = w.udp.SetWriteBuffer(cfg.SocketBuffer)
	}
	if w.batch, err = newBatchConn(w.udp, m, !cfg.NoGSO); err != nil {
		w.udp.Close()
		return nil, err
	}
	loggers := pionLoggers{log: log}
	w.udpMux = webrtc.NewICEUDPMux(loggers.NewLogger("udpmux"), w.batch)

	networks := []webrtc.NetworkType{webrtc.NetworkTypeUDP4, webrtc.NetworkTypeUDP6}
	if cfg.TCPPort >= 0 {
		port := cfg.TCPPort
		if port == 0 && cfg.UDPPort != 0 {
			// The same number as UDP, easy to open in a firewall. With a
			// random UDP port (0), TCP takes its own random port: the same
			// number may be taken.
			port = cfg.UDPPort
		}
		tcpAddr := net.JoinHostPort(cfg.ListenIP, strconv.Itoa(port))
		w.tcp, err = net.Listen("tcp", tcpAddr)
		if err != nil {
			w.udp.Close()
			return nil, fmt.Errorf("webrtc: listen tcp %s: %w", tcpAddr, err)
		}
		w.tcpMux = webrtc.NewICETCPMux(loggers.NewLogger("tcpmux"), w.tcp, 32)
		networks = append(networks, webrtc.NetworkTypeTCP4, webrtc.NetworkTypeTCP6)
	}

	settings := func() webrtc.SettingEngine {
		var s webrtc.SettingEngine
		s.LoggerFactory = loggers
		s.SetICEUDPMux(w.udpMux)
		if w.tcpMux != nil {
			s.SetICETCPMux(w.tcpMux)
		}
		s.SetNetworkTypes(networks)
		s.SetIncludeLoopbackCandidate(cfg.IncludeLoopback)
		// No multicast DNS: it would send traffic off this host, and browsers'
		// .local candidates still connect as peer-reflexive.
		s.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
		if len(cfg.NAT1To1IPs) > 0 {
			s.SetNAT1To1IPs(cfg.NAT1To1IPs, webrtc.ICECandidateTypeHost)
		}
		// A viewer that vanished without closing (phone lost signal, tab
		// killed) is detected by missing consent checks and dropped about
		// 20 s later (5 s until disconnected, then 15 s until failed;
		// TestDeadViewerDropped).
		s.SetICETimeouts(5*time.Second, 15*time.Second, 2*time.Second)
		return s
	}

	pubMedia := &webrtc.MediaEngine{}
	if w.publishVideo, err = registerCodecs(pubMedia, true); err != nil {
		return nil, err
	}
	// Simulcast: pion tells the layers apart by their RTP stream ids.
	if err := webrtc.ConfigureSimulcastExtensionHeaders(pubMedia); err != nil {
		return nil, err
	}
	pubInterceptors := &interceptor.Registry{}
	// First, so it wraps the writer the report interceptor sends through.
	pubInterceptors.Add(w.taps)
	if err := webrtc.ConfigureNack(pubMedia, pubInterceptors); err != nil {
		return nil, err
	}
	if err := webrtc.ConfigureRTCPReports(pubInterceptors); err != nil {
		return nil, err
	}
	if err := webrtc.ConfigureTWCCSender(pubMedia, pubInterceptors); err != nil {
		return nil, err
	}
	pubSettings := settings()
	w.publishAPI = webrtc.NewAPI(webrtc.WithMediaEngine(pubMedia),
		webrtc.WithInterceptorRegistry(pubInterceptors), webrtc.WithSettingEngine(pubSettings))

	viewMedia := &webrtc.MediaEngine{}
	if _, err := registerCodecs(viewMedia, false); err != nil {
		return nil, err
	}
	// The transport-wide sequence number the down-tracks stamp on video.
	if err := viewMedia.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: sdp.TransportCCURI}, webrtc.RTPCodecTypeVideo); err != nil {
		return nil, err
	}
	viewSettings := settings()
	// Viewers' data channels are read by media (webrtc_view.go) with small
	// buffers: pion's own read loop holds 64 KiB per channel.
	viewSettings.DetachDataChannels()
	w.viewAPI = webrtc.NewAPI(webrtc.WithMediaEngine(viewMedia),
		webrtc.WithInterceptorRegistry(&interceptor.Registry{}), webrtc.WithSettingEngine(viewSettings))

	log.Info("webrtc listening", "udp", w.udp.LocalAddr().String(), "tcp", w.tcpAddr())
	return w, nil
}

func (w *WebRTC) tcpAddr() string {
	if w.tcp == nil {
		return "disabled"
	}
	return w.tcp.Addr().String()
}

// UDPAddr is the media socket's address (useful when UDPPort was 0).
func (w *WebRTC) UDPAddr() *net.UDPAddr { return w.udp.LocalAddr().(*net.UDPAddr) }

// Close releases the sockets. Sessions should be closed first.
func (w *WebRTC) Close() error {
	err := w.udpMux.Close()
	if w.tcpMux != nil {
		err = errors.Join(err, w.tcpMux.Close())
	}
	return err
}

// registerCodecs lists what Vitrine forwards. Payloads pass through
// untouched, so the list is what browsers both send and decode. For creators
// the video order is the preference when a browser offers several: H.264
// first because every browser and OBS decode or send it in hardware.
func registerCodecs(m *webrtc.MediaEngine, publisher bool) ([]webrtc.RTPCodecParameters, error) {
	// transport-cc both ways: creators' browsers estimate their uplink
	// from Vitrine's feedback, and Vitrine estimates each viewer's downlink
	// from the viewer's (media/bwe).
	fb := []webrtc.RTCPFeedback{{Type: "nack"}, {Type: "nack", Parameter: "pli"}, {Type: "ccm", Parameter: "fir"}, {Type: "transport-cc"}}
	if publisher {
		fb = append(fb, webrtc.RTCPFeedback{Type: "goog-remb"})
	}
	type entry struct {
		mime, fmtp string
		pt         webrtc.PayloadType
	}
	video := []entry{
		{webrtc.MimeTypeH264, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f", 102},
		{webrtc.MimeTypeH264, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f", 104},
		{webrtc.MimeTypeH264, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f", 106},
		{webrtc.MimeTypeH264, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f", 108},
		{webrtc.MimeTypeVP8, "", 96},
		{webrtc.MimeTypeVP9, "profile-id=0", 98},
		{webrtc.MimeTypeAV1, "", 45},
	}
	var videoCodecs []webrtc.RTPCodecParameters
	for _, e := range video {
		c := webrtc.RTPCodecParameters{
			RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: e.mime, ClockRate: 90000, SDPFmtpLine: e.fmtp, RTCPFeedback: fb},
			PayloadType:        e.pt,
		}
		if err := m.RegisterCodec(c, webrtc.RTPCodecTypeVideo); err != nil {
			return nil, fmt.Errorf("webrtc: register %s: %w", e.mime, err)
		}
		rtx := webrtc.RTPCodecParameters{
			RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeRTX, ClockRate: 90000, SDPFmtpLine: fmt.Sprintf("apt=%d", e.pt)},
			PayloadType:        e.pt + 1,
		}
		if err := m.RegisterCodec(rtx, webrtc.RTPCodecTypeVideo); err != nil {
			return nil, fmt.Errorf("webrtc: register rtx: %w", err)
		}
		videoCodecs = append(videoCodecs, c, rtx)
	}
	opus := webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2,
			SDPFmtpLine: "minptime=10;useinbandfec=1"},
		PayloadType: 111,
	}
	if err := m.RegisterCodec(opus, webrtc.RTPCodecTypeAudio); err != nil {
		return nil, fmt.Errorf("webrtc: register opus: %w", err)
	}
	return videoCodecs, nil
}

// preferCodec orders codecs with those of mime first, keeping the rest in
// order: an answer lists them so, and a browser sends the first it lists.
func preferCodec(codecs []webrtc.RTPCodecParameters, mime string) []webrtc.RTPCodecParameters {
	out := make([]webrtc.RTPCodecParameters, 0, len(codecs))
	for _, c := range codecs {
		if strings.EqualFold(c.MimeType, mime) {
			out = append(out, c)
		}
	}
	for _, c := range codecs {
		if !strings.EqualFold(c.MimeType, mime) {
			out = append(out, c)
		}
	}
	return out
}

// BadOfferError is an offer Vitrine cannot answer; its text says why, for the
// HTTP response.
type BadOfferError struct{ Reason string }

func (e *BadOfferError) Error() string { return "bad offer: " + e.Reason }

// checkOffer parses an offer before pion sees it, so that a client gets a
// precise reason instead of a generic failure.
func checkOffer(offer string, wantKinds ...string) (*sdp.SessionDescription, error) {
	var desc sdp.SessionDescription
	if err := desc.UnmarshalString(offer); err != nil {
		return nil, &BadOfferError{Reason: "SDP does not parse: " + err.Error()}
	}
	found := false
	for _, md := range desc.MediaDescriptions {
		for _, k := range wantKinds {
			if md.MediaName.Media == k {
				found = true
			}
		}
	}
	if !found {
		return nil, &BadOfferError{Reason: "offer has no " + strings.Join(wantKinds, " or ") + " section"}
	}
	return &desc, nil
}

// offerHasCodec reports whether any media section of kind lists mime as
// pion will read it: a payload type of the m= line (0-127) with an rtpmap
// of that type. An rtpmap without a usable type would pass a name check and
// leave pion with a track it cannot send ("RTPSender created with no
// codecs": an internal error on an offer's fault).
func offerHasCodec(desc *sdp.SessionDescription, kind, mime string) bool {
	name := strings.TrimPrefix(strings.ToLower(mime), kind+"/")
	for _, md := range desc.MediaDescriptions {
		if md.MediaName.Media != kind {
			continue
		}
		for _, a := range md.Attributes {
			if a.Key != "rtpmap" {
				continue
			}
			pt, enc, ok := strings.Cut(a.Value, " ")
			if _, err := strconv.ParseUint(pt, 10, 7); !ok || err != nil || !slices.Contains(md.MediaName.Formats, pt) {
				continue
			}
			if strings.EqualFold(strings.SplitN(enc, "/", 2)[0], name) {
				return true
			}
		}
	}
	return false
}

// answer completes the offer/answer exchange and waits (briefly) for the
// server's candidates, which are local and known at once, so the answer
// carries them and clients need no trickle from the server.
func answer(ctx context.Context, pc *webrtc.PeerConnection) (string, error) {
	noFormat := &BadOfferError{Reason: "none of the offer's formats is one this stream can send"}
	ans, err := pc.CreateAnswer(nil)
	switch {
	case errors.Is(err, webrtc.ErrSenderWithNoCodecs):
		// The offer names the codec, but none of its formats is one the
		// track can send (for H.264: another packetization-mode).
		return "", noFormat
	case errors.Is(err, webrtc.ErrIncorrectSDPSemantics):
		// Two sections with one mid read as Plan B, which WHIP and WHEP
		// (unified plan) are not.
		return "", &BadOfferError{Reason: "the offer is not unified plan (two media sections with one mid?)"}
	case err != nil:
		return "", fmt.Errorf("create answer: %w", err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(ans); errors.Is(err, errNoCodec) {
		// pion matched a format by codec name alone, and the down track
		// found it is not the one the stream carries (H.264 in another
		// packetization-mode than the creator's).
		return "", noFormat
	} else if err != nil {
		return "", fmt.Errorf("set local description: %w", err)
	}
	select {
	case <-gathered:
	case <-ctx.Done():
		return "", ctx.Err()
	case <-time.After(3 * time.Second):
	}
	return pc.LocalDescription().SDP, nil
}

// pionLoggers routes pion's logs into slog one level down: pion warns about
// routine events (a closed candidate at the end of every session), which are
// debug lines for an operator; its errors are warnings, except a write into
// a closed pipe: the UDP mux hands a leaving viewer's last packets to its
// closed connection, which is also the end of a session.
type pionLoggers struct{ log *slog.Logger }

func (f pionLoggers) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{log: f.log.With("pion", scope)}
}

type pionLogger struct{ log *slog.Logger }

func (l pionLogger) Trace(string)          {}
func (l pionLogger) Tracef(string, ...any) {}
func (l pionLogger) Debug(string)          {}
func (l pionLogger) Debugf(string, ...any) {}
func (l pionLogger) Info(string)           {}
func (l pionLogger) Infof(string, ...any)  {}
func (l pionLogger) Warn(msg string)       { l.log.Debug(msg) }
func (l pionLogger) Warnf(f string, a ...any) {
	l.log.Debug(fmt.Sprintf(f, a...))
}
func (l pionLogger) Error(msg string) { l.log.Warn(msg) }
func (l pionLogger) Errorf(f string, a ...any) {
	for _, v := range a {
		if err, ok := v.(error); ok && errors.Is(err, io.ErrClosedPipe) {
			l.log.Debug(fmt.Sprintf(f, a...))
			return
		}
	}
	l.log.Warn(fmt.Sprintf(f, a...))
}
