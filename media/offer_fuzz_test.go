package media

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// fuzzBrowserOffer is the shape of a browser's WHIP offer: H.264 (with RTX)
// and VP8 video in simulcast, Opus audio.
const fuzzBrowserOffer = "v=0\r\n" +
	"o=- 1 2 IN IP4 127.0.0.1\r\n" +
	"s=-\r\n" +
	"t=0 0\r\n" +
	"a=group:BUNDLE 0 1\r\n" +
	"a=extmap-allow-mixed\r\n" +
	"a=msid-semantic: WMS s\r\n" +
	"m=video 9 UDP/TLS/RTP/SAVPF 109 110 96\r\n" +
	"c=IN IP4 0.0.0.0\r\n" +
	"a=rtcp:9 IN IP4 0.0.0.0\r\n" +
	"a=ice-ufrag:F7gI\r\n" +
	"a=ice-pwd:x9cml/YzichV2+XlhiMu8g77\r\n" +
	"a=ice-options:trickle\r\n" +
	"a=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F\r\n" +
	"a=setup:actpass\r\n" +
	"a=mid:0\r\n" +
	"a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n" +
	"a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n" +
	"a=sendonly\r\n" +
	"a=msid:s v\r\n" +
	"a=rtcp-mux\r\n" +
	"a=rtcp-rsize\r\n" +
	"a=rtpmap:109 H264/90000\r\n" +
	"a=rtcp-fb:109 nack\r\n" +
	"a=rtcp-fb:109 nack pli\r\n" +
	"a=rtcp-fb:109 transport-cc\r\n" +
	"a=fmtp:109 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n" +
	"a=rtpmap:110 rtx/90000\r\n" +
	"a=fmtp:110 apt=109\r\n" +
	"a=rtpmap:96 VP8/90000\r\n" +
	"a=rid:h send\r\n" +
	"a=rid:l send\r\n" +
	"a=simulcast:send h;~l\r\n" +
	"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" +
	"c=IN IP4 0.0.0.0\r\n" +
	"a=rtcp:9 IN IP4 0.0.0.0\r\n" +
	"a=ice-ufrag:F7gI\r\n" +
	"a=ice-pwd:x9cml/YzichV2+XlhiMu8g77\r\n" +
	"a=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F\r\n" +
	"a=setup:actpass\r\n" +
	"a=mid:1\r\n" +
	"a=sendonly\r\n" +
	"a=msid:s a\r\n" +
	"a=rtcp-mux\r\n" +
	"a=rtpmap:111 opus/48000/2\r\n" +
	"a=fmtp:111 minptime=10;useinbandfec=1\r\n"

// offerSeeds are offers to start from: a browser's, and variants each
// check refuses.
var offerSeeds = []string{
	fuzzBrowserOffer,
	strings.Replace(fuzzBrowserOffer, "a=simulcast:send h;~l\r\n", "", 1),
	strings.Replace(fuzzBrowserOffer, "109 110 96", "358 110 96", 1),
	strings.Replace(fuzzBrowserOffer, "a=rtpmap:109 H264/90000", "a=rtpmap:109 H265/90000", 1),
	strings.Replace(fuzzBrowserOffer, "m=audio", "m=application", 1),
	"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n",
	"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n",
	"v=0\r\n", "", "m=video", "v=0\r\nm=video 0 RTP/AVP -1\r\na=rtpmap:-1 H264/90000\r\n",
}

// FuzzOffer feeds a WHIP or WHEP offer to the checks Vitrine makes before
// pion sees it (checkOffer, the codec lists, the payload-type renumbering,
// simulcast layers, the answer's codecs). Nothing panics; the payload types
// Vitrine renumbers its codecs with are RTP's (0-127) and the offer's own;
// simulcast layers have names.
func FuzzOffer(f *testing.F) {
	for _, seed := range offerSeeds {
		f.Add(seed)
	}
	prefs := preferCodec(fuzzPublishCodecs(f), "video/H264")
	f.Fuzz(func(t *testing.T, offer string) {
		if desc, err := checkOffer(offer, "video", "audio"); err == nil {
			formats := map[webrtc.PayloadType]bool{}
			for _, md := range desc.MediaDescriptions {
				if md.MediaName.Media != "video" {
					continue
				}
				for _, format := range md.MediaName.Formats {
					if pt, err := strconv.Atoi(format); err == nil && pt >= 0 && pt <= 127 {
						formats[webrtc.PayloadType(pt)] = true
					}
				}
				break
			}
			if out := offerPayloadTypes(desc, prefs); !samePrefs(out, prefs) {
				for _, c := range out {
					if c.PayloadType > 127 || !formats[c.PayloadType] {
						t.Fatalf("%q: %s renumbered %d, not one of the offer's video payload types %v", offer, c.MimeType, c.PayloadType, formats)
					}
				}
			}
			for _, rid := range simulcastRIDs(desc) {
				if rid == "" {
					t.Fatalf("%q: a simulcast layer without a name", offer)
				}
			}
		}
		for kind, c := range AnswerCodecs(offer) {
			if !strings.HasPrefix(c.MimeType, kind+"/") {
				t.Fatalf("%q: %s codec %q", offer, kind, c.MimeType)
			}
		}
	})
}

