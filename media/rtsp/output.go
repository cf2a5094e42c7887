package rtsp

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/description"
	"github.com/bluenviron/gortsplib/v4/pkg/format"
	"github.com/pion/rtp"
	"github.com/vitrine-live/vitrine/media"
)

// output is one stream as RTSP readers get it: a gortsplib stream fed by a
// subscriber on each of the stream's tracks, shared by all its readers and
// kept while any holds it.
type output struct {
	srv    *Server
	stream *media.Stream
	ss     *gortsplib.ServerStream
	holds  int
	detach []func()
	once   sync.Once
}

// output returns the stream's output, held once more (release with
// releaseOutput).
func (s *Server) output(st *media.Stream) (*output, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("rtsp: server closed")
	}
	if o := s.outputs[st]; o != nil {
		o.holds++
		return o, nil
	}
	o := &output{srv: s, stream: st, holds: 1}
	desc := &description.Session{}
	type attach struct {
		track *media.Track
		medi  *description.Media
		pt    uint8
	}
	var attaches []attach
	// While the WebRTC video is a re-encode (B-frames), readers get the
	// video as the creator sent it.
	for _, t := range []*media.Track{st.ReaderVideo(), st.Audio} {
		f, err := rtspFormat(t.Codec())
		if err != nil {
			if t.Kind() == media.Audio {
				continue // video alone is still worth reading
			}
			return nil, err
		}
		typ := description.MediaTypeVideo
		if t.Kind() == media.Audio {
			typ = description.MediaTypeAudio
		}
		m := &description.Media{Type: typ, Formats: []format.Format{f}}
		desc.Medias = append(desc.Medias, m)
		attaches = append(attaches, attach{t, m, f.PayloadType()})
	}
	o.ss = &gortsplib.ServerStream{Server: s.srv, Desc: desc}
	if err := o.ss.Initialize(); err != nil {
		return nil, fmt.Errorf("rtsp: %w", err)
	}
	for _, a := range attaches {
		w := &trackWriter{out: o, track: a.track, medi: a.medi, clockRate: a.track.Codec().ClockRate}
		w.pkt.PayloadType = a.pt
		// A creator with another codec: readers must DESCRIBE again.
		o.detach = append(o.detach, a.track.Attach(w, 0, a.pt, func() { s.dropOutput(o) }))
	}
	s.outputs[st] = o
	return o, nil
}

// releaseOutput drops a hold. An output nobody holds lingers a few seconds:
// a DESCRIBE is followed by SETUPs on a new connection or session.
func (s *Server) releaseOutput(o *output) {
	s.mu.Lock()
	o.holds--
	idle := o.holds == 0
	s.mu.Unlock()
	if idle {
		time.AfterFunc(outputLinger, func() {
			s.mu.Lock()
			last := o.holds == 0 && s.outputs[o.stream] == o
			if last {
				delete(s.outputs, o.stream)
			}
			s.mu.Unlock()
			if last {
				o.close()
			}
		})
	}
}

const outputLinger = 5 * time.Second

// dropOutput disconnects every reader of o (the stream's codec changed).
func (s *Server) dropOutput(o *output) {
	s.mu.Lock()
	if s.outputs[o.stream] == o {
		delete(s.outputs, o.stream)
	}
	s.mu.Unlock()
	o.close()
}

func (o *output) close() {
	o.once.Do(func() {
		for _, d := range o.detach {
			d()
		}
		o.ss.Close()
	})
}

// rtspFormat describes a track's codec for RTSP readers.
func rtspFormat(c media.Codec) (format.Format, error) {
	switch strings.ToLower(c.MimeType) {
	case "video/h264":
		return &format.H264{PayloadTyp: 96, PacketizationMode: 1}, nil
	case "video/vp8":
		return &format.VP8{PayloadTyp: 97}, nil
	case "video/vp9":
		return &format.VP9{PayloadTyp: 98}, nil
	case "video/av1":
		return &format.AV1{PayloadTyp: 99}, nil
	case "audio/opus":
		return &format.Opus{PayloadTyp: 111, ChannelCount: 2}, nil
	}
	return nil, fmt.Errorf("rtsp: no RTSP format for %s", c.MimeType)
}

// trackWriter hands one track's packets to the gortsplib stream. It runs on
// the track's shard goroutine and reuses one packet: gortsplib marshals it
// before WritePacketRTPWithNTP returns.
type trackWriter struct {
	out       *output
	track     *media.Track
	medi      *description.Media
	clockRate uint32
	pkt       rtp.Packet

	// The wall-clock time of an RTP timestamp, for readers' Sender Reports,
	// refreshed from the track's clock each second.
	refAt   time.Time
	refRTP  uint32
	refTime time.Time
	refOK   bool
}

func (w *trackWriter) WriteRTP(h *rtp.Header, payload []byte) (int, error) {
	now := time.Now()
	if now.Sub(w.refAt) > time.Second {
		w.refAt = now
		w.refRTP = h.Timestamp
		w.refTime, w.refOK = w.track.TimeAt(h.Timestamp)
	}
	ntp := now
	if w.refOK && w.clockRate > 0 {
		d := int32(h.Timestamp - w.refRTP)
		ntp = w.refTime.Add(time.Duration(int64(d) * int64(time.Second) / int64(w.clockRate)))
	}
	pt := w.pkt.PayloadType
	w.pkt.Header = *h
	w.pkt.PayloadType = pt
	w.pkt.Payload = payload
	err := w.out.ss.WritePacketRTPWithNTP(w.medi, &w.pkt, ntp)
	w.pkt.Payload = nil
	return len(payload), err
}
