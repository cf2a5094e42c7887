// Package rtsp is Vitrine's RTSP server: any stream can be read at
// rtsp://host:8554/{stream} (VLC, ffplay, recorders; UDP or TCP), fed from the
// stream's tracks like a WHEP viewer; and a creator (ffmpeg -f rtsp, an IP
// camera that pushes) publishes with ANNOUNCE/RECORD to the same URL, the
// stream key as password.
package rtsp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/bluenviron/gortsplib/v4/pkg/description"
	"github.com/bluenviron/gortsplib/v4/pkg/headers"
	"github.com/bluenviron/gortsplib/v4/pkg/liberrors"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/media/ingest"
)

// Config is what the server needs.
type Config struct {
	Address        string // TCP, e.g. ":8554"
	UDPRTPAddress  string // e.g. ":8000"; "" = TCP transport only
	UDPRTCPAddress string // e.g. ":8001"
	// Stream finds a stream by name, with the key that publishes to it.
	Stream      func(name string) (st *media.Stream, key string, ok bool)
	Takeover    bool
	StaleAfter  time.Duration // streams.stale_after: 3 s when 0
	FFmpeg      string
	ReadTimeout time.Duration // 10 s when 0
	Metrics     *ingest.Metrics
	Log         *slog.Logger
}

// Server serves RTSP readers and publishers.
type Server struct {
	cfg Config
	srv *gortsplib.Server

	mu      sync.Mutex
	ln      net.Listener
	outputs map[*media.Stream]*output
	closed  bool
}

// Listen starts the server.
func Listen(cfg Config) (*Server, error) {
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = 10 * time.Second
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = 3 * time.Second
	}
	s := &Server{cfg: cfg, outputs: map[*media.Stream]*output{}}
	s.srv = &gortsplib.Server{
		Handler:        s,
		RTSPAddress:    cfg.Address,
		UDPRTPAddress:  cfg.UDPRTPAddress,
		UDPRTCPAddress: cfg.UDPRTCPAddress,
		ReadTimeout:    cfg.ReadTimeout,
		WriteTimeout:   cfg.ReadTimeout,
		// Keep the listener to tell its port (tests listen on port 0).
		Listen: func(network, address string) (net.Listener, error) {
			ln, err := net.Listen(network, address)
			if err != nil {
				return nil, err
			}
			s.mu.Lock()
			s.ln = ln
			s.mu.Unlock()
			return handshakeListener{Listener: ln, timeout: cfg.ReadTimeout}, nil
		},
	}
	if err := s.srv.Start(); err != nil {
		return nil, fmt.Errorf("rtsp: %w", err)
	}
	return s, nil
}

// Addr is the TCP address the server listens on.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ln.Addr()
}

// Close stops the server: every reader and publisher is disconnected.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	outs := make([]*output, 0, len(s.outputs))
	for _, o := range s.outputs {
		outs = append(outs, o)
	}
	s.outputs = map[*media.Stream]*output{}
	s.mu.Unlock()
	for _, o := range outs {
		o.close()
	}
	s.srv.Close()
}

// session is what the server keeps on a gortsplib session.
type session struct {
	log    *slog.Logger
	stream *media.Stream
	// Reader.
	out *output
	// Publisher.
	desc *description.Session
	pub  *ingest.Publisher
}

func streamName(path string) string {
	return strings.Trim(path, "/")
}

// OnConnOpen logs the connection.
func (s *Server) OnConnOpen(ctx *gortsplib.ServerHandlerOnConnOpenCtx) {
	ctx.Conn.SetUserData(s.cfg.Log.With("protocol", "rtsp", "remote", ctx.Conn.NetConn().RemoteAddr().String()))
}

// OnConnClose logs why a connection ended and counts a bad one.
func (s *Server) OnConnClose(ctx *gortsplib.ServerHandlerOnConnCloseCtx) {
	log, _ := ctx.Conn.UserData().(*slog.Logger)
	if log == nil {
		log = s.cfg.Log
	}
	s.cfg.Metrics.Bytes.WithLabelValues("rtsp").Add(float64(ctx.Conn.BytesReceived()))
	var te liberrors.ErrServerTerminated
	switch {
	case ctx.Error == nil, errors.As(ctx.Error, &te), errors.Is(ctx.Error, net.ErrClosed):
		log.Debug("rtsp connection closed")
	case isTimeout(ctx.Error):
		s.cfg.Metrics.Connections.WithLabelValues("rtsp", "timeout").Inc()
		log.Warn("rtsp connection timed out", "err", ctx.Error)
	case isEOF(ctx.Error):
		log.Info("rtsp connection closed by the client", "err", ctx.Error)
	default:
		var ae liberrors.ErrServerAuth
		if !errors.As(ctx.Error, &ae) {
			s.cfg.Metrics.Connections.WithLabelValues("rtsp", "bad_input").Inc()
		}
		log.Warn("rtsp connection closed", "err", ctx.Error)
	}
}

