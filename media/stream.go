// Package media is Vitrine's SFU: live streams, their tracks, the forwarding
// core that fans each packet out to every viewer, and the WebRTC edges
// (creator ingest over WHIP, viewers over WHEP). It knows nothing of HTTP or
// products.
package media

import (
	"errors"
	"log/slog"
	"sync"
	"time"
)

// State is where a stream is in its life, as a viewer's player should show it.
type State string

// A stream starts waiting, is live while its creator sends, is reconnecting
// while a dropped creator may still come back, and ended after that or after
// the creator ended it. A creator can go live again from any state.
const (
	StateWaiting      State = "waiting"
	StateLive         State = "live"
	StateReconnecting State = "reconnecting"
	StateEnded        State = "ended"
)

// Ingest is a creator's connection, whatever its protocol.
type Ingest interface {
	Protocol() string
	// LastActive is when the connection last proved alive: its start or its
	// newest packet.
	LastActive() time.Time
	// Close drops the connection; the ingest then calls Stream.Unpublish.
	Close()
}

// StreamOptions tune a stream's behaviour.
type StreamOptions struct {
	// Grace is how long viewers wait for a dropped creator before the stream
	// ends. They stay connected throughout and resume without renegotiating.
	Grace time.Duration
	// KeyframeInterval is the shortest time between keyframe requests to the
	// creator, however many viewers ask.
	KeyframeInterval time.Duration
	// StaleAfter: a creator session silent for this long can be replaced by a
	// new one without takeover (the creator reloaded the page or lost network
	// before the old session timed out).
	StaleAfter time.Duration
	// ReencodeKeyframesOver: H.264 from an encoder that cannot be asked for
	// a keyframe (RTMP, RTSP) whose keyframes come further apart than this
	// is re-encoded for WebRTC viewers, with a keyframe whenever one joins;
	// RTSP readers keep the original. 0: never (viewers wait for the
	// encoder's next keyframe).
	ReencodeKeyframesOver time.Duration
	// JoinReplay is what a viewer joining mid-stream starts on (see
	// JoinReplay); "" is ReplayOriginal. GOPCacheBytes and GOPCacheAge
	// bound the cached group of pictures: past them, joiners wait for a
	// keyframe as with ReplayOff.
	JoinReplay    JoinReplay
	GOPCacheBytes int
	GOPCacheAge   time.Duration
}

// Stream is one live channel: a video track, an audio track, one creator at
// a time and any number of viewers.
type Stream struct {
	Name  string
	Video *Track
	Audio *Track

	opts    StreamOptions
	metrics *Metrics
	log     *slog.Logger

	mu         sync.Mutex
	state      State
	reason     string
	publisher  Ingest
	graceTimer *time.Timer
	listeners  map[int]func(State, string)
	nextID     int
	viewers    map[*Viewer]struct{}
	closed     bool

	// Set while Video carries a re-encode of the creator's video (see
	// SetTranscode); original then carries the video as the creator sent it.
	transcode Transcode
	original  *Track
	// simulcast holds the creator's other video layers when the creator
	// sends simulcast: Video is the first layer the offer lists, these the
	// rest, in the offer's order. Viewers move between them (see allocate.go).
	simulcast []*Track

	notifyMu sync.Mutex // delivers state changes in order
}

// NewStream creates a stream waiting for its creator.
func NewStream(name string, opts StreamOptions, m *Metrics, log *slog.Logger) *Stream {
	if opts.Grace <= 0 {
		opts.Grace = 10 * time.Second
	}
	if opts.KeyframeInterval <= 0 {
		opts.KeyframeInterval = 250 * time.Millisecond
	}
	if opts.StaleAfter <= 0 {
		opts.StaleAfter = 3 * time.Second
	}
	if opts.JoinReplay == "" {
		opts.JoinReplay = ReplayOriginal
	}
	if opts.GOPCacheBytes <= 0 {
		opts.GOPCacheBytes = DefaultGOPCacheBytes
	}
	if opts.GOPCacheAge <= 0 {
		opts.GOPCacheAge = DefaultGOPCacheAge
	}
	s := &Stream{
		Name:      name,
		Video:     newTrack(Video, name, DefaultVideoCodec, m, opts.KeyframeInterval),
		Audio:     newTrack(Audio, name, DefaultAudioCodec, m, opts.KeyframeInterval),
		opts:      opts,
		metrics:   m,
		log:       log.With("stream", name),
		state:     StateWaiting,
		listeners: map[int]func(State, string){},
		viewers:   map[*Viewer]struct{}{},
	}
	s.Video.enableReplay(opts.JoinReplay, opts.GOPCacheBytes, opts.GOPCacheAge)
	m.addStream(s)
	return s
}

