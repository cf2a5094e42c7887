package media

import (
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/prometheus/client_golang/prometheus"
)

// Per-stream media health. The forwarding path only bumps counters it owns
// (plain fields under the track lock it already holds at ingest, atomics a
// shard alone writes); this collector turns them into Prometheus samples at
// scrape time. Series exist only for streams that exist: a deleted stream
// leaves the registry and its series go with it.

// DefaultMaxStreamSeries bounds how many streams get per-stream series.
const DefaultMaxStreamSeries = 500

// forwardBucketCount is the number of forwarding-latency buckets; the bounds
// are built by NewMetrics.
const forwardBucketCount = 10

func forwardBounds() [forwardBucketCount]int64 {
	us := int64(time.Microsecond)
	return [forwardBucketCount]int64{50 * us, 100 * us, 250 * us, 500 * us, 1000 * us,
		2500 * us, 5000 * us, 10000 * us, 25000 * us, 100000 * us}
}

// ingestStats counts what a track's creator sends. Guarded by Track.mu,
// which WriteRTP holds anyway.
type ingestStats struct {
	packets, bytes uint64
	frames         uint64 // distinct RTP timestamps: one per video frame
	frameTS        uint32
	keyframes      uint64
	keyTS          uint32
	keyInterval    float64 // seconds between the last two keyframes, on the RTP clock
	keySeen        bool    // the current source has sent a keyframe
	slowDrops      uint64  // packets a lagging shard's viewers did not get, one per viewer
}

// newSource forgets what belongs to the previous source's encoder.
func (st *ingestStats) newSource() {
	st.keySeen, st.keyInterval = false, 0
}

func (st *ingestStats) count(p *Packet, clockRate uint32) {
	if st.packets == 0 || p.Header.Timestamp != st.frameTS {
		st.frames++
		st.frameTS = p.Header.Timestamp
	}
	st.packets++
	st.bytes += uint64(len(p.Payload))
	if p.Keyframe && (!st.keySeen || p.Header.Timestamp != st.keyTS) {
		if st.keySeen && clockRate > 0 {
			st.keyInterval = float64(p.Header.Timestamp-st.keyTS) / float64(clockRate)
		}
		st.keySeen = true
		st.keyframes++
		st.keyTS = p.Header.Timestamp
	}
}

// latencyHist is one shard's forwarding-latency histogram: written by the
// shard goroutine only, read at scrape time.
type latencyHist struct {
	counts [forwardBucketCount + 1]atomic.Uint64 // last: above every bound
	sumNs  atomic.Uint64
}

func (h *latencyHist) observe(ns int64, bounds *[forwardBucketCount]int64) {
	i := 0
	for i < forwardBucketCount && ns > bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	if ns > 0 {
		h.sumNs.Add(uint64(ns))
	}
}

// creatorLink is how the network between a creator and this server does,
// for ingests that can tell (WHIP). Indexed by Kind.
type creatorLink struct {
	haveLoss [2]bool
	loss     [2]float64 // fraction of packets lost in the last report interval
	jitter   [2]float64 // seconds
	haveRTT  bool
	rtt      float64 // seconds
}

// linkReporter is implemented by ingests that measure their link.
type linkReporter interface {
	creatorLink() creatorLink
}

// healthCollector exports every registered stream's health.
type healthCollector struct {
	m *Metrics

	state, ingestPackets, ingestBytes, frames, keyframes, keyInterval *prometheus.Desc
	creatorLoss, creatorJitter, creatorRTT                            *prometheus.Desc
	viewerLoss, viewerLossMax, nacks, plis, slowDrops, forward        *prometheus.Desc
	reencoded, videoInfo                                              *prometheus.Desc
	layerViewers, layerBitrate                                        *prometheus.Desc
}

