package signaling

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/overlay"
)

// session is one WHIP or WHEP resource, addressed by its Location.
type session struct {
	id     string
	kind   string // "whip" or "whep"
	stream string
	pc     *webrtc.PeerConnection
	end    func() // DELETE
	done   <-chan struct{}
	// WHEP only: peer is another node's pull; mirrored, a viewer whose
	// overlay comes from a relayed show; send writes to its data channel.
	peer     bool
	mirrored bool
	send     func([]byte)

	mu   sync.Mutex
	etag string
}

const answerTimeout = 5 * time.Second

func (s *Server) whipPost(w http.ResponseWriter, r *http.Request) {
	def, st, ok := s.streamAuth(w, r)
	if !ok {
		return
	}
	name := def.Name
	release, ok := s.holdSession(w, r)
	if !ok {
		return
	}
	defer func() { release() }() // unless the session took it over
	offer, ok := s.readSDP(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), answerTimeout)
	defer cancel()
	pub, answer, err := s.rtc.Publish(ctx, st, offer, s.cfg.Takeover)
	if err != nil {
		s.offerError(w, "whip", name, err)
		return
	}
	sess := s.addSession("whip", name, pub.PeerConnection(), pub.End, pub.Done(), nil)
	release = s.keepUntilDone(sess, release)
	s.log.Info("whip: creator session started", "stream", name, "session", sess.id, "remote", r.RemoteAddr)
	s.writeAnswer(w, sess, answer)
}

func (s *Server) whepPost(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("stream")
	_, st, ok := s.streams.Get(name)
	if !ok {
		writeError(w, http.StatusNotFound, "unknown_stream", ErrStreamUnknown.Error())
		return
	}
	// Another node's pull is served even when this node is full or
	// draining: it stands for that node's viewers.
	peer := s.isPeer(r)
	if !peer && s.redirectViewer(w, r, name) {
		return
	}
	release := func() {}
	if !peer {
		if release, ok = s.holdSession(w, r); !ok {
			return
		}
	}
	defer func() { release() }() // unless the session took it over
	offer, ok := s.readSDP(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), answerTimeout)
	defer cancel()
	who, ok := s.identify(w, r, name, r.URL.Query().Get("viewer"))
	if !ok {
		return
	}
	sh, mirrored, ok := s.viewerShowOr503(w, name, st)
	if !ok {
		return
	}
	room, ok := s.roomOr503(w, name, st)
	if !ok {
		return
	}
	var mu sync.Mutex
	var cancels []func()
	var channel *media.Viewer
	closed := false
	vs := viewerSession{show: sh, room: room, who: who, charged: new(bool), ip: s.clientIP(r), limit: &overlay.Bucket{Rate: 5, Burst: 10}}
	hooks := media.ViewerHooks{
		// On its data channel the player gets the overlay snapshot first
		// (card, sale, stock), then who it is (a token to keep for next
		// time, and in a cluster the nodes to fail over to), the stream's
		// state (for its waiting, reconnecting and ended screens), every
		// live cue, and the chat (its snapshot first).
		ChannelOpen: func(v *media.Viewer) {
			send := func(b []byte) { _ = v.Send(b) }
			c1 := sh.Subscribe(send)
			// A shopper is the shop's token, not ours: no viewer token.
			hello := viewerReply{V: 1, Type: "welcome"}
			if !who.shopper {
				hello.Viewer = s.viewerToken(who.viewer)
			}
			if s.cluster != nil {
				hello.Nodes = s.cluster.Nodes()
			}
			welcome, _ := json.Marshal(hello)
			send(welcome)
			c2 := st.Watch(func(state media.State, reason string) {
				msg, _ := json.Marshal(StateMessage{V: 1, Type: "stream.state", State: state, Reason: reason})
				send(msg)
			})
			// Another node's pull gets no chat: that node has its room.
			c3 := func() {}
			if !peer {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c3 = room.Subscribe(ctx, who.viewer, send)
				cancel()
			}
			mu.Lock()
			defer mu.Unlock()
			if closed { // the viewer left while the channel opened
				c1()
				c2()
				c3()
				return
			}
			channel = v
			cancels = append(cancels, c1, c2, c3)
		},
		Message: func(v *media.Viewer, msg []byte) {
			vs := vs
			vs.q = v
			if r, ok := s.onViewerMessage(vs, msg); ok {
				reply, _ := json.Marshal(r)
				_ = v.Send(reply)
			}
		},
		Closed: func(*media.Viewer) {
			mu.Lock()
			defer mu.Unlock()
			closed = true
			channel = nil
			for _, c := range cancels {
				c()
			}
			cancels = nil
		},
	}
	v, answer, err := s.rtc.Watch(ctx, st, offer, hooks)
	if err != nil {
		s.offerError(w, "whep", name, err)
		return
	}
	sess := s.addSession("whep", name, v.PeerConnection(), v.Close, v.Done(), func(sess *session) {
		sess.peer, sess.mirrored = peer, mirrored
		sess.send = func(b []byte) {
			mu.Lock()
			ch := channel
			mu.Unlock()
			if ch != nil {
				_ = ch.Send(b)
			}
		}
	})
	release = s.keepUntilDone(sess, release)
	if peer {
		s.log.Info("whep: another node pulls the stream", "stream", name, "session", sess.id, "remote", r.RemoteAddr)
	}
	state, _ := st.State()
	w.Header().Set("Vitrine-Stream-State", string(state))
	s.writeAnswer(w, sess, answer)
}

