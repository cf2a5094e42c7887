package signaling

import (
	"context"
	"crypto/subtle"
	"errors"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/overlay/chat"
)

// chatRoutes mounts chat: the HTTP twins of the data channel's chat
// messages, for pages without WebRTC, and the moderation API.
func (s *Server) chatRoutes(route func(string, http.HandlerFunc)) {
	route("PUT /api/v1/chat/name", s.putChatName)
	route("POST /api/v1/streams/{stream}/chat", s.postChat)
	route("POST /api/v1/streams/{stream}/reactions", s.postReaction)
	route("GET /api/v1/streams/{stream}/chat", s.getChat)
	route("POST /api/v1/streams/{stream}/chat/actions", s.postChatAction)
	route("GET /api/v1/streams/{stream}/chat/log", s.getChatLog)
	route("POST /api/v1/streams/{stream}/chat/moderator-key", s.postModeratorKey)
}

// room returns the stream's chat room, opening it on first use where the
// store left it.
func (s *Server) room(ctx context.Context, name string, st *media.Stream) (*chat.Room, error) {
	s.showsMu.Lock()
	defer s.showsMu.Unlock()
	if r, ok := s.rooms[name]; ok {
		return r, nil
	}
	cfg := s.chatCfg
	if s.cluster != nil {
		cfg.Peers = s.cluster
	}
	r, err := chat.NewRoom(ctx, name, streamClock{st}, func() string { return s.onScreen(name) }, cfg)
	if err != nil {
		return nil, err
	}
	s.rooms[name] = r
	return r, nil
}

// onScreen is the product whose card viewers of the stream see now: the
// relayed show's on a node relaying the stream, else the show's here.
func (s *Server) onScreen(name string) string {
	if s.cluster != nil {
		if m := s.cluster.Mirrored(name); m != nil {
			return m.OnScreen()
		}
	}
	s.showsMu.Lock()
	sh := s.shows[name]
	s.showsMu.Unlock()
	if sh == nil {
		return ""
	}
	return sh.OnScreen()
}

// roomOr503 is room for a handler: when the room cannot be read from the
// store, it answers 503 so the client tries again.
func (s *Server) roomOr503(w http.ResponseWriter, name string, st *media.Stream) (*chat.Room, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := s.room(ctx, name, st)
	if err != nil {
		s.log.Error("chat: room unavailable", "stream", name, "err", err)
		writeError(w, http.StatusServiceUnavailable, "store_unavailable", "the chat could not be read from the store; try again")
		return nil, false
	}
	return r, true
}

// closeRoom closes a deleted stream's room.
func (s *Server) closeRoom(name string) {
	s.showsMu.Lock()
	r, ok := s.rooms[name]
	delete(s.rooms, name)
	s.showsMu.Unlock()
	if ok {
		r.Close()
	}
}

// ChatEvent applies an event of a stream's room on another node to the
// room here, if this node has one open (it has viewers of the stream).
func (s *Server) ChatEvent(stream string, ev chat.Event) {
	s.showsMu.Lock()
	r := s.rooms[stream]
	s.showsMu.Unlock()
	if r == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r.Apply(ctx, ev)
}

// CloseRooms closes every room, writing the chat not stored yet; call it
// before the store closes.
func (s *Server) CloseRooms() {
	s.showsMu.Lock()
	rooms := s.rooms
	s.rooms = map[string]*chat.Room{}
	s.showsMu.Unlock()
	for _, r := range rooms {
		r.Close()
	}
}

// clientIP is the address a request came from, for per-address limits.
// Behind a reverse proxy listed in TrustedProxies it is the last address of
// X-Forwarded-For that is not one of those proxies; anyone else's
// X-Forwarded-For is ignored, since a client can write anything there.
func (s *Server) clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	addr, err := netip.ParseAddr(host)
	if err != nil || !s.trusted(addr) {
		return host
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		hop, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break // a malformed hop: trust nothing before it
		}
		if !s.trusted(hop) {
			return hop.Unmap().String()
		}
	}
	return host
}