func newHealthCollector(m *Metrics) *healthCollector {
	sk := []string{"stream", "kind"}
	s := []string{"stream"}
	d := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &healthCollector{
		m:             m,
		state:         d("vitrine_stream_state", "1 for the stream's current state: waiting, live, reconnecting (creator dropped, within grace), ended.", []string{"stream", "state"}),
		ingestPackets: d("vitrine_stream_ingest_packets_total", "RTP packets received from the stream's creator.", sk),
		ingestBytes:   d("vitrine_stream_ingest_bytes_total", "RTP payload bytes received from the stream's creator (rate x 8 = ingest bitrate).", sk),
		frames:        d("vitrine_stream_ingest_frames_total", "Video frames received from the creator (distinct RTP timestamps).", s),
		keyframes:     d("vitrine_stream_keyframes_total", "Video keyframes received from the creator.", s),
		keyInterval:   d("vitrine_stream_keyframe_interval_seconds", "Time between the creator's last two keyframes, on the media clock.", s),
		creatorLoss:   d("vitrine_stream_creator_loss_ratio", "Fraction of the creator's packets lost on the way in, from the last RTCP Receiver Report sent to the creator (WebRTC ingest).", sk),
		creatorJitter: d("vitrine_stream_creator_jitter_seconds", "Interarrival jitter of the creator's packets, from the last RTCP Receiver Report (WebRTC ingest).", sk),
		creatorRTT:    d("vitrine_stream_creator_rtt_seconds", "Round-trip time to the creator, from ICE consent checks (WebRTC ingest).", s),
		viewerLoss:    d("vitrine_stream_viewer_loss_ratio", "Mean fraction lost reported by the stream's viewers in their last RTCP Receiver Reports.", sk),
		viewerLossMax: d("vitrine_stream_viewer_loss_ratio_max", "Highest fraction lost reported by one of the stream's viewers in its last Receiver Report.", sk),
		nacks:         d("vitrine_stream_nacks_received_total", "Sequence numbers the stream's viewers reported lost (NACK).", sk),
		plis:          d("vitrine_stream_plis_received_total", "Keyframe requests (PLI/FIR) from the stream's viewers.", s),
		slowDrops:     d("vitrine_stream_viewer_packets_dropped_total", "Packets viewers did not get because their shard fell behind (counted per viewer); Vitrine drops packets for a slow viewer rather than disconnecting it.", sk),
		videoInfo:     d("vitrine_stream_video_info", "1 while a creator is connected, labelled with the video as the creator sends it: codec, H.264 profile, whether it has B-frames (which costs a re-encode).", []string{"stream", "ingest", "codec", "profile", "bframes"}),
		reencoded:     d("vitrine_video_transcodes_active", "1 while the stream's video is re-encoded for WebRTC viewers because the creator sends H.264 with B-frames or keyframes far apart (the health API says why).", s),
		layerViewers:  d("vitrine_layer_viewers", "Viewers sent each of the creator's simulcast video layers (layer 0 is the first the creator offered; one layer without simulcast).", []string{"stream", "layer"}),
		layerBitrate:  d("vitrine_layer_bitrate_bps", "What each simulcast video layer sends, over the last 2 s.", []string{"stream", "layer"}),
		forward:       d("vitrine_stream_forward_seconds", "Forwarding latency: packet in from the creator to packet written to the last viewer of a shard (one observation per packet per shard).", sk),
	}
}

func (c *healthCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.state, c.ingestPackets, c.ingestBytes, c.frames, c.keyframes, c.keyInterval,
		c.creatorLoss, c.creatorJitter, c.creatorRTT, c.viewerLoss, c.viewerLossMax, c.nacks, c.plis, c.slowDrops, c.forward, c.reencoded, c.videoInfo,
		c.layerViewers, c.layerBitrate} {
		ch <- d
	}
}

func (c *healthCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.m.labelledStreams() {
		c.collectStream(ch, s)
	}
}

