package ingest

import (
	"bytes"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bluenviron/mediacommon/v2/pkg/codecs/mpeg4audio"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/media"
)

// fuzzPublisher makes a publisher on its own stream; ffmpeg is never found,
// so a B-frame or a long keyframe interval takes the "no encoder" path and
// AAC's transcoder only retries.
func fuzzPublisher(tb testing.TB, m *Metrics) (*Publisher, *media.Stream) {
	log := slog.New(slog.DiscardHandler)
	st := media.NewStream("s", media.StreamOptions{ReencodeKeyframesOver: time.Second},
		media.NewMetrics(prometheus.NewRegistry()), log)
	pub, err := Publish(Config{Stream: st, Protocol: "rtmp", Takeover: true, FFmpeg: "/nonexistent/ffmpeg",
		Metrics: m, Log: log, MediaStart: time.Now()})
	if err != nil {
		tb.Fatal(err)
	}
	return pub, st
}

// accessUnits splits fuzz bytes into access units: a byte that gives the
// number of NAL units (1-4) and the pts step in ms (signed), then each NAL
// unit as a length byte and its bytes.
func accessUnits(b []byte) (aus [][][]byte, steps []time.Duration) {
	for len(b) >= 2 {
		n := int(b[0]&3) + 1
		steps = append(steps, time.Duration(int8(b[1]))*time.Millisecond)
		b = b[2:]
		var au [][]byte
		for range n {
			if len(b) == 0 {
				break
			}
			l := min(int(b[0]), len(b)-1)
			au = append(au, b[1:1+l])
			b = b[1+l:]
		}
		aus = append(aus, au)
	}
	return aus, steps[:len(aus)]
}

var profileRE = regexp.MustCompile(`profile-level-id=[0-9a-f]{6}$`)

// FuzzH264 drives the publisher's H.264 path as RTMP (and RTSP) feed it:
// StartH264 with the stream's SPS and PPS as the client sent them, then
// access units whose NAL units, B-slice headers and timestamps are the
// client's. Nothing panics; the codec announced to viewers is well formed;
// a write fails only at packetizing; ending leaves the stream without a
// creator.
func FuzzH264(f *testing.F) {
	sps := []byte{0x67, 0x42, 0xc0, 0x28, 0xd9, 0x00, 0x78, 0x02, 0x27, 0xe5, 0x84, 0x00, 0x00, 0x03, 0x00, 0x04,
		0x00, 0x00, 0x03, 0x00, 0xf0, 0x3c, 0x60, 0xc9, 0x20}
	pps := []byte{0x68, 0xce, 0x3c, 0x80}
	idr := []byte{0x02, 0x00, 0x02, 0x09, 0xf0, 0x05, 0x65, 0x88, 0x84, 0x00, 0x33} // AUD, IDR
	p := []byte{0x00, 33, 0x04, 0x41, 0x9a, 0x02, 0x04}                             // P slice
	b := []byte{0x00, 33, 0x03, 0x01, 0x9e, 0x01}                                   // B slice
	f.Add(sps, pps, bytes.Join([][]byte{idr, p, p, b, p}, nil))
	f.Add(sps, pps, bytes.Join([][]byte{idr, {0x00, 0x7f, 0x03, 0x41, 0x9a, 0x02}, {0x00, 0x7f, 0x03, 0x41, 0x9a, 0x02}, {0x00, 0x80, 0x01, 0x65}}, nil))
	f.Add([]byte(nil), []byte(nil), []byte{0x03, 0x00, 0x02, 0x67, 0x42, 0x01, 0x68, 0x01, 0x65, 0x00})
	f.Add([]byte{0x67}, []byte{}, []byte{0x00, 0x00, 0x00})
	f.Add(sps, pps, []byte{0x00, 0x00, 0x08, 0x01, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x01})
	m := NewMetrics(prometheus.NewRegistry())
	f.Fuzz(func(t *testing.T, sps, pps, stream []byte) {
		pub, st := fuzzPublisher(t, m)
		defer st.Close()
		if err := pub.StartH264(sps, pps); err != nil {
			t.Fatalf("StartH264(%x, %x): %v", sps, pps, err)
		}
		if !profileRE.MatchString(pub.videoCodec.Fmtp) {
			t.Fatalf("SPS %x announced as %q", sps, pub.videoCodec.Fmtp)
		}
		if prof, level := x264Profile(sps); level != "" && !regexp.MustCompile(`^[1-6]\.[0-9]$`).MatchString(level) || strings.ContainsAny(prof, " :") {
			t.Fatalf("SPS %x: x264 profile %q level %q", sps, prof, level)
		}
		aus, steps := accessUnits(stream)
		pts := time.Duration(0)
		for i, au := range aus {
			if hasBSlice(au) != hasBSlice(au) {
				t.Fatal("hasBSlice is not a function of its input")
			}
			pts += steps[i]
			if err := pub.WriteH264(pts, au); err != nil && !strings.HasPrefix(err.Error(), "ingest: packetize H.264") {
				t.Fatalf("access unit %d %x: %v", i, au, err)
			}
		}
		pub.End(true)
		if in := st.Ingest(); in != nil {
			t.Fatal("the stream still has a creator after End")
		}
	})
}

