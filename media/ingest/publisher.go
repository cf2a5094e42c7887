// Package ingest puts an RTMP or RTSP creator's media into a media.Stream,
// the same forwarding core WHIP feeds: H.264 access units are packetized into
// RTP, AAC is transcoded to Opus (through ffmpeg), and both tracks get one
// clock from the source's timestamps so lips stay in sync and overlay cues
// land on the right frame.
package ingest

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bluenviron/gortsplib/v4/pkg/format/rtpav1"
	"github.com/bluenviron/gortsplib/v4/pkg/format/rtph264"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/av1"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/mpeg4audio"
	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/media"
)

// Config describes one creator connection.
type Config struct {
	Stream   *media.Stream
	Protocol string // "rtmp", "rtsp"
	Takeover bool   // replace a live creator instead of being refused
	FFmpeg   string // ffmpeg for AAC to Opus; "ffmpeg" on the PATH when empty
	Metrics  *Metrics
	Log      *slog.Logger
	// MediaStart, when set, is when the source began sending media that
	// arrives now in a burst (an RTMP server reads the first seconds before
	// it knows the tracks). Frames of that backlog older than half a second
	// are dropped instead of flooding viewers; they join at the next
	// keyframe, as anyone joining a live stream does.
	MediaStart time.Time
	// Drop closes the underlying connection (a takeover, a deleted stream);
	// the connection's goroutine then calls End.
	Drop func()
}

// Publisher is one RTMP/RTSP creator publishing to a stream. It implements
// media.Ingest. Video methods are called from one goroutine, audio methods
// from one goroutine (possibly the same).
type Publisher struct {
	cfg     Config
	started time.Time
	last    atomic.Int64

	clock clock

	video      *media.Source
	h264       *rtph264.Encoder
	av1        *rtpav1.Encoder
	sps, pps   []byte
	videoSR    time.Time
	videoOut   prometheus.Counter
	audioIn    prometheus.Counter
	audio      *media.Source
	audioSeq   uint16
	audioSR    time.Time
	transcoder *Transcoder

	// H.264 with B-frames: Video gets the re-encode, and the video as sent
	// goes to the stream's OriginalVideo track for RTSP readers.
	videoCodec media.Codec
	reencode   *VideoTranscoder
	noEncoder  bool // ffmpeg missing: the video goes out as sent
	original   *media.Source
	origEnc    *rtph264.Encoder
	origSR     time.Time

	catchUp catchUp

	endOnce sync.Once
}

// catchUp drops a connection's backlog: frames that were due long ago.
type catchUp struct {
	mu    sync.Mutex
	start time.Time // zero: nothing to drop
	first time.Duration
	seen  bool
	done  bool
}

// stale reports whether a frame at pts, arriving now, belongs to the
// backlog. The first frame that is on time ends the catch-up.
func (c *catchUp) stale(now time.Time, pts time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.start.IsZero() || c.done {
		return false
	}
	if !c.seen {
		c.seen, c.first = true, pts
	}
	if now.Sub(c.start.Add(pts-c.first)) > 500*time.Millisecond {
		return true
	}
	c.done = true
	return false
}

// Publish makes the connection the stream's creator, or refuses it with
// media.ErrAlreadyLive (another creator is sending) or media.ErrStreamClosed.
func Publish(cfg Config) (*Publisher, error) {
	p := &Publisher{cfg: cfg, started: time.Now()}
	p.catchUp.start = cfg.MediaStart
	if err := cfg.Stream.Publish(p, cfg.Takeover); err != nil {
		return nil, err
	}
	cfg.Metrics.Active.WithLabelValues(cfg.Protocol).Inc()
	p.videoOut = cfg.Metrics.Frames.WithLabelValues(cfg.Protocol, "video")
	p.audioIn = cfg.Metrics.Frames.WithLabelValues(cfg.Protocol, "audio")
	return p, nil
}

// Protocol names the ingest for metrics and logs.
func (p *Publisher) Protocol() string { return p.cfg.Protocol }

// LastActive is the newest frame's arrival, or the connection's start.
func (p *Publisher) LastActive() time.Time {
	if n := p.last.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return p.started
}

// Close drops the connection (called by the stream on takeover or delete).
func (p *Publisher) Close() {
	if p.cfg.Drop != nil {
		p.cfg.Drop()
	}
}

