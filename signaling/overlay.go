package signaling

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/media/alloc"
	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/overlay/chat"
)

// overlayRoutes mounts the live-commerce API: cues, the overlay snapshot and
// its event stream, buying and confirming.
func (s *Server) overlayRoutes(route func(string, http.HandlerFunc)) {
	route("POST /api/v1/streams/{stream}/cues", s.postCue)
	route("GET /api/v1/streams/{stream}/overlay", s.getOverlay)
	route("GET /api/v1/streams/{stream}/events", s.events)
	route("POST /api/v1/streams/{stream}/buy", s.postBuy)
	route("POST /api/v1/orders/{order}/confirm", s.postConfirm)
	route("GET /api/v1/streams/{stream}/orders", s.getOrders)
	route("PUT /api/v1/streams/{stream}/run-of-show", s.putRunOfShow)
	route("GET /api/v1/streams/{stream}/run-of-show", s.getRunOfShow)
	route("POST /api/v1/streams/{stream}/run-of-show/start", s.startRunOfShow)
	route("POST /api/v1/streams/{stream}/run-of-show/stop", s.stopRunOfShow)
}

func (s *Server) putRunOfShow(w http.ResponseWriter, r *http.Request) {
	if s.proxyToShow(w, r, r.PathValue("stream")) {
		return
	}
	def, st, ok := s.streamAuth(w, r)
	if !ok {
		return
	}
	var req struct {
		Cues []overlay.TimedCue `json:"cues"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	sh, ok := s.showOr503(w, def.Name, st)
	if !ok {
		return
	}
	run, err := sh.LoadRunOfShow(r.Context(), req.Cues)
	if err != nil {
		s.cueError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, run)
}

func (s *Server) getRunOfShow(w http.ResponseWriter, r *http.Request) {
	if s.proxyToShow(w, r, r.PathValue("stream")) {
		return
	}
	def, st, ok := s.streamAuth(w, r)
	if !ok {
		return
	}
	sh, ok := s.showOr503(w, def.Name, st)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, sh.RunOfShowState())
}

func (s *Server) startRunOfShow(w http.ResponseWriter, r *http.Request) {
	if s.proxyToShow(w, r, r.PathValue("stream")) {
		return
	}
	def, st, ok := s.streamAuth(w, r)
	if !ok {
		return
	}
	sh, ok := s.showOr503(w, def.Name, st)
	if !ok {
		return
	}
	run, err := sh.StartRunOfShow(r.Context())
	if err != nil {
		s.cueError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, run)
}

func (s *Server) stopRunOfShow(w http.ResponseWriter, r *http.Request) {
	if s.proxyToShow(w, r, r.PathValue("stream")) {
		return
	}
	def, st, ok := s.streamAuth(w, r)
	if !ok {
		return
	}
	sh, ok := s.showOr503(w, def.Name, st)
	if !ok {
		return
	}
	run, err := sh.StopRunOfShow(r.Context())
	if err != nil {
		s.cueError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, run)
}

// streamClock is the media clock the overlay stamps cues with: the video
// RTP timestamps every viewer receives.
type streamClock struct{ st *media.Stream }

func (c streamClock) Latest() (uint32, bool)        { return c.st.Video.LastTimestamp() }
func (c streamClock) At(t time.Time) (uint32, bool) { return c.st.Video.RTPTimeAt(t) }

// show returns the stream's overlay show, starting it on first use where
// the store left it. A store that fails is an error; the next call tries
// again.
func (s *Server) show(ctx context.Context, name string, st *media.Stream) (*overlay.Show, error) {
	s.showsMu.Lock()
	defer s.showsMu.Unlock()
	if sh, ok := s.shows[name]; ok {
		return sh, nil
	}
	sh, err := overlay.NewShow(ctx, name, streamClock{st}, s.showCfg)
	if err != nil {
		return nil, err
	}
	s.shows[name] = sh
	return sh, nil
}

// showOr503 is show for a handler: when the show cannot be restored, it
// answers 503 so the client tries again, and logs why.
func (s *Server) showOr503(w http.ResponseWriter, name string, st *media.Stream) (*overlay.Show, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sh, err := s.show(ctx, name, st)
	if err != nil {
		s.log.Error("overlay: show unavailable", "stream", name, "err", err)
		writeError(w, http.StatusServiceUnavailable, "store_unavailable", "the show's state could not be read from the store; try again")
		return nil, false
	}
	return sh, true
}

// OpenShows starts the show of every stream at once, so that what a restart
// interrupted is picked up before the first request: a flash sale that ran
// out meanwhile ends now and its event goes to the merchant, a running one
// gets its end timer, a run-of-show goes on.
func (s *Server) OpenShows(ctx context.Context) error {
	for _, def := range s.streams.List() {
		_, st, ok := s.streams.Get(def.Name)
		if !ok {
			continue
		}
		if s.cluster != nil && s.cluster.Origin(def.Name) != "" {
			continue // its creator is on another node, which runs the show
		}
		if _, err := s.show(ctx, def.Name, st); err != nil {
			return err
		}
	}
	return nil
}

// Shows calls fn for every running show (the reservation sweeper uses it to
// announce returned stock).
func (s *Server) Shows(fn func(*overlay.Show)) {
	s.showsMu.Lock()
	all := make([]*overlay.Show, 0, len(s.shows))
	for _, sh := range s.shows {
		all = append(all, sh)
	}
	s.showsMu.Unlock()
	for _, sh := range all {
		fn(sh)
	}
}

// streamAuth lets the stream's creator (its key) or the admin act on it:
// publish, send cues, run the show, read orders.
func (s *Server) streamAuth(w http.ResponseWriter, r *http.Request) (StreamDef, *media.Stream, bool) {
	def, st, ok := s.streams.Get(r.PathValue("stream"))
	if !ok {
		writeError(w, http.StatusNotFound, "unknown_stream", ErrStreamUnknown.Error())
		return def, nil, false
	}
	tok, ok := bearer(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="vitrine"`)
		writeError(w, http.StatusUnauthorized, "unauthorized", "send the stream key as Authorization: Bearer <key>")
		return def, nil, false
	}
	if !def.CheckKey(tok) && subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.AdminToken)) != 1 {
		s.log.Warn("wrong stream key", "stream", def.Name, "path", r.URL.Path, "remote", r.RemoteAddr)
		writeError(w, http.StatusForbidden, "wrong_key", "the stream key does not match this stream")
		return def, nil, false
	}
	return def, st, true
}

