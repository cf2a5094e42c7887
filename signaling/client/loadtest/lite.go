package loadtest

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/datachannel"
	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/crypto/selfsign"
	"github.com/pion/ice/v4"
	"github.com/pion/logging"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/sctp"
	"github.com/pion/sdp/v3"
	"github.com/pion/srtp/v3"
	"github.com/pion/stun/v4"
	"github.com/vitrine-live/vitrine/signaling/client"
)

// A lite viewer is a WHEP receiver cut down to what a load viewer needs:
// one UDP socket read by one goroutine that answers STUN, hands DTLS to
// pion/dtls and decrypts SRTP in place, so a packet costs one recvmsg, one
// decryption and the tool's bookkeeping. A pion PeerConnection spends about
// as much per received packet as the server spends per sent one (three
// goroutine hand-offs and two buffer copies on the way in); the lite viewer
// is what lets one machine load another. It speaks H.264 + Opus and the
// data channel; -viewer pion covers the rest.

// liteIdentity is the DTLS certificate all lite viewers of a run share.
type liteIdentity struct {
	cert        tls.Certificate
	fingerprint string // sha-256, as SDP writes it
}

func newLiteIdentity() (*liteIdentity, error) {
	cert, err := selfsign.GenerateSelfSigned()
	if err != nil {
		return nil, fmt.Errorf("lite viewer: certificate: %w", err)
	}
	return &liteIdentity{cert: cert, fingerprint: sdpFingerprint(cert.Certificate[0])}, nil
}

func sdpFingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	var b strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(h[i : i+2])
	}
	return b.String()
}

// liteSession is one lite viewer's connection.
type liteSession struct {
	v    *viewer
	sock *net.UDPConn
	// remote is where the server answered our first check from (set by the
	// read loop before iceOK closes); cands are the server's candidates the
	// checks go to, best first.
	remote   netip.AddrPort
	cands    []netip.AddrPort
	location string

	localUfrag, localPwd   string
	remoteUfrag, remotePwd string
	tieBreaker             uint64
	videoPT, audioPT       uint8
	rtxPT                  uint8 // 0: the server resends on the video SSRC, or not at all

	// Loss recovery (with Config.NACK). The read loop owns nack, videoSSRC
	// and rtcpBuf; probe is the last consent check sent, for its round trip.
	nack      *nackState
	ssrc      uint32                       // ours, as the sender of NACKs and feedback
	videoSSRC uint32                       // from the answer, else from the video packets
	srtcp     atomic.Pointer[srtp.Context] // encrypts what we send
	rtcpBuf   []byte
	probe     atomic.Pointer[stunProbe]

	// Transport-wide congestion control (with Config.TWCC, when the answer
	// has the extension): its id, and what the read loop records and
	// reports.
	twccID   uint8
	twcc     *twccRecorder
	feedback atomic.Uint64 // reports sent

	iceOK   chan struct{} // closed when the server answered our check
	iceOnce sync.Once
	dtlsIn  chan []byte
	done    chan struct{}
	closing sync.Once
	srtp    atomic.Pointer[srtp.Context]
	// early holds, for the read loop, SRTP packets that came before our
	// side of the DTLS handshake had the keys: the server sends as soon as
	// its side is done, a moment before ours. A browser handles the
	// handshake's last flight before the next packet; so do we.
	early []earlyPacket

	dtls  *dtls.Conn
	assoc *sctp.Association
	dc    *datachannel.DataChannel
}

type earlyPacket struct {
	b   []byte
	now int64
}

// maxEarly bounds the packets kept while the handshake ends (a replayed
// group of pictures and more). Past it the oldest go, so what is kept has no
// gap (a gap would count as loss).
const maxEarly = 1024

// stunProbe is a binding request in flight: the server's answer times the
// round trip.
type stunProbe struct {
	id   [stun.TransactionIDSize]byte
	sent int64 // ns since run start
}

func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// twccOfferID is the header extension id the lite viewer offers for the
// transport-wide sequence number (Chrome's).
const twccOfferID = 3