// End stops the publisher: ended says the creator ended the broadcast on
// purpose; otherwise viewers wait out the reconnect grace period.
func (p *Publisher) End(ended bool) {
	p.endOnce.Do(func() {
		if p.transcoder != nil {
			p.transcoder.Close()
		}
		if p.reencode != nil {
			p.reencode.Close()
			p.original.End()
			p.cfg.Stream.SetTranscoding(false, "")
			p.cfg.Metrics.VideoTranscodes.DeleteLabelValues(p.cfg.Stream.Name)
		}
		if p.video != nil {
			p.video.End()
		}
		if p.audio != nil {
			p.audio.End()
		}
		p.cfg.Metrics.Active.WithLabelValues(p.cfg.Protocol).Dec()
		p.cfg.Stream.Unpublish(p, ended)
	})
}

// TranscoderRunning reports whether AAC is being transcoded now (false when
// the audio is not AAC).
func (p *Publisher) TranscoderRunning() bool {
	return p.transcoder != nil && p.transcoder.Running()
}

// StartH264 starts the video track with the stream's SPS and PPS (either may
// be nil when they only come in-band).
func (p *Publisher) StartH264(sps, pps []byte) error {
	p.h264 = &rtph264.Encoder{PayloadType: 96, PayloadMaxSize: 1200, PacketizationMode: 1,
		SSRC: new(uint32), InitialSequenceNumber: new(uint16)}
	if err := p.h264.Init(); err != nil {
		return err
	}
	p.sps, p.pps = clone(sps), clone(pps)
	profile := "42e01f"
	if len(sps) >= 4 {
		profile = fmt.Sprintf("%02x%02x%02x", sps[1], sps[2], sps[3])
	}
	p.videoCodec = media.Codec{MimeType: "video/H264", ClockRate: 90000,
		Fmtp: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=" + profile}
	p.video = p.cfg.Stream.Video.NewSource(p.videoCodec, nil)
	return nil
}

// NAL unit types this file looks at.
const (
	nalIDR = 5
	nalSPS = 7
	nalPPS = 8
	nalAUD = 9
)

// arrive records a frame's arrival at now: the creator is alive, and the
// source clock is observed. It reports false for a frame of the start-up
// backlog, which is dropped (see catchUp).
func (p *Publisher) arrive(pts time.Duration) (now time.Time, fresh bool) {
	now = time.Now()
	p.last.Store(now.UnixNano())
	if p.catchUp.stale(now, pts) {
		return now, false
	}
	p.clock.observe(now, pts)
	return now, true
}

// WriteH264 sends one access unit, presented at pts on the source's clock.
// SPS and PPS go before every IDR, so a viewer can start at any keyframe.
func (p *Publisher) WriteH264(pts time.Duration, au [][]byte) error {
	if p.video == nil {
		return errors.New("ingest: video not started")
	}
	now, fresh := p.arrive(pts)
	if !fresh {
		return nil
	}
	out := make([][]byte, 0, len(au)+2)
	idr, hasSPS, hasPPS := false, false, false
	for _, n := range au {
		if len(n) == 0 {
			continue
		}
		switch n[0] & 0x1f {
		case nalAUD:
			continue
		case nalSPS:
			p.sps, hasSPS = clone(n), true
		case nalPPS:
			p.pps, hasPPS = clone(n), true
		case nalIDR:
			idr = true
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil
	}
	if idr && !(hasSPS && hasPPS) && p.sps != nil && p.pps != nil {
		out = append([][]byte{p.sps, p.pps}, out...)
	}
	if p.reencode == nil && !p.noEncoder && hasBSlice(out) {
		p.startReencode()
	}
	if p.reencode != nil {
		p.reencode.Write(out, pts, idr)
		return p.writeOriginal(now, pts, out)
	}
	pkts, err := p.h264.Encode(out)
	if err != nil {
		return fmt.Errorf("ingest: packetize H.264: %w", err)
	}
	p.writeVideo(now, pts, pkts)
	return nil
}

// bframesAdvice is what the creator is told, once, when their H.264 has
// B-frames.
const bframesAdvice = "the encoder sends H.264 with B-frames, which browsers cannot play over WebRTC, " +
	"so the server re-encodes the video (more delay, more server CPU). To remove the re-encode in OBS: " +
	"Settings > Output > Output Mode: Advanced > Streaming: set Profile to baseline, or keep main/high and " +
	"set x264 Options to bframes=0 (or Tune: zerolatency); with a hardware encoder set Max B-frames to 0"

// startReencode switches the stream's WebRTC video to a re-encode without
// B-frames; the video as sent goes on to RTSP readers.
func (p *Publisher) startReencode() {
	if _, err := exec.LookPath(cmp.Or(p.cfg.FFmpeg, "ffmpeg")); err != nil {
		p.noEncoder = true
		p.cfg.Log.Error("H.264 with B-frames and no ffmpeg (with libx264) to re-encode it: WebRTC viewers get the video as sent and browsers may show nothing; install Debian's ffmpeg",
			"err", err)
		return
	}
	p.origEnc = &rtph264.Encoder{PayloadType: 96, PayloadMaxSize: 1200, PacketizationMode: 1,
		SSRC: new(uint32), InitialSequenceNumber: new(uint16)}
	if err := p.origEnc.Init(); err != nil {
		p.noEncoder = true
		return
	}
	p.original = p.cfg.Stream.OriginalVideo().NewSource(p.videoCodec, nil)
	p.cfg.Stream.SetTranscoding(true, bframesAdvice)
	p.cfg.Metrics.VideoTranscodes.WithLabelValues(p.cfg.Stream.Name).Set(1)
	p.cfg.Log.Warn("video re-encoded for WebRTC viewers: "+bframesAdvice, "stream", p.cfg.Stream.Name)
	// From here on, only the transcoder's goroutine uses p.h264 and p.video.
	p.reencode = NewVideoTranscoder(VideoTranscoderConfig{FFmpeg: p.cfg.FFmpeg, Metrics: p.cfg.Metrics,
		Protocol: p.cfg.Protocol, Log: p.cfg.Log.With("transcoder", "h264-reencode"),
		Frame: func(au [][]byte, pts time.Duration, _ time.Time) {
			pkts, err := p.h264.Encode(au)
			if err != nil {
				return
			}
			p.writeVideo(time.Now(), pts, pkts)
		}})
}

// writeOriginal sends an access unit as the creator sent it to the stream's
// OriginalVideo track.
func (p *Publisher) writeOriginal(now time.Time, pts time.Duration, au [][]byte) error {
	pkts, err := p.origEnc.Encode(au)
	if err != nil {
		return fmt.Errorf("ingest: packetize H.264: %w", err)
	}
	ts := rtpTime(pts, 90000)
	for _, pkt := range pkts {
		pkt.Timestamp = ts
		if p.original.WriteRTP(&pkt.Header, pkt.Payload) != nil {
			return nil
		}
	}
	if now.Sub(p.origSR) > time.Second || p.clock.changed(&p.origSR) {
		p.origSR = now
		t := p.clock.wall(pts)
		p.original.SenderReport(t, t, ts)
	}
	return nil
}

// writeVideo sends one frame's packets, stamped with pts on the 90 kHz
// clock, and keeps the track's clock mapping current.
func (p *Publisher) writeVideo(now time.Time, pts time.Duration, pkts []*rtp.Packet) {
	ts := rtpTime(pts, 90000)
	for _, pkt := range pkts {
		pkt.Timestamp = ts
		if err := p.video.WriteRTP(&pkt.Header, pkt.Payload); err != nil {
			return // replaced or oversize: the track counts it
		}
	}
	p.videoOut.Inc()
	if now.Sub(p.videoSR) > time.Second || p.clock.changed(&p.videoSR) {
		p.videoSR = now
		t := p.clock.wall(pts)
		p.video.SenderReport(t, t, ts)
	}
}

// StartAV1 starts the video track for AV1 (Enhanced RTMP), which browsers
// decode over WebRTC.
func (p *Publisher) StartAV1() error {
	p.av1 = &rtpav1.Encoder{PayloadType: 45, PayloadMaxSize: 1200, SSRC: new(uint32), InitialSequenceNumber: new(uint16)}
	if err := p.av1.Init(); err != nil {
		return err
	}
	p.video = p.cfg.Stream.Video.NewSource(media.Codec{MimeType: "video/AV1", ClockRate: 90000}, nil)
	return nil
}

// WriteAV1 sends one temporal unit (its OBUs), presented at pts.
func (p *Publisher) WriteAV1(pts time.Duration, tu [][]byte) error {
	if p.av1 == nil {
		return errors.New("ingest: AV1 not started")
	}
	now, fresh := p.arrive(pts)
	if !fresh {
		return nil
	}
	out := make([][]byte, 0, len(tu))
	for _, obu := range tu {
		// The AV1 RTP payload format leaves temporal delimiters out.
		if len(obu) > 0 && av1.OBUType((obu[0]>>3)&0x0f) != av1.OBUTypeTemporalDelimiter {
			out = append(out, obu)
		}
	}
	if len(out) == 0 {
		return nil
	}
	pkts, err := p.av1.Encode(out)
	if err != nil {
		return fmt.Errorf("ingest: packetize AV1: %w", err)
	}
	if len(pkts) > 0 && len(pkts[0].Payload) > 0 && av1.IsRandomAccess2(out) {
		pkts[0].Payload[0] |= 0x08 // N: a new coded video sequence starts here
	}
	p.writeVideo(now, pts, pkts)
	return nil
}

// StartAAC starts the audio track, fed by a transcoder from AAC to Opus.
func (p *Publisher) StartAAC(conf *mpeg4audio.AudioSpecificConfig) error {
	p.audio = p.cfg.Stream.Audio.NewSource(media.DefaultAudioCodec, nil)
	tr, err := NewTranscoder(TranscoderConfig{
		FFmpeg: p.cfg.FFmpeg, Config: conf, Metrics: p.cfg.Metrics, Protocol: p.cfg.Protocol,
		Log: p.cfg.Log.With("transcoder", "aac-opus"), Packet: func(pkt []byte, pts time.Duration, _ time.Time) {
			p.writeOpus(pts, pkt)
		}})
	if err != nil {
		return err
	}
	p.transcoder = tr
	return nil
}

// WriteAAC hands one AAC access unit to the transcoder.
func (p *Publisher) WriteAAC(pts time.Duration, au []byte) {
	if p.transcoder == nil {
		return
	}
	if _, fresh := p.arrive(pts); !fresh {
		return
	}
	p.audioIn.Inc()
	p.transcoder.Write(au, pts)
}

// StartOpus starts the audio track for Opus that passes through untouched.
func (p *Publisher) StartOpus() {
	p.audio = p.cfg.Stream.Audio.NewSource(media.DefaultAudioCodec, nil)
}

// WriteOpus forwards one Opus packet as it came.
func (p *Publisher) WriteOpus(pts time.Duration, pkt []byte) {
	if p.audio == nil || p.transcoder != nil {
		return
	}
	if _, fresh := p.arrive(pts); !fresh {
		return
	}
	p.audioIn.Inc()
	p.writeOpus(pts, pkt)
}

func (p *Publisher) writeOpus(pts time.Duration, pkt []byte) {
	ts := rtpTime(pts, 48000)
	h := rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: p.audioSeq, Timestamp: ts, Marker: p.audioSeq == 0}
	p.audioSeq++
	if p.audio.WriteRTP(&h, pkt) != nil {
		return
	}
	now := time.Now()
	if now.Sub(p.audioSR) > time.Second || p.clock.changed(&p.audioSR) {
		p.audioSR = now
		t := p.clock.wall(pts)
		p.audio.SenderReport(t, t, ts)
	}
}

// clock maps the source's timestamps to this server's wall clock, the same
// for both tracks. base is the earliest arrival minus timestamp seen: the
// frames that came with the least delay (RTMP servers replay the first
// seconds in a burst, so later frames move it forward in time).
type clock struct {
	mu      sync.Mutex
	valid   bool
	base    time.Time
	version time.Time // when base last moved
}

func (c *clock) observe(now time.Time, pts time.Duration) {
	b := now.Add(-pts)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.valid || b.Before(c.base.Add(-time.Millisecond)) {
		c.valid, c.base, c.version = true, b, now
	}
}

// changed reports whether base moved since *since.
func (c *clock) changed(since *time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.version.After(*since)
}

func (c *clock) wall(pts time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.base.Add(pts)
}

// rtpTime converts a source timestamp to an RTP timestamp (wrapping).
func rtpTime(pts time.Duration, rate int64) uint32 {
	return uint32(int64(pts) / 1000 * rate / 1_000_000)
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}
