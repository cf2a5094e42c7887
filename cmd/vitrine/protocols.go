package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/media/ingest"
	"github.com/vitrine-live/vitrine/media/rtmp"
	"github.com/vitrine-live/vitrine/media/rtsp"
)

// RTMPConfig is the RTMP ingest's part of the config (YAML key rtmp).
type RTMPConfig struct {
	// Address to listen on ("" = off). Flag -rtmp, env VITRINE_RTMP.
	Address string `yaml:"address"`
	// RTMPS: a second listener with this certificate ("" = off).
	TLSAddress string `yaml:"tls_address"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	// ReadTimeout drops a creator who sends nothing for this long, and
	// bounds the handshake.
	ReadTimeout time.Duration `yaml:"read_timeout"`
}

// RTSPConfig is the RTSP server's part of the config (YAML key rtsp).
type RTSPConfig struct {
	// Address to listen on ("" = off). Flag -rtsp, env VITRINE_RTSP.
	Address string `yaml:"address"`
	// UDP ports for RTP and RTCP (an even/odd pair); "" = TCP only.
	UDPRTPAddress  string `yaml:"udp_rtp_address"`
	UDPRTCPAddress string `yaml:"udp_rtcp_address"`
	// Pull: cameras or RTSP servers Vitrine reads and publishes as a
	// stream's creator, reconnecting with backoff.
	Pull []PullSource `yaml:"pull"`
}

// PullSource is one RTSP source to pull into a stream (which must exist).
type PullSource struct {
	Stream    string `yaml:"stream"`
	URL       string `yaml:"url"`
	Transport string `yaml:"transport"` // tcp (default) or udp
}

// protocols are the RTMP and RTSP servers of a running app.
type protocols struct {
	rtmp, rtmps *rtmp.Server
	rtsp        *rtsp.Server
	pulls       []*rtsp.Puller
}

// streamByName finds a stream and the key that publishes to it.
func (a *app) streamByName(name string) (*media.Stream, string, bool) {
	d, st, ok := a.streams.Get(name)
	return st, d.Key, ok && st != nil
}

// streamByKey finds the stream a key publishes to: the key identifies it.
func (a *app) streamByKey(key string) (*media.Stream, bool) {
	for _, d := range a.streams.List() {
		if d.CheckKey(key) {
			_, st, ok := a.streams.Get(d.Name)
			return st, ok && st != nil
		}
	}
	return nil, false
}

// startProtocols starts the RTMP(S) and RTSP servers the config asks for.
func (a *app) startProtocols(reg prometheus.Registerer, log *slog.Logger) error {
	a.proto = &protocols{}
	m := ingest.NewMetrics(reg)
	rc := rtmp.Config{StreamByKey: a.streamByKey, Takeover: a.cfg.Streams.Takeover, StaleAfter: a.cfg.Streams.StaleAfter, FFmpeg: a.cfg.FFmpeg,
		HandshakeTimeout: a.cfg.RTMP.ReadTimeout, ReadTimeout: a.cfg.RTMP.ReadTimeout, Metrics: m, Log: log}
	var err error
	if a.cfg.RTMP.Address != "" {
		c := rc
		c.Address = a.cfg.RTMP.Address
		if a.proto.rtmp, err = rtmp.Listen(c); err != nil {
			return err
		}
		log.Info("rtmp ingest listening", "addr", a.proto.rtmp.Addr().String())
	}
	if a.cfg.RTMP.TLSAddress != "" {
		cert, err := tls.LoadX509KeyPair(a.cfg.RTMP.CertFile, a.cfg.RTMP.KeyFile)
		if err != nil {
			return fmt.Errorf("rtmps: %w", err)
		}
		c := rc
		c.Address, c.TLS = a.cfg.RTMP.TLSAddress, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if a.proto.rtmps, err = rtmp.Listen(c); err != nil {
			return err
		}
		log.Info("rtmps ingest listening", "addr", a.proto.rtmps.Addr().String())
	}
	if a.cfg.RTSP.Address != "" {
		udpRTP, udpRTCP := a.cfg.RTSP.UDPRTPAddress, a.cfg.RTSP.UDPRTCPAddress
		if udpRTP == "" || udpRTCP == "" {
			udpRTP, udpRTCP = "", ""
		}
		a.proto.rtsp, err = rtsp.Listen(rtsp.Config{Address: a.cfg.RTSP.Address, UDPRTPAddress: udpRTP, UDPRTCPAddress: udpRTCP,
			Stream: a.streamByName, Takeover: a.cfg.Streams.Takeover, StaleAfter: a.cfg.Streams.StaleAfter, FFmpeg: a.cfg.FFmpeg,
			ReadTimeout: a.cfg.RTMP.ReadTimeout, Metrics: m, Log: log})
		if err != nil {
			return err
		}
		log.Info("rtsp listening", "addr", a.proto.rtsp.Addr().String(), "udp_rtp", udpRTP)
	}
	for _, src := range a.cfg.RTSP.Pull {
		_, st, ok := a.streams.Get(src.Stream)
		if !ok {
			return fmt.Errorf("rtsp pull: no stream %q (create it first)", src.Stream)
		}
		p, err := rtsp.Pull(rtsp.PullConfig{Stream: st, URL: src.URL, Transport: src.Transport, Takeover: a.cfg.Streams.Takeover,
			FFmpeg: a.cfg.FFmpeg, Timeout: a.cfg.RTMP.ReadTimeout, Metrics: m, Log: log})
		if err != nil {
			return err
		}
		a.proto.pulls = append(a.proto.pulls, p)
	}
	return nil
}

// closeProtocols stops the servers; their creators' streams wait out the
// grace period like any dropped creator.
func (a *app) closeProtocols() {
	if a.proto == nil {
		return
	}
	for _, p := range a.proto.pulls {
		p.Close()
	}
	for _, s := range []*rtmp.Server{a.proto.rtmp, a.proto.rtmps} {
		if s != nil {
			s.Close()
		}
	}
	if a.proto.rtsp != nil {
		a.proto.rtsp.Close()
	}
}

// printProtocolURLs adds the RTMP and RTSP URLs to the welcome text.
func (a *app) printProtocolURLs(w io.Writer) {
	if a.proto == nil {
		return
	}
	host := a.publicHost()
	if s := a.proto.rtmp; s != nil {
		fmt.Fprintf(w, "  OBS RTMP (Stream > Custom):      server rtmp://%s/live  stream key %s\n", hostPort(host, s.Addr()), a.demo.Key)
	}
	if s := a.proto.rtmps; s != nil {
		fmt.Fprintf(w, "  RTMPS:                           server rtmps://%s/live  stream key %s\n", hostPort(host, s.Addr()), a.demo.Key)
	}
	if s := a.proto.rtsp; s != nil {
		fmt.Fprintf(w, "  RTSP playback (VLC, ffplay):     rtsp://%s/demo\n", hostPort(host, s.Addr()))
		fmt.Fprintf(w, "  RTSP publish (ffmpeg -f rtsp):   rtsp://creator:%s@%s/demo\n", a.demo.Key, hostPort(host, s.Addr()))
	}
}

// publicHost is the host name of the public URL, or localhost.
func (a *app) publicHost() string {
	base := a.baseURL()
	if i := len("https://"); len(base) > i && base[:i] == "https://" {
		base = base[i:]
	} else if i := len("http://"); len(base) > i && base[:i] == "http://" {
		base = base[i:]
	}
	if h, _, err := net.SplitHostPort(base); err == nil {
		return h
	}
	return base
}

func hostPort(host string, addr net.Addr) string {
	_, port, _ := net.SplitHostPort(addr.String())
	return net.JoinHostPort(host, port)
}