// joinLite is join for a lite viewer: offer, answer, ICE, DTLS, SCTP. A
// constrained viewer's socket is made in the run's network namespace; its
// HTTP requests go from here.
func (v *viewer) joinLite(ctx context.Context, endpoint string) error {
	r := v.run
	localIP := r.localIP
	var sock *net.UDPConn
	var err error
	if v.group == groupConstrained {
		localIP = r.netns.ip
		sock, err = r.netns.listenUDP()
	} else {
		laddr := &net.UDPAddr{IP: net.IPv4zero}
		if localIP.IsValid() {
			laddr.IP = localIP.AsSlice()
		}
		sock, err = net.ListenUDP("udp4", laddr)
	}
	if err != nil {
		return err
	}
	_ = sock.SetReadBuffer(256 << 10) // a few frames for every viewer
	s := &liteSession{v: v, sock: sock, iceOK: make(chan struct{}), dtlsIn: make(chan []byte, 64), done: make(chan struct{}),
		localUfrag: randomToken(16), localPwd: randomToken(32), videoPT: 102, audioPT: 111}
	var tb [12]byte
	_, _ = rand.Read(tb[:])
	s.tieBreaker = binary.BigEndian.Uint64(tb[:])
	s.ssrc = binary.BigEndian.Uint32(tb[8:])
	if r.cfg.NACK {
		s.nack = &nackState{}
		s.rtxPT = 103 // offered; the answer says whether the server takes it
	}
	if r.cfg.TWCC {
		s.twccID = twccOfferID // offered; the answer says which id, if any
	}
	v.mu.Lock()
	v.lite = s
	v.mu.Unlock()

	hostIP, err := localIPFor(r.cfg.Server, localIP)
	if err != nil {
		return err
	}
	port := sock.LocalAddr().(*net.UDPAddr).Port
	answer, err := s.post(ctx, endpoint, s.offer(hostIP, port, r.lite.fingerprint))
	if err != nil {
		return err
	}
	if err := s.parseAnswer(answer, localIP.IsLoopback()); err != nil {
		return err
	}
	if s.twccID != 0 {
		s.twcc = &twccRecorder{}
	}
	if !v.startReader() {
		return errors.New("closed while joining")
	}
	go func() {
		defer v.readers.Done()
		s.readLoop()
	}()

	// ICE: we are the controlling side and nominate the first pair that
	// answers. Checks go to the server's best candidate, and every 200 ms
	// to one more (a viewer in a network namespace may not reach them all).
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	var sendErr error // an address this viewer has no route to, say
	for ice, tries := false, 0; !ice; tries++ {
		for _, c := range s.cands[:min(len(s.cands), 1+tries/4)] {
			if err := s.sendBindingRequest(c); err != nil {
				sendErr = err
			}
		}
		select {
		case <-s.iceOK:
			ice = true
		case <-ctx.Done():
			if sendErr != nil {
				return fmt.Errorf("ICE: %w (%v)", ctx.Err(), sendErr)
			}
			return fmt.Errorf("ICE: %w", ctx.Err())
		case <-t.C:
		}
	}
	if v.startReader() {
		go func() {
			defer v.readers.Done()
			s.keepalive()
		}()
	}

	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = logging.LogLevelDisabled
	want := r.lite.serverFingerprint(answer)
	conn, err := dtls.Client(liteDTLSConn{s}, net.UDPAddrFromAddrPort(s.remote), &dtls.Config{
		Certificates:           []tls.Certificate{r.lite.cert},
		InsecureSkipVerify:     true, // self-signed: checked against the answer's fingerprint instead
		VerifyPeerCertificate:  func(raw [][]byte, _ [][]*x509.Certificate) error { return checkFingerprint(raw, want) },
		SRTPProtectionProfiles: []dtls.SRTPProtectionProfile{dtls.SRTP_AEAD_AES_128_GCM, dtls.SRTP_AES128_CM_HMAC_SHA1_80},
		ExtendedMasterSecret:   dtls.RequireExtendedMasterSecret,
		FlightInterval:         25 * time.Millisecond, // the server drops a ClientHello that beats its DTLS start: resend soon
		LoggerFactory:          lf,
	})
	if err != nil {
		return fmt.Errorf("DTLS: %w", err)
	}
	s.dtls = conn
	if err := conn.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("DTLS: %w", err)
	}
	profile, ok := conn.SelectedSRTPProtectionProfile()
	if !ok {
		return errors.New("DTLS: no SRTP profile negotiated")
	}
	state, ok := conn.ConnectionState()
	if !ok {
		return errors.New("DTLS: no connection state")
	}
	keys := srtp.Config{Profile: srtp.ProtectionProfile(profile)}
	if err := keys.ExtractSessionKeysFromDTLS(&state, true); err != nil {
		return fmt.Errorf("SRTP keys: %w", err)
	}
	sctx, err := srtp.CreateContext(keys.Keys.RemoteMasterKey, keys.Keys.RemoteMasterSalt, keys.Profile)
	if err != nil {
		return fmt.Errorf("SRTP: %w", err)
	}
	if s.nack != nil || s.twcc != nil {
		// Before the read loop decrypts anything: its first packets may
		// be due feedback.
		out, err := srtp.CreateContext(keys.Keys.LocalMasterKey, keys.Keys.LocalMasterSalt, keys.Profile)
		if err != nil {
			return fmt.Errorf("SRTCP: %w", err)
		}
		s.srtcp.Store(out)
	}
	s.srtp.Store(sctx)
	v.connected.Store(true)

	// The overlay channel: SCTP over the DTLS connection, then DCEP.
	s.assoc, err = sctp.ClientContext(ctx, sctp.WithNetConn(conn), sctp.WithLoggerFactory(lf), sctp.WithMaxReceiveBufferSize(1<<20))
	if err != nil {
		return fmt.Errorf("SCTP: %w", err)
	}
	s.dc, err = datachannel.Dial(s.assoc, 0, &datachannel.Config{ChannelType: datachannel.ChannelTypeReliable, Label: "vitrine", LoggerFactory: lf})
	if err != nil {
		return fmt.Errorf("data channel: %w", err)
	}
	v.setChannel(func(b []byte) error {
		_, err := s.dc.WriteDataChannel(b, true)
		return err
	})
	v.channel.Store(true)
	if v.startReader() {
		go func() {
			defer v.readers.Done()
			s.readChannel()
		}()
	}
	return nil
}

