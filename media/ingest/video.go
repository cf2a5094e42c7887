package ingest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
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
// given out. Keyframes are forced where the source has them, and where this
// side asks for one, so an IDR out matches an IDR in, and a frame ffmpeg
// dropped shifts nothing past the next keyframe.
//
// Keyframes on demand: RequestKeyframe makes the next frame fed an IDR out.
// ffmpeg cannot be told anything mid-stream through a pipe, so the frame goes
// in with a recovery-point SEI in front: ffmpeg's H.264 decoder marks such a
// frame as a keyframe and -force_key_frames source turns it into an IDR.
//
// The transcoder remembers the access units since the source's last keyframe
// (the current group of pictures). An ffmpeg that starts, or restarts after
// a crash, is fed them first, its output for them thrown away, so it can
// give out an IDR at the very next frame instead of at the source's next
// keyframe, which may be seconds away.
type VideoTranscoder struct {
	cfg VideoTranscoderConfig
	in  chan videoFrame

	mu       sync.Mutex
	pending  []videoFrame // fed to the current ffmpeg, not out yet, by pts
	running  bool
	gop      []videoFrame // since the source's last keyframe, for a new ffmpeg
	gopBytes int
	gopOK    bool // gop starts at a keyframe and lost nothing
	next     uint64
	emitting bool // this ffmpeg's output goes out (an IDR of a live frame came)
	caught   bool // this ffmpeg has given out a frame fed after the backlog
	pid      atomic.Int64

	output  atomic.Bool // frames written from now on are for viewers
	wantKey atomic.Bool // make the next frame fed for viewers an IDR

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
	// goroutine; au is not retained. The first access unit given out after
	// output starts (see Hold) is an IDR.
	Frame    func(au [][]byte, pts time.Duration, fedAt time.Time)
	Metrics  *Metrics
	Protocol string
	Log      *slog.Logger
	// Profile and Level of the re-encode ("high", "3.1"): the source's, so
	// viewers keep the format they negotiated. libx264 picks when empty.
	Profile, Level string
	// Hold: frames are decoded and re-encoded but nothing is given out
	// until StartOutput (the caller forwards the source meanwhile).
	Hold bool
	// Backlog: the source's access units since its last keyframe (the first
	// one an IDR), fed to ffmpeg before anything written, their output
	// thrown away.
	Backlog []BacklogFrame
}

// BacklogFrame is one access unit of VideoTranscoderConfig.Backlog.
type BacklogFrame struct {
	AU  [][]byte // NAL units without start codes
	PTS time.Duration
	IDR bool
}

type videoFrame struct {
	annexB []byte // with an AUD after it
	pts    time.Duration
	idr    bool // the source's keyframe
	fedAt  time.Time
	n      uint64 // written order, from 1
	out    bool   // written for viewers (after StartOutput)
	live   bool   // pending: fed after the backlog
}

// maxPending bounds the frames remembered: ffmpeg holds a few at most.
const maxPending = 120

// inQueue is how many frames may wait for ffmpeg: a backlog of a long
// group of pictures is decoded in a burst while live frames keep coming.
const inQueue = 256

// The group of pictures kept for a new ffmpeg is bounded: past this, it is
// forgotten and a new ffmpeg waits for the source's next keyframe.
const (
	maxGOPBytes  = 32 << 20
	maxGOPFrames = 1800 // 60 s at 30 fps
)

// recoverySEI is an SEI NAL unit with a recovery point (payload type 6,
// recovery_frame_cnt 0, exact match): ffmpeg decodes the frame after it as a
// keyframe, which -force_key_frames source encodes as an IDR.
var recoverySEI = []byte{0, 0, 0, 1, 6, 6, 1, 0xc4, 0x80}

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
	t := &VideoTranscoder{cfg: cfg, in: make(chan videoFrame, inQueue), cancel: cancel, done: make(chan struct{})}
	t.output.Store(!cfg.Hold)
	for _, f := range cfg.Backlog {
		t.remember(annexB(f.AU), f.PTS, f.IDR)
	}
	cfg.Backlog = nil
	go func() {
		defer close(t.done)
		superviseFFmpeg(ctx, t.ffmpeg())
	}()
	return t
}