func (c *healthCollector) collectStream(ch chan<- prometheus.Metric, s *Stream) {
	st, _ := s.State()
	for _, each := range []State{StateWaiting, StateLive, StateReconnecting, StateEnded} {
		v := 0.0
		if each == st {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, s.Name, string(each))
	}
	tc := s.Transcode()
	reencoded := 0.0
	if tc.On() {
		reencoded = 1
	}
	ch <- prometheus.MustNewConstMetric(c.reencoded, prometheus.GaugeValue, reencoded, s.Name)
	in := s.Ingest()
	if in != nil {
		vc := s.ReaderVideo().Codec()
		ch <- prometheus.MustNewConstMetric(c.videoInfo, prometheus.GaugeValue, 1, s.Name, in.Protocol(),
			strings.TrimPrefix(vc.MimeType, "video/"), h264Profile(vc.Fmtp), strconv.FormatBool(tc.BFrames))
	}
	for i, t := range s.VideoLayers() {
		l := strconv.Itoa(i)
		ch <- prometheus.MustNewConstMetric(c.layerViewers, prometheus.GaugeValue, float64(t.viewing.Load()), s.Name, l)
		ch <- prometheus.MustNewConstMetric(c.layerBitrate, prometheus.GaugeValue, float64(t.Bitrate()), s.Name, l)
	}
	var link creatorLink
	if lr, ok := in.(linkReporter); ok {
		link = lr.creatorLink()
	}
	for _, t := range []*Track{s.Video, s.Audio} {
		kind := t.kind.String()
		t.mu.Lock()
		in := t.in
		t.mu.Unlock()
		counter := func(d *prometheus.Desc, v uint64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
		}
		counter(c.ingestPackets, in.packets, s.Name, kind)
		counter(c.ingestBytes, in.bytes, s.Name, kind)
		counter(c.nacks, t.nacks.Load(), s.Name, kind)
		counter(c.slowDrops, in.slowDrops, s.Name, kind)
		if t.kind == Video {
			counter(c.frames, in.frames, s.Name)
			counter(c.keyframes, in.keyframes, s.Name)
			counter(c.plis, t.plis.Load(), s.Name)
			// The creator's interval, also while viewers get a re-encode
			// with keyframes on request.
			key := in.keyInterval
			if rv := s.ReaderVideo(); rv != t {
				rv.mu.Lock()
				key = rv.in.keyInterval
				rv.mu.Unlock()
			}
			ch <- prometheus.MustNewConstMetric(c.keyInterval, prometheus.GaugeValue, key, s.Name)
		}
		if link.haveLoss[t.kind] {
			ch <- prometheus.MustNewConstMetric(c.creatorLoss, prometheus.GaugeValue, link.loss[t.kind], s.Name, kind)
			ch <- prometheus.MustNewConstMetric(c.creatorJitter, prometheus.GaugeValue, link.jitter[t.kind], s.Name, kind)
		}
		if dts := t.downTracks(); len(dts) > 0 {
			var sum, highest float64
			for _, d := range dts {
				f := float64(d.lost.Load()) / 256
				sum += f
				highest = max(highest, f)
			}
			ch <- prometheus.MustNewConstMetric(c.viewerLoss, prometheus.GaugeValue, sum/float64(len(dts)), s.Name, kind)
			ch <- prometheus.MustNewConstMetric(c.viewerLossMax, prometheus.GaugeValue, highest, s.Name, kind)
		}
		c.collectForward(ch, t, s.Name, kind)
	}
	if link.haveRTT {
		ch <- prometheus.MustNewConstMetric(c.creatorRTT, prometheus.GaugeValue, link.rtt, s.Name)
	}
}

func (c *healthCollector) collectForward(ch chan<- prometheus.Metric, t *Track, stream, kind string) {
	var counts [forwardBucketCount + 1]uint64
	var sumNs uint64
	for _, sh := range t.shards {
		for i := range counts {
			counts[i] += sh.forward.counts[i].Load()
		}
		sumNs += sh.forward.sumNs.Load()
	}
	buckets := make(map[float64]uint64, forwardBucketCount)
	var cum uint64
	for i, b := range c.m.forwardBounds {
		cum += counts[i]
		buckets[float64(b)/1e9] = cum
	}
	total := cum + counts[forwardBucketCount]
	ch <- prometheus.MustNewConstHistogram(c.forward, total, float64(sumNs)/1e9, buckets, stream, kind)
}

// streamSet is the streams that get per-stream series.
type streamSet struct {
	mu      sync.Mutex
	streams map[*Stream]struct{}
}

func (m *Metrics) addStream(s *Stream) {
	m.live.mu.Lock()
	defer m.live.mu.Unlock()
	m.live.streams[s] = struct{}{}
}

