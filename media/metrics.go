package media

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the SFU's Prometheus collectors. They are registered on the
// registry handed to NewMetrics; nothing here is global.
type Metrics struct {
	StreamsLive      prometheus.Gauge
	Viewers          *prometheus.GaugeVec
	PacketsIn        *prometheus.CounterVec
	BytesIn          *prometheus.CounterVec
	PacketsOut       *prometheus.CounterVec
	BytesOut         *prometheus.CounterVec
	Dropped          *prometheus.CounterVec
	UDPDatagrams     prometheus.Counter
	UDPSends         prometheus.Counter
	UDPSendErrors    prometheus.Counter
	UDPGSO           prometheus.Gauge
	NACKs            prometheus.Counter
	Retransmits      *prometheus.CounterVec
	PLIs             prometheus.Counter
	KeyframeRequests prometheus.Counter
	BadRTCP          prometheus.Counter
	JoinSeconds      *prometheus.HistogramVec
	JoinReplays      prometheus.Counter
	ReplayedPackets  prometheus.Counter
	Publishers       *prometheus.CounterVec
	LayerSwitches    *prometheus.CounterVec
	EstimateBps      prometheus.Histogram

	// MaxStreamSeries caps how many streams get per-stream health series
	// (by name order); 0 means no cap.
	MaxStreamSeries int

	live          streamSet
	forwardBounds [forwardBucketCount]int64

	// Children resolved once, so the hot path does no label lookups.
	packetsIn, bytesIn, packetsOut, bytesOut [2]prometheus.Counter
}

// NewMetrics creates the collectors and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	kinds := []string{"kind"}
	m := &Metrics{
		MaxStreamSeries: DefaultMaxStreamSeries,
		live:            streamSet{streams: map[*Stream]struct{}{}},
		forwardBounds:   forwardBounds(),
		StreamsLive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vitrine_streams_live", Help: "Streams whose creator is connected and sending."}),
		Viewers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vitrine_viewers", Help: "Viewers connected, by stream and egress protocol."}, []string{"stream", "protocol"}),
		PacketsIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_ingest_packets_total", Help: "RTP packets received from creators."}, kinds),
		BytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_ingest_bytes_total", Help: "RTP payload bytes received from creators."}, kinds),
		PacketsOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_egress_packets_total", Help: "RTP packets sent to viewers (one per packet per viewer)."}, kinds),
		BytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_egress_bytes_total", Help: "RTP payload bytes sent to viewers."}, kinds),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_dropped_packets_total",
			Help: "Packets not delivered: oversize at ingest, a duplicate or padding from the creator (not forwarded), a viewer shard behind, a write error."}, []string{"kind", "reason"}),
		UDPDatagrams: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitrine_udp_datagrams_sent_total", Help: "Datagrams sent on the WebRTC UDP socket (media, RTCP, DTLS, ICE, data channels)."}),
		UDPSends: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitrine_udp_send_calls_total", Help: "System calls that sent them (sendmmsg batches); datagrams / calls is the batch size."}),
		UDPSendErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitrine_udp_send_errors_total", Help: "Datagrams the kernel refused to send (dropped)."}),
		UDPGSO: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vitrine_udp_gso", Help: "1 while a viewer's consecutive datagrams are sent as one segmented buffer (UDP GSO); 0 when off or refused by the kernel."}),
		NACKs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitrine_nacks_received_total", Help: "Lost packets viewers asked to be resent (NACKed sequence numbers)."}),
		Retransmits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_retransmits_total", Help: "Answers to NACKs: sent from the packet cache, miss (too old), error."}, []string{"result"}),
		PLIs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitrine_plis_received_total", Help: "Keyframe requests (PLI/FIR) received from viewers."}),
		KeyframeRequests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitrine_keyframe_requests_total", Help: "Keyframe requests sent to creators after throttling."}),
		BadRTCP: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitrine_rtcp_malformed_total", Help: "RTCP packets that could not be parsed."}),
		JoinSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vitrine_join_seconds",
			Help:    "Time from a viewer's offer to the first packet sent to it (for video: the first keyframe).",
			Buckets: []float64{.05, .1, .15, .25, .5, .75, 1, 2, 4, 8, 15}}, kinds),
		JoinReplays: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitrine_join_replays_total", Help: "Viewers started on the cached group of pictures instead of waiting for a keyframe."}),
		ReplayedPackets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitrine_join_replayed_packets_total", Help: "Video packets sent to joining viewers from the group-of-pictures cache."}),
		Publishers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_publish_sessions_total", Help: "Creator sessions started, by ingest protocol."}, []string{"protocol"}),
		LayerSwitches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_layer_switches_total", Help: "Viewers moved to another simulcast layer, up (higher bitrate) or down."}, []string{"direction"}),
		EstimateBps: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vitrine_viewer_estimate_bps",
			Help:    "Viewers' downlink bandwidth estimates, sampled once a second per viewer.",
			Buckets: []float64{150e3, 300e3, 500e3, 750e3, 1e6, 1.5e6, 2e6, 3e6, 4e6, 6e6, 10e6}}),
	}
	reg.MustRegister(m.StreamsLive, m.Viewers, m.PacketsIn, m.BytesIn, m.PacketsOut, m.BytesOut, m.Dropped,
		m.UDPDatagrams, m.UDPSends, m.UDPSendErrors, m.UDPGSO,
		m.NACKs, m.Retransmits, m.PLIs, m.KeyframeRequests, m.BadRTCP, m.JoinSeconds, m.JoinReplays, m.ReplayedPackets, m.Publishers,
		m.LayerSwitches, m.EstimateBps)
	reg.MustRegister(newHealthCollector(m))
	// Series an operator graphs or alerts on exist from the start, at 0.
	for _, dir := range []string{"up", "down"} {
		m.LayerSwitches.WithLabelValues(dir)
	}
	for _, r := range []string{"sent", "miss", "error"} {
		m.Retransmits.WithLabelValues(r)
	}
	for _, k := range []Kind{Video, Audio} {
		for _, r := range []string{"oversize", "shard_behind", "write_error", "duplicate"} {
			m.Dropped.WithLabelValues(k.String(), r)
		}
		m.packetsIn[k] = m.PacketsIn.WithLabelValues(k.String())
		m.bytesIn[k] = m.BytesIn.WithLabelValues(k.String())
		m.packetsOut[k] = m.PacketsOut.WithLabelValues(k.String())
		m.bytesOut[k] = m.BytesOut.WithLabelValues(k.String())
	}
	return m
}

func (m *Metrics) ingested(k Kind, payload int) {
	m.packetsIn[k].Inc()
	m.bytesIn[k].Add(float64(payload))
}

// forwarded counts one packet written to n viewers by one shard.
func (m *Metrics) forwarded(k Kind, n, payload int) {
	if n == 0 {
		return
	}
	m.packetsOut[k].Add(float64(n))
	m.bytesOut[k].Add(float64(n * payload))
}

func (m *Metrics) dropped(k Kind, reason string) {
	m.Dropped.WithLabelValues(k.String(), reason).Inc()
}