// Write hands one access unit (NAL units without start codes, in decode
// order) to ffmpeg. It never blocks: while ffmpeg is down, frames wait in the
// group of pictures kept for the next one; if ffmpeg falls behind by more
// than the queue, it is restarted from that group.
func (t *VideoTranscoder) Write(au [][]byte, pts time.Duration, idr bool) {
	f := t.remember(annexB(au), pts, idr)
	f.out = t.output.Load()
	select {
	case t.in <- f:
	default:
		t.cfg.Metrics.VideoTranscodeDropped.WithLabelValues(t.cfg.Protocol, "transcoder_unavailable").Inc()
	}
}

// annexB joins NAL units with start codes and puts an AUD after them: it
// tells ffmpeg's parser the unit is complete without waiting for the next.
func annexB(au [][]byte) []byte {
	size := len(aud)
	for _, n := range au {
		size += 4 + len(n)
	}
	b := make([]byte, 0, size)
	for _, n := range au {
		b = append(b, 0, 0, 0, 1)
		b = append(b, n...)
	}
	return append(b, aud...)
}

// remember numbers a frame and keeps it in the current group of pictures.
func (t *VideoTranscoder) remember(b []byte, pts time.Duration, idr bool) videoFrame {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	f := videoFrame{annexB: b, pts: pts, idr: idr, fedAt: time.Now(), n: t.next}
	if idr {
		clear(t.gop)
		t.gop, t.gopBytes, t.gopOK = t.gop[:0], 0, true
	}
	if t.gopOK {
		if len(t.gop) >= maxGOPFrames || t.gopBytes+len(b) > maxGOPBytes {
			clear(t.gop)
			t.gop, t.gopBytes, t.gopOK = t.gop[:0], 0, false
		} else {
			t.gop = append(t.gop, f)
			t.gopBytes += len(b)
		}
	}
	return f
}

// StartOutput gives out the re-encode from the next frame written on (an
// IDR), for a transcoder made with Hold.
func (t *VideoTranscoder) StartOutput() { t.output.Store(true) }

// Ready reports whether ffmpeg is running and has caught up with the frames
// written: output started now would come at the transcoder's usual delay.
func (t *VideoTranscoder) Ready() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.running && t.caught && len(t.pending) <= 4
}

// RequestKeyframe makes the next frame written (or the one after, when it is
// not a reference frame) come out as an IDR.
func (t *VideoTranscoder) RequestKeyframe() { t.wantKey.Store(true) }

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
// keyframes where the source has them (and where a recovery-point SEI asks
// for one), an AUD before each access unit out.
func (t *VideoTranscoder) ffmpegArgs() []string {
	rate := fmt.Sprint(t.cfg.MaxBitrate)
	args := []string{"-hide_banner", "-loglevel", "error", "-nostdin",
		// One decoder thread: frame threads would hold frames back.
		"-threads", "1", "-probesize", "32", "-analyzeduration", "0",
		"-framerate", fmt.Sprint(t.cfg.FrameRate), "-f", "h264", "-i", "pipe:0",
		"-an", "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-bf", "0",
		"-crf", "23", "-maxrate", rate, "-bufsize", rate,
		"-g", "600", "-sc_threshold", "0", "-force_key_frames", "source", "-forced-idr", "1"}
	if t.cfg.Profile != "" {
		args = append(args, "-profile:v", t.cfg.Profile)
	}
	if t.cfg.Level != "" {
		args = append(args, "-level:v", t.cfg.Level)
	}
	return append(args, "-x264-params", "aud=1", "-fps_mode", "passthrough",
		"-f", "h264", "-flush_packets", "1", "pipe:1")
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
			t.running, t.pending, t.emitting, t.caught = true, t.pending[:0], false, false
			t.mu.Unlock()
		},
		stopped: func() {
			t.mu.Lock()
			t.running = false
			t.pending = t.pending[:0]
			t.mu.Unlock()
			// What was queued is in the group of pictures the next ffmpeg
			// gets first.
			for len(t.in) > 0 {
				<-t.in
			}
		},
		feed:   t.feed,
		read:   t.read,
		onFail: "video transcoder stopped; WebRTC video resumes with a keyframe once it restarts",
	}
}

