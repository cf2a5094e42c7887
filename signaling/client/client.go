// Package client is a WHIP and WHEP client built on pion: what Vitrine's
// tests and load tool use to publish and watch like a real peer would.
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/webrtc/v4"
)

// NewAPI returns a pion API with the browser-like default codecs and
// interceptors (NACK, reports, TWCC). loopbackOnly keeps ICE on 127.0.0.1,
// as tests and benchmarks must.
func NewAPI(loopbackOnly bool) (*webrtc.API, error) {
	if loopbackOnly {
		return NewAPIOn(net.IPv4(127, 0, 0, 1))
	}
	return NewAPIOn(nil)
}

// NewAPIOn is NewAPI with ICE on one address only (nil: every address).
// A node relaying another's stream uses its own WebRTC address.
func NewAPIOn(ip net.IP) (*webrtc.API, error) {
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		return nil, err
	}
	reg := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(m, reg); err != nil {
		return nil, err
	}
	var s webrtc.SettingEngine
	s.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	if ip != nil {
		s.SetIncludeLoopbackCandidate(ip.IsLoopback())
		s.SetIPFilter(func(candidate net.IP) bool { return candidate.Equal(ip) || (ip.IsLoopback() && candidate.IsLoopback()) })
		if ip.To4() != nil {
			s.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
		} else {
			s.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP6})
		}
	}
	return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(reg), webrtc.WithSettingEngine(s)), nil
}

// Session is a WHIP or WHEP session: the peer connection and the resource
// URL the server gave it.
type Session struct {
	PC       *webrtc.PeerConnection
	Location string
	ETag     string
	Header   http.Header // of the 201 response
}

// HTTPError is a non-201 answer to an offer.
type HTTPError struct {
	Status int
	Body   string
	Header http.Header
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("HTTP %d: %s", e.Status, strings.TrimSpace(e.Body))
}

// Publish sends tracks to a WHIP endpoint with the stream key.
func Publish(ctx context.Context, api *webrtc.API, endpoint, key string, tracks ...webrtc.TrackLocal) (*Session, error) {
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, err
	}
	for _, t := range tracks {
		sender, err := pc.AddTransceiverFromTrack(t, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			pc.Close()
			return nil, err
		}
		go drainRTCP(sender.Sender())
	}
	return negotiate(ctx, pc, endpoint, key)
}

// Watch opens a WHEP session receiving video and audio, with the overlay data
// channel when withChannel is set (created before the offer, as the watch
// page does). Set pc handlers in prepare, before negotiation starts.
func Watch(ctx context.Context, api *webrtc.API, endpoint string, withChannel bool, prepare func(*webrtc.PeerConnection, *webrtc.DataChannel)) (*Session, error) {
	return WatchAs(ctx, api, endpoint, "", withChannel, prepare)
}

// WatchAs is Watch with a bearer token (a shopper token the shop signed).
func WatchAs(ctx context.Context, api *webrtc.API, endpoint, token string, withChannel bool, prepare func(*webrtc.PeerConnection, *webrtc.DataChannel)) (*Session, error) {
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, err
	}
	for _, kind := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeVideo, webrtc.RTPCodecTypeAudio} {
		if _, err := pc.AddTransceiverFromKind(kind, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			pc.Close()
			return nil, err
		}
	}
	var dc *webrtc.DataChannel
	if withChannel {
		if dc, err = pc.CreateDataChannel("vitrine", nil); err != nil {
			pc.Close()
			return nil, err
		}
	}
	if prepare != nil {
		prepare(pc, dc)
	}
	return negotiate(ctx, pc, endpoint, token)
}

// Offer negotiates a peer connection the caller set up (a simulcast
// publisher, for one) with a WHIP or WHEP endpoint; key may be empty.
func Offer(ctx context.Context, pc *webrtc.PeerConnection, endpoint, key string) (*Session, error) {
	return negotiate(ctx, pc, endpoint, key)
}

func negotiate(ctx context.Context, pc *webrtc.PeerConnection, endpoint, key string) (*Session, error) {
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		pc.Close()
		return nil, err
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		pc.Close()
		return nil, err
	}
	select {
	case <-gathered:
	case <-ctx.Done():
		pc.Close()
		return nil, ctx.Err()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(pc.LocalDescription().SDP))
	if err != nil {
		pc.Close()
		return nil, err
	}
	req.Header.Set("Content-Type", "application/sdp")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		pc.Close()
		return nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		pc.Close()
		return nil, err
	}
	if res.StatusCode != http.StatusCreated {
		pc.Close()
		return nil, &HTTPError{Status: res.StatusCode, Body: string(body), Header: res.Header}
	}
	loc, err := url.Parse(endpoint)
	if err != nil {
		pc.Close()
		return nil, err
	}
	rel, err := url.Parse(res.Header.Get("Location"))
	if err != nil || res.Header.Get("Location") == "" {
		pc.Close()
		return nil, errors.New("answer without a valid Location")
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: string(body)}); err != nil {
		pc.Close()
		return nil, err
	}
	return &Session{PC: pc, Location: loc.ResolveReference(rel).String(), ETag: res.Header.Get("ETag"), Header: res.Header}, nil
}

// Delete ends the session on the server, then closes the peer connection.
func (s *Session) Delete(ctx context.Context) error {
	defer s.PC.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, s.Location, nil)
	if err != nil {
		return err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return &HTTPError{Status: res.StatusCode}
	}
	return nil
}

// WaitConnected waits until the peer connection is connected.
func (s *Session) WaitConnected(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		switch s.PC.ConnectionState() {
		case webrtc.PeerConnectionStateConnected:
			return nil
		case webrtc.PeerConnectionStateFailed, webrtc.PeerConnectionStateClosed:
			return fmt.Errorf("peer connection %s", s.PC.ConnectionState())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("not connected after %s (state %s)", timeout, s.PC.ConnectionState())
}

// drainRTCP reads a sender's RTCP so that interceptors (NACK responder) run.
func drainRTCP(s *webrtc.RTPSender) {
	buf := make([]byte, 1500)
	for {
		if _, _, err := s.Read(buf); err != nil {
			return
		}
	}
}
