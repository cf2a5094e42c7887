package media

import (
	"strings"

	"github.com/pion/webrtc/v4"
)

// Codec is what a track carries: the MIME type, clock rate and format
// parameters as they appear in SDP.
type Codec struct {
	MimeType  string
	ClockRate uint32
	Channels  uint16
	Fmtp      string
}

// Kind tells audio from video.
type Kind int

// The two kinds of track a stream has.
const (
	Video Kind = iota
	Audio
)

func (k Kind) String() string {
	if k == Audio {
		return "audio"
	}
	return "video"
}

// Default codecs a stream expects before its creator has gone live: viewers
// who join early are bound to these.
var (
	DefaultVideoCodec = Codec{MimeType: webrtc.MimeTypeH264, ClockRate: 90000,
		Fmtp: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"}
	DefaultAudioCodec = Codec{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2,
		Fmtp: "minptime=10;useinbandfec=1"}
)

// SameFormat reports whether a viewer bound to c can decode packets of o.
// H.264 needs the same packetization mode; the profile is not compared
// because browsers decode any profile they negotiated H.264 for.
func (c Codec) SameFormat(o Codec) bool {
	if !strings.EqualFold(c.MimeType, o.MimeType) {
		return false
	}
	if strings.EqualFold(c.MimeType, webrtc.MimeTypeH264) {
		return fmtpValue(c.Fmtp, "packetization-mode") == fmtpValue(o.Fmtp, "packetization-mode")
	}
	return true
}

func fmtpValue(fmtp, key string) string {
	for _, part := range strings.Split(fmtp, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok && strings.EqualFold(k, key) {
			return v
		}
	}
	if key == "packetization-mode" {
		return "0" // RFC 6184: absent means mode 0
	}
	return ""
}

// keyframeDetector returns the function that tells whether an RTP payload
// of the codec begins a frame a decoder can start from, or nil for codecs
// without keyframes (audio). New viewers, and viewers after a source change,
// wait for such a packet. It is chosen once per source, not per packet.
func keyframeDetector(mime string) func([]byte) bool {
	switch strings.ToLower(mime) {
	case "video/h264":
		return h264KeyframeStart
	case "video/h265":
		return h265KeyframeStart
	case "video/vp8":
		return vp8KeyframeStart
	case "video/vp9":
		// P (inter-picture predicted) clear and B (start of frame) set.
		return func(p []byte) bool { return len(p) > 0 && p[0]&0x40 == 0 && p[0]&0x08 != 0 }
	case "video/av1":
		// N: the first packet of a coded video sequence.
		return func(p []byte) bool { return len(p) > 0 && p[0]&0x08 != 0 }
	}
	return nil
}

// h264KeyframeStart finds an SPS or the first fragment of an IDR slice: the
// encoder puts SPS/PPS right before each IDR, so starting there decodes.
func h264KeyframeStart(p []byte) bool {
	const sps, idr, stapA, fuA = 7, 5, 24, 28
	if len(p) == 0 {
		return false
	}
	switch t := p[0] & 0x1f; t {
	case sps, idr:
		return true
	case stapA:
		for i := 1; i+2 < len(p); {
			size := int(p[i])<<8 | int(p[i+1])
			if nal := p[i+2] & 0x1f; nal == sps || nal == idr {
				return true
			}
			i += 2 + size
		}
	case fuA:
		return len(p) > 1 && p[1]&0x80 != 0 && p[1]&0x1f == idr
	}
	return false
}

func h265KeyframeStart(p []byte) bool {
	if len(p) < 3 {
		return false
	}
	irap := func(t byte) bool { return (t >= 16 && t <= 21) || t == 32 || t == 33 || t == 34 }
	switch t := (p[0] >> 1) & 0x3f; t {
	case 48: // aggregation packet: look at its first NAL unit
		return len(p) > 4 && irap((p[4]>>1)&0x3f)
	case 49: // fragmentation unit: start fragment of an IRAP picture
		return p[2]&0x80 != 0 && irap(p[2]&0x3f)
	default:
		return irap(t)
	}
}

// vp8KeyframeStart reads the VP8 payload descriptor (RFC 7741) and the first
// byte of the frame header, whose lowest bit is 0 on key frames.
func vp8KeyframeStart(p []byte) bool {
	if len(p) == 0 || p[0]&0x10 == 0 || p[0]&0x0f != 0 { // S bit, partition 0
		return false
	}
	i := 1
	if p[0]&0x80 != 0 { // X: extension byte follows
		if len(p) < 2 {
			return false
		}
		ext := p[1]
		i = 2
		if ext&0x80 != 0 { // I: picture ID, 7 or 15 bits
			if len(p) <= i {
				return false
			}
			if p[i]&0x80 != 0 {
				i++
			}
			i++
		}
		if ext&0x40 != 0 { // L: TL0PICIDX
			i++
		}
		if ext&0x30 != 0 { // T or K: TID/KEYIDX byte
			i++
		}
	}
	return len(p) > i && p[i]&0x01 == 0
}
