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

	// H.264 with B-frames, or with keyframes further apart than the
	// stream's ReencodeKeyframesOver: Video gets a re-encode from a source
	// of its own, which makes a keyframe whenever a viewer joins, and the
	// video as sent goes to the stream's OriginalVideo track for RTSP
	// readers.
	videoCodec media.Codec
	reencode   *VideoTranscoder
	transcode  media.Transcode
	warming    bool // forwarding the video as sent until the re-encode has caught up
	reencSrc   atomic.Pointer[media.Source]
	reencEnc   *rtph264.Encoder // the transcoder's goroutine only
	reencSR    time.Time        // the transcoder's goroutine only
	noEncoder  bool             // ffmpeg missing: the video goes out as sent
	original   *media.Source
	origEnc    *rtph264.Encoder
	origSR     time.Time

	// The source's current group of pictures, kept while the video goes
	// out as sent, for a re-encode to start from at once.
	gop      []BacklogFrame
	gopBytes int
	lastIDR  time.Duration
	haveIDR  bool

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
			if src := p.reencSrc.Load(); src != nil {
				src.End()
			}
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
	if idr {
		p.lastIDR, p.haveIDR = pts, true
	}
	if !fresh {
		// The start-up backlog does not go to viewers, but a re-encode
		// can start from its keyframe: with keyframes far apart, the next
		// may be many seconds away.
		p.keepGOP(out, pts, idr)
		return nil
	}
	bslice := (p.reencode == nil || !p.transcode.BFrames) && !p.noEncoder && hasBSlice(out)
	if p.reencode == nil && !p.noEncoder {
		over := p.cfg.Stream.Options().ReencodeKeyframesOver
		switch {
		case bslice:
			p.startReencode(media.Transcode{BFrames: true, Reason: bframesAdvice})
		case over > 0 && p.haveIDR && pts-p.lastIDR > over:
			p.startReencode(media.Transcode{LongGOP: true, Reason: keyframesAdvice(over)})
		}
	} else if bslice {
		// B-frames after a re-encode for long keyframe intervals started:
		// they must not reach viewers as sent.
		p.transcode.BFrames, p.transcode.Reason = true, bframesAdvice
		p.cfg.Stream.SetTranscode(p, p.transcode)
		p.cfg.Log.Warn("video re-encoded for WebRTC viewers: " + bframesAdvice)
	}
	if p.reencode != nil {
		if p.warming && (p.transcode.BFrames || p.reencode.Ready()) {
			p.startReencodedOutput()
		}
		p.reencode.Write(out, pts, idr)
		err := p.writeOriginal(now, pts, out)
		if p.warming {
			p.forward(now, pts, out)
		}
		return err
	}
	p.keepGOP(out, pts, idr)
	return p.forward(now, pts, out)
}

// forward sends an access unit as it came to WebRTC viewers.
func (p *Publisher) forward(now time.Time, pts time.Duration, au [][]byte) error {
	pkts, err := p.h264.Encode(au)
	if err != nil {
		return fmt.Errorf("ingest: packetize H.264: %w", err)
	}
	p.writeVideo(now, pts, pkts)
	return nil
}

// keepGOP remembers the access units since the source's last keyframe
// (bounded like the transcoder's), so that a re-encode, for B-frames or a
// long keyframe interval, starts from it at once.
func (p *Publisher) keepGOP(au [][]byte, pts time.Duration, idr bool) {
	if p.noEncoder {
		return
	}
	if idr {
		clear(p.gop)
		p.gop, p.gopBytes = p.gop[:0], 0
	} else if len(p.gop) == 0 {
		return // no keyframe yet: nothing to start from
	}
	size := 0
	for _, n := range au {
		size += len(n)
	}
	if len(p.gop) >= maxGOPFrames || p.gopBytes+size > maxGOPBytes {
		clear(p.gop)
		p.gop, p.gopBytes = p.gop[:0], 0
		return
	}
	frame := BacklogFrame{AU: make([][]byte, len(au)), PTS: pts, IDR: idr}
	for i, n := range au {
		frame.AU[i] = clone(n)
	}
	p.gop = append(p.gop, frame)
	p.gopBytes += size
}

// reencodeBitrate caps the re-encode near the creator's own bitrate, so that
// viewers on slow links get no more than the creator sent: a quarter above
// the rate of the group of pictures kept (it holds a keyframe; the
// re-encode adds one for each joining viewer). 0 (the transcoder's
// default cap) when that group spans less than a second, too little to
// tell, as when B-frames are found in the first frames. Never above the
// default cap of 4 Mbit/s.
func reencodeBitrate(gop []BacklogFrame) int {
	if len(gop) < 2 {
		return 0
	}
	first, last, bytes := gop[0].PTS, gop[0].PTS, 0
	for _, f := range gop {
		first, last = min(first, f.PTS), max(last, f.PTS)
		for _, n := range f.AU {
			bytes += len(n)
		}
	}
	span := last - first
	if span < time.Second {
		return 0
	}
	// The frames' own durations: the span misses the last one.
	span += span / time.Duration(len(gop)-1)
	return min(4_000_000, max(300_000, int(float64(bytes)*8/span.Seconds()*5/4)))
}

// bframesAdvice is what the creator is told, once, when their H.264 has
// B-frames.
const bframesAdvice = "the encoder sends H.264 with B-frames, which browsers cannot play over WebRTC, " +
	"so the server re-encodes the video (more delay, more server CPU). To remove the re-encode in OBS: " +
	"Settings > Output > Output Mode: Advanced > Streaming: set Profile to baseline, or keep main/high and " +
	"set x264 Options to bframes=0 (or Tune: zerolatency); with a hardware encoder set Max B-frames to 0"