// Errors a creator can act on.
var (
	ErrAlreadyLive  = errors.New("stream is already live from another session")
	ErrStreamClosed = errors.New("stream was deleted")
)

// Publish makes in the stream's creator. A second creator is refused while the
// first is active, unless takeover is set; a silent one is replaced.
func (s *Stream) Publish(in Ingest, takeover bool) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrStreamClosed
	}
	old := s.publisher
	if old != nil && !takeover && time.Since(old.LastActive()) < s.opts.StaleAfter {
		s.mu.Unlock()
		return ErrAlreadyLive
	}
	s.publisher = in
	s.transcode = Transcode{}
	if s.graceTimer != nil {
		s.graceTimer.Stop()
		s.graceTimer = nil
	}
	s.setState(StateLive, "")
	s.mu.Unlock()
	s.metrics.Publishers.WithLabelValues(in.Protocol()).Inc()
	s.log.Info("creator connected", "protocol", in.Protocol(), "replaced", old != nil)
	if old != nil {
		old.Close()
	}
	s.notify()
	s.Video.RequestKeyframe()
	return nil
}

// Unpublish is called by an ingest when its connection ends. ended means the
// creator ended the broadcast on purpose; otherwise viewers wait out the grace
// period for the creator to come back.
func (s *Stream) Unpublish(in Ingest, ended bool) {
	s.mu.Lock()
	if s.publisher != in {
		s.mu.Unlock()
		return
	}
	s.publisher = nil
	s.transcode = Transcode{}
	if ended {
		s.setState(StateEnded, "the creator ended the stream")
	} else {
		s.setState(StateReconnecting, "the creator's connection dropped")
		s.graceTimer = time.AfterFunc(s.opts.Grace, s.graceExpired)
	}
	s.mu.Unlock()
	s.log.Info("creator disconnected", "protocol", in.Protocol(), "ended", ended)
	s.notify()
}

func (s *Stream) graceExpired() {
	s.mu.Lock()
	if s.publisher != nil || s.state != StateReconnecting {
		s.mu.Unlock()
		return
	}
	s.graceTimer = nil
	s.setState(StateEnded, "the creator did not come back")
	s.mu.Unlock()
	s.notify()
}

// setState must be called with s.mu held.
func (s *Stream) setState(st State, reason string) {
	if (s.state == StateLive) != (st == StateLive) {
		if st == StateLive {
			s.metrics.StreamsLive.Inc()
		} else {
			s.metrics.StreamsLive.Dec()
		}
	}
	s.state, s.reason = st, reason
}

// State returns where the stream is and, when not live, why.
func (s *Stream) State() (State, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state, s.reason
}

// Ingest returns the current creator connection, or nil.
func (s *Stream) Ingest() Ingest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.publisher
}

// Watch calls fn with the current state and then on every change, until
// cancel is called. fn must not block.
func (s *Stream) Watch(fn func(State, string)) (cancel func()) {
	s.notifyMu.Lock()
	defer s.notifyMu.Unlock()
	s.mu.Lock()
	id := s.nextID
	s.nextID++
	s.listeners[id] = fn
	st, reason := s.state, s.reason
	s.mu.Unlock()
	fn(st, reason)
	return func() {
		s.mu.Lock()
		delete(s.listeners, id)
		s.mu.Unlock()
	}
}

func (s *Stream) notify() {
	s.notifyMu.Lock()
	defer s.notifyMu.Unlock()
	s.mu.Lock()
	st, reason := s.state, s.reason
	fns := make([]func(State, string), 0, len(s.listeners))
	for _, fn := range s.listeners {
		fns = append(fns, fn)
	}
	s.mu.Unlock()
	for _, fn := range fns {
		fn(st, reason)
	}
}

func (s *Stream) addViewer(v *Viewer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrStreamClosed
	}
	s.viewers[v] = struct{}{}
	s.metrics.Viewers.WithLabelValues(s.Name, v.protocol).Inc()
	return nil
}

func (s *Stream) removeViewer(v *Viewer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.viewers[v]; ok {
		delete(s.viewers, v)
		s.metrics.Viewers.WithLabelValues(s.Name, v.protocol).Dec()
	}
}

