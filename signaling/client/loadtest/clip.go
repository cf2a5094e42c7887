package loadtest

import (
	"bytes"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/pion/rtp/codecs"
	"github.com/pion/webrtc/v4/pkg/media/h264reader"
	"github.com/pion/webrtc/v4/pkg/media/oggreader"
)

// The embedded clip: 4 s of 1280x720 at 30 fps, H.264 constrained baseline
// at ~2.5 Mbit/s (the workload of issue 8's reference figures), no
// B-frames, an IDR every 2 s (frame 0 and 60), SPS/PPS before every IDR;
// 4 s of a 440 Hz sine as Opus, 48 kHz, 20 ms packets.
// Made once with Debian's ffmpeg (regenerate from this directory):
//
//	ffmpeg -y -f lavfi -t 4 -i testsrc2=size=1280x720:rate=30 \
//	  -f lavfi -t 4 -i sine=frequency=440:sample_rate=48000 \
//	  -map 0:v -c:v libx264 -profile:v baseline -bf 0 -g 60 -keyint_min 60 -sc_threshold 0 \
//	  -pix_fmt yuv420p -b:v 2500k -maxrate 2500k -bufsize 1250k -x264-params repeat-headers=1 \
//	  -f h264 clip/clip.h264 \
//	  -map 1:a -c:a libopus -b:a 64k -frame_duration 20 -page_duration 20000 -f ogg clip/clip.ogg
//
// The simulcast layers below it (-simulcast: layer 0 is the clip above):
// the same 4 s of the same source, scaled as a browser's or OBS's encoder
// scales the captured picture, with the same GOP (IDR at 0 and 60,
// SPS/PPS before each), video only:
//
//	ffmpeg -y -f lavfi -t 4 -i testsrc2=size=1280x720:rate=30 -vf scale=640:360 \
//	  -c:v libx264 -profile:v baseline -bf 0 -g 60 -keyint_min 60 -sc_threshold 0 \
//	  -pix_fmt yuv420p -b:v 800k -maxrate 800k -bufsize 400k -x264-params repeat-headers=1 \
//	  -f h264 clip/clip-360p.h264
//	ffmpeg -y -f lavfi -t 4 -i testsrc2=size=1280x720:rate=30 -vf scale=320:180 \
//	  -c:v libx264 -profile:v baseline -bf 0 -g 60 -keyint_min 60 -sc_threshold 0 \
//	  -pix_fmt yuv420p -b:v 250k -maxrate 250k -bufsize 125k -x264-params repeat-headers=1 \
//	  -f h264 clip/clip-180p.h264
var (
	//go:embed clip/clip.h264
	embeddedH264 []byte
	//go:embed clip/clip.ogg
	embeddedOgg []byte
	//go:embed clip/clip-360p.h264
	embedded360p []byte
	//go:embed clip/clip-180p.h264
	embedded180p []byte
)

// LayerRIDs are the RTP stream ids of the simulcast layers, top first, as
// OBS's WHIP output names them.
var LayerRIDs = []string{"0", "1", "2"}

// rtpMTU is the payload size the clip is cut to, as browsers do.
const rtpMTU = 1200

// Clip is media cut into RTP payloads, ready to be sent in a loop: video
// frame by frame at FPS, audio in 20 ms Opus packets.
type Clip struct {
	FPS    int
	Frames []Frame  // video access units in decoding order
	Audio  [][]byte // one Opus packet (20 ms) each
}

// Frame is one video access unit: its RTP payloads, and whether a decoder
// can start on it.
type Frame struct {
	Payloads [][]byte
	Key      bool
}

// bytesPerSecond is the video's payload rate.
func (c *Clip) bytesPerSecond() float64 {
	total := 0
	for _, f := range c.Frames {
		for _, p := range f.Payloads {
			total += len(p)
		}
	}
	return float64(total) * float64(c.FPS) / float64(max(1, len(c.Frames)))
}

// EmbeddedClip is the clip built into the binary.
func EmbeddedClip() (*Clip, error) {
	return LoadClip(bytes.NewReader(embeddedH264), bytes.NewReader(embeddedOgg), 30)
}

// EmbeddedLayers are the three simulcast layers built into the binary, in
// the order of LayerRIDs: the embedded clip (1280x720, ~2.5 Mbit/s, with
// its audio), 640x360 at ~800 kbit/s and 320x180 at ~250 kbit/s, all with
// the same frames and keyframes.
func EmbeddedLayers() ([]*Clip, error) {
	top, err := EmbeddedClip()
	if err != nil {
		return nil, err
	}
	layers := []*Clip{top}
	for _, b := range [][]byte{embedded360p, embedded180p} {
		c, err := LoadClip(bytes.NewReader(b), nil, 30)
		if err != nil {
			return nil, err
		}
		layers = append(layers, c)
	}
	return layers, nil
}

