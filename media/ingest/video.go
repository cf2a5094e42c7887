package ingest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// VideoTranscoder re-encodes H.264 with B-frames into H.264 without them,
// which browsers' WebRTC decoders play (they do not reorder frames). It runs
// Debian's ffmpeg with libx264 as a child process, fed Annex-B access units
// in decode order on stdin and read as Annex-B on stdout, and restarts it
// with backoff when it dies, as Transcoder does for audio.
//
// Timing does not depend on ffmpeg: the decoder inside ffmpeg puts frames in
// presentation order and the encoder (no B-frames) keeps that order, so the
// n-th frame out is the fed frame with the smallest presentation time not yet
// given out. Keyframes are forced where the source has them, so an IDR out
// matches an IDR in, and a frame ffmpeg dropped shifts nothing past the next
// keyframe.
type VideoTranscoder struct {
	cfg VideoTranscoderConfig
	in  chan videoFrame

	mu      sync.Mutex
	pending []videoFrame // fed to the current ffmpeg, not out yet, by pts
	running bool
	pid     atomic.Int64

	cancel context.CancelFunc
	done   chan struct{}
}

// VideoTranscoderConfig says what to run and where frames go.
type VideoTranscoderConfig struct {
	FFmpeg     string // "ffmpeg" when empty
	MaxBitrate int    // bits/s cap of the re-encode (VBV); 4 Mbit/s when 0
	FrameRate  int    // the source's frames per second, for rate control; 30 when 0
	// Frame gets each re-encoded access unit (NAL units without start
	// codes, AUD removed) with the presentation time of the source frame it
	// came from and when that frame was handed over. Called from one
	// goroutine; au is not retained.
	Frame    func(au [][]byte, pts time.Duration, fedAt time.Time)
	Metrics  *Metrics
	Protocol string
	Log      *slog.Logger
}

type videoFrame struct {
	annexB []byte
	pts    time.Duration
	idr    bool
	fedAt  time.Time
}

// maxPending bounds the frames remembered: ffmpeg holds a few at most.
const maxPending = 120

// aud is an access unit delimiter with its start code. Written after each
// access unit, it tells ffmpeg's parser the unit is complete without
// waiting for the next one.
var aud = []byte{0, 0, 0, 1, 9, 0xf0}

// audPrefix finds an AUD in ffmpeg's output, whatever its picture type.
var audPrefix = []byte{0, 0, 1, 9}

// NewVideoTranscoder starts the supervisor; Close stops it and its ffmpeg.
func NewVideoTranscoder(cfg VideoTranscoderConfig) *VideoTranscoder {
	if cfg.FFmpeg == "" {
		cfg.FFmpeg = "ffmpeg"
	}
	if cfg.MaxBitrate <= 0 {
		cfg.MaxBitrate = 4_000_000
	}
	if cfg.FrameRate <= 0 || cfg.FrameRate > 240 {
		cfg.FrameRate = 30
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &VideoTranscoder{cfg: cfg, in: make(chan videoFrame, 64), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(t.done)
		superviseFFmpeg(ctx, t.ffmpeg())
	}()
	return t
}

// Write hands one access unit (NAL units without start codes, in decode
// order) to ffmpeg. It never blocks: while ffmpeg is down or behind, frames
// are dropped and counted, and feeding resumes at the next keyframe.
func (t *VideoTranscoder) Write(au [][]byte, pts time.Duration, idr bool) {
	size := 0
	for _, n := range au {
		size += 4 + len(n)
	}
	b := make([]byte, 0, size)
	for _, n := range au {
		b = append(b, 0, 0, 0, 1)
		b = append(b, n...)
	}
	select {
	case t.in <- videoFrame{annexB: b, pts: pts, idr: idr, fedAt: time.Now()}:
	default:
		t.cfg.Metrics.VideoTranscodeDropped.WithLabelValues(t.cfg.Protocol, "transcoder_unavailable").Inc()
	}
}

// Running reports whether an ffmpeg is up.
func (t *VideoTranscoder) Running() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.running
}

// PID is the current ffmpeg's process id, 0 when none runs.
func (t *VideoTranscoder) PID() int { return int(t.pid.Load()) }

// Close stops ffmpeg and waits for every goroutine of the transcoder.
func (t *VideoTranscoder) Close() {
	t.cancel()
	<-t.done
}

// ffmpegArgs is the command line: H.264 in, decoded in presentation order,
// re-encoded by libx264 with no B-frames and no lookahead (zerolatency),
// keyframes where the source has them, an AUD before each access unit out.
func (t *VideoTranscoder) ffmpegArgs() []string {
	rate := fmt.Sprint(t.cfg.MaxBitrate)
	return []string{"-hide_banner", "-loglevel", "error", "-nostdin",
		// One decoder thread: frame threads would hold frames back.
		"-threads", "1", "-probesize", "32", "-analyzeduration", "0",
		"-framerate", fmt.Sprint(t.cfg.FrameRate), "-f", "h264", "-i", "pipe:0",
		"-an", "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-bf", "0",
		"-crf", "23", "-maxrate", rate, "-bufsize", rate,
		"-g", "600", "-sc_threshold", "0", "-force_key_frames", "source", "-forced-idr", "1",
		"-x264-params", "aud=1", "-fps_mode", "passthrough",
		"-f", "h264", "-flush_packets", "1", "pipe:1"}
}

