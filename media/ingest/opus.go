package ingest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bluenviron/mediacommon/v2/pkg/codecs/mpeg4audio"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/opus"
)

// Transcoder turns AAC access units into Opus packets through Debian's
// ffmpeg, run as a child process fed ADTS on stdin and read as Ogg/Opus on
// stdout. It restarts ffmpeg with backoff when it dies or is missing; until
// it is back, audio is dropped and video goes on.
//
// Timing does not depend on ffmpeg: every AAC frame fed is remembered with
// its source timestamp, and the n-th Opus sample out is the n-th sample in
// (ffmpeg neither drops nor inserts samples on a pipe), so each Opus packet
// gets the source time of the AAC frame it came from.
type Transcoder struct {
	cfg     TranscoderConfig
	frameNs int64 // duration of one AAC frame in the source, ns
	in      chan aacFrame

	mu      sync.Mutex
	fed     [fedRing]aacFrame // frames fed to the current ffmpeg, by index
	nFed    int64
	running bool
	pid     atomic.Int64 // of the current ffmpeg, for tests and logs

	cancel context.CancelFunc
	done   chan struct{}
}

// TranscoderConfig says what to run and where packets go.
type TranscoderConfig struct {
	FFmpeg  string // path or name of the ffmpeg binary; "ffmpeg" when empty
	Bitrate int    // Opus bits/s; 96000 when 0
	Config  *mpeg4audio.AudioSpecificConfig
	// Packet gets each Opus packet with the source time of its first sample
	// and the time its first AAC frame was handed to the transcoder. It is
	// called from one goroutine; pkt is not retained.
	Packet   func(pkt []byte, pts time.Duration, fedAt time.Time)
	Metrics  *Metrics
	Protocol string
	Log      *slog.Logger
}

// fedRing bounds the frames remembered: 512 AAC frames are about 10 s,
// far more than ffmpeg ever buffers.
const fedRing = 512

type aacFrame struct {
	au    []byte
	pts   time.Duration
	fedAt time.Time
}

// NewTranscoder starts the supervisor; Close stops it and its ffmpeg.
func NewTranscoder(cfg TranscoderConfig) (*Transcoder, error) {
	if cfg.Config == nil || cfg.Config.SampleRate <= 0 {
		return nil, errors.New("transcode: AAC config without a sample rate")
	}
	if cfg.FFmpeg == "" {
		cfg.FFmpeg = "ffmpeg"
	}
	if cfg.Bitrate == 0 {
		cfg.Bitrate = 96000
	}
	samples := int64(1024)
	if cfg.Config.FrameLengthFlag {
		samples = 960
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &Transcoder{
		cfg:     cfg,
		frameNs: samples * int64(time.Second) / int64(cfg.Config.SampleRate),
		in:      make(chan aacFrame, 64),
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	go func() {
		defer close(t.done)
		superviseFFmpeg(ctx, t.ffmpeg())
	}()
	return t, nil
}

// Write hands one AAC access unit to ffmpeg. It never blocks: frames wait in
// a short queue while ffmpeg starts; while it is down or behind, they are
// dropped (and counted).
func (t *Transcoder) Write(au []byte, pts time.Duration) {
	if len(au) == 0 || len(au) > 8191-7 {
		return
	}
	f := aacFrame{au: append([]byte(nil), au...), pts: pts, fedAt: time.Now()}
	select {
	case t.in <- f:
	default:
		// ffmpeg is down, starting or behind.
		t.cfg.Metrics.TranscodeDropped.WithLabelValues(t.cfg.Protocol, "transcoder_unavailable").Inc()
	}
}

// Running reports whether an ffmpeg is up.
func (t *Transcoder) Running() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.running
}

// Close stops ffmpeg and waits for every goroutine of the transcoder.
func (t *Transcoder) Close() {
	t.cancel()
	<-t.done
}

// ffmpeg describes the child process: ADTS in, Ogg/Opus out, one 20 ms
// packet per page, flushed at once.
func (t *Transcoder) ffmpeg() ffmpegChild {
	return ffmpegChild{
		what:   "audio transcoder",
		ffmpeg: t.cfg.FFmpeg,
		args: []string{"-hide_banner", "-loglevel", "error", "-nostdin",
			"-fflags", "nobuffer", "-flags", "low_delay", "-probesize", "32", "-analyzeduration", "0",
			"-f", "aac", "-i", "pipe:0",
			"-vn", "-c:a", "libopus", "-b:a", fmt.Sprint(t.cfg.Bitrate), "-ar", "48000", "-ac", "2",
			"-application", "lowdelay", "-frame_duration", "20",
			"-f", "ogg", "-page_duration", "20000", "-flush_packets", "1", "pipe:1"},
		log:      t.cfg.Log,
		restarts: t.cfg.Metrics.TranscoderRestarts.WithLabelValues(t.cfg.Protocol),
		running:  t.cfg.Metrics.TranscodersRunning,
		pid:      &t.pid,
		started: func() {
			t.mu.Lock()
			t.running, t.nFed = true, 0
			t.mu.Unlock()
		},
		stopped: func() {
			t.mu.Lock()
			t.running = false
			t.mu.Unlock()
			// Frames queued for the dead process would be mistimed in the next one.
			for len(t.in) > 0 {
				<-t.in
			}
		},
		feed:   t.feed,
		read:   t.read,
		onFail: "audio transcoder stopped; video goes on, audio restarts",
	}
}

// feed writes ADTS frames to ffmpeg's stdin until stop.
func (t *Transcoder) feed(w io.Writer, stop <-chan struct{}) {
	c := t.cfg.Config
	for {
		var f aacFrame
		select {
		case <-stop:
			return
		case f = <-t.in:
		}
		adts, err := mpeg4audio.ADTSPackets{{Type: c.Type, SampleRate: c.SampleRate,
			ChannelConfig: c.ChannelConfig, AU: f.au}}.Marshal()
		if err != nil {
			t.cfg.Metrics.TranscodeDropped.WithLabelValues(t.cfg.Protocol, "bad_frame").Inc()
			continue
		}
		t.mu.Lock()
		t.fed[t.nFed%fedRing] = aacFrame{pts: f.pts, fedAt: f.fedAt}
		t.nFed++
		t.mu.Unlock()
		if _, err := w.Write(adts); err != nil {
			return
		}
	}
}

// read parses Ogg pages from ffmpeg and hands on each Opus packet.
func (t *Transcoder) read(r io.Reader) error {
	br := bufio.NewReaderSize(r, 16<<10)
	var hdr [27]byte
	var lacing [255]byte
	var packet []byte
	var outSamples int64 // 48 kHz samples emitted so far
	var clock opusClock
	headers := 0
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("transcode: ffmpeg closed its output")
			}
			return err
		}
		if string(hdr[:4]) != "OggS" {
			return errors.New("transcode: ffmpeg output is not Ogg")
		}
		n := int(hdr[26])
		if _, err := io.ReadFull(br, lacing[:n]); err != nil {
			return err
		}
		for _, l := range lacing[:n] {
			start := len(packet)
			packet = slices.Grow(packet, int(l))[:start+int(l)]
			if _, err := io.ReadFull(br, packet[start:]); err != nil {
				return err
			}
			if l == 255 {
				if len(packet) > 1<<16 {
					return errors.New("transcode: oversize Ogg packet")
				}
				continue
			}
			// A whole packet. The first two are OpusHead and OpusTags.
			if headers < 2 {
				headers++
			} else if len(packet) > 0 {
				t.emit(packet, outSamples, &clock)
				outSamples += opus.PacketDuration2(packet)
			}
			packet = packet[:0]
		}
	}
}