func (s *Server) trusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// chatStatus is the HTTP status of a chat refusal.
func chatStatus(code string) int {
	switch code {
	case "invalid", "invalid_name":
		return http.StatusBadRequest
	case "banned", "name_required":
		return http.StatusForbidden
	case "unknown_message":
		return http.StatusNotFound
	case "name_taken", "name_locked":
		return http.StatusConflict
	case "muted", "slow_mode", "rate_limited":
		return http.StatusTooManyRequests
	}
	return http.StatusBadRequest
}

// chatError answers a chat call that failed: a refusal with its status
// (and Retry-After when waiting helps), anything else as a 500.
func (s *Server) chatError(w http.ResponseWriter, what string, err error) {
	var rf *chat.Refusal
	switch {
	case errors.As(err, &rf):
		if rf.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(rf.RetryAfter.Seconds()))))
		}
		writeError(w, chatStatus(rf.Code), rf.Code, rf.Message)
	case errors.Is(err, chat.ErrClosed):
		writeError(w, http.StatusNotFound, "unknown_stream", ErrStreamUnknown.Error())
	default:
		s.internalError(w, what, err)
	}
}

// chatReply is a chat refusal as a data-channel error.
func (s *Server) chatReply(err error, key string) viewerReply {
	var rf *chat.Refusal
	if errors.As(err, &rf) {
		return viewerReply{V: 1, Type: "error", Code: rf.Code, Message: rf.Message, Key: key, RetryAfterMS: rf.RetryAfter.Milliseconds()}
	}
	s.log.Error("chat", "err", err)
	return viewerReply{V: 1, Type: "error", Code: "internal", Message: "the message could not be taken; try again", Key: key}
}

// httpIdentity is who an HTTP call of a stream's viewer comes from
// (identify); a new anonymous viewer's token goes back in the response's
// Vitrine-Viewer header.
func (s *Server) httpIdentity(w http.ResponseWriter, r *http.Request, stream string) (identity, bool) {
	who, ok := s.identify(w, r, stream, r.Header.Get("Vitrine-Viewer"))
	if ok && who.fresh {
		w.Header().Set("Vitrine-Viewer", s.viewerToken(who.viewer))
	}
	return who, ok
}

func (s *Server) putChatName(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"name"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	// Names are server-wide: a shopper token here is checked with the
	// server's keys, not a stream's.
	who, ok := s.httpIdentity(w, r, "")
	if !ok {
		return
	}
	name, err := s.chatCfg.Names.Set(r.Context(), who.viewer, s.clientIP(r), req.Name)
	if err != nil {
		s.nameRefused(err)
		s.chatError(w, "chat name", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"name": name})
}

// nameRefused counts a refused name.
func (s *Server) nameRefused(err error) {
	var rf *chat.Refusal
	if errors.As(err, &rf) {
		s.chatCfg.Metrics.Refused(rf.Code)
	}
}

