// Package rtmp is Vitrine's RTMP ingest (OBS, ffmpeg): a creator publishes
// to rtmp://host:1935/live with the stream key as stream name (or to
// rtmp://host:1935/live/{key}), and the media goes into the stream's tracks
// through package ingest, like any other creator.
package rtmp

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/bluenviron/gortmplib"
	"github.com/bluenviron/gortmplib/pkg/codecs"
	"github.com/bluenviron/gortmplib/pkg/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/media/ingest"
)

// Config is what the server needs.
type Config struct {
	// Address to listen on, e.g. ":1935".
	Address string
	// TLS, when set, makes the listener RTMPS.
	TLS *tls.Config
	// StreamByKey finds the stream a key publishes to.
	StreamByKey func(key string) (*media.Stream, bool)
	Takeover    bool
	// StaleAfter: a live creator silent this long may be replaced (the
	// stream's own rule, streams.stale_after); 3 s when 0.
	StaleAfter time.Duration
	FFmpeg     string
	// HandshakeTimeout bounds the RTMP handshake and connect/publish
	// commands (10 s when 0); ReadTimeout bounds the wait for each message
	// afterwards (10 s when 0).
	HandshakeTimeout time.Duration
	ReadTimeout      time.Duration
	Metrics          *ingest.Metrics
	Log              *slog.Logger
}

// Server accepts RTMP publishers.
type Server struct {
	cfg Config
	ln  net.Listener

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Listen starts the server.
func Listen(cfg Config) (*Server, error) {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = 10 * time.Second
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = 3 * time.Second
	}
	ln, err := net.Listen("tcp", cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("rtmp: %w", err)
	}
	if cfg.TLS != nil {
		ln = tls.NewListener(ln, cfg.TLS)
	}
	s := &Server{cfg: cfg, ln: ln, conns: map[net.Conn]struct{}{}}
	s.wg.Go(s.accept)
	return s, nil
}

// Addr is where the server listens.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Connections is how many connections are open (each has one goroutine).
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Close stops listening, drops every connection and waits for their
// goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	err := s.ln.Close()
	s.wg.Wait()
	return err
}

func (s *Server) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.handle(c)
		})
	}
}

// connError is why a connection ended, with the result label it counts under.
type connError struct {
	result string
	err    error
}

func (e *connError) Error() string { return e.err.Error() }

func fail(result string, format string, args ...any) error {
	return &connError{result: result, err: fmt.Errorf(format, args...)}
}

func (s *Server) handle(c net.Conn) {
	log := s.cfg.Log.With("protocol", "rtmp", "remote", c.RemoteAddr().String())
	m := s.cfg.Metrics
	var sc *gortmplib.ServerConn
	bytes := &byteCounter{c: m.Bytes.WithLabelValues("rtmp")}
	defer func() {
		if sc != nil {
			bytes.update(sc.BytesReceived())
		}
	}()
	err := func() (err error) {
		// The RTMP parsers are a third party's: whatever they do with bad
		// input must end this connection only.
		defer func() {
			if r := recover(); r != nil {
				err = fail("bad_input", "rtmp: parser failed: %v", r)
			}
		}()
		return s.serve(c, log, &sc, bytes)
	}()
	var ce *connError
	switch {
	case errors.As(err, &ce):
		if ce.result != "accepted" { // accepted ones were counted at the start
			m.Connections.WithLabelValues("rtmp", ce.result).Inc()
		}
		if ce.result == "accepted" {
			log.Info("rtmp creator disconnected", "reason", ce.err)
		} else {
			log.Warn("rtmp connection refused", "result", ce.result, "err", ce.err)
		}
	case err != nil:
		m.Connections.WithLabelValues("rtmp", "bad_input").Inc()
		log.Warn("rtmp connection failed", "err", err)
	}
}

