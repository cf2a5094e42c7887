package media

import "testing"

func TestKeyframeStart(t *testing.T) {
	cases := []struct {
		name    string
		mime    string
		payload []byte
		want    bool
	}{
		{"h264 SPS", "video/H264", []byte{0x67, 0x42}, true},
		{"h264 IDR", "video/H264", []byte{0x65, 0x88}, true},
		{"h264 P slice", "video/H264", []byte{0x41, 0x9a}, false},
		{"h264 STAP-A with SPS", "video/H264", []byte{0x78, 0x00, 0x02, 0x67, 0x42}, true},
		{"h264 STAP-A with SEI only", "video/H264", []byte{0x78, 0x00, 0x02, 0x06, 0x05}, false},
		{"h264 STAP-A truncated", "video/H264", []byte{0x78, 0xff}, false},
		{"h264 FU-A IDR start", "video/H264", []byte{0x7c, 0x85}, true},
		{"h264 FU-A IDR middle", "video/H264", []byte{0x7c, 0x05}, false},
		{"h264 FU-A P start", "video/H264", []byte{0x7c, 0x81}, false},
		{"vp8 key, no extension", "video/VP8", []byte{0x10, 0x00}, true},
		{"vp8 inter frame", "video/VP8", []byte{0x10, 0x01}, false},
		{"vp8 key with 15-bit picture id", "video/VP8", []byte{0x90, 0x80, 0x81, 0x23, 0x00}, true},
		{"vp8 continuation", "video/VP8", []byte{0x00, 0x00}, false},
		{"vp8 truncated extension", "video/VP8", []byte{0x90}, false},
		{"vp9 key start", "video/VP9", []byte{0x08}, true},
		{"vp9 inter start", "video/VP9", []byte{0x48}, false},
		{"av1 new sequence", "video/AV1", []byte{0x08}, true},
		{"av1 other", "video/AV1", []byte{0x10}, false},
		{"h265 IDR", "video/H265", []byte{0x26, 0x01, 0xaf}, true},
		{"h265 trail", "video/H265", []byte{0x02, 0x01, 0xaf}, false},
		{"empty", "video/H264", nil, false},
		{"audio", "audio/opus", []byte{0xfc}, false},
	}
	for _, c := range cases {
		detect := keyframeDetector(c.mime)
		if got := detect != nil && detect(c.payload); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

func TestNTPRoundTrip(t *testing.T) {
	for _, ntp := range []uint64{0xe5a1b2c3_80000000, 0xeb000000_00000001} {
		back := ntpTime(NTPToTime(ntp))
		if d := int64(back - ntp); d < -5 || d > 5 {
			t.Errorf("%x -> %x", ntp, back)
		}
	}
}

func FuzzKeyframeStart(f *testing.F) {
	f.Add("video/H264", []byte{0x78, 0x00, 0x02, 0x67, 0x42})
	f.Add("video/VP8", []byte{0x90, 0x80, 0x81, 0x23, 0x00})
	f.Add("video/H265", []byte{0x62, 0x01, 0x93})
	f.Fuzz(func(t *testing.T, mime string, p []byte) {
		if detect := keyframeDetector(mime); detect != nil {
			detect(p) // must not panic on any input
		}
	})
}