// localIPFor is the address the server can reach this machine on: the one
// the user chose, or the one the kernel would send from towards it.
func localIPFor(server string, chosen netip.Addr) (netip.Addr, error) {
	if chosen.IsValid() {
		return chosen, nil
	}
	u, err := url.Parse(server)
	if err != nil {
		return netip.Addr{}, err
	}
	c, err := net.Dial("udp4", net.JoinHostPort(u.Hostname(), "9"))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("no IPv4 route to %s: %w", u.Hostname(), err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr(), nil
}

func (s *liteSession) offer(ip netip.Addr, port int, fingerprint string) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\r\n", args...) }
	w("v=0")
	w("o=- %d 2 IN IP4 127.0.0.1", time.Now().UnixNano()&0x7fffffff)
	w("s=-")
	w("t=0 0")
	w("a=group:BUNDLE 0 1 2")
	w("a=fingerprint:sha-256 %s", fingerprint)
	w("a=ice-ufrag:%s", s.localUfrag)
	w("a=ice-pwd:%s", s.localPwd)
	media := func(mid int, m string) {
		w("%s", m)
		w("c=IN IP4 0.0.0.0")
		w("a=mid:%d", mid)
		w("a=ice-ufrag:%s", s.localUfrag)
		w("a=ice-pwd:%s", s.localPwd)
		w("a=fingerprint:sha-256 %s", fingerprint)
		w("a=setup:active")
		if mid == 0 {
			w("a=candidate:1 1 udp 2130706431 %s %d typ host", ip, port)
			w("a=end-of-candidates")
		}
	}
	if s.nack == nil {
		media(0, fmt.Sprintf("m=video %d UDP/TLS/RTP/SAVPF %d", port, s.videoPT))
	} else {
		media(0, fmt.Sprintf("m=video %d UDP/TLS/RTP/SAVPF %d %d", port, s.videoPT, s.rtxPT))
	}
	w("a=recvonly")
	w("a=rtcp-mux")
	w("a=rtpmap:%d H264/90000", s.videoPT)
	w("a=fmtp:%d level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f", s.videoPT)
	if s.twccID != 0 {
		w("a=extmap:%d %s", s.twccID, sdp.TransportCCURI)
		w("a=rtcp-fb:%d transport-cc", s.videoPT)
	}
	if s.nack != nil {
		w("a=rtcp-fb:%d nack", s.videoPT)
		w("a=rtpmap:%d rtx/90000", s.rtxPT)
		w("a=fmtp:%d apt=%d", s.rtxPT, s.videoPT)
	}
	media(1, fmt.Sprintf("m=audio %d UDP/TLS/RTP/SAVPF %d", port, s.audioPT))
	w("a=recvonly")
	w("a=rtcp-mux")
	w("a=rtpmap:%d opus/48000/2", s.audioPT)
	w("a=fmtp:%d minptime=10;useinbandfec=1", s.audioPT)
	media(2, fmt.Sprintf("m=application %d UDP/DTLS/SCTP webrtc-datachannel", port))
	w("a=sctp-port:5000")
	w("a=max-message-size:262144")
	return b.String()
}

