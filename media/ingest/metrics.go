package ingest

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the collectors of the RTMP and RTSP edges and the audio
// transcoder, labelled by protocol ("rtmp", "rtsp"). They are registered on
// the registry handed to NewMetrics; nothing here is global.
type Metrics struct {
	// Connections counts connections by how they ended up: accepted,
	// wrong_key, unknown_stream, already_live, bad_input, timeout,
	// unsupported_codec, closed_early.
	Connections *prometheus.CounterVec
	Active      *prometheus.GaugeVec
	Bytes       *prometheus.CounterVec
	Frames      *prometheus.CounterVec
	Readers     *prometheus.GaugeVec

	TranscoderRestarts *prometheus.CounterVec
	TranscodersRunning prometheus.Gauge
	TranscodeSeconds   *prometheus.HistogramVec
	TranscodeDropped   *prometheus.CounterVec

	// The H.264 re-encode of creators who send B-frames (video.go).
	VideoTranscoderRestarts *prometheus.CounterVec
	VideoTranscodersRunning prometheus.Gauge
	VideoTranscodeSeconds   *prometheus.HistogramVec
	VideoTranscodeDropped   *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_ingest_connections_total",
			Help: "RTMP/RTSP connections by protocol and result (accepted, wrong_key, unknown_stream, already_live, bad_input, timeout, unsupported_codec, closed_early)."},
			[]string{"protocol", "result"}),
		Active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vitrine_ingest_active", Help: "RTMP/RTSP creators publishing now."}, []string{"protocol"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_ingest_protocol_bytes_total", Help: "Bytes received from RTMP/RTSP creators."}, []string{"protocol"}),
		Frames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_ingest_frames_total", Help: "Video access units and audio frames received from RTMP/RTSP creators."},
			[]string{"protocol", "kind"}),
		Readers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vitrine_rtsp_readers", Help: "RTSP clients reading a stream."}, []string{"stream"}),
		TranscoderRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_transcoder_restarts_total", Help: "AAC-to-Opus ffmpeg processes restarted after dying or failing to start."},
			[]string{"protocol"}),
		TranscodersRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vitrine_transcoders_running", Help: "AAC-to-Opus ffmpeg processes running."}),
		TranscodeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vitrine_transcode_seconds",
			Help:    "Time from an AAC frame handed to ffmpeg to the Opus packet that starts in it.",
			Buckets: []float64{.005, .01, .02, .03, .04, .05, .075, .1, .2, .5, 1}}, []string{"protocol"}),
		TranscodeDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_transcode_dropped_total", Help: "AAC frames not transcoded: ffmpeg down, starting or behind; a bad frame."},
			[]string{"protocol", "reason"}),
		VideoTranscoderRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_video_transcoder_restarts_total", Help: "H.264 re-encoding ffmpeg processes restarted after dying or failing to start."},
			[]string{"protocol"}),
		VideoTranscodersRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vitrine_video_transcoders_running", Help: "H.264 re-encoding ffmpeg processes running."}),
		VideoTranscodeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vitrine_video_transcode_seconds",
			Help:    "Time from an H.264 frame handed to ffmpeg to its re-encoded frame.",
			Buckets: []float64{.01, .02, .03, .05, .075, .1, .15, .2, .3, .5, 1}}, []string{"protocol"}),
		VideoTranscodeDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_video_transcode_dropped_total", Help: "H.264 frames not re-encoded: ffmpeg down, starting or behind; before a keyframe; output without a source frame."},
			[]string{"protocol", "reason"}),
	}
	reg.MustRegister(m.Connections, m.Active, m.Bytes, m.Frames, m.Readers,
		m.TranscoderRestarts, m.TranscodersRunning, m.TranscodeSeconds, m.TranscodeDropped,
		m.VideoTranscoderRestarts, m.VideoTranscodersRunning, m.VideoTranscodeSeconds, m.VideoTranscodeDropped)
	// Series exist at 0 from the start, so rates and alerts work before the
	// first creator.
	for _, p := range []string{"rtmp", "rtsp", "rtsp-pull"} {
		m.Active.WithLabelValues(p)
		m.Bytes.WithLabelValues(p)
		m.Frames.WithLabelValues(p, "video")
		m.Frames.WithLabelValues(p, "audio")
		m.TranscoderRestarts.WithLabelValues(p)
		m.VideoTranscoderRestarts.WithLabelValues(p)
		m.Connections.WithLabelValues(p, "accepted")
	}
	return m
}