func (s *Server) postCue(w http.ResponseWriter, r *http.Request) {
	if s.proxyToShow(w, r, r.PathValue("stream")) {
		return
	}
	def, st, ok := s.streamAuth(w, r)
	if !ok {
		return
	}
	var req overlay.CueRequest
	if !readJSON(w, r, &req) {
		return
	}
	sh, ok := s.showOr503(w, def.Name, st)
	if !ok {
		return
	}
	m, err := sh.Cue(r.Context(), req)
	if err != nil {
		s.cueError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, m)
}

func (s *Server) cueError(w http.ResponseWriter, err error) {
	var fe *overlay.FieldError
	switch {
	case errors.Is(err, overlay.ErrBadCue), errors.As(err, &fe):
		writeError(w, http.StatusBadRequest, "invalid_cue", err.Error())
	case errors.Is(err, overlay.ErrUnknownSKU):
		writeError(w, http.StatusNotFound, "unknown_product", err.Error())
	case errors.Is(err, overlay.ErrShowClosed):
		writeError(w, http.StatusNotFound, "unknown_stream", ErrStreamUnknown.Error())
	case errors.Is(err, overlay.ErrNothingToHide), errors.Is(err, overlay.ErrNoSale), errors.Is(err, overlay.ErrSaleRunning):
		writeError(w, http.StatusConflict, "conflict", err.Error())
	default:
		s.internalError(w, "cue", err)
	}
}

func (s *Server) getOverlay(w http.ResponseWriter, r *http.Request) {
	def, st, ok := s.streams.Get(r.PathValue("stream"))
	if !ok {
		writeError(w, http.StatusNotFound, "unknown_stream", ErrStreamUnknown.Error())
		return
	}
	if _, ok := s.identify(w, r, def.Name, ""); !ok { // as for its events
		return
	}
	sh, _, ok := s.viewerShowOr503(w, def.Name, st)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, sh.Snapshot())
}