func (s *liteSession) post(ctx context.Context, endpoint, offer string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(offer))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/sdp")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if res.StatusCode != http.StatusCreated {
		return "", &client.HTTPError{Status: res.StatusCode, Body: string(body), Header: res.Header}
	}
	base, err := url.Parse(endpoint)
	if err != nil {
		return "", err
	}
	loc, err := url.Parse(res.Header.Get("Location"))
	if err != nil || res.Header.Get("Location") == "" {
		return "", errors.New("answer without a valid Location")
	}
	s.location = base.ResolveReference(loc).String()
	return string(body), nil
}

// parseAnswer takes what the lite viewer needs from the server's answer:
// ICE credentials, the IPv4 UDP candidates by priority, the payload types,
// the video SSRC and the transport-wide sequence number's extension id.
func (s *liteSession) parseAnswer(answer string, loopback bool) error {
	type candidate struct {
		addr netip.AddrPort
		prio uint64
	}
	var cands []candidate
	section := ""
	rtx := map[uint64]bool{} // video payload types that are RTX
	apt := map[uint64]uint64{}
	var twccID uint8
	var firstSSRC, fidSSRC uint32
	for line := range strings.Lines(answer) {
		line = strings.TrimRight(line, "\r\n")
		switch {
		case strings.HasPrefix(line, "m="):
			f := strings.Fields(line)
			section = strings.TrimPrefix(f[0], "m=")
			if len(f) > 3 {
				if pt, err := strconv.ParseUint(f[3], 10, 7); err == nil {
					switch section {
					case "video":
						s.videoPT = uint8(pt)
					case "audio":
						s.audioPT = uint8(pt)
					}
				}
			}
		case section == "video" && strings.HasPrefix(line, "a=rtpmap:"):
			pt, enc, _ := strings.Cut(strings.TrimPrefix(line, "a=rtpmap:"), " ")
			if n, err := strconv.ParseUint(pt, 10, 7); err == nil && strings.HasPrefix(strings.ToLower(enc), "rtx/") {
				rtx[n] = true
			}
		case section == "video" && strings.HasPrefix(line, "a=extmap:"):
			// a=extmap:<id>[/<direction>] <uri>
			id, uri, _ := strings.Cut(strings.TrimPrefix(line, "a=extmap:"), " ")
			id, _, _ = strings.Cut(id, "/")
			uri, _, _ = strings.Cut(uri, " ") // extension attributes may follow
			if n, err := strconv.ParseUint(id, 10, 8); err == nil && n > 0 && n < 15 && uri == sdp.TransportCCURI {
				twccID = uint8(n)
			}
		case section == "video" && strings.HasPrefix(line, "a=ssrc-group:FID "):
			// The group's first SSRC is the media's, the second its RTX.
			if f := strings.Fields(strings.TrimPrefix(line, "a=ssrc-group:FID ")); len(f) > 0 {
				if n, err := strconv.ParseUint(f[0], 10, 32); err == nil {
					fidSSRC = uint32(n)
				}
			}
		case section == "video" && strings.HasPrefix(line, "a=ssrc:") && firstSSRC == 0:
			id, _, _ := strings.Cut(strings.TrimPrefix(line, "a=ssrc:"), " ")
			if n, err := strconv.ParseUint(id, 10, 32); err == nil {
				firstSSRC = uint32(n)
			}
		case section == "video" && strings.HasPrefix(line, "a=fmtp:"):
			pt, params, _ := strings.Cut(strings.TrimPrefix(line, "a=fmtp:"), " ")
			n, err := strconv.ParseUint(pt, 10, 7)
			a, ok := strings.CutPrefix(params, "apt=")
			if m, aerr := strconv.ParseUint(a, 10, 7); err == nil && ok && aerr == nil {
				apt[n] = m
			}
		case strings.HasPrefix(line, "a=ice-ufrag:") && s.remoteUfrag == "":
			s.remoteUfrag = strings.TrimPrefix(line, "a=ice-ufrag:")
		case strings.HasPrefix(line, "a=ice-pwd:") && s.remotePwd == "":
			s.remotePwd = strings.TrimPrefix(line, "a=ice-pwd:")
		case strings.HasPrefix(line, "a=candidate:"):
			// foundation component transport priority address port typ type
			f := strings.Fields(strings.TrimPrefix(line, "a=candidate:"))
			if len(f) < 8 || !strings.EqualFold(f[2], "udp") {
				continue
			}
			prio, _ := strconv.ParseUint(f[3], 10, 32)
			ip, err := netip.ParseAddr(f[4])
			port, perr := strconv.ParseUint(f[5], 10, 16)
			if err != nil || perr != nil || !ip.Is4() || (loopback && !ip.IsLoopback()) {
				continue
			}
			cands = append(cands, candidate{netip.AddrPortFrom(ip, uint16(port)), prio})
		}
	}
	if s.rtxPT != 0 {
		s.rtxPT = 0
		for pt := range rtx {
			if apt[pt] == uint64(s.videoPT) {
				s.rtxPT = uint8(pt)
			}
		}
	}
	if s.twccID != 0 {
		s.twccID = twccID
	}
	s.videoSSRC = firstSSRC
	if fidSSRC != 0 {
		s.videoSSRC = fidSSRC
	}
	if s.remoteUfrag == "" || s.remotePwd == "" {
		return errors.New("answer has no ICE credentials")
	}
	if len(cands) == 0 {
		return errors.New("answer has no IPv4 UDP candidate this viewer can reach")
	}
	slices.SortStableFunc(cands, func(a, b candidate) int { return cmp.Compare(b.prio, a.prio) })
	s.cands = s.cands[:0]
	for _, c := range cands {
		if !slices.Contains(s.cands, c.addr) {
			s.cands = append(s.cands, c.addr)
		}
	}
	s.remote = s.cands[0]
	return nil
}