func (m *Metrics) removeStream(s *Stream) {
	m.live.mu.Lock()
	defer m.live.mu.Unlock()
	delete(m.live.streams, s)
}

// labelledStreams is every stream, by name, up to MaxStreamSeries.
func (m *Metrics) labelledStreams() []*Stream {
	m.live.mu.Lock()
	all := make([]*Stream, 0, len(m.live.streams))
	for s := range m.live.streams {
		all = append(all, s)
	}
	m.live.mu.Unlock()
	slices.SortFunc(all, func(a, b *Stream) int { return strings.Compare(a.Name, b.Name) })
	if m.MaxStreamSeries > 0 && len(all) > m.MaxStreamSeries {
		all = all[:m.MaxStreamSeries]
	}
	return all
}

// rtcpTap sits on a creator's connection below pion's report interceptor and
// keeps the newest Receiver Report block sent for each of the creator's
// streams: what this server saw of the creator's loss and jitter.
type rtcpTap struct {
	interceptor.NoOp
	id    string
	taps  *rtcpTaps
	mu    sync.Mutex
	last  map[uint32]rtcp.ReceptionReport
	close sync.Once
}

func (t *rtcpTap) BindRTCPWriter(w interceptor.RTCPWriter) interceptor.RTCPWriter {
	return interceptor.RTCPWriterFunc(func(pkts []rtcp.Packet, a interceptor.Attributes) (int, error) {
		for _, p := range pkts {
			if rr, ok := p.(*rtcp.ReceiverReport); ok {
				t.mu.Lock()
				for _, r := range rr.Reports {
					t.last[r.SSRC] = r
				}
				t.mu.Unlock()
			}
		}
		return w.Write(pkts, a)
	})
}

func (t *rtcpTap) report(ssrc uint32) (rtcp.ReceptionReport, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.last[ssrc]
	return r, ok
}

func (t *rtcpTap) Close() error {
	t.close.Do(func() { t.taps.forget(t.id) })
	return nil
}

// rtcpTaps is the interceptor factory: pion builds one tap per peer
// connection, named by the connection's ID, which Publish then claims.
type rtcpTaps struct {
	mu   sync.Mutex
	byPC map[string]*rtcpTap
}

func newRTCPTaps() *rtcpTaps { return &rtcpTaps{byPC: map[string]*rtcpTap{}} }

func (f *rtcpTaps) NewInterceptor(id string) (interceptor.Interceptor, error) {
	t := &rtcpTap{id: id, taps: f, last: map[uint32]rtcp.ReceptionReport{}}
	f.mu.Lock()
	f.byPC[id] = t
	f.mu.Unlock()
	return t, nil
}

// claim returns the tap of a peer connection and forgets it.
func (f *rtcpTaps) claim(id string) *rtcpTap {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.byPC[id]
	delete(f.byPC, id)
	return t
}

func (f *rtcpTaps) forget(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.byPC, id)
}

// sourceLink is one of a creator's streams as RTCP names it.
type sourceLink struct {
	kind      Kind
	ssrc      uint32
	clockRate uint32
}

func (p *Publisher) creatorLink() creatorLink {
	var l creatorLink
	p.mu.Lock()
	links := slices.Clone(p.links)
	p.mu.Unlock()
	if p.tap != nil {
		for _, s := range links {
			if r, ok := p.tap.report(s.ssrc); ok && s.clockRate > 0 && s.kind <= Audio {
				l.haveLoss[s.kind] = true
				l.loss[s.kind] = float64(r.FractionLost) / 256
				l.jitter[s.kind] = float64(r.Jitter) / float64(s.clockRate)
			}
		}
	}
	if p.pc == nil {
		return l
	}
	if sctp := p.pc.SCTP(); sctp != nil {
		if dtls := sctp.Transport(); dtls != nil {
			if ice := dtls.ICETransport(); ice != nil {
				if st, ok := ice.GetSelectedCandidatePairStats(); ok && st.CurrentRoundTripTime > 0 {
					l.haveRTT, l.rtt = true, st.CurrentRoundTripTime
				}
			}
		}
	}
	return l
}