// events serves the overlay and the stream state as Server-Sent Events, for
// clients without WebRTC: the snapshot first, then live messages.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	def, st, ok := s.streams.Get(r.PathValue("stream"))
	if !ok {
		writeError(w, http.StatusNotFound, "unknown_stream", ErrStreamUnknown.Error())
		return
	}
	if _, ok := s.identify(w, r, def.Name, ""); !ok { // a private stream's overlay needs a shopper token
		return
	}
	rc := http.NewResponseController(w)
	// A slow reader gets a bounded queue; when it overflows the stream is
	// closed and the client reconnects to a fresh snapshot, instead of the
	// show waiting for it.
	queue := make(chan []byte, 256)
	overflow := make(chan struct{})
	var once sync.Once
	send := func(b []byte) {
		select {
		case queue <- b:
		default:
			once.Do(func() { close(overflow) })
		}
	}
	sh, _, ok := s.viewerShowOr503(w, def.Name, st)
	if !ok {
		return
	}
	room, ok := s.roomOr503(w, def.Name, st)
	if !ok {
		return
	}
	unsubscribe := sh.Subscribe(send)
	defer unsubscribe()
	unwatch := st.Watch(func(state media.State, reason string) {
		b, _ := json.Marshal(StateMessage{V: 1, Type: "stream.state", State: state, Reason: reason})
		send(b)
	})
	defer unwatch()
	unchat := room.Subscribe(r.Context(), "", send)
	defer unchat()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-overflow:
			return
		case <-keepalive.C:
			fmt.Fprint(w, ": keepalive\n\n")
		case b := <-queue:
			fmt.Fprintf(w, "data: %s\n\n", b)
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

// viewerToken identifies a viewer across sessions for per-viewer limits: an
// id and its HMAC under the server's secret, so a viewer cannot claim
// another's id. The watch page keeps it and sends it back (?viewer= on WHEP,
// Vitrine-Viewer on HTTP).
func (s *Server) viewerToken(id string) string {
	mac := hmac.New(sha256.New, s.cfg.ViewerSecret)
	mac.Write([]byte(id))
	return id + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil)[:12])
}

// viewerID returns the id in a valid token, or a new id.
func (s *Server) viewerID(token string) (id string, fresh bool) {
	if id, _, ok := strings.Cut(token, "."); ok && len(id) <= 64 && hmac.Equal([]byte(s.viewerToken(id)), []byte(token)) {
		return id, false
	}
	return "v" + media.NewID(), true
}

// ViewerMessage is what a viewer sends on the data channel.
type ViewerMessage struct {
	Type    string `json:"type"`
	SKU     string `json:"sku,omitempty"`
	Qty     int64  `json:"qty,omitempty"`
	Key     string `json:"key,omitempty"`
	OrderID string `json:"order_id,omitempty"`
	Value   string `json:"value,omitempty"` // quality: auto, high, medium, low; react: heart, ...
	// chat and chat.name
	Text     string `json:"text,omitempty"`
	Question bool   `json:"question,omitempty"`
	Name     string `json:"name,omitempty"`
}

// maxViewerMessage caps what a viewer may send in one message.
const maxViewerMessage = 4096

// viewerReply answers a viewer's message on its data channel.
type viewerReply struct {
	V       int                `json:"v"`
	Type    string             `json:"type"`
	Key     string             `json:"key,omitempty"`
	Result  *overlay.BuyResult `json:"result,omitempty"`
	Order   *overlay.Order     `json:"order,omitempty"`
	Code    string             `json:"code,omitempty"`
	Message string             `json:"message,omitempty"`
	Viewer  string             `json:"viewer,omitempty"`
	Value   string             `json:"value,omitempty"`
	Nodes   []string           `json:"nodes,omitempty"` // welcome, in a cluster
	// chat.result, chat.name.result, and refusals that may pass
	ID           string `json:"id,omitempty"`
	Status       string `json:"status,omitempty"`
	Name         string `json:"name,omitempty"`
	RetryAfterMS int64  `json:"retry_after_ms,omitempty"`
}

// qualitySetter is the viewer's session as the quality message sees it
// (a *media.Viewer).
type qualitySetter interface {
	SetQuality(alloc.Choice) error
}

// viewerSession is what a viewer's data-channel messages act on.
type viewerSession struct {
	show    viewerShow
	room    *chat.Room
	who     identity
	charged *bool  // its new anonymous viewer was paid for (mayBuy)
	ip      string // the address of its WHEP POST
	q       qualitySetter
	// limit paces buys, confirms and quality choices: a burst of 10 and 5
	// per second is far above a person and keeps a script from hammering
	// the store through one session. Chat and reactions have the room's own
	// limits. (pion delivers one session's messages in order on one
	// goroutine, so the bucket needs no lock.)
	limit *overlay.Bucket
}