// fuzzPublishCodecs is the creators' video codec list, as NewWebRTC makes it.
func fuzzPublishCodecs(tb testing.TB) []webrtc.RTPCodecParameters {
	codecs, err := registerCodecs(&webrtc.MediaEngine{}, true)
	if err != nil {
		tb.Fatal(err)
	}
	return codecs
}

// FuzzOfferSession feeds an offer to the whole of Publish and Watch, pion
// included, on a WebRTC bound to 127.0.0.1 (so no candidate of an offer is
// ever contacted off this host). Nothing panics or hangs; an offer is
// refused with a *BadOfferError that says why, never an internal error
// (which the API answers 500); a session made ends.
func FuzzOfferSession(f *testing.F) {
	for _, seed := range offerSeeds {
		f.Add(seed)
	}
	w, st := loopbackStream(f)
	f.Fuzz(func(t *testing.T, offer string) {
		hung := time.AfterFunc(15*time.Second, func() {
			buf := make([]byte, 1<<20)
			panic(fmt.Sprintf("offer %q: Publish or Watch still running after 15 s\n%s", offer, buf[:runtime.Stack(buf, true)]))
		})
		defer hung.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		pub, _, err := w.Publish(ctx, st, offer, true)
		refused(t, "whip", offer, err)
		if pub != nil {
			pub.End()
			<-pub.Done()
		}
		v, _, err := w.Watch(ctx, st, offer, ViewerHooks{})
		refused(t, "whep", offer, err)
		if v != nil {
			v.Close()
			<-v.Done()
		}
	})
}

// loopbackStream is a WebRTC bound to 127.0.0.1 and a stream, both closed
// when the test ends.
func loopbackStream(tb testing.TB) (*WebRTC, *Stream) {
	mm := NewMetrics(prometheus.NewRegistry())
	log := slog.New(slog.DiscardHandler)
	w, err := NewWebRTC(WebRTCConfig{ListenIP: "127.0.0.1", IncludeLoopback: true, TCPPort: -1}, mm, log)
	if err != nil {
		tb.Fatal(err)
	}
	st := NewStream("fuzz", StreamOptions{}, mm, log)
	tb.Cleanup(func() {
		st.Close()
		w.Close()
	})
	return w, st
}

// refused fails the test unless err is nil or a *BadOfferError with a
// reason: what the HTTP API answers 400 instead of 500.
func refused(t *testing.T, kind, offer string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var bad *BadOfferError
	if !errors.As(err, &bad) || bad.Reason == "" {
		t.Fatalf("%s %q: %v is not a refusal of the offer", kind, offer, err)
	}
}

func samePrefs(a, b []webrtc.RTPCodecParameters) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].PayloadType != b[i].PayloadType || a[i].MimeType != b[i].MimeType {
			return false
		}
	}
	return true
}

// TestWatchFormatNotSent: a viewer whose offer lists H.264, but not in the
// packetization mode the creator sends, is refused with a reason (400), not
// failed while pion binds the track (500). FuzzOfferSession found it after
// an input that published packetization-mode 0.
func TestWatchFormatNotSent(t *testing.T) {
	w, st := loopbackStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	modeZero := strings.Replace(fuzzBrowserOffer, "packetization-mode=1", "packetization-mode=0", 1)
	modeZero = strings.Replace(modeZero, " 96\r\n", "\r\n", 1) // no VP8 to fall back on
	pub, _, err := w.Publish(ctx, st, modeZero, true)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.End()
	if c := st.Video.Codec(); c.MimeType != "video/H264" || fmtpValue(c.Fmtp, "packetization-mode") != "0" {
		t.Fatalf("stream expects %s %q, want H.264 in packetization-mode 0", c.MimeType, c.Fmtp)
	}
	viewer := strings.ReplaceAll(fuzzBrowserOffer, "a=sendonly", "a=recvonly")
	v, _, err := w.Watch(ctx, st, viewer, ViewerHooks{})
	if v != nil {
		v.Close()
	}
	var bad *BadOfferError
	if !errors.As(err, &bad) {
		t.Fatalf("watch with packetization-mode 1 only: %v, want a refusal of the offer", err)
	}
	t.Log(bad.Reason)
}