// keyframesAdvice is what the creator is told, once, when their keyframes
// come too far apart.
func keyframesAdvice(over time.Duration) string {
	return fmt.Sprintf("the encoder sends keyframes more than %g s apart and cannot be asked for one when a viewer joins, "+
		"so the server re-encodes the video to give each new viewer a keyframe at once (about 50 ms more delay, more server CPU). "+
		"To remove the re-encode in OBS: Settings > Output > Output Mode: Advanced > Streaming: set Keyframe Interval to 2 s "+
		"(or 1 s); with a hardware encoder or a camera set its GOP or I-frame interval to 2 s or less", over.Seconds())
}

// startReencode starts re-encoding the stream's WebRTC video, fed first the
// current group of pictures; the video as sent goes on to RTSP readers. For
// B-frames, viewers get the re-encode at once; for long keyframe
// intervals, the video as sent goes on to them until the re-encode has
// caught up, then they switch at one of its keyframes (startReencodedOutput).
func (p *Publisher) startReencode(why media.Transcode) {
	if _, err := exec.LookPath(cmp.Or(p.cfg.FFmpeg, "ffmpeg")); err != nil {
		p.noEncoder = true
		p.gop, p.gopBytes = nil, 0
		what := "H.264 with B-frames and no ffmpeg (with libx264) to re-encode it: WebRTC viewers get the video as sent and browsers may show nothing; install Debian's ffmpeg"
		if !why.BFrames {
			what = "keyframes far apart and no ffmpeg (with libx264) to re-encode the video: viewers who join wait for the encoder's next keyframe; install Debian's ffmpeg"
		}
		p.cfg.Log.Error(what, "err", err)
		return
	}
	p.origEnc = &rtph264.Encoder{PayloadType: 96, PayloadMaxSize: 1200, PacketizationMode: 1,
		SSRC: new(uint32), InitialSequenceNumber: new(uint16)}
	p.reencEnc = &rtph264.Encoder{PayloadType: 96, PayloadMaxSize: 1200, PacketizationMode: 1,
		SSRC: new(uint32), InitialSequenceNumber: new(uint16)}
	if p.origEnc.Init() != nil || p.reencEnc.Init() != nil {
		p.noEncoder = true
		return
	}
	backlog := p.gop
	p.gop, p.gopBytes = nil, 0
	p.original = p.cfg.Stream.OriginalVideo().NewSource(p.videoCodec, nil)
	// RTSP readers and the health report start at the keyframe.
	for _, f := range backlog {
		_ = p.writeOriginal(time.Now(), f.PTS, f.AU)
	}
	p.transcode = why
	p.cfg.Stream.SetTranscode(p, why)
	p.cfg.Log.Warn("video re-encoded for WebRTC viewers: " + why.Reason)
	profile, level := x264Profile(p.sps)
	p.reencode = NewVideoTranscoder(VideoTranscoderConfig{FFmpeg: p.cfg.FFmpeg, Metrics: p.cfg.Metrics,
		Protocol: p.cfg.Protocol, Log: p.cfg.Log.With("transcoder", "h264-reencode"),
		Profile: profile, Level: level, Hold: true, Backlog: backlog, MaxBitrate: reencodeBitrate(backlog),
		Frame: func(au [][]byte, pts time.Duration, _ time.Time) {
			src := p.reencSrc.Load()
			if src == nil {
				return
			}
			pkts, err := p.reencEnc.Encode(au)
			if err != nil {
				return
			}
			p.writeVideoTo(src, &p.reencSR, time.Now(), pts, pkts)
		}})
	p.warming = true
	if why.BFrames {
		p.startReencodedOutput()
	}
}

// startReencodedOutput switches WebRTC viewers to the re-encode from the next
// frame on: a new source of the Video track, so that viewers start it at its
// first keyframe, which the transcoder makes of that frame. Viewers see no
// gap but the transcoder's delay, once.
func (p *Publisher) startReencodedOutput() {
	p.warming = false
	src := p.cfg.Stream.Video.NewSource(p.videoCodec, p.reencode.RequestKeyframe)
	src.KeyframesOnRequest()
	p.reencSrc.Store(src)
	p.reencode.StartOutput()
}

// x264Profile names the profile and level of an SPS for libx264, so that the
// re-encode keeps the format viewers negotiated.
func x264Profile(sps []byte) (profile, level string) {
	if len(sps) < 4 {
		return "", ""
	}
	switch sps[1] {
	case 66:
		profile = "baseline"
	case 77:
		profile = "main"
	case 100:
		profile = "high"
	}
	if l := sps[3]; l >= 10 && l <= 62 {
		level = fmt.Sprintf("%d.%d", l/10, l%10)
	}
	return profile, level
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

// writeVideo sends one frame's packets as they came, stamped with pts on
// the 90 kHz clock, and keeps the track's clock mapping current.
func (p *Publisher) writeVideo(now time.Time, pts time.Duration, pkts []*rtp.Packet) {
	p.writeVideoTo(p.video, &p.videoSR, now, pts, pkts)
}

func (p *Publisher) writeVideoTo(src *media.Source, lastSR *time.Time, now time.Time, pts time.Duration, pkts []*rtp.Packet) {
	ts := rtpTime(pts, 90000)
	for _, pkt := range pkts {
		pkt.Timestamp = ts
		if err := src.WriteRTP(&pkt.Header, pkt.Payload); err != nil {
			return // replaced or oversize: the track counts it
		}
	}
	p.videoOut.Inc()
	if now.Sub(*lastSR) > time.Second || p.clock.changed(lastSR) {
		*lastSR = now
		t := p.clock.wall(pts)
		src.SenderReport(t, t, ts)
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