// StateMessage is sent on a viewer's data channel when the stream's state
// changes (docs/protocol.md).
type StateMessage struct {
	V      int         `json:"v"`
	Type   string      `json:"type"`
	State  media.State `json:"state"`
	Reason string      `json:"reason,omitempty"`
}

func (s *Server) readSDP(w http.ResponseWriter, r *http.Request) (string, bool) {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/sdp" {
		writeError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "send the offer as Content-Type: application/sdp")
		return "", false
	}
	return s.readBody(w, r)
}

func (s *Server) readBody(w http.ResponseWriter, r *http.Request) (string, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxSDPBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body over %d bytes", s.cfg.MaxSDPBytes))
		} else {
			writeError(w, http.StatusBadRequest, "bad_body", "could not read the body")
		}
		return "", false
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		writeError(w, http.StatusBadRequest, "empty_body", "the body is empty")
		return "", false
	}
	return string(body), true
}

func (s *Server) offerError(w http.ResponseWriter, kind, stream string, err error) {
	var bad *media.BadOfferError
	switch {
	case errors.As(err, &bad):
		s.log.Info(kind+": offer refused", "stream", stream, "reason", bad.Reason)
		writeError(w, http.StatusBadRequest, "bad_offer", bad.Reason)
	case errors.Is(err, media.ErrAlreadyLive):
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusConflict, "already_live", "another session is live on this stream; end it first, or retry in a few seconds if it was yours")
	case errors.Is(err, media.ErrStreamClosed):
		writeError(w, http.StatusNotFound, "unknown_stream", ErrStreamUnknown.Error())
	default:
		s.internalError(w, kind+" offer", err)
	}
}

// addSession registers a session; set fills in its other fields before
// anyone else sees it.
// holdSession counts a session being opened against its address's limit;
// the caller releases it when the session fails or ends.
func (s *Server) holdSession(w http.ResponseWriter, r *http.Request) (release func(), ok bool) {
	ip := s.clientIP(r)
	release, ok = s.limits.open(ip, false)
	if !ok {
		s.limits.refuse(w, r, ip, "sessions", 5*time.Second)
	}
	return release, ok
}

// keepUntilDone releases a session's hold on its address's limit when the
// session ends, and returns a no-op for the request's own deferred release.
func (s *Server) keepUntilDone(sess *session, release func()) func() {
	go func() {
		<-sess.done
		release()
	}()
	return func() {}
}

func (s *Server) addSession(kind, stream string, pc *webrtc.PeerConnection, end func(), done <-chan struct{}, set func(*session)) *session {
	sess := &session{id: newSessionID(), kind: kind, stream: stream, pc: pc, end: end, done: done}
	sess.etag = etagOf(pc)
	if set != nil {
		set(sess)
	}
	s.mu.Lock()
	s.sessions[sess.id] = sess
	s.mu.Unlock()
	go func() {
		<-done
		s.mu.Lock()
		delete(s.sessions, sess.id)
		s.mu.Unlock()
	}()
	return sess
}