// FuzzAAC drives the publisher's AAC path: the AudioSpecificConfig as
// gortmplib and gortsplib parse it from the client, StartAAC (which refuses
// a config without a sample rate), WriteAAC, and the ADTS framing the
// transcoder feeds ffmpeg. Nothing panics, and a frame that is framed reads
// back as the same frame with the same config.
func FuzzAAC(f *testing.F) {
	f.Add([]byte{0x11, 0x90}, []byte{0x21, 0x10, 0x04, 0x60, 0x8c, 0x1c})               // AAC-LC 48 kHz stereo
	f.Add([]byte{0x12, 0x10}, []byte{0xde, 0x04, 0x00, 0x00})                           // 44.1 kHz
	f.Add([]byte{0x2b, 0x92, 0x08, 0x00}, []byte{0x01})                                 // HE-AAC
	f.Add([]byte{0x17, 0x80, 0x00, 0x01, 0x00}, []byte{0x01, 0x02})                     // explicit rate
	f.Add([]byte{0x11, 0x80}, []byte{0x00})                                             // channel config 0
	f.Add([]byte{0xf8, 0x00, 0x00, 0x00, 0x00, 0x00}, bytes.Repeat([]byte{0xaa}, 9000)) // escape object type
	m := NewMetrics(prometheus.NewRegistry())
	f.Fuzz(func(t *testing.T, config, au []byte) {
		var conf mpeg4audio.AudioSpecificConfig
		if err := conf.Unmarshal(config); err != nil {
			return // gortmplib and gortsplib refuse the track
		}
		pub, st := fuzzPublisher(t, m)
		defer st.Close()
		if err := pub.StartAAC(&conf); err == nil {
			if pub.transcoder.frameNs <= 0 {
				t.Fatalf("config %x (%+v): frames of %d ns", config, conf, pub.transcoder.frameNs)
			}
			pub.WriteAAC(0, au)
			pub.WriteAAC(time.Second, au)
		} else if conf.SampleRate > 0 {
			t.Fatalf("config %x (%+v) refused: %v", config, conf, err)
		}
		pub.End(false)

		if len(au) == 0 || len(au) > 8191-7 {
			return // Write hands feed nothing else: ADTS frames are 13-bit long
		}
		// The framing the transcoder writes to ffmpeg's stdin: the frame is
		// either written (the writer hands it over) or dropped (feed takes
		// the next frame).
		tr := &Transcoder{cfg: TranscoderConfig{Config: &conf, Metrics: m, Protocol: "rtmp"}, in: make(chan aacFrame)}
		stop := make(chan struct{})
		w := handOver{out: make(chan []byte), stop: stop}
		fed := make(chan struct{})
		go func() {
			defer close(fed)
			tr.feed(w, stop)
		}()
		tr.in <- aacFrame{au: au}
		var written []byte
		select {
		case written = <-w.out:
		case tr.in <- aacFrame{au: au}:
		}
		close(stop)
		<-fed
		if written == nil {
			return
		}
		var pkts mpeg4audio.ADTSPackets
		if err := pkts.Unmarshal(written); err != nil {
			t.Fatalf("config %+v, frame %x: ADTS %x does not read back: %v", conf, au, written, err)
		}
		if len(pkts) != 1 || !bytes.Equal(pkts[0].AU, au) || pkts[0].Type != conf.Type ||
			pkts[0].SampleRate != conf.SampleRate || pkts[0].ChannelConfig != conf.ChannelConfig {
			t.Fatalf("config %+v, frame %x: ADTS reads back as %+v", conf, au, pkts)
		}
	})
}

// handOver passes each write to out, until stop.
type handOver struct {
	out  chan []byte
	stop chan struct{}
}

func (h handOver) Write(b []byte) (int, error) {
	select {
	case h.out <- append([]byte(nil), b...):
	case <-h.stop:
	}
	return len(b), nil
}
