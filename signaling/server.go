// Package signaling is Vitrine's HTTP edge: WHIP for creators, WHEP for
// viewers, the REST API, CORS and authentication. It turns HTTP requests into
// calls on the media and overlay packages and their errors into statuses a
// client can act on.
package signaling

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/overlay/chat"
)

// ICEServer is a STUN or TURN server offered to clients in WHIP/WHEP Link
// headers.
type ICEServer struct {
	URLs       []string `yaml:"urls"`
	Username   string   `yaml:"username"`
	Credential string   `yaml:"credential"`
}

// Config is the HTTP edge's part of the configuration.
type Config struct {
	AdminToken   string
	AllowOrigins []string // "*" or exact origins
	ICEServers   []ICEServer
	Takeover     bool  // a second creator replaces the first instead of 409
	MaxSDPBytes  int64 // offers and sdpfrags larger than this are refused
	Version      string
	Commit       string
	// TrustedProxies are the reverse proxies whose X-Forwarded-For names
	// the client (per-address limits).
	TrustedProxies []netip.Prefix
	// Limits bound what one client address may do.
	Limits Limits
	// Shoppers verifies the tokens the merchant's shop signs.
	Shoppers Shoppers
	// ViewerSecret signs viewer tokens (per-viewer purchase limits).
	ViewerSecret []byte
	// Show configures every stream's commerce overlay; its Store is the
	// store passed to New.
	Show overlay.ShowConfig
	// Chat configures every stream's chat room; its Store defaults to the
	// store passed to New when that keeps chat too.
	Chat chat.Config
}

// Server serves the HTTP API.
type Server struct {
	cfg      Config
	rtc      *media.WebRTC
	streams  *Streams
	store    overlay.Store
	gatherer prometheus.Gatherer
	log      *slog.Logger
	metrics  *edgeMetrics
	limits   *limiter

	storeErrors overlay.Throttle // failed buys and confirms, a log line a second

	showCfg overlay.ShowConfig

	mu       sync.Mutex
	sessions map[string]*session // by id, WHIP and WHEP
	ready    bool
	draining bool

	cluster Cluster // nil on a single node

	// showsMu guards shows apart from mu: restoring a show waits on the
	// store, and sessions should not wait with it.
	showsMu sync.Mutex
	shows   map[string]*overlay.Show
	rooms   map[string]*chat.Room // guarded by showsMu too
	chatCfg chat.Config
}

type edgeMetrics struct {
	requests    *prometheus.CounterVec
	badMessages prometheus.Counter
}

// New builds the HTTP edge. reg receives its metrics; gatherer is what
// /metrics serves.
func New(cfg Config, rtc *media.WebRTC, streams *Streams, store overlay.Store, reg prometheus.Registerer, gatherer prometheus.Gatherer, log *slog.Logger) *Server {
	if cfg.MaxSDPBytes <= 0 {
		cfg.MaxSDPBytes = 64 << 10
	}
	if len(cfg.AllowOrigins) == 0 {
		cfg.AllowOrigins = []string{"*"}
	}
	m := &edgeMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_http_requests_total",
			Help: "HTTP requests by route and status code."}, []string{"route", "code"}),
		badMessages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitrine_viewer_messages_rejected_total",
			Help: "Data-channel messages from viewers that were malformed, oversized or of an unknown type."}),
	}
	reg.MustRegister(m.requests, m.badMessages)
	showCfg := cfg.Show
	showCfg.Store = store
	if showCfg.Log == nil {
		showCfg.Log = log
	}
	if showCfg.Metrics == nil {
		showCfg.Metrics = overlay.NewMetrics(reg)
	}
	chatCfg := cfg.Chat
	if cs, ok := store.(chat.Store); ok && chatCfg.Store == nil {
		chatCfg.Store = cs
	}
	if chatCfg.Log == nil {
		chatCfg.Log = log
	}
	if chatCfg.Metrics == nil {
		chatCfg.Metrics = chat.NewMetrics(reg)
	}
	if chatCfg.Names == nil {
		chatCfg.Names = chat.NewNames(chatCfg.Store, 10, nil)
	}
	return &Server{cfg: cfg, rtc: rtc, streams: streams, store: store, gatherer: gatherer, log: log, metrics: m,
		showCfg: showCfg, sessions: map[string]*session{}, shows: map[string]*overlay.Show{},
		rooms: map[string]*chat.Room{}, chatCfg: chatCfg, limits: newLimiter(cfg.Limits, log, reg)}
}

