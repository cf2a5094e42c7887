package media

import (
	"strings"
	"testing"
	"time"

	"github.com/pion/rtp"
)

func TestWarningsNameTheFix(t *testing.T) {
	var h Health
	h.Video.BitrateBps, h.Video.FPS, h.Video.KeyframeInterval = 150_000, 12, 8
	h.Link = &struct {
		LossPercent float64 `json:"loss_percent"`
		JitterMS    float64 `json:"jitter_ms"`
		RTTMS       float64 `json:"rtt_ms,omitempty"`
	}{LossPercent: 6, RTTMS: 450}
	got := map[string]Warning{}
	for _, w := range warnings(h, false) {
		got[w.Code] = w
	}
	for _, code := range []string{"keyframe_interval", "bitrate_low", "fps_low", "no_audio", "packet_loss", "rtt_high"} {
		if w, ok := got[code]; !ok || w.Message == "" || w.Fix == "" {
			t.Errorf("%s: missing or empty: %+v", code, w)
		}
	}
	if !strings.Contains(got["keyframe_interval"].Message, "8 s") || !strings.Contains(got["keyframe_interval"].Fix, "2 s") {
		t.Errorf("keyframe warning: %+v", got["keyframe_interval"])
	}

	var fine Health
	fine.Video.BitrateBps, fine.Video.FPS, fine.Video.KeyframeInterval = 2_500_000, 30, 2
	fine.Audio.Present = true
	if w := warnings(fine, false); len(w) != 0 {
		t.Errorf("a healthy stream got warnings: %+v", w)
	}
}

func TestTrackRates(t *testing.T) {
	tr := testTrack(t, Video)
	src := tr.NewSource(DefaultVideoCodec, nil)
	start := time.Now()
	if _, _, ok := tr.rates(start); ok {
		t.Fatal("rates before any window")
	}
	h := rtp.Header{}
	for i := range 60 { // 30 frames of 2 packets, 1000 bytes each
		h.SequenceNumber = uint16(i)
		h.Timestamp = uint32(i/2) * 3000
		_ = src.WriteRTP(&h, make([]byte, 1000))
	}
	bps, fps, ok := tr.rates(start.Add(time.Second))
	if !ok || bps != 60*1000*8 || fps != 30 {
		t.Errorf("rates over 1 s: %v bit/s, %v fps, %v", bps, fps, ok)
	}
}

func TestH264Profile(t *testing.T) {
	for fmtp, want := range map[string]string{
		"packetization-mode=1;profile-level-id=42e01f": "constrained baseline",
		"profile-level-id=4d001f":                      "main",
		"profile-level-id=640028;packetization-mode=1": "high",
		"": "",
	} {
		if got := h264Profile(fmtp); got != want {
			t.Errorf("%q: %q, want %q", fmtp, got, want)
		}
	}
}