func (s *Server) serve(c net.Conn, log *slog.Logger, scOut **gortmplib.ServerConn, bytes *byteCounter) error {
	_ = c.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	sc := &gortmplib.ServerConn{RW: c}
	*scOut = sc
	if err := sc.Initialize(); err != nil {
		return classify(err, "rtmp: handshake")
	}
	if err := sc.AcceptConn(); err != nil {
		return classify(err, "rtmp: connect")
	}
	if !sc.Publish {
		_ = sc.RejectAction()
		return fail("play_refused", "rtmp: playback is not offered over RTMP; read rtsp://host:8554/{stream} or WHEP")
	}
	key, ok := streamKey(sc.URL)
	var st *media.Stream
	if ok {
		st, ok = s.cfg.StreamByKey(key)
	}
	if !ok {
		_ = sc.RejectAction()
		return fail("wrong_key", "rtmp: no stream has this key (publish to rtmp://host/live with the stream key as key)")
	}
	log = log.With("stream", st.Name)
	// Refuse early, before the client starts sending, when another creator
	// is live; Publish decides for good once the tracks are known.
	if in := st.Ingest(); in != nil && !s.cfg.Takeover && time.Since(in.LastActive()) < s.cfg.StaleAfter {
		_ = sc.RejectAction()
		return fail("already_live", "rtmp: stream %s is already live from another session (%s)", st.Name, in.Protocol())
	}

	// The reader accepts the publish itself only when handed the
	// *ServerConn; it gets the spy, so accept here.
	if err := sc.AcceptAction(); err != nil {
		return classify(err, "rtmp: publish")
	}
	mediaStart := time.Now()
	spy := &endSpy{Conn: sc}
	r := &gortmplib.Reader{Conn: spy}
	// Reading the tracks takes up to 2 s of media.
	_ = c.SetDeadline(time.Now().Add(2*time.Second + s.cfg.ReadTimeout))
	if err := r.Initialize(); err != nil {
		return classify(err, "rtmp: read tracks")
	}
	_ = c.SetDeadline(time.Time{})

	// Know what can be forwarded before going live: a connection with
	// nothing playable must not touch the stream.
	usable := 0
	for _, tr := range r.Tracks() {
		switch tr.Codec.(type) {
		case *codecs.H264, *codecs.AV1, *codecs.MPEG4Audio, *codecs.Opus:
			usable++
		default:
			// Every track needs a callback, or the reader has none to call.
			// HEVC among them: Vitrine's viewers do not negotiate it.
			log.Warn("rtmp: track dropped: no viewer can play its codec", "codec", fmt.Sprintf("%T", tr.Codec))
			ignore(r, tr)
		}
	}
	if usable == 0 {
		return fail("unsupported_codec", "rtmp: no track in a codec Vitrine forwards (H.264 or AV1 video, AAC or Opus audio)")
	}

	var drop sync.Once
	pub, err := ingest.Publish(ingest.Config{Stream: st, Protocol: "rtmp", Takeover: s.cfg.Takeover, FFmpeg: s.cfg.FFmpeg,
		Metrics: s.cfg.Metrics, Log: log, MediaStart: mediaStart, Drop: func() { drop.Do(func() { c.Close() }) }})
	if err != nil {
		result := "already_live"
		if errors.Is(err, media.ErrStreamClosed) {
			result = "unknown_stream"
		}
		return fail(result, "rtmp: %w", err)
	}
	defer func() { pub.End(spy.ended) }()
	s.cfg.Metrics.Connections.WithLabelValues("rtmp", "accepted").Inc()

	for _, tr := range r.Tracks() {
		switch codec := tr.Codec.(type) {
		case *codecs.H264:
			if err := pub.StartH264(codec.SPS, codec.PPS); err != nil {
				return fail("accepted", "rtmp: %w", err)
			}
			r.OnDataH264(tr, func(pts, _ time.Duration, au [][]byte) {
				_ = pub.WriteH264(pts, au)
			})
		case *codecs.AV1:
			if err := pub.StartAV1(); err != nil {
				return fail("accepted", "rtmp: %w", err)
			}
			r.OnDataAV1(tr, func(pts time.Duration, tu [][]byte) {
				_ = pub.WriteAV1(pts, tu)
			})
		case *codecs.MPEG4Audio:
			if err := pub.StartAAC(codec.Config); err != nil {
				log.Warn("rtmp: AAC audio not usable", "err", err)
				r.OnDataMPEG4Audio(tr, func(time.Duration, []byte) {})
				continue
			}
			r.OnDataMPEG4Audio(tr, func(pts time.Duration, au []byte) { pub.WriteAAC(pts, au) })
		case *codecs.Opus:
			pub.StartOpus()
			r.OnDataOpus(tr, func(pts time.Duration, pkt []byte) { pub.WriteOpus(pts, pkt) })
		}
	}
	log.Info("rtmp creator live", "tracks", len(r.Tracks()))
	lastCount := time.Now()
	for {
		_ = c.SetReadDeadline(time.Now().Add(s.cfg.ReadTimeout))
		if now := time.Now(); now.Sub(lastCount) > time.Second {
			lastCount = now
			bytes.update(sc.BytesReceived())
		}
		if err := r.Read(); err != nil {
			if spy.ended {
				return fail("accepted", "the creator ended the stream")
			}
			return fail("accepted", "%w", err)
		}
	}
}

