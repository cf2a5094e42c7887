package rtsp

import (
	"log/slog"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/description"
	"github.com/bluenviron/gortsplib/v4/pkg/format"
	"github.com/bluenviron/gortsplib/v4/pkg/sdp"
	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/media/ingest"
)

// fakeSession stands for a RECORD session: it keeps the callbacks
// wireTracks installs so the test can hand them packets.
type fakeSession struct {
	cbs []func(*rtp.Packet)
}

func (s *fakeSession) OnPacketRTP(_ *description.Media, _ format.Format, cb gortsplib.OnPacketRTPFunc) {
	s.cbs = append(s.cbs, cb)
}

func (s *fakeSession) PacketPTS2(_ *description.Media, pkt *rtp.Packet) (int64, bool) {
	return int64(pkt.Timestamp), true
}

const announceH264AAC = "v=0\r\n" +
	"o=- 0 0 IN IP4 127.0.0.1\r\n" +
	"s=Stream\r\n" +
	"c=IN IP4 0.0.0.0\r\n" +
	"t=0 0\r\n" +
	"m=video 0 RTP/AVP 96\r\n" +
	"a=rtpmap:96 H264/90000\r\n" +
	"a=fmtp:96 packetization-mode=1; sprop-parameter-sets=Z0LAKNkAeAIn5YQAAAMABAAAAwDwPGDJIA==,aM48gA==; profile-level-id=42C028\r\n" +
	"a=control:streamid=0\r\n" +
	"m=audio 0 RTP/AVP 97\r\n" +
	"a=rtpmap:97 MPEG4-GENERIC/48000/2\r\n" +
	"a=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3; config=119056E500\r\n" +
	"a=control:streamid=1\r\n"

// FuzzAnnounce takes an RTSP publisher's ANNOUNCE body as gortsplib does
// (its SDP parser, then the session description), then Vitrine's own steps:
// the usable-track count OnAnnounce refuses on, and OnRecord's wiring of
// the tracks into ingest (SPS and PPS from sprop-parameter-sets, the AAC
// config, Opus), followed by RTP packets from the fuzz input to every track
// wired. Nothing panics; what is wired is among the usable tracks; ending
// leaves the stream without a creator.
func FuzzAnnounce(f *testing.F) {
	idr, _ := (&rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: 1, Timestamp: 3000, Marker: true},
		Payload: []byte{0x65, 0x88, 0x84, 0x00, 0x33}}).Marshal()
	aac, _ := (&rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 97, SequenceNumber: 1, Timestamp: 1024, Marker: true},
		Payload: []byte{0x00, 0x10, 0x00, 0x30, 0x21, 0x10, 0x04, 0x60, 0x8c, 0x1c}}).Marshal()
	packets := append(append([]byte{byte(len(idr))}, idr...), append([]byte{byte(len(aac))}, aac...)...)
	for _, seed := range []string{
		announceH264AAC,
		"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 0 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=control:trackID=0\r\n",
		"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 sprop-parameter-sets=Zw==,aA==\r\n",
		"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/0/2\r\na=fmtp:97 mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1780000100\r\n",
		"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H265/90000\r\n",
		"v=0\r\n", "",
	} {
		f.Add([]byte(seed), packets)
	}
	log := slog.New(slog.DiscardHandler)
	mm := media.NewMetrics(prometheus.NewRegistry())
	im := ingest.NewMetrics(prometheus.NewRegistry())
	f.Fuzz(func(t *testing.T, body, packets []byte) {
		var ssd sdp.SessionDescription
		if ssd.Unmarshal(body) != nil {
			return
		}
		var desc description.Session
		if desc.Unmarshal(&ssd) != nil {
			return
		}
		n := usable(&desc)
		if n == 0 {
			return // OnAnnounce answers 415
		}
		st := media.NewStream("s", media.StreamOptions{}, mm, log)
		defer st.Close()
		pub, err := ingest.Publish(ingest.Config{Stream: st, Protocol: "rtsp", Takeover: true, FFmpeg: "/nonexistent/ffmpeg",
			Metrics: im, Log: log})
		if err != nil {
			t.Fatal(err)
		}
		sess := &fakeSession{}
		video, audio := wireTracks(sess, &desc, pub)
		if wired := len(sess.cbs); wired > n || wired > 2 || (video || audio) != (wired > 0) {
			t.Fatalf("%q: %d usable tracks, %d wired (video %v, audio %v)", body, n, wired, video, audio)
		}
		for i := 0; len(sess.cbs) > 0 && len(packets) > 0; i++ {
			l := min(int(packets[0]), len(packets)-1)
			var pkt rtp.Packet
			if pkt.Unmarshal(packets[1:1+l]) == nil {
				sess.cbs[i%len(sess.cbs)](&pkt)
			}
			packets = packets[1+l:]
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			pub.End(false)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%q: End did not return", body)
		}
		if st.Ingest() != nil {
			t.Fatalf("%q: the stream still has a creator after End", body)
		}
	})
}