// LoadClip reads H.264 Annex-B video (packetization mode 1, as WebRTC sends
// it) and, when ogg is not nil, Ogg Opus audio. A frame ends at each coded
// slice, so the stream must have one slice per frame and no B-frames.
func LoadClip(h264 io.Reader, ogg io.Reader, fps int) (*Clip, error) {
	if fps <= 0 || fps > 240 {
		return nil, fmt.Errorf("clip: frame rate %d out of range", fps)
	}
	c := &Clip{FPS: fps}
	r, err := h264reader.NewReader(h264)
	if err != nil {
		return nil, fmt.Errorf("clip: h264: %w", err)
	}
	var pay codecs.H264Payloader
	var frame Frame
	for {
		nal, err := r.NextNAL()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("clip: h264: %w", err)
		}
		for _, p := range pay.Payload(rtpMTU, nal.Data) {
			// The payloader may reuse its buffers; the clip keeps its own copy.
			frame.Payloads = append(frame.Payloads, bytes.Clone(p))
		}
		switch nal.UnitType {
		case h264reader.NalUnitTypeCodedSliceIdr:
			frame.Key = true
			fallthrough
		case h264reader.NalUnitTypeCodedSliceNonIdr:
			c.Frames = append(c.Frames, frame)
			frame = Frame{}
		}
	}
	if len(c.Frames) == 0 {
		return nil, errors.New("clip: no H.264 frames (is it Annex-B?)")
	}
	if ogg == nil {
		return c, nil
	}
	or, _, err := oggreader.NewWith(ogg)
	if err != nil {
		return nil, fmt.Errorf("clip: ogg: %w", err)
	}
	for {
		page, _, err := or.ParseNextPage()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("clip: ogg: %w", err)
		}
		if len(page) == 0 || bytes.HasPrefix(page, []byte("OpusHead")) || bytes.HasPrefix(page, []byte("OpusTags")) {
			continue
		}
		c.Audio = append(c.Audio, bytes.Clone(page))
	}
	return c, nil
}

// isKeyframe says whether an H.264 RTP payload starts a keyframe: an IDR
// slice or SPS, alone, first in a STAP-A, or at the start of a FU-A.
func isKeyframe(p []byte) bool {
	if len(p) < 2 {
		return false
	}
	switch p[0] & 0x1f {
	case 5, 7:
		return true
	case 24: // STAP-A: 2-byte size, then the first NAL's header
		return len(p) > 3 && (p[3]&0x1f == 7 || p[3]&0x1f == 5)
	case 28: // FU-A: start bit and type in the FU header
		return p[1]&0x80 != 0 && p[1]&0x1f == 5
	}
	return false
}

// opensAccessUnit says whether an H.264 RTP payload can only be the first
// of an access unit: an access unit delimiter or SPS, alone or first in a
// STAP-A (H.264 7.4.1.2.3: nothing of the unit comes before them). An IDR
// slice without them may follow a PPS or SEI of its own unit.
func opensAccessUnit(p []byte) bool {
	if len(p) < 2 {
		return false
	}
	t := p[0] & 0x1f
	if t == 24 { // STAP-A: 2-byte size, then the first NAL's header
		if len(p) < 4 {
			return false
		}
		t = p[3] & 0x1f
	}
	return t == 7 || t == 9
}

// rtpHead is what the viewers' bookkeeping reads from an RTP header.
type rtpHead struct {
	seq    uint16
	ts     uint32
	marker bool // the last packet of a frame
}

// rtpPayload returns the payload of a raw RTP packet, or nil when the header
// does not parse. Cheaper than rtp.Packet.Unmarshal: no allocation, no copy.
func rtpPayload(b []byte) (payload []byte, h rtpHead) {
	if len(b) < 12 || b[0]>>6 != 2 {
		return nil, h
	}
	n := 12 + 4*int(b[0]&0x0f)
	if b[0]&0x10 != 0 { // extension
		if len(b) < n+4 {
			return nil, h
		}
		n += 4 + 4*(int(b[n+2])<<8|int(b[n+3]))
	}
	end := len(b)
	if b[0]&0x20 != 0 { // padding
		if end == 0 || int(b[end-1]) > end-n {
			return nil, h
		}
		end -= int(b[end-1])
	}
	if n > end {
		return nil, h
	}
	h = rtpHead{seq: binary.BigEndian.Uint16(b[2:]), ts: binary.BigEndian.Uint32(b[4:]), marker: b[1]&0x80 != 0}
	return b[n:end], h
}