func (l *liteIdentity) serverFingerprint(answer string) string {
	for line := range strings.Lines(answer) {
		if f, ok := strings.CutPrefix(strings.TrimSpace(line), "a=fingerprint:sha-256 "); ok {
			return strings.ToUpper(f)
		}
	}
	return ""
}

func checkFingerprint(raw [][]byte, want string) error {
	if len(raw) == 0 || want == "" || sdpFingerprint(raw[0]) != want {
		return errors.New("DTLS certificate does not match the answer's fingerprint")
	}
	return nil
}

// sendBindingRequest sends a connectivity check (or, once connected, a
// consent check) to the server's address to.
func (s *liteSession) sendBindingRequest(to netip.AddrPort) error {
	m, err := stun.Build(stun.TransactionID, stun.BindingRequest,
		stun.NewUsername(s.remoteUfrag+":"+s.localUfrag),
		ice.AttrControlling(s.tieBreaker), ice.PriorityAttr(2130706431), ice.UseCandidate(),
		stun.NewShortTermIntegrity(s.remotePwd), stun.Fingerprint)
	if err != nil {
		return err
	}
	if s.nack != nil {
		s.probe.Store(&stunProbe{id: m.TransactionID, sent: s.v.run.now()})
	}
	_, err = s.sock.WriteToUDPAddrPort(m.Raw, to)
	return err
}