// OnSessionClose ends a reader's or a publisher's session.
func (s *Server) OnSessionClose(ctx *gortsplib.ServerHandlerOnSessionCloseCtx) {
	ss, _ := ctx.Session.UserData().(*session)
	if ss == nil {
		return
	}
	if ss.out != nil {
		s.cfg.Metrics.Readers.WithLabelValues(ss.stream.Name).Dec()
		s.releaseOutput(ss.out)
		ss.log.Info("rtsp reader left", "err", ctx.Error)
	}
	if ss.pub != nil {
		var torn liberrors.ErrServerSessionTornDown
		ended := errors.As(ctx.Error, &torn)
		ss.pub.End(ended)
		ss.log.Info("rtsp creator disconnected", "ended", ended, "err", ctx.Error)
	}
}

// OnDescribe answers a reader with the stream's tracks.
func (s *Server) OnDescribe(ctx *gortsplib.ServerHandlerOnDescribeCtx) (*base.Response, *gortsplib.ServerStream, error) {
	st, _, ok := s.cfg.Stream(streamName(ctx.Path))
	if !ok {
		s.cfg.Metrics.Connections.WithLabelValues("rtsp", "unknown_stream").Inc()
		return &base.Response{StatusCode: base.StatusNotFound}, nil, nil
	}
	out, err := s.output(st)
	if err != nil {
		s.cfg.Metrics.Connections.WithLabelValues("rtsp", "unsupported_codec").Inc()
		s.logFor(ctx.Conn).Warn("rtsp read refused", "stream", st.Name, "err", err)
		return &base.Response{StatusCode: base.StatusUnsupportedMediaType}, nil, nil
	}
	defer s.releaseOutput(out) // the reader's SETUP takes its own hold
	return &base.Response{StatusCode: base.StatusOK}, out.ss, nil
}

// OnSetup binds a reader to the stream's output, or accepts a publisher's
// tracks.
func (s *Server) OnSetup(ctx *gortsplib.ServerHandlerOnSetupCtx) (*base.Response, *gortsplib.ServerStream, error) {
	if ctx.Session.State() == gortsplib.ServerSessionStatePreRecord {
		return &base.Response{StatusCode: base.StatusOK}, nil, nil
	}
	if ss, _ := ctx.Session.UserData().(*session); ss != nil && ss.out != nil {
		return &base.Response{StatusCode: base.StatusOK}, ss.out.ss, nil
	}
	st, _, ok := s.cfg.Stream(streamName(setupPath(ctx.Path)))
	if !ok {
		st, _, ok = s.cfg.Stream(streamName(ctx.Path))
	}
	if !ok {
		s.cfg.Metrics.Connections.WithLabelValues("rtsp", "unknown_stream").Inc()
		return &base.Response{StatusCode: base.StatusNotFound}, nil, nil
	}
	out, err := s.output(st)
	if err != nil {
		return &base.Response{StatusCode: base.StatusUnsupportedMediaType}, nil, nil
	}
	log := s.logFor(ctx.Conn).With("stream", st.Name)
	ctx.Session.SetUserData(&session{log: log, stream: st, out: out})
	s.cfg.Metrics.Readers.WithLabelValues(st.Name).Inc()
	return &base.Response{StatusCode: base.StatusOK}, out.ss, nil
}

// setupPath drops the track part ("/demo/trackID=0") of a SETUP path.
func setupPath(p string) string {
	p = strings.Trim(p, "/")
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return p
}

// OnPlay starts a reader.
func (s *Server) OnPlay(ctx *gortsplib.ServerHandlerOnPlayCtx) (*base.Response, error) {
	if ss, _ := ctx.Session.UserData().(*session); ss != nil {
		ss.log.Info("rtsp reader playing", "transport", fmt.Sprint(ctx.Session.SetuppedTransport()))
	}
	return &base.Response{StatusCode: base.StatusOK}, nil
}

func (s *Server) logFor(c *gortsplib.ServerConn) *slog.Logger {
	if l, ok := c.UserData().(*slog.Logger); ok {
		return l
	}
	return s.cfg.Log
}

// credentialUser is the user name the client sent, so that any user name
// works and the stream key is the password.
func credentialUser(req *base.Request) string {
	var h headers.Authorization
	if v, ok := req.Header["Authorization"]; ok && h.Unmarshal(v) == nil {
		if h.Username != "" {
			return h.Username
		}
		if h.BasicUser != "" {
			return h.BasicUser
		}
	}
	return "vitrine"
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isEOF(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "EOF") || strings.Contains(err.Error(), "connection reset"))
}