// Transcode says whether, and why, Video carries a re-encode of the
// creator's video rather than the video as sent. The zero value: it does not.
type Transcode struct {
	// BFrames: H.264 with B-frames, which browsers cannot play over WebRTC.
	BFrames bool
	// LongGOP: keyframes further apart than ReencodeKeyframesOver; the
	// re-encode makes one whenever a viewer joins.
	LongGOP bool
	// Reason is for the creator: what it costs and which encoder setting
	// removes it.
	Reason string
}

// On reports whether Video is a re-encode.
func (tc Transcode) On() bool { return tc.BFrames || tc.LongGOP }

// SetTranscode says whether Video carries a re-encode of the creator's video
// and why. Only the current creator's session decides: a replaced session
// still winding down (a flaky connection that timed out after the creator
// came back) must not undo what the new one set. Publish and Unpublish reset
// it, so a session starts and ends with the video as sent.
func (s *Stream) SetTranscode(in Ingest, tc Transcode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.publisher != in {
		return
	}
	if !tc.On() {
		tc = Transcode{}
	}
	s.transcode = tc
}

// Transcode reports whether, and why, Video is a re-encode.
func (s *Stream) Transcode() Transcode {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.transcode
}

// Transcoding reports whether Video is a re-encode of the creator's video
// (H.264 with B-frames, which browsers cannot play over WebRTC, or with
// keyframes too far apart) and why.
func (s *Stream) Transcoding() (on bool, reason string) {
	tc := s.Transcode()
	return tc.On(), tc.Reason
}

// Options are the stream's options, defaults filled in.
func (s *Stream) Options() StreamOptions { return s.opts }

// OriginalVideo is the track that carries the creator's video as sent while
// Video carries a re-encode of it; an ingest that re-encodes writes the
// original there. It is made on first use and has no WebRTC viewers.
func (s *Stream) OriginalVideo() *Track {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.original == nil {
		s.original = newTrack(Video, s.Name, DefaultVideoCodec, s.metrics, s.opts.KeyframeInterval)
	}
	return s.original
}

// SimulcastLayer is the creator's i-th simulcast video layer (0 is Video),
// made on first use; nil past maxLayers.
func (s *Stream) SimulcastLayer(i int) *Track {
	if i == 0 {
		return s.Video
	}
	if i < 0 || i >= maxLayers {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.simulcast) < i {
		t := newTrack(Video, s.Name, DefaultVideoCodec, s.metrics, s.opts.KeyframeInterval)
		t.layer = len(s.simulcast) + 1
		t.enableReplay(s.opts.JoinReplay, s.opts.GOPCacheBytes, s.opts.GOPCacheAge)
		s.simulcast = append(s.simulcast, t)
	}
	return s.simulcast[i-1]
}

// madeLayer is simulcast layer i if it exists, else nil.
func (s *Stream) madeLayer(i int) *Track {
	if i == 0 {
		return s.Video
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if i < 0 || i > len(s.simulcast) {
		return nil
	}
	return s.simulcast[i-1]
}

// maxLayers bounds a creator's simulcast layers (OBS sends up to 4 or 5).
const maxLayers = 5

// VideoLayers is Video followed by the other simulcast layers made so far.
func (s *Stream) VideoLayers() []*Track {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Track{s.Video}, s.simulcast...)
}

// ReaderVideo is the video track for readers that play the creator's video
// as sent (RTSP): OriginalVideo while Video is a re-encode, Video otherwise.
func (s *Stream) ReaderVideo() *Track {
	if on, _ := s.Transcoding(); on {
		return s.OriginalVideo()
	}
	return s.Video
}

// ViewerCount is how many viewers are connected.
func (s *Stream) ViewerCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.viewers)
}

// Close ends the stream for good (it was deleted): the creator and every
// viewer are disconnected and the tracks stop.
func (s *Stream) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	pub := s.publisher
	s.publisher = nil
	if s.graceTimer != nil {
		s.graceTimer.Stop()
	}
	s.setState(StateEnded, "the stream was deleted")
	viewers := make([]*Viewer, 0, len(s.viewers))
	for v := range s.viewers {
		viewers = append(viewers, v)
	}
	s.mu.Unlock()
	s.notify()
	if pub != nil {
		pub.Close()
	}
	for _, v := range viewers {
		v.Close()
	}
	s.Video.close()
	s.Audio.close()
	s.mu.Lock()
	orig := s.original
	layers := s.simulcast
	s.mu.Unlock()
	if orig != nil {
		orig.close()
	}
	for _, t := range layers {
		t.close()
	}
	s.metrics.Viewers.DeletePartialMatch(map[string]string{"stream": s.Name})
	s.metrics.removeStream(s)
}