// SetReady makes /readyz answer 200 (after startup completed).
func (s *Server) SetReady(ready bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ready = ready
}

// Handler returns the routes. extra lets the caller mount more (the web
// pages) on the same mux.
func (s *Server) Handler(extra func(mux *http.ServeMux)) http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, h http.HandlerFunc) {
		name := pattern[strings.Index(pattern, " ")+1:]
		mux.Handle(pattern, s.instrument(name, s.cors(s.limited(pattern, h))))
	}
	route("POST /whip/{stream}", s.whipPost)
	route("PATCH /whip/{stream}/{session}", s.sessionPatch)
	route("DELETE /whip/{stream}/{session}", s.sessionDelete)
	route("POST /whep/{stream}", s.whepPost)
	route("PATCH /whep/{stream}/{session}", s.sessionPatch)
	route("DELETE /whep/{stream}/{session}", s.sessionDelete)
	route("OPTIONS /whip/{stream}", s.options)
	route("OPTIONS /whep/{stream}", s.options)
	route("OPTIONS /whip/{stream}/{session}", s.options)
	route("OPTIONS /whep/{stream}/{session}", s.options)

	route("GET /api/v1/streams", s.admin(s.listStreams))
	route("POST /api/v1/streams", s.admin(s.createStream))
	route("GET /api/v1/streams/{stream}", s.getStream)
	route("DELETE /api/v1/streams/{stream}", s.admin(s.deleteStream))
	route("POST /api/v1/streams/{stream}/key", s.admin(s.rotateKey))
	route("GET /api/v1/streams/{stream}/health", s.getHealth)
	route("GET /api/v1/cluster", s.admin(s.getCluster))
	route("OPTIONS /api/v1/", s.options)
	s.catalogRoutes(route)
	s.overlayRoutes(route)
	s.chatRoutes(route)

	mux.Handle("GET /metrics", promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		ready, draining := s.ready, s.draining
		s.mu.Unlock()
		if draining {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		if !ready {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"version": s.cfg.Version, "commit": s.cfg.Commit})
	})
	if extra != nil {
		extra(mux)
	}
	return mux
}

// statusRecorder remembers the status code for the request counter.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (SSE flushes).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (s *Server) instrument(route string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		s.metrics.requests.WithLabelValues(route, fmt.Sprint(rec.code)).Inc()
	})
}

// cors lets pages on other origins (a shop embedding the player, a studio on
// another host) publish and watch.
func (s *Server) cors(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if origin := r.Header.Get("Origin"); origin != "" && s.originAllowed(origin) {
			hdr := w.Header()
			if s.cfg.AllowOrigins[0] == "*" {
				hdr.Set("Access-Control-Allow-Origin", "*")
			} else {
				hdr.Set("Access-Control-Allow-Origin", origin)
				hdr.Add("Vary", "Origin")
			}
			hdr.Set("Access-Control-Expose-Headers", "Location, ETag, Link, Accept-Patch, Vitrine-Stream-State, Vitrine-Viewer, Retry-After")
		}
		h(w, r)
	}
}

func (s *Server) originAllowed(origin string) bool {
	for _, o := range s.cfg.AllowOrigins {
		if o == "*" || o == origin {
			return true
		}
	}
	return false
}

func (s *Server) options(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS")
	hdr.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, If-Match, Idempotency-Key, Vitrine-Viewer, Vitrine-Shopper")
	hdr.Set("Access-Control-Max-Age", "86400")
	if strings.HasPrefix(r.URL.Path, "/whip/") || strings.HasPrefix(r.URL.Path, "/whep/") {
		hdr.Set("Accept-Post", "application/sdp")
		hdr.Set("Accept-Patch", "application/trickle-ice-sdpfrag")
		s.linkICEServers(w)
	}
	w.WriteHeader(http.StatusNoContent)
}

// linkICEServers adds the configured STUN/TURN servers as Link headers
// (RFC 9725 section 4.6).
func (s *Server) linkICEServers(w http.ResponseWriter) {
	for _, is := range s.cfg.ICEServers {
		for _, u := range is.URLs {
			v := fmt.Sprintf("<%s>; rel=\"ice-server\"", u)
			if is.Username != "" {
				v += fmt.Sprintf("; username=%q; credential=%q; credential-type=\"password\"", is.Username, is.Credential)
			}
			w.Header().Add("Link", v)
		}
	}
}