// keepalive sends consent checks (RFC 7675) so the server keeps the pair.
func (s *liteSession) keepalive() {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			_ = s.sendBindingRequest(s.remote)
		}
	}
}

// readLoop is the lite viewer's only per-packet goroutine. (Batching
// reads with recvmmsg was tried and cost more: the server writes a packet to
// all viewers of a shard before the next one, so one socket rarely holds
// two packets at once.)
func (s *liteSession) readLoop() {
	buf := make([]byte, 1600)
	dec := make([]byte, 1600)
	var hdr rtp.Header
	for {
		n, from, err := s.sock.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		s.datagram(buf[:n], from, s.v.run.now(), dec, &hdr)
	}
}

// datagram demultiplexes one datagram (RFC 7983): STUN, DTLS or SRTP.
func (s *liteSession) datagram(b []byte, from netip.AddrPort, now int64, dec []byte, hdr *rtp.Header) {
	switch {
	case len(b) == 0:
	case b[0] < 2:
		s.handleSTUN(b, from)
	case b[0] >= 20 && b[0] <= 63:
		select {
		case s.dtlsIn <- bytes.Clone(b):
		default: // DTLS retransmits
		}
	case b[0] >= 128 && b[0] <= 191:
		if len(b) < 12 || (b[1] >= 192 && b[1] <= 223) {
			return // RTCP: Sender Reports are not measured
		}
		ctx := s.srtp.Load()
		if ctx == nil {
			if len(s.early) == maxEarly {
				s.early = slices.Delete(s.early, 0, 1)
			}
			s.early = append(s.early, earlyPacket{bytes.Clone(b), now})
			return
		}
		if early := s.early; early != nil {
			s.early = nil
			for _, e := range early {
				s.datagram(e.b, from, e.now, dec, hdr)
			}
		}
		out, err := ctx.DecryptRTP(dec, b, hdr)
		if err != nil {
			return
		}
		if s.twcc != nil {
			if x := hdr.GetExtension(s.twccID); len(x) >= 2 {
				s.twcc.observe(binary.BigEndian.Uint16(x), now)
				if s.twcc.due(now) {
					s.sendFeedback(now)
				}
			}
		}
		payload, h := rtpPayload(out)
		if payload == nil {
			return
		}
		switch pt := hdr.PayloadType; {
		case pt == s.videoPT:
			s.v.packet(kindVideo, payload, h, now, true)
			if s.nack != nil {
				s.videoSSRC = hdr.SSRC
				s.recover(h.seq, now)
			} else if s.videoSSRC == 0 {
				s.videoSSRC = hdr.SSRC
			}
		case pt == s.audioPT:
			s.v.packet(kindAudio, payload, h, now, false)
		case pt == s.rtxPT && pt != 0 && len(payload) >= 2:
			// RFC 4588: the original sequence number, then the payload;
			// timestamp and marker are the original's.
			h.seq = binary.BigEndian.Uint16(payload)
			s.v.packet(kindVideo, payload[2:], h, now, true)
			s.recover(h.seq, now)
		}
	}
}

// recover feeds a video sequence number to the loss recovery and asks the
// server for what is missing.
func (s *liteSession) recover(seq uint16, now int64) {
	lost := s.nack.observe(seq, now)
	ctx := s.srtcp.Load()
	if len(lost) == 0 || ctx == nil || s.videoSSRC == 0 {
		return
	}
	nack := rtcp.TransportLayerNack{SenderSSRC: s.ssrc, MediaSSRC: s.videoSSRC, Nacks: rtcp.NackPairsFromSequenceNumbers(lost)}
	raw, err := nack.Marshal()
	if err != nil {
		return
	}
	if s.rtcpBuf, err = ctx.EncryptRTCP(s.rtcpBuf[:0], raw, nil); err == nil {
		_, _ = s.sock.WriteToUDPAddrPort(s.rtcpBuf, s.remote)
	}
}