// byteCounter adds a connection's received bytes to the counter as they
// grow, so dashboards see a live creator's bitrate.
type byteCounter struct {
	c    prometheus.Counter
	seen uint64
}

func (b *byteCounter) update(total uint64) {
	if total > b.seen {
		b.c.Add(float64(total - b.seen))
		b.seen = total
	}
}

// ignore installs a no-op callback for a track Vitrine does not forward.
func ignore(r *gortmplib.Reader, tr *gortmplib.Track) {
	switch tr.Codec.(type) {
	case *codecs.H265:
		r.OnDataH265(tr, func(time.Duration, time.Duration, [][]byte) {})
	case *codecs.AV1:
		r.OnDataAV1(tr, func(time.Duration, [][]byte) {})
	case *codecs.VP9:
		r.OnDataVP9(tr, func(time.Duration, []byte) {})
	case *codecs.MPEG1Audio:
		r.OnDataMPEG1Audio(tr, func(time.Duration, []byte) {})
	case *codecs.AC3:
		r.OnDataAC3(tr, func(time.Duration, []byte) {})
	case *codecs.G711:
		r.OnDataG711(tr, func(time.Duration, []byte) {})
	case *codecs.LPCM:
		r.OnDataLPCM(tr, func(time.Duration, []byte) {})
	case *codecs.FLAC:
		r.OnDataFLAC(tr, func(time.Duration, []byte) {})
	}
}

// streamKey takes the key from rtmp://host/live/{key} (app "live", stream
// name = key, as OBS sends it, or the key in the app path).
func streamKey(u *url.URL) (string, bool) {
	if u == nil {
		return "", false
	}
	key, ok := strings.CutPrefix(strings.TrimPrefix(u.Path, "/"), "live/")
	if !ok || key == "" || strings.Contains(key, "/") {
		return "", false
	}
	return key, true
}

func classify(err error, what string) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fail("timeout", "%s: timed out: %w", what, err)
	}
	return fail("bad_input", "%s: %w", what, err)
}

// endSpy notices the commands a publisher sends when it stops on purpose
// (OBS's Stop Streaming, ffmpeg at the end of its input), so the stream ends
// instead of waiting out the reconnect grace.
type endSpy struct {
	gortmplib.Conn
	ended bool
}

func (e *endSpy) Read() (message.Message, error) {
	msg, err := e.Conn.Read()
	if cmd, ok := msg.(*message.CommandAMF0); ok {
		switch cmd.Name {
		case "FCUnpublish", "deleteStream", "closeStream":
			e.ended = true
		}
	}
	return msg, err
}