func (s *Server) postChat(w http.ResponseWriter, r *http.Request) {
	def, st, ok := s.streams.Get(r.PathValue("stream"))
	if !ok {
		writeError(w, http.StatusNotFound, "unknown_stream", ErrStreamUnknown.Error())
		return
	}
	var req struct {
		Text     string `json:"text"`
		Question bool   `json:"question"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	room, ok := s.roomOr503(w, def.Name, st)
	if !ok {
		return
	}
	p := chat.Post{Text: req.Text, Question: req.Question}
	if _, has := bearer(r); has {
		role, ok := s.moderatorAuth(w, r, def, room)
		if !ok {
			return
		}
		p.Role = chat.RoleModerator
		if role == chat.RoleHost {
			p.Role = chat.RoleHost
		}
	} else {
		who, ok := s.httpIdentity(w, r, def.Name)
		if !ok {
			return
		}
		p.Viewer = who.viewer
	}
	m, err := room.Post(r.Context(), p)
	if err != nil {
		s.chatError(w, "chat", err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"id": m.ID, "status": m.Status})
}

func (s *Server) postReaction(w http.ResponseWriter, r *http.Request) {
	def, st, ok := s.streams.Get(r.PathValue("stream"))
	if !ok {
		writeError(w, http.StatusNotFound, "unknown_stream", ErrStreamUnknown.Error())
		return
	}
	var req struct {
		Value string `json:"value"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	room, ok := s.roomOr503(w, def.Name, st)
	if !ok {
		return
	}
	who, ok := s.httpIdentity(w, r, def.Name)
	if !ok {
		return
	}
	if err := room.React(who.viewer, req.Value); err != nil {
		s.chatError(w, "reaction", err)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// moderatorAuth lets the stream's key (host), the admin token or the
// room's moderator key moderate, and says which it was.
func (s *Server) moderatorAuth(w http.ResponseWriter, r *http.Request, def StreamDef, room *chat.Room) (string, bool) {
	tok, ok := bearer(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="vitrine"`)
		writeError(w, http.StatusUnauthorized, "unauthorized", "send the stream key or a moderator key as Authorization: Bearer <key>")
		return "", false
	}
	switch {
	case def.CheckKey(tok):
		return chat.RoleHost, true
	case subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.AdminToken)) == 1:
		return chat.RoleAdmin, true
	case room.CheckModeratorKey(tok):
		return chat.RoleModerator, true
	}
	s.log.Warn("wrong moderator key", "stream", def.Name, "path", r.URL.Path, "remote", r.RemoteAddr)
	writeError(w, http.StatusForbidden, "wrong_key", "the key is neither this stream's key nor its moderator key")
	return "", false
}

// moderated resolves a moderation request: the stream, its room and the
// caller's role.
func (s *Server) moderated(w http.ResponseWriter, r *http.Request) (*chat.Room, string, bool) {
	def, st, ok := s.streams.Get(r.PathValue("stream"))
	if !ok {
		writeError(w, http.StatusNotFound, "unknown_stream", ErrStreamUnknown.Error())
		return nil, "", false
	}
	room, ok := s.roomOr503(w, def.Name, st)
	if !ok {
		return nil, "", false
	}
	role, ok := s.moderatorAuth(w, r, def, room)
	return room, role, ok
}

func (s *Server) getChat(w http.ResponseWriter, r *http.Request) {
	room, role, ok := s.moderated(w, r)
	if !ok {
		return
	}
	v, err := room.View(r.Context())
	if err != nil {
		s.chatError(w, "chat view", err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Role string `json:"role"`
		chat.View
	}{role, v})
}

func (s *Server) postChatAction(w http.ResponseWriter, r *http.Request) {
	room, role, ok := s.moderated(w, r)
	if !ok {
		return
	}
	var req chat.ActionRequest
	if !readJSON(w, r, &req) {
		return
	}
	settings, err := room.Moderate(r.Context(), role, req)
	if err != nil {
		s.chatError(w, "moderation", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "settings": settings})
}

func (s *Server) getChatLog(w http.ResponseWriter, r *http.Request) {
	room, _, ok := s.moderated(w, r)
	if !ok {
		return
	}
	log, err := room.Log(r.Context(), 200)
	if err != nil {
		s.chatError(w, "chat log", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"actions": log})
}

// postModeratorKey makes a moderator key: the creator (or the admin) hands
// it to a helper, who then moderates without the stream key.
func (s *Server) postModeratorKey(w http.ResponseWriter, r *http.Request) {
	def, st, ok := s.streamAuth(w, r)
	if !ok {
		return
	}
	room, ok := s.roomOr503(w, def.Name, st)
	if !ok {
		return
	}
	by := chat.RoleHost
	if tok, _ := bearer(r); !def.CheckKey(tok) {
		by = chat.RoleAdmin
	}
	key, err := room.NewModeratorKey(r.Context(), by)
	if err != nil {
		s.chatError(w, "moderator key", err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"key": key})
}
