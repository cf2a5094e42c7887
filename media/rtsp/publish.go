package rtsp

import (
	"errors"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/bluenviron/gortsplib/v4/pkg/description"
	"github.com/bluenviron/gortsplib/v4/pkg/format"
	"github.com/bluenviron/gortsplib/v4/pkg/liberrors"
	"github.com/pion/rtp"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/media/ingest"
)

// OnAnnounce checks a publisher's key and tracks before it may RECORD.
func (s *Server) OnAnnounce(ctx *gortsplib.ServerHandlerOnAnnounceCtx) (*base.Response, error) {
	log := s.logFor(ctx.Conn)
	st, key, ok := s.cfg.Stream(streamName(ctx.Path))
	if !ok {
		s.cfg.Metrics.Connections.WithLabelValues("rtsp", "unknown_stream").Inc()
		log.Warn("rtsp publish refused: no such stream", "path", ctx.Path)
		return &base.Response{StatusCode: base.StatusNotFound}, nil
	}
	log = log.With("stream", st.Name)
	if !ctx.Conn.VerifyCredentials(ctx.Request, credentialUser(ctx.Request), key) {
		if _, sent := ctx.Request.Header["Authorization"]; sent {
			s.cfg.Metrics.Connections.WithLabelValues("rtsp", "wrong_key").Inc()
			log.Warn("rtsp publish refused: wrong key")
		}
		// Without credentials gortsplib asks for them; with wrong ones it
		// closes the connection.
		return &base.Response{StatusCode: base.StatusUnauthorized}, liberrors.ErrServerAuth{}
	}
	if usable(ctx.Description) == 0 {
		s.cfg.Metrics.Connections.WithLabelValues("rtsp", "unsupported_codec").Inc()
		log.Warn("rtsp publish refused: no track in a codec Vitrine forwards (H.264 video, AAC or Opus audio)")
		return &base.Response{StatusCode: base.StatusUnsupportedMediaType}, nil
	}
	if in := st.Ingest(); in != nil && !s.cfg.Takeover && time.Since(in.LastActive()) < s.cfg.StaleAfter {
		s.cfg.Metrics.Connections.WithLabelValues("rtsp", "already_live").Inc()
		log.Warn("rtsp publish refused: the stream is already live", "from", in.Protocol())
		return &base.Response{StatusCode: 409}, nil
	}
	ctx.Session.SetUserData(&session{log: log, stream: st, desc: ctx.Description})
	return &base.Response{StatusCode: base.StatusOK}, nil
}

func usable(desc *description.Session) int {
	n := 0
	for _, m := range desc.Medias {
		for _, f := range m.Formats {
			switch f.(type) {
			case *format.H264, *format.MPEG4Audio, *format.Opus:
				n++
			}
		}
	}
	return n
}

// OnRecord makes the session the stream's creator and wires its tracks.
func (s *Server) OnRecord(ctx *gortsplib.ServerHandlerOnRecordCtx) (*base.Response, error) {
	ss, _ := ctx.Session.UserData().(*session)
	if ss == nil || ss.desc == nil {
		return &base.Response{StatusCode: base.StatusBadRequest}, nil
	}
	sess := ctx.Session
	pub, err := ingest.Publish(ingest.Config{Stream: ss.stream, Protocol: "rtsp", Takeover: s.cfg.Takeover,
		FFmpeg: s.cfg.FFmpeg, Metrics: s.cfg.Metrics, Log: ss.log, Drop: sess.Close})
	if err != nil {
		result := "already_live"
		if errors.Is(err, media.ErrStreamClosed) {
			result = "unknown_stream"
		}
		s.cfg.Metrics.Connections.WithLabelValues("rtsp", result).Inc()
		ss.log.Warn("rtsp publish refused", "err", err)
		return &base.Response{StatusCode: 409}, nil
	}
	s.cfg.Metrics.Connections.WithLabelValues("rtsp", "accepted").Inc()
	ss.pub = pub
	video, audio := wireTracks(sess, ss.desc, pub)
	ss.log.Info("rtsp creator live", "video", video, "audio", audio)
	return &base.Response{StatusCode: base.StatusOK}, nil
}

// packetSource is what a server session (RECORD) and a client (a pulled
// camera) both offer: RTP packets per track, with their presentation times.
type packetSource interface {
	OnPacketRTP(*description.Media, format.Format, gortsplib.OnPacketRTPFunc)
	PacketPTS2(*description.Media, *rtp.Packet) (int64, bool)
}

// wireTracks feeds the first H.264 track and the first AAC or Opus track of
// desc into pub. It reports which kinds it found.
func wireTracks(sess packetSource, desc *description.Session, pub *ingest.Publisher) (video, audio bool) {
	for _, m := range desc.Medias {
		for _, f := range m.Formats {
			switch f := f.(type) {
			case *format.H264:
				if video {
					continue
				}
				dec, err := f.CreateDecoder()
				if err != nil || pub.StartH264(f.SPS, f.PPS) != nil {
					continue
				}
				video = true
				medi := m
				sess.OnPacketRTP(m, f, func(pkt *rtp.Packet) {
					// Every packet goes through the time decoder: it starts
					// a track only on a packet that begins a keyframe,
					// which is rarely the one that completes an access unit.
					pts, ok := sess.PacketPTS2(medi, pkt)
					au, err := dec.Decode(pkt)
					if err != nil || !ok {
						return // not a whole access unit yet, a loss, or before the first keyframe
					}
					_ = pub.WriteH264(ticksToDuration(pts, 90000), au)
				})
			case *format.MPEG4Audio:
				if audio || f.Config == nil {
					continue
				}
				dec, err := f.CreateDecoder()
				if err != nil || pub.StartAAC(f.Config) != nil {
					continue
				}
				audio = true
				medi, rate := m, int64(f.ClockRate())
				frame := int64(1024)
				if f.Config.FrameLengthFlag {
					frame = 960
				}
				sess.OnPacketRTP(m, f, func(pkt *rtp.Packet) {
					pts, ok := sess.PacketPTS2(medi, pkt)
					aus, err := dec.Decode(pkt)
					if err != nil || !ok {
						return
					}
					for i, au := range aus {
						pub.WriteAAC(ticksToDuration(pts+int64(i)*frame, rate), au)
					}
				})
			case *format.Opus:
				if audio {
					continue
				}
				dec, err := f.CreateDecoder()
				if err != nil {
					continue
				}
				pub.StartOpus()
				audio = true
				medi := m
				sess.OnPacketRTP(m, f, func(pkt *rtp.Packet) {
					pts, ok := sess.PacketPTS2(medi, pkt)
					p, err := dec.Decode(pkt)
					if err != nil || !ok {
						return
					}
					pub.WriteOpus(ticksToDuration(pts, 48000), p)
				})
			}
		}
	}
	return video, audio
}

func ticksToDuration(ticks, rate int64) time.Duration {
	return time.Duration(ticks/rate)*time.Second + time.Duration(ticks%rate)*time.Second/time.Duration(rate)
}