// opusClock keeps Opus timestamps sample-exact. Source times come from the
// AAC frames' timestamps, which RTMP rounds to milliseconds: used as they
// are, consecutive 20 ms packets would be 950 or 998 samples apart, and a
// browser's jitter buffer conceals the overlaps and gaps (about a third of
// the audio, measured in Chromium). So packets follow the sample count from
// an anchor, and the anchor moves to the source time only when the two part
// by more than resyncAfter (a source discontinuity).
type opusClock struct {
	anchored      bool
	anchor        time.Duration
	anchorSamples int64
}

const resyncAfter = 40 * time.Millisecond

func (c *opusClock) time(source time.Duration, samples int64) time.Duration {
	counted := c.anchor + time.Duration((samples-c.anchorSamples)*int64(time.Second)/48000)
	if d := source - counted; !c.anchored || d > resyncAfter || d < -resyncAfter {
		c.anchored, c.anchor, c.anchorSamples = true, source, samples
		return source
	}
	return counted
}

// emit finds the AAC frame the packet's first sample came from, which gives
// the packet's source time (that frame's time plus the offset into it), and
// stamps the packet on the sample-exact clock that follows it.
func (t *Transcoder) emit(pkt []byte, outSamples int64, clock *opusClock) {
	rate := int64(t.cfg.Config.SampleRate)
	frameSamples := t.frameNs * rate / int64(time.Second) // in source samples
	if frameSamples <= 0 {
		return
	}
	inSample := outSamples * rate / 48000
	i := inSample / frameSamples
	t.mu.Lock()
	if t.nFed == 0 {
		t.mu.Unlock()
		return
	}
	if i >= t.nFed {
		i = t.nFed - 1
	}
	if i < t.nFed-fedRing {
		i = t.nFed - fedRing
	}
	f := t.fed[i%fedRing]
	t.mu.Unlock()
	offset := time.Duration((inSample - i*frameSamples) * int64(time.Second) / rate)
	t.cfg.Metrics.TranscodeSeconds.WithLabelValues(t.cfg.Protocol).Observe(time.Since(f.fedAt).Seconds())
	t.cfg.Packet(pkt, clock.time(f.pts+offset, outSamples), f.fedAt)
}

// tailBuffer keeps the end of ffmpeg's error output for the log.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > 2048 {
		b.buf = append(b.buf[:0], b.buf[len(b.buf)-1024:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf) == 0 {
		return nil
	}
	return fmt.Errorf("ffmpeg: %s", string(b.buf))
}