// ffmpeg describes the child process.
func (t *VideoTranscoder) ffmpeg() ffmpegChild {
	return ffmpegChild{
		what:     "video transcoder",
		ffmpeg:   t.cfg.FFmpeg,
		args:     t.ffmpegArgs(),
		log:      t.cfg.Log,
		restarts: t.cfg.Metrics.VideoTranscoderRestarts.WithLabelValues(t.cfg.Protocol),
		running:  t.cfg.Metrics.VideoTranscodersRunning,
		pid:      &t.pid,
		started: func() {
			t.mu.Lock()
			t.running, t.pending = true, t.pending[:0]
			t.mu.Unlock()
		},
		stopped: func() {
			t.mu.Lock()
			t.running = false
			t.pending = t.pending[:0]
			t.mu.Unlock()
			for len(t.in) > 0 {
				<-t.in
			}
		},
		feed:   t.feed,
		read:   t.read,
		onFail: "video transcoder stopped; WebRTC video resumes at the next keyframe after a restart",
	}
}

// feed writes access units to ffmpeg's stdin, from a keyframe on, until stop.
func (t *VideoTranscoder) feed(w io.Writer, stop <-chan struct{}) {
	started := false
	for {
		var f videoFrame
		select {
		case <-stop:
			return
		case f = <-t.in:
		}
		if !started && !f.idr {
			t.cfg.Metrics.VideoTranscodeDropped.WithLabelValues(t.cfg.Protocol, "before_keyframe").Inc()
			continue
		}
		started = true
		t.mu.Lock()
		if len(t.pending) >= maxPending { // ffmpeg is dropping frames
			t.pending = append(t.pending[:0], t.pending[len(t.pending)/2:]...)
		}
		// Insert by presentation time (frames arrive in decode order).
		i := sort.Search(len(t.pending), func(i int) bool { return t.pending[i].pts > f.pts })
		t.pending = append(t.pending, videoFrame{})
		copy(t.pending[i+1:], t.pending[i:])
		t.pending[i] = videoFrame{pts: f.pts, idr: f.idr, fedAt: f.fedAt}
		t.mu.Unlock()
		if _, err := w.Write(append(f.annexB, aud...)); err != nil {
			return
		}
	}
}

// read splits ffmpeg's output into access units at each AUD and hands each
// on once the next one starts.
func (t *VideoTranscoder) read(r io.Reader) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var buf []byte
	chunk := make([]byte, 64<<10)
	for {
		n, err := br.Read(chunk)
		buf = append(buf, chunk[:n]...)
		// Every complete access unit in buf: from one AUD to the next.
		for {
			first := bytes.Index(buf, audPrefix)
			if first < 0 {
				break
			}
			next := bytes.Index(buf[first+len(audPrefix):], audPrefix)
			if next < 0 {
				break
			}
			end := first + len(audPrefix) + next
			t.emit(buf[first:end])
			buf = append(buf[:0], buf[end:]...)
		}
		if len(buf) > 8<<20 {
			return errors.New("video transcode: oversize access unit from ffmpeg")
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("video transcode: ffmpeg closed its output")
			}
			return err
		}
	}
}

// emit splits one access unit (AUD first, 3-byte start codes) into NAL
// units, gives it the presentation time of its source frame, and hands it on.
func (t *VideoTranscoder) emit(unit []byte) {
	var nalus [][]byte
	idr := false
	for _, n := range bytes.Split(unit, []byte{0, 0, 1}) {
		n = bytes.TrimRight(n, "\x00") // a 4-byte start code's leading zero
		if len(n) == 0 || n[0]&0x1f == nalAUD {
			continue
		}
		if n[0]&0x1f == nalIDR {
			idr = true
		}
		nalus = append(nalus, n)
	}
	if len(nalus) == 0 {
		return
	}
	t.mu.Lock()
	if idr {
		// An IDR out is the source's IDR: frames before it were dropped.
		for i, f := range t.pending {
			if f.idr {
				t.pending = append(t.pending[:0], t.pending[i:]...)
				break
			}
		}
	}
	if len(t.pending) == 0 {
		t.mu.Unlock()
		t.cfg.Metrics.VideoTranscodeDropped.WithLabelValues(t.cfg.Protocol, "untimed").Inc()
		return
	}
	f := t.pending[0]
	t.pending = append(t.pending[:0], t.pending[1:]...)
	t.mu.Unlock()
	t.cfg.Metrics.VideoTranscodeSeconds.WithLabelValues(t.cfg.Protocol).Observe(time.Since(f.fedAt).Seconds())
	t.cfg.Frame(nalus, f.pts, f.fedAt)
}