// onViewerMessage handles a message from a viewer's data channel. A bad
// message gets an error reply; the viewer's session and the stream go on.
// A reaction gets no reply (ok false).
func (s *Server) onViewerMessage(vs viewerSession, raw []byte) (reply viewerReply, ok bool) {
	if len(raw) > maxViewerMessage {
		s.metrics.badMessages.Inc()
		return viewerReply{V: 1, Type: "error", Code: "too_large", Message: fmt.Sprintf("messages are at most %d bytes", maxViewerMessage)}, true
	}
	var m ViewerMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		s.metrics.badMessages.Inc()
		return viewerReply{V: 1, Type: "error", Code: "bad_message", Message: "not a JSON message"}, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	switch m.Type {
	case "react":
		if err := vs.room.React(vs.who.viewer, m.Value); err != nil {
			s.metrics.badMessages.Inc()
			return s.chatReply(err, ""), true
		}
		return viewerReply{}, false
	case "chat":
		msg, err := vs.room.Post(ctx, chat.Post{Viewer: vs.who.viewer, Text: m.Text, Question: m.Question})
		if err != nil {
			return s.chatReply(err, m.Key), true
		}
		return viewerReply{V: 1, Type: "chat.result", Key: m.Key, ID: msg.ID, Status: msg.Status}, true
	case "chat.name":
		name, err := s.chatCfg.Names.Set(ctx, vs.who.viewer, vs.ip, m.Name)
		if err != nil {
			s.nameRefused(err)
			return s.chatReply(err, ""), true
		}
		return viewerReply{V: 1, Type: "chat.name.result", Name: name}, true
	}
	if vs.limit.Take(time.Now()) > 0 {
		s.metrics.badMessages.Inc()
		return viewerReply{V: 1, Type: "error", Code: "rate_limited", Message: "too many messages; slow down"}, true
	}
	return s.onCommerceMessage(ctx, vs, m), true
}

// onCommerceMessage handles buy, confirm and quality.
func (s *Server) onCommerceMessage(ctx context.Context, vs viewerSession, m ViewerMessage) viewerReply {
	sh, viewer, q := vs.show, vs.who.viewer, vs.q
	switch m.Type {
	case "buy":
		if no := s.mayBuy(vs.who, vs.ip, vs.room, vs.charged); no != nil {
			return viewerReply{V: 1, Type: "error", Code: no.code, Message: no.message, Key: m.Key, RetryAfterMS: no.wait.Milliseconds()}
		}
		res, err := sh.Buy(ctx, viewer, m.SKU, m.Qty, m.Key)
		if err != nil {
			code, msg := buyErrorCode(err)
			r := viewerReply{V: 1, Type: "error", Code: code, Message: msg, Key: m.Key}
			if code == "store_unavailable" {
				s.storeFailed("buy", err)
				r.RetryAfterMS = storeRetry.Milliseconds()
			}
			return r
		}
		return viewerReply{V: 1, Type: "buy.result", Key: m.Key, Result: &res}
	case "confirm":
		o, err := sh.Confirm(ctx, viewer, m.OrderID)
		if err != nil {
			_, code, msg := confirmError(err)
			r := viewerReply{V: 1, Type: "error", Code: code, Message: msg}
			if code == "store_unavailable" {
				s.storeFailed("confirm", err)
				r.RetryAfterMS = storeRetry.Milliseconds()
			}
			return r
		}
		return viewerReply{V: 1, Type: "confirm.result", Order: &o}
	case "quality":
		// The player's quality menu: Auto follows the viewer's bandwidth,
		// the others pin a simulcast layer (media.Viewer.SetQuality).
		c := alloc.Choice(m.Value)
		if !c.Valid() {
			s.metrics.badMessages.Inc()
			return viewerReply{V: 1, Type: "error", Code: "invalid", Message: "quality value must be auto, high, medium or low"}
		}
		if err := q.SetQuality(c); err != nil {
			s.metrics.badMessages.Inc()
			return viewerReply{V: 1, Type: "error", Code: "invalid", Message: err.Error()}
		}
		return viewerReply{V: 1, Type: "quality.result", Value: string(c)}
	default:
		s.metrics.badMessages.Inc()
		return viewerReply{V: 1, Type: "error", Code: "bad_message", Message: "type must be buy, confirm, quality, chat, chat.name or react"}
	}
}

func buyErrorCode(err error) (string, string) {
	var fe *overlay.FieldError
	switch {
	case errors.As(err, &fe):
		return "invalid", err.Error()
	case errors.Is(err, overlay.ErrKeyReused):
		return "key_reused", err.Error()
	}
	return "store_unavailable", "the store did not answer; try again with the same key"
}

// storeRetry is how soon a client should try a buy or a confirm again when
// the store failed: the pool reconnects by itself once the database is back.
const storeRetry = time.Second

