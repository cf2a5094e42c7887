package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/vitrine-live/vitrine/media"
)

// TestHealthReport: three ffmpeg pushes over RTMP with different encoder
// settings; the health API reports the keyframe interval, bitrate and audio
// each one really has, and warns, in words, about what is off.
func TestHealthReport(t *testing.T) {
	a, base := rtmpApp(t, false, nil)
	url := "rtmp://" + a.proto.rtmp.Addr().String() + "/live/" + a.demo.Key
	health := func() media.Health {
		req, _ := http.NewRequest("GET", base+"/api/v1/streams/demo/health", nil)
		req.Header.Set("Authorization", "Bearer "+a.demo.Key)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var h media.Health
		if err := json.NewDecoder(res.Body).Decode(&h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	warned := func(h media.Health, code string) bool {
		for _, w := range h.Warnings {
			if w.Code == code {
				return true
			}
		}
		return false
	}
	cases := []struct {
		name         string
		args         []string
		keyframe     float64 // seconds
		kbps         float64
		audio        bool
		warnKeyframe bool
		bframes      bool
	}{
		{"1 s GOP, 800 kbit/s", []string{"-g", "30", "-b:v", "800k", "-maxrate", "800k", "-bufsize", "800k"}, 1, 800, true, false, false},
		{"5 s GOP, B-frames (OBS x264 default)", []string{"-g", "150", "-bf", "2", "-tune", "film", "-profile:v", "high", "-b:v", "800k", "-maxrate", "800k", "-bufsize", "800k"}, 5, 800, true, true, true},
		{"no audio", []string{"-g", "60", "-b:v", "400k", "-maxrate", "400k", "-bufsize", "400k", "-an"}, 2, 400, false, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ff := ffmpegPush(t, "flv", url, c.args...)
			defer func() {
				// The next push is measured on its own: until this one's
				// end is seen, the report is still this push's.
				ff.stop()
				eventually(t, "the push's end seen", 10*time.Second, func() bool { return health().State != media.StateLive })
			}()
			var h media.Health
			eventually(t, "a second keyframe measured", time.Duration(c.keyframe*2+8)*time.Second, func() bool {
				h = health()
				return h.State == media.StateLive && h.Video.KeyframeInterval > 0 && h.Video.BitrateBps > 0
			})
			// Rates over a window past the RTMP start-up burst (the
			// library replays its first seconds at once).
			time.Sleep(3 * time.Second)
			health()
			time.Sleep(1100 * time.Millisecond)
			h = health()
			t.Logf("%+v", h)
			if h.Ingest != "rtmp" || h.Video.Codec != "H264" {
				t.Errorf("ingest %q codec %q", h.Ingest, h.Video.Codec)
			}
			if d := h.Video.KeyframeInterval - c.keyframe; d < -0.1 || d > 0.1 {
				t.Errorf("keyframe interval %.2f s, encoder set %.0f s", h.Video.KeyframeInterval, c.keyframe)
			}
			if kbps := h.Video.BitrateBps / 1000; kbps < c.kbps*0.5 || kbps > c.kbps*1.6 {
				t.Errorf("video bitrate %.0f kbit/s, encoder set %.0f", kbps, c.kbps)
			}
			if h.Video.FPS < 25 || h.Video.FPS > 35 {
				t.Errorf("frame rate %.1f, encoder sends 30", h.Video.FPS)
			}
			if h.Audio.Present != c.audio || warned(h, "no_audio") == c.audio {
				t.Errorf("audio present %v, warnings %+v; pushed audio: %v", h.Audio.Present, h.Warnings, c.audio)
			}
			if h.Video.BFrames != c.bframes || warned(h, "bframes") != c.bframes {
				t.Errorf("B-frames reported %v (warning %v), pushed: %v", h.Video.BFrames, warned(h, "bframes"), c.bframes)
			}
			if warned(h, "keyframe_interval") != c.warnKeyframe {
				t.Errorf("keyframe warning %v, want %v: %+v", warned(h, "keyframe_interval"), c.warnKeyframe, h.Warnings)
			}
			// Operators see the same figures in Prometheus.
			info := fmt.Sprintf(`vitrine_stream_video_info{bframes="%t",codec="%s",ingest="rtmp",profile="%s",stream="demo"}`,
				h.Video.BFrames, h.Video.Codec, h.Video.Profile)
			if v := metricLine(t, base, info); v != 1 {
				t.Errorf("%s = %v, want 1", info, v)
			}
			if k := metricLine(t, base, `vitrine_stream_keyframe_interval_seconds{stream="demo"}`); k < c.keyframe-0.1 || k > c.keyframe+0.1 {
				t.Errorf("vitrine_stream_keyframe_interval_seconds = %.2f, encoder set %.0f s", k, c.keyframe)
			}
		})
	}
}