func (s *Server) writeAnswer(w http.ResponseWriter, sess *session, answer string) {
	hdr := w.Header()
	hdr.Set("Content-Type", "application/sdp")
	hdr.Set("Location", fmt.Sprintf("/%s/%s/%s", sess.kind, sess.stream, sess.id))
	hdr.Set("ETag", sess.etag)
	hdr.Set("Accept-Patch", "application/trickle-ice-sdpfrag")
	s.linkICEServers(w)
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, answer)
}

// lookup finds the session a PATCH or DELETE names.
func (s *Server) lookup(w http.ResponseWriter, r *http.Request) (*session, bool) {
	kind := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")[0]
	s.mu.Lock()
	sess, ok := s.sessions[r.PathValue("session")]
	s.mu.Unlock()
	if !ok || sess.kind != kind || sess.stream != r.PathValue("stream") {
		writeError(w, http.StatusNotFound, "unknown_session", "no such session (it ended or never existed)")
		return nil, false
	}
	return sess, true
}

func (s *Server) sessionDelete(w http.ResponseWriter, r *http.Request) {
	sess, ok := s.lookup(w, r)
	if !ok {
		return
	}
	sess.end()
	s.mu.Lock()
	delete(s.sessions, sess.id)
	s.mu.Unlock()
	s.log.Info(sess.kind+": session ended by client", "stream", sess.stream, "session", sess.id)
	w.WriteHeader(http.StatusOK)
}

// sessionPatch takes trickled candidates, or new ICE credentials, which
// restart ICE (RFC 9725 section 4.3): the answer is the server's new
// credentials and candidates.
func (s *Server) sessionPatch(w http.ResponseWriter, r *http.Request) {
	sess, ok := s.lookup(w, r)
	if !ok {
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/trickle-ice-sdpfrag" {
		writeError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "send Content-Type: application/trickle-ice-sdpfrag")
		return
	}
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	frag, err := parseSDPFrag(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_sdpfrag", err.Error())
		return
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if m := r.Header.Get("If-Match"); m != "" && m != "*" && m != sess.etag {
		writeError(w, http.StatusPreconditionFailed, "etag_mismatch", "the session's ICE state changed; restart ICE")
		return
	}
	remote := sess.pc.RemoteDescription()
	if remote == nil {
		writeError(w, http.StatusConflict, "not_ready", "the session has no remote description yet")
		return
	}
	if frag.ufrag != "" && frag.ufrag != iceUfrag(remote.SDP) {
		s.restartICE(w, r, sess, remote.SDP, frag)
		return
	}
	for _, c := range frag.candidates {
		if err := sess.pc.AddICECandidate(c); err != nil {
			writeError(w, http.StatusBadRequest, "bad_candidate", err.Error())
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) restartICE(w http.ResponseWriter, r *http.Request, sess *session, remote string, frag *sdpFrag) {
	if frag.pwd == "" {
		writeError(w, http.StatusBadRequest, "bad_sdpfrag", "an ICE restart needs both a=ice-ufrag and a=ice-pwd")
		return
	}
	offer := replaceICECredentials(remote, frag.ufrag, frag.pwd)
	if err := sess.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		writeError(w, http.StatusBadRequest, "ice_restart_failed", err.Error())
		return
	}
	ans, err := sess.pc.CreateAnswer(nil)
	if err != nil {
		s.internalError(w, "ice restart", err)
		return
	}
	gathered := webrtc.GatheringCompletePromise(sess.pc)
	if err := sess.pc.SetLocalDescription(ans); err != nil {
		s.internalError(w, "ice restart", err)
		return
	}
	select {
	case <-gathered:
	case <-r.Context().Done():
		return
	case <-time.After(answerTimeout):
	}
	for _, c := range frag.candidates {
		_ = sess.pc.AddICECandidate(c)
	}
	sess.etag = etagOf(sess.pc)
	s.log.Info(sess.kind+": ICE restarted", "stream", sess.stream, "session", sess.id)
	w.Header().Set("Content-Type", "application/trickle-ice-sdpfrag")
	w.Header().Set("ETag", sess.etag)
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, localFrag(sess.pc.LocalDescription().SDP))
}

// etagOf names the ICE session: it changes when ICE restarts.
func etagOf(pc *webrtc.PeerConnection) string {
	sum := sha256.Sum256([]byte(iceUfrag(pc.LocalDescription().SDP)))
	return `"` + hex.EncodeToString(sum[:8]) + `"`
}

func newSessionID() string { return media.NewID() }
