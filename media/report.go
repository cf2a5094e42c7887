package media

import (
	"fmt"
	"strings"
	"time"
)

// Health is what a creator needs to know about the stream as it arrives:
// figures, and for each figure that is off, a warning in plain words with the
// setting that fixes it. The studio shows it; GET .../health serves it.
type Health struct {
	State  State  `json:"state"`
	Ingest string `json:"ingest,omitempty"` // whip, rtmp, rtsp
	Video  struct {
		Codec            string  `json:"codec,omitempty"`
		Profile          string  `json:"profile,omitempty"`
		BitrateBps       float64 `json:"bitrate_bps"`
		FPS              float64 `json:"fps"`
		KeyframeInterval float64 `json:"keyframe_interval_s"`
		// KeyframesOnRequest: the creator makes a keyframe when a viewer
		// joins (WebRTC), so a long interval costs viewers nothing.
		KeyframesOnRequest bool `json:"keyframes_on_request"`
		// BFrames: the creator's H.264 has B-frames, so browsers get a
		// re-encode (more latency, server CPU).
		BFrames bool `json:"bframes"`
		// Layers are the creator's simulcast layers in the order the offer
		// listed them (one for a stream without simulcast).
		Layers []LayerHealth `json:"layers"`
	} `json:"video"`
	// Measured is false until two reports a second apart give rates.
	Measured bool `json:"measured"`
	Audio    struct {
		Present    bool    `json:"present"`
		Codec      string  `json:"codec,omitempty"`
		BitrateBps float64 `json:"bitrate_bps"`
	} `json:"audio"`
	// Link is measured for WebRTC creators only.
	Link *struct {
		LossPercent float64 `json:"loss_percent"`
		JitterMS    float64 `json:"jitter_ms"`
		RTTMS       float64 `json:"rtt_ms,omitempty"`
	} `json:"link,omitempty"`
	Warnings []Warning `json:"warnings"`
}

// LayerHealth is one simulcast layer: what it sends and how many viewers
// are sent it.
type LayerHealth struct {
	BitrateBps int64 `json:"bitrate_bps"`
	Viewers    int64 `json:"viewers"`
}

// Warning is one problem a creator can fix.
type Warning struct {
	Code    string `json:"code"`
	Message string `json:"message"` // what viewers live with, in numbers
	Fix     string `json:"fix"`     // what to change, and where
}

// rateWindow turns a track's ingest counters into rates: it keeps the
// counters as they were at the previous report at least a second old.
type rateWindow struct {
	at, prevAt       time.Time
	cur, prev        ingestStats
	haveCur, havePrv bool
}

// rates returns bytes and frames per second over the last window, and
// whether a window exists yet.
func (t *Track) rates(now time.Time) (bps, fps float64, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := &t.window
	if !w.haveCur || now.Sub(w.at) >= time.Second {
		w.prev, w.prevAt, w.havePrv = w.cur, w.at, w.haveCur
		w.cur, w.at, w.haveCur = t.in, now, true
	}
	if !w.havePrv {
		return 0, 0, false
	}
	secs := now.Sub(w.prevAt).Seconds()
	if secs <= 0 {
		return 0, 0, false
	}
	return float64(t.in.bytes-w.prev.bytes) * 8 / secs, float64(t.in.frames-w.prev.frames) / secs, true
}

