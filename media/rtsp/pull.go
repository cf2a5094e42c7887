package rtsp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/media/ingest"
)

// PullConfig declares a camera (or any RTSP server) Vitrine reads from and
// publishes as a stream's creator.
type PullConfig struct {
	Stream    *media.Stream
	URL       string
	Transport string // "tcp" (default) or "udp"
	Takeover  bool
	FFmpeg    string
	Timeout   time.Duration // read timeout, 10 s when 0
	Metrics   *ingest.Metrics
	Log       *slog.Logger
}

// Puller keeps pulling one source, reconnecting with backoff (1 s doubling
// to 30 s, back to 1 s after a minute of good reading).
type Puller struct {
	cfg    PullConfig
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	client *gortsplib.Client
}

// Pull starts pulling in the background; Close stops it.
func Pull(cfg PullConfig) (*Puller, error) {
	if _, err := base.ParseURL(cfg.URL); err != nil {
		return nil, fmt.Errorf("rtsp pull: %w", err)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	cfg.Log = cfg.Log.With("protocol", "rtsp-pull", "stream", cfg.Stream.Name, "source", redact(cfg.URL))
	ctx, cancel := context.WithCancel(context.Background())
	p := &Puller{cfg: cfg, cancel: cancel, done: make(chan struct{})}
	go p.run(ctx)
	return p, nil
}

// Close stops pulling and waits for it.
func (p *Puller) Close() {
	p.cancel()
	p.mu.Lock()
	if p.client != nil {
		p.client.Close()
	}
	p.mu.Unlock()
	<-p.done
}

func (p *Puller) run(ctx context.Context) {
	defer close(p.done)
	backoff := time.Second
	for {
		started := time.Now()
		err := p.once(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > time.Minute {
			backoff = time.Second
		}
		p.cfg.Metrics.Connections.WithLabelValues("rtsp-pull", "source_down").Inc()
		p.cfg.Log.Warn("rtsp pull: source lost; retrying", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// once reads the source until it fails.
func (p *Puller) once(ctx context.Context) error {
	u, _ := base.ParseURL(p.cfg.URL)
	transport := gortsplib.TransportTCP
	if p.cfg.Transport == "udp" {
		transport = gortsplib.TransportUDP
	}
	c := &gortsplib.Client{Scheme: u.Scheme, Host: u.Host, Transport: &transport,
		ReadTimeout: p.cfg.Timeout, WriteTimeout: p.cfg.Timeout}
	if err := c.Start2(); err != nil {
		return err
	}
	p.mu.Lock()
	if ctx.Err() != nil {
		p.mu.Unlock()
		c.Close()
		return ctx.Err()
	}
	p.client = c
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.client = nil
		p.mu.Unlock()
		c.Close()
	}()
	desc, _, err := c.Describe(u)
	if err != nil {
		return err
	}
	if usable(desc) == 0 {
		p.cfg.Metrics.Connections.WithLabelValues("rtsp-pull", "unsupported_codec").Inc()
		return errors.New("rtsp pull: no track in a codec Vitrine forwards (H.264 video, AAC or Opus audio)")
	}
	if err := c.SetupAll(desc.BaseURL, desc.Medias); err != nil {
		return err
	}
	pub, err := ingest.Publish(ingest.Config{Stream: p.cfg.Stream, Protocol: "rtsp-pull", Takeover: p.cfg.Takeover,
		FFmpeg: p.cfg.FFmpeg, Metrics: p.cfg.Metrics, Log: p.cfg.Log, Drop: c.Close})
	if err != nil {
		p.cfg.Metrics.Connections.WithLabelValues("rtsp-pull", "already_live").Inc()
		return err
	}
	defer pub.End(false)
	video, audio := wireTracks(c, desc, pub)
	if _, err := c.Play(nil); err != nil {
		return err
	}
	p.cfg.Metrics.Connections.WithLabelValues("rtsp-pull", "accepted").Inc()
	p.cfg.Log.Info("rtsp pull: live", "video", video, "audio", audio)
	return c.Wait()
}

// redact hides a password in a source URL for logs.
func redact(raw string) string {
	u, err := base.ParseURL(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, has := u.User.Password(); has {
		c := *u
		c.User = nil
		return c.String()
	}
	return raw
}