// feed writes access units to ffmpeg's stdin until stop: first the current
// group of pictures (output thrown away), then the frames written after it;
// without that group, from the source's next keyframe on. A frame lost on
// the way (the queue overflowed) ends this ffmpeg: the next starts clean.
func (t *VideoTranscoder) feed(w io.Writer, stop <-chan struct{}) {
	t.mu.Lock()
	var backlog []videoFrame
	if t.gopOK {
		backlog = slices.Clone(t.gop)
	}
	t.mu.Unlock()
	var last uint64
	for _, f := range backlog {
		if !t.write(w, f, false, false) {
			return
		}
		last = f.n
	}
	started := len(backlog) > 0
	outStarted := false // a frame for viewers was fed
	forceNext := false  // make the next reference frame for viewers an IDR
	for {
		var f videoFrame
		select {
		case <-stop:
			return
		case f = <-t.in:
		}
		if f.n <= last {
			continue // fed with the backlog
		}
		if started && last != 0 && f.n != last+1 {
			t.cfg.Log.Warn("video transcoder fell behind; restarting it from the current group of pictures")
			return
		}
		last = f.n
		if !started && !f.idr {
			t.cfg.Metrics.VideoTranscodeDropped.WithLabelValues(t.cfg.Protocol, "before_keyframe").Inc()
			continue
		}
		started = true
		if f.out {
			if !outStarted || t.wantKey.Swap(false) {
				outStarted, forceNext = true, true
			}
		}
		force := false
		if forceNext && (f.idr || isReference(f.annexB)) {
			force, forceNext = !f.idr, false
		}
		if !t.write(w, f, true, force) {
			return
		}
	}
}

// write feeds one frame, live or from the backlog, and remembers its timing;
// force puts a recovery point in front of it, for an IDR out.
func (t *VideoTranscoder) write(w io.Writer, f videoFrame, live, force bool) bool {
	t.mu.Lock()
	if len(t.pending) >= maxPending { // ffmpeg is dropping frames
		t.pending = append(t.pending[:0], t.pending[len(t.pending)/2:]...)
	}
	// Insert by presentation time (frames arrive in decode order).
	i := sort.Search(len(t.pending), func(i int) bool { return t.pending[i].pts > f.pts })
	t.pending = append(t.pending, videoFrame{})
	copy(t.pending[i+1:], t.pending[i:])
	t.pending[i] = videoFrame{pts: f.pts, idr: f.idr || force, fedAt: f.fedAt, out: f.out && live, live: live}
	t.mu.Unlock()
	if force {
		if _, err := w.Write(recoverySEI); err != nil {
			return false
		}
	}
	_, err := w.Write(f.annexB)
	return err == nil
}

// isReference reports whether an access unit (Annex-B) is a reference
// picture: a recovery point is honoured there, and frames after it may
// depend on it. B-frames usually are not.
func isReference(annexB []byte) bool {
	for _, n := range bytes.Split(annexB, []byte{0, 0, 1}) {
		if len(n) > 0 {
			if typ := n[0] & 0x1f; typ == 1 || typ == nalIDR {
				return n[0]&0x60 != 0
			}
		}
	}
	return false
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
		// An IDR out is an IDR in (the source's or one asked for): frames
		// before it were dropped.
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
	t.caught = t.caught || f.live
	if !t.emitting && idr && f.idr && f.out {
		t.emitting = true // viewers start at this IDR
	}
	emitting := t.emitting
	t.mu.Unlock()
	if !emitting {
		return // the backlog, held output, or frames before the first IDR for viewers
	}
	t.cfg.Metrics.VideoTranscodeSeconds.WithLabelValues(t.cfg.Protocol).Observe(time.Since(f.fedAt).Seconds())
	t.cfg.Frame(nalus, f.pts, f.fedAt)
}