// Health reports on the stream's ingest. Rates need two reports a second
// apart: the first report of a session has none yet.
func (s *Stream) Health(now time.Time) Health {
	var h Health
	h.State, _ = s.State()
	h.Warnings = []Warning{}
	in := s.Ingest()
	if in != nil {
		h.Ingest = in.Protocol()
	}
	// The creator's video as sent: while B-frames are re-encoded, Video
	// carries the re-encode and ReaderVideo the original.
	video := s.ReaderVideo()
	vc, ac := video.Codec(), s.Audio.Codec()
	h.Video.Codec = strings.TrimPrefix(vc.MimeType, "video/")
	h.Video.Profile = h264Profile(vc.Fmtp)
	vbps, fps, haveVideo := video.rates(now)
	abps, _, haveAudio := s.Audio.rates(now)
	h.Video.BitrateBps, h.Video.FPS = vbps, fps
	video.mu.Lock()
	h.Video.KeyframeInterval = video.in.keyInterval
	h.Video.KeyframesOnRequest = video.source != nil && video.source.keyframe != nil
	video.mu.Unlock()
	for _, t := range s.VideoLayers() {
		h.Video.Layers = append(h.Video.Layers, LayerHealth{BitrateBps: int64(t.Bitrate()), Viewers: t.viewing.Load()})
	}
	h.Audio.BitrateBps = abps
	h.Audio.Present = abps > 0
	if h.Audio.Present {
		h.Audio.Codec = strings.TrimPrefix(ac.MimeType, "audio/")
	}
	if lr, ok := in.(linkReporter); ok {
		l := lr.creatorLink()
		if l.haveLoss[Video] || l.haveRTT {
			h.Link = &struct {
				LossPercent float64 `json:"loss_percent"`
				JitterMS    float64 `json:"jitter_ms"`
				RTTMS       float64 `json:"rtt_ms,omitempty"`
			}{LossPercent: l.loss[Video] * 100, JitterMS: l.jitter[Video] * 1000, RTTMS: l.rtt * 1000}
		}
	}
	tc := s.Transcode()
	h.Video.BFrames = tc.BFrames
	h.Measured = haveVideo && haveAudio
	if tc.BFrames {
		// Known from the first B slice: worth saying before rates exist.
		h.Warnings = append(h.Warnings, Warning{Code: "bframes",
			Message: "Your encoder sends B-frames, which browsers cannot play live: Vitrine re-encodes your video, which adds about 100 ms and costs server CPU.",
			Fix:     tc.Reason})
	}
	if tc.LongGOP || (tc.On() && h.Video.KeyframeInterval > 3) {
		// Known as soon as a keyframe is late: worth saying before rates exist.
		what := fmt.Sprintf("Keyframe every %.0f s", h.Video.KeyframeInterval)
		if h.Video.KeyframeInterval == 0 {
			what = fmt.Sprintf("Your keyframes come more than %g s apart", s.opts.ReencodeKeyframesOver.Seconds())
		}
		h.Warnings = append(h.Warnings, Warning{Code: "keyframe_interval",
			Message: what + ": so that viewers who join see you at once, Vitrine re-encodes your video, which adds about 50 ms and costs server CPU.",
			Fix:     keyframeFix})
	}
	if h.State != StateLive || !h.Measured {
		return h
	}
	h.Warnings = append(h.Warnings, warnings(h, tc.On())...)
	return h
}

const keyframeFix = "Set Keyframe Interval to 2 s in OBS > Settings > Output (Output Mode: Advanced) > Streaming."

// warnings reads the figures of a live stream. Thresholds are those at which
// viewers notice; fixes name the OBS setting (and the browser studio's).
// reencoded: viewers get a re-encode, whose keyframes come on request (the
// keyframe warning then is Health's).
func warnings(h Health, reencoded bool) []Warning {
	out := []Warning{}
	add := func(code, msg, fix string) { out = append(out, Warning{Code: code, Message: msg, Fix: fix}) }
	if k := h.Video.KeyframeInterval; k > 3 && !h.Video.KeyframesOnRequest && !reencoded {
		add("keyframe_interval",
			fmt.Sprintf("Keyframe every %.0f s: viewers who join wait up to %.0f s to see you.", k, k),
			keyframeFix)
	}
	switch kbps := h.Video.BitrateBps / 1000; {
	case kbps < 300:
		add("bitrate_low",
			fmt.Sprintf("Your video arrives at %.0f kbit/s: it looks blocky or freezes.", kbps),
			"Check your upload (wired is best) and set Bitrate to 2500-4000 kbps in OBS > Settings > Output.")
	case kbps > 8000:
		add("bitrate_high",
			fmt.Sprintf("Your video arrives at %.1f Mbit/s: viewers on phones will stall.", kbps/1000),
			"Set Bitrate to 2500-4000 kbps in OBS > Settings > Output.")
	}
	if h.Video.FPS > 0 && h.Video.FPS < 20 {
		add("fps_low",
			fmt.Sprintf("Your video arrives at %.0f frames per second: motion looks jerky.", h.Video.FPS),
			"Set Common FPS Values to 30 in OBS > Settings > Video; close programs that load your computer.")
	}
	if !h.Audio.Present {
		add("no_audio", "No sound is arriving: viewers hear nothing.",
			"Check the microphone in OBS's Audio Mixer (not muted), or allow the microphone in your browser.")
	}
	if h.Link != nil && h.Link.LossPercent > 2 {
		add("packet_loss",
			fmt.Sprintf("%.1f %% of your packets are lost on the way: viewers see glitches.", h.Link.LossPercent),
			"Use a wired connection, move closer to the Wi-Fi, or lower the bitrate.")
	}
	if h.Link != nil && h.Link.RTTMS > 300 {
		add("rtt_high",
			fmt.Sprintf("Your connection takes %.0f ms to reach the server and back: repairs of lost packets come late.", h.Link.RTTMS),
			"Use a wired connection or a server closer to you.")
	}
	return out
}

// h264Profile names the profile in an H.264 fmtp's profile-level-id.
func h264Profile(fmtp string) string {
	id := fmtpValue(fmtp, "profile-level-id")
	if len(id) < 4 {
		return ""
	}
	switch strings.ToLower(id[:2]) {
	case "42":
		if strings.ToLower(id[2:4]) == "e0" {
			return "constrained baseline"
		}
		return "baseline"
	case "4d":
		return "main"
	case "64":
		return "high"
	}
	return ""
}