// storeFailed logs a failed buy or confirm, at most once a second with the
// count since, so that a database outage under a flash sale writes a few
// lines, not thousands.
func (s *Server) storeFailed(what string, err error) {
	n, write := s.storeErrors.Count()
	if !write {
		return
	}
	msg := "store unavailable: buys and confirms answer 503"
	if errors.Is(err, syscall.ENOSPC) {
		msg = "store unavailable: the disk is full; buys and confirms answer 503 until space is freed"
	}
	s.log.Error(msg, "op", what, "failures_since_last_line", n, "err", err)
}

// writeStoreUnavailable answers 503 with Retry-After: a buy or confirm
// retried with the same idempotency key gets the first result, so
// retrying is always safe.
func (s *Server) writeStoreUnavailable(w http.ResponseWriter, what string, err error) {
	s.storeFailed(what, err)
	w.Header().Set("Retry-After", strconv.Itoa(int(storeRetry.Seconds())))
	writeError(w, http.StatusServiceUnavailable, "store_unavailable", "the store did not answer; try again in a second")
}

func confirmError(err error) (int, string, string) {
	switch code := overlay.ConfirmFailure(err); code {
	case "unknown_order":
		return http.StatusNotFound, code, "no such order"
	case "foreign_order":
		return http.StatusForbidden, code, "this order belongs to another viewer"
	case "reservation_expired":
		return http.StatusGone, code, "the reservation ran out and the units went back on sale"
	case "order_closed":
		return http.StatusConflict, code, "the order was cancelled"
	default:
		return http.StatusServiceUnavailable, code, "the store did not answer; try again"
	}
}

// postBuy is the HTTP twin of the data channel's buy, for pages that prefer it.
func (s *Server) postBuy(w http.ResponseWriter, r *http.Request) {
	def, st, ok := s.streams.Get(r.PathValue("stream"))
	if !ok {
		writeError(w, http.StatusNotFound, "unknown_stream", ErrStreamUnknown.Error())
		return
	}
	var m ViewerMessage
	if !readJSON(w, r, &m) {
		return
	}
	who, ok := s.httpIdentity(w, r, def.Name)
	if !ok {
		return
	}
	sh, _, ok := s.viewerShowOr503(w, def.Name, st)
	if !ok {
		return
	}
	room, ok := s.roomOr503(w, def.Name, st)
	if !ok {
		return
	}
	charged := false
	if no := s.mayBuy(who, s.clientIP(r), room, &charged); no != nil {
		if no.wait > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(no.wait.Seconds())))))
		}
		writeError(w, no.status, no.code, no.message)
		return
	}
	res, err := sh.Buy(r.Context(), who.viewer, m.SKU, m.Qty, m.Key)
	if err != nil {
		code, msg := buyErrorCode(err)
		switch code {
		case "store_unavailable":
			s.writeStoreUnavailable(w, "buy", err)
		case "key_reused":
			writeError(w, http.StatusConflict, code, msg)
		default:
			writeError(w, http.StatusBadRequest, code, msg)
		}
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) postConfirm(w http.ResponseWriter, r *http.Request) {
	o, err := s.store.Order(r.Context(), r.PathValue("order"))
	if err == nil {
		_, st, ok := s.streams.Get(o.Stream)
		if !ok {
			writeError(w, http.StatusNotFound, "unknown_order", "no such order")
			return
		}
		who, ok := s.identify(w, r, o.Stream, r.Header.Get("Vitrine-Viewer"))
		if !ok {
			return
		}
		if who.fresh {
			writeError(w, http.StatusUnauthorized, "unknown_viewer", "send the Vitrine-Viewer token (or the shopper token) the buy was made with")
			return
		}
		sh, _, ok := s.viewerShowOr503(w, o.Stream, st)
		if !ok {
			return
		}
		o, err = sh.Confirm(r.Context(), who.viewer, o.ID)
	}
	if err != nil {
		status, code, msg := confirmError(err)
		if status == http.StatusServiceUnavailable {
			s.writeStoreUnavailable(w, "confirm", err)
			return
		}
		writeError(w, status, code, msg)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

// getOrders is for the studio: the stream's latest orders and totals.
func (s *Server) getOrders(w http.ResponseWriter, r *http.Request) {
	def, _, ok := s.streamAuth(w, r)
	if !ok {
		return
	}
	orders, err := s.store.Orders(r.Context(), def.Name, 100)
	if err != nil {
		s.internalError(w, "orders", err)
		return
	}
	stats, err := s.store.Stats(r.Context(), def.Name)
	if err != nil {
		s.internalError(w, "orders", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"orders": orders, "stats": stats})
}