func (s *Server) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := bearer(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="vitrine"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "send the admin token as Authorization: Bearer <token>")
			return
		}
		if subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.AdminToken)) != 1 {
			writeError(w, http.StatusForbidden, "forbidden", "wrong admin token")
			return
		}
		h(w, r)
	}
}

func bearer(r *http.Request) (string, bool) {
	auth := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

type streamJSON struct {
	Name    string      `json:"name"`
	Key     string      `json:"key,omitempty"`
	State   media.State `json:"state"`
	Reason  string      `json:"reason,omitempty"`
	Viewers int         `json:"viewers"`
	Ingest  string      `json:"ingest,omitempty"`
}

func describe(d StreamDef, st *media.Stream, withKey bool) streamJSON {
	state, reason := st.State()
	out := streamJSON{Name: d.Name, State: state, Reason: reason, Viewers: st.ViewerCount()}
	if in := st.Ingest(); in != nil {
		out.Ingest = in.Protocol()
	}
	if withKey {
		out.Key = d.Key
	}
	return out
}

func (s *Server) listStreams(w http.ResponseWriter, _ *http.Request) {
	out := []streamJSON{}
	for _, d := range s.streams.List() {
		if _, st, ok := s.streams.Get(d.Name); ok {
			out = append(out, describe(d, st, true))
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"streams": out})
}

func (s *Server) createStream(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"name"`
		Key  string `json:"key"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	d, err := s.streams.Create(req.Name, req.Key)
	switch {
	case errors.Is(err, ErrStreamExists):
		writeError(w, http.StatusConflict, "stream_exists", err.Error())
	case errors.Is(err, ErrBadStreamName), errors.Is(err, ErrBadStreamKey):
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
	case err != nil:
		s.internalError(w, "create stream", err)
	default:
		_, st, _ := s.streams.Get(d.Name)
		w.Header().Set("Location", "/api/v1/streams/"+d.Name)
		writeJSON(w, http.StatusCreated, describe(d, st, true))
	}
}

// getStream is public: a player polls it to learn whether the creator is live.
func (s *Server) getStream(w http.ResponseWriter, r *http.Request) {
	d, st, ok := s.streams.Get(r.PathValue("stream"))
	if !ok {
		writeError(w, http.StatusNotFound, "unknown_stream", ErrStreamUnknown.Error())
		return
	}
	writeJSON(w, http.StatusOK, describe(d, st, false))
}

func (s *Server) deleteStream(w http.ResponseWriter, r *http.Request) {
	err := s.streams.Delete(r.PathValue("stream"))
	if err == nil {
		s.showsMu.Lock()
		if sh, ok := s.shows[r.PathValue("stream")]; ok {
			sh.Close()
			delete(s.shows, r.PathValue("stream"))
		}
		s.showsMu.Unlock()
		s.closeRoom(r.PathValue("stream"))
	}
	switch {
	case errors.Is(err, ErrStreamUnknown):
		writeError(w, http.StatusNotFound, "unknown_stream", err.Error())
	case err != nil:
		s.internalError(w, "delete stream", err)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

func (s *Server) rotateKey(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Key string `json:"key"`
	}
	if r.ContentLength != 0 && !readJSON(w, r, &req) {
		return
	}
	d, err := s.streams.SetKey(r.PathValue("stream"), req.Key)
	switch {
	case errors.Is(err, ErrStreamUnknown):
		writeError(w, http.StatusNotFound, "unknown_stream", err.Error())
	case errors.Is(err, ErrBadStreamKey):
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
	case err != nil:
		s.internalError(w, "rotate key", err)
	default:
		_, st, _ := s.streams.Get(d.Name)
		writeJSON(w, http.StatusOK, describe(d, st, true))
	}
}

func (s *Server) internalError(w http.ResponseWriter, what string, err error) {
	s.log.Error(what, "err", err)
	writeError(w, http.StatusInternalServerError, "internal", what+" failed; see the server log")
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		writeError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "send Content-Type: application/json")
		return false
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	var extra json.RawMessage
	if err == nil && dec.Decode(&extra) != io.EOF {
		// Two bodies pasted together: the first alone is not what was meant.
		err = errors.New("data after the JSON value")
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, "too_large", "body over 1 MiB")
		} else {
			writeError(w, http.StatusBadRequest, "invalid_json", err.Error())
		}
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError writes the API's error shape: {"error": {"code", "message"}}.
func writeError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": message}})
}