// sendFeedback sends the transport-wide feedback due, addressed to the
// video's SSRC: the server reads it on the video's sender.
func (s *liteSession) sendFeedback(now int64) {
	ctx := s.srtcp.Load()
	if ctx == nil || s.videoSSRC == 0 {
		return // reported with the next one
	}
	fb := s.twcc.feedback(s.ssrc, s.videoSSRC, now)
	if fb == nil {
		return
	}
	raw, err := fb.Marshal()
	if err != nil {
		return
	}
	if s.rtcpBuf, err = ctx.EncryptRTCP(s.rtcpBuf[:0], raw, nil); err == nil {
		if _, err := s.sock.WriteToUDPAddrPort(s.rtcpBuf, s.remote); err == nil {
			s.feedback.Add(1)
		}
	}
}

func (s *liteSession) handleSTUN(b []byte, from netip.AddrPort) {
	m := &stun.Message{Raw: bytes.Clone(b)}
	if m.Decode() != nil {
		return
	}
	switch m.Type {
	case stun.BindingRequest:
		res, err := stun.Build(stun.NewTransactionIDSetter(m.TransactionID), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: from.Addr().AsSlice(), Port: int(from.Port())},
			stun.NewShortTermIntegrity(s.localPwd), stun.Fingerprint)
		if err == nil {
			_, _ = s.sock.WriteToUDPAddrPort(res.Raw, from)
		}
	case stun.BindingSuccess:
		s.iceOnce.Do(func() {
			s.remote = from
			close(s.iceOK)
		})
		if p := s.probe.Load(); p != nil && p.id == m.TransactionID && s.probe.CompareAndSwap(p, nil) {
			s.nack.rtt(s.v.run.now() - p.sent)
		}
	}
}

func (s *liteSession) readChannel() {
	buf := make([]byte, 64<<10)
	for {
		n, _, err := s.dc.ReadDataChannel(buf)
		if err != nil {
			s.v.channelEnded(s.v.run.now())
			return
		}
		s.v.channelMessage(buf[:n], s.v.run.now())
	}
}

// close hangs up: DELETE on the server, then the local connections.
func (s *liteSession) close() {
	s.closing.Do(func() {
		if s.location != "" {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if req, err := http.NewRequestWithContext(ctx, http.MethodDelete, s.location, nil); err == nil {
				if res, err := http.DefaultClient.Do(req); err == nil {
					res.Body.Close()
				}
			}
			cancel()
		}
		close(s.done)
		if s.dc != nil {
			_ = s.dc.Close()
		}
		if s.assoc != nil {
			_ = s.assoc.Close()
		}
		if s.dtls != nil {
			_ = s.dtls.Close()
		}
		_ = s.sock.Close()
	})
}

// liteDTLSConn is the socket as pion/dtls sees it: reads come from the
// read loop, writes go straight to the server's address.
type liteDTLSConn struct{ s *liteSession }

func (c liteDTLSConn) ReadFrom(p []byte) (int, net.Addr, error) {
	select {
	case b := <-c.s.dtlsIn:
		return copy(p, b), net.UDPAddrFromAddrPort(c.s.remote), nil
	case <-c.s.done:
		return 0, nil, net.ErrClosed
	}
}

func (c liteDTLSConn) WriteTo(p []byte, _ net.Addr) (int, error) {
	return c.s.sock.WriteToUDPAddrPort(p, c.s.remote)
}

func (c liteDTLSConn) Close() error                     { return nil } // the session owns the socket
func (c liteDTLSConn) LocalAddr() net.Addr              { return c.s.sock.LocalAddr() }
func (c liteDTLSConn) SetDeadline(time.Time) error      { return nil }
func (c liteDTLSConn) SetReadDeadline(time.Time) error  { return nil }
func (c liteDTLSConn) SetWriteDeadline(time.Time) error { return nil }
