package loadtest

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is what a load run measured. Times are in milliseconds, CPU in
// microseconds per packet, ratios in 0..1. Join times run from the start of
// a viewer's join, just before its offer is made and POSTed to WHEP (a pion
// viewer's also include creating its PeerConnection and gathering its
// candidates before the POST; a lite viewer's offer is a string).
type Report struct {
	Server    string   `json:"server"`
	Stream    string   `json:"stream"`
	Publish   bool     `json:"publish"`  // the tool published the stream itself
	Window    float64  `json:"window_s"` // the measured steady window, after every join
	Requested int      `json:"viewers_requested"`
	Joined    int      `json:"viewers_joined"`
	Failed    int      `json:"viewers_failed"`
	Errors    []string `json:"errors,omitempty"` // the first few join errors
	WithMedia int      `json:"viewers_with_media"`
	Channels  int      `json:"viewers_with_channel"` // data channel opened

	Sent      Packets `json:"packets_sent"`      // by the tool's publisher
	Delivered Packets `json:"packets_delivered"` // sum over viewers
	Expected  Packets `json:"packets_expected"`  // sum over viewers
	Foreign   uint64  `json:"payloads_foreign"`  // payloads the publisher never sent

	Loss        Spread `json:"loss_per_viewer"`
	BelowTarget int    `json:"viewers_below_99"` // viewers with delivery under 99%
	// Recovery is what NACKs brought back (with Config.NACK).
	Recovery *Recovery `json:"recovery,omitempty"`

	JoinFirstPacket   Spread `json:"join_to_first_packet_ms"`
	JoinFirstKeyframe Spread `json:"join_to_first_keyframe_ms"` // the first keyframe packet
	// JoinFirstDecodable is to the first complete keyframe: every packet
	// of one keyframe access unit, from its first through the marker,
	// without a sequence gap (H.264 only). A decoder's first picture.
	JoinFirstDecodable Spread `json:"join_to_first_decodable_ms"`
	// BehindLive is, per viewer, about 2 s after its first packet: the
	// publisher's latest video send time minus the latest send time of
	// the video payloads the viewer has received. Near 0 is live; a
	// replayed burst not yet drained shows as its backlog.
	BehindLive Spread `json:"behind_live_2s_ms"`
	// Latency is publisher write to viewer read, for packets the publisher
	// sent after the viewer's first packet arrived (not a replayed burst).
	Latency Spread `json:"forwarding_latency_ms"`

	PLIAnswer                PLIAnswer `json:"pli_answer,omitempty"`       // how the publisher answered keyframe requests
	KeyframeRequests         uint64    `json:"keyframe_requests"`          // PLI/FIR the publisher got
	KeyframeRequestsAnswered uint64    `json:"keyframe_requests_answered"` // of those, answered with a keyframe
	KeyframesOnRequest       uint64    `json:"keyframes_on_request"`       // keyframes made for them (requests between two frames share one)

	Overlay Overlay `json:"overlay"`
	// Chat and Reactions are there when the run chatted (Config.Chatters)
	// or tapped (Config.Reactions).
	Chat      *Chat      `json:"chat,omitempty"`
	Reactions *Reactions `json:"reactions,omitempty"`

	// Layers are the video layers the publisher sent, top first: one, or
	// the simulcast layers (Config.Simulcast); Lowest is the one with the
	// lowest bitrate.
	Layers []LayerInfo `json:"layers,omitempty"`
	Lowest int         `json:"lowest_layer"`
	// Groups are the viewers by group: "unconstrained", and "constrained"
	// (those in Config.Netns) when there are any.
	Groups []Group `json:"groups"`

	ServerCPU CPU `json:"server_cpu"`
	ToolCPU   CPU `json:"tool_cpu"`

	Viewers []ViewerReport `json:"per_viewer"`
}

// LayerInfo is one video layer the publisher sent.
type LayerInfo struct {
	RID  string  `json:"rid,omitempty"` // simulcast only
	Kbps float64 `json:"video_kbps"`    // the clip's payload bitrate
}

// Group is one group of viewers: those that joined (the figures are
// theirs) and those that failed to.
type Group struct {
	Name        string `json:"name"`
	Viewers     int    `json:"viewers"`
	Failed      int    `json:"viewers_failed"`
	Loss        Spread `json:"loss_per_viewer"`
	BelowTarget int    `json:"viewers_below_99"`
	// OnLayer counts the viewers by the layer of the last video payload
	// each received (index: layer, as Report.Layers; publishing only);
	// NoLayer those that received none.
	OnLayer []int `json:"viewers_per_layer,omitempty"`
	NoLayer int   `json:"viewers_without_layer"`
	// Switches is the layer changes each viewer saw in its video.
	Switches Spread `json:"layer_switches_per_viewer"`
	// ToLowest is, for the viewers that got the lowest layer at all, the
	// time from the offer to its first packet.
	ToLowest Spread `json:"join_to_lowest_layer_ms"`
}

// Packets counts RTP packets by kind.
type Packets struct {
	Video uint64 `json:"video"`
	Audio uint64 `json:"audio"`
}

// Total is video plus audio.
func (p Packets) Total() uint64 { return p.Video + p.Audio }

// Spread summarizes a distribution; fields that do not apply stay 0.
type Spread struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Recovery sums the lite viewers' loss recovery: video packets found
// missing and asked for again, and how many of them arrived after all.
type Recovery struct {
	Asked      uint64 `json:"asked"`      // distinct sequence numbers NACKed
	Requests   uint64 `json:"requests"`   // NACKed sequence numbers, repeats included
	Recovered  uint64 `json:"recovered"`  // of Asked, arrived later
	Duplicates uint64 `json:"duplicates"` // packets that came twice
	RTT        Spread `json:"rtt_ms"`     // per viewer, from its ICE consent checks
}

// Overlay is what the data channels carried: cues the tool posted (one a
// second, when it has the stream key) and their lag to each viewer.
type Overlay struct {
	CuesPosted int    `json:"cues_posted"`
	Messages   uint64 `json:"messages_received"` // all overlay messages, snapshot included
	Lag        Spread `json:"cue_lag_ms"`        // cue POSTed to a viewer's OnMessage
	Error      string `json:"error,omitempty"`
}

// Chat is what the chatters posted during the measured window and what
// the viewers got of it (see chat.go for which messages a viewer is
// expected to get).
type Chat struct {
	Chatters int     `json:"chatters"`
	Every    float64 `json:"every_s"` // each chatter's interval
	Named    int     `json:"named"`   // chatters whose name the server took
	// Unnamed chatters never posted; NamesRefused says why, by error code
	// (rate_limited: the server's chat.new_names_per_ip), or not_asked (no
	// chat snapshot came) or unanswered.
	Unnamed      int            `json:"unnamed"`
	NamesRefused map[string]int `json:"names_refused,omitempty"`
	Sent         int            `json:"messages_sent"`
	Seconds      float64        `json:"sending_s"`
	Visible      int            `json:"accepted_visible"` // chat.result visible
	Held         int            `json:"accepted_held"`    // chat.result held: not sent to viewers
	// Refused counts chat.result errors by code, and "unsent" for writes
	// that failed; Unconfirmed had no answer by the end.
	Refused     map[string]int `json:"refused,omitempty"`
	Unconfirmed int            `json:"unconfirmed"`
	// Viewers got a chat snapshot; NoSnapshot joined but got none (not
	// counted below); Disconnected saw their channel end before the tool
	// closed it.
	Viewers      int `json:"viewers_subscribed"`
	NoSnapshot   int `json:"viewers_without_snapshot"`
	Disconnected int `json:"viewers_disconnected"`
	// Expected deliveries sum, over the subscribed viewers, the visible
	// messages written after each one's snapshot came; Received of them
	// came, Missing did not.
	Expected       uint64 `json:"deliveries_expected"`
	Received       uint64 `json:"deliveries_received"`
	Missing        uint64 `json:"deliveries_missing"`
	ViewersMissing int    `json:"viewers_missing_some"`
	Duplicates     uint64 `json:"duplicates"` // a message a viewer got twice (snapshot or batch)
	// Latency is the text's send time to its arrival at a viewer, for
	// every message of this run that came in a chat batch.
	Latency Spread `json:"latency_ms"`
	// SendsPerViewerPerSecond: chat and reactions messages (one
	// data-channel message each) a viewer got per second it was there.
	SendsPerViewerPerSecond Spread `json:"sends_per_viewer_per_s"`
}

// Reactions is what the tool tapped and what came back.
type Reactions struct {
	Rate    float64 `json:"rate_requested"` // taps per second in total
	Sent    uint64  `json:"sent"`
	Failed  uint64  `json:"failed"` // writes that failed
	Seconds float64 `json:"sending_s"`
	// PerViewerPerSecond is reactions messages each viewer got per second
	// of sending (the server sends at most 4); Taps what they counted.
	PerViewerPerSecond Spread `json:"messages_per_viewer_per_s"`
	Taps               Spread `json:"taps_counted_per_viewer"`
	// ViewersShort counted fewer taps than were sent after their snapshot
	// came (the server drops a viewer's taps past 10 per second).
	ViewersShort int `json:"viewers_short"`
}

// CPU is CPU time spent over the measured window per packet: delivered
// packets for the server (vitrine_egress_packets_total), received packets
// for the tool.
type CPU struct {
	Seconds   float64 `json:"seconds"`
	Packets   uint64  `json:"packets"`
	PerPacket float64 `json:"us_per_packet"`
	Error     string  `json:"error,omitempty"`
}

// ViewerReport is one viewer's result.
type ViewerReport struct {
	ID       int     `json:"id"`
	Group    string  `json:"group"`
	Error    string  `json:"error,omitempty"`
	Received Packets `json:"received"`
	Expected Packets `json:"expected"`
	Loss     float64 `json:"loss"`
	Foreign  uint64  `json:"foreign"`
	FirstMS  float64 `json:"join_to_first_packet_ms"`   // -1: none
	KeyMS    float64 `json:"join_to_first_keyframe_ms"` // -1: none
	// DecodableMS is to the first complete keyframe, -1: none.
	DecodableMS float64 `json:"join_to_first_decodable_ms"`
	// BehindMS is how far behind live the viewer was ~2 s after its first
	// packet, -1: not sampled (watching only, or no video packet after 2 s).
	BehindMS float64 `json:"behind_live_2s_ms"`
	Channel  bool    `json:"channel"`
	Overlay  uint64  `json:"overlay_messages"`
	// Loss recovery, with Config.NACK.
	Asked      uint64  `json:"nack_asked,omitempty"`
	Recovered  uint64  `json:"nack_recovered,omitempty"`
	Duplicates uint64  `json:"duplicates,omitempty"`
	RTTMS      float64 `json:"rtt_ms,omitempty"`
	// Layer is the video layer of the last payload received (-1: none, or
	// watching only), Switches how often it changed, LowestMS the offer to
	// the first packet of the lowest layer (-1: none).
	Layer    int     `json:"layer"`
	Switches int     `json:"layer_switches"`
	LowestMS float64 `json:"join_to_lowest_layer_ms"`
	// Feedback is the transport-wide feedback reports a lite viewer sent
	// (Config.TWCC).
	Feedback uint64 `json:"twcc_feedback,omitempty"`
	// Chat (Config.Chatters): whether its chat snapshot came, the messages
	// it was expected to get and of those did not, the ones it got twice,
	// whether its channel ended before the tool closed it.
	ChatSubscribed   bool   `json:"chat_subscribed,omitempty"`
	ChatExpected     uint64 `json:"chat_expected,omitempty"`
	ChatMissing      uint64 `json:"chat_missing,omitempty"`
	ChatDuplicates   uint64 `json:"chat_duplicates,omitempty"`
	ChatDisconnected bool   `json:"chat_disconnected,omitempty"`
	// Reactions (Config.Reactions): reactions messages, the taps they
	// counted, and the taps sent after its snapshot came.
	Reactions            uint64 `json:"reactions_messages,omitempty"`
	ReactionTaps         uint64 `json:"reaction_taps,omitempty"`
	ReactionTapsExpected uint64 `json:"reaction_taps_expected,omitempty"`
}

// Delivery is received/expected over both kinds: 0 when nothing arrived.
func (v ViewerReport) Delivery() float64 {
	if v.Received.Total() == 0 {
		return 0
	}
	if v.Expected.Total() == 0 {
		return 1
	}
	return math.Min(1, float64(v.Received.Total())/float64(v.Expected.Total()))
}

// spreadOf sorts xs and summarizes it.
func spreadOf(xs []float64) Spread {
	if len(xs) == 0 {
		return Spread{}
	}
	slices.Sort(xs)
	q := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(xs)))) - 1
		return xs[max(0, min(i, len(xs)-1))]
	}
	return Spread{N: len(xs), P50: q(0.5), P95: q(0.95), P99: q(0.99), Max: xs[len(xs)-1]}
}

// histogram counts durations in log-linear buckets (16 per power of two,
// within 6.25%), so that recording a packet's latency is an index and an
// increment. Not safe for concurrent use: each reader goroutine has its own.
type histogram struct {
	counts [histBuckets]uint32
	max    int64
}

const histBuckets = 42 * 16 // up to 2^41 ns, ~36 min

func histIndex(v int64) int {
	if v < 16 {
		return int(max(v, 0))
	}
	e := bits.Len64(uint64(v)) - 5
	i := (e+1)*16 + int(uint64(v)>>e&15)
	return min(i, histBuckets-1)
}

// histValue is the middle of bucket i.
func histValue(i int) int64 {
	if i < 16 {
		return int64(i)
	}
	e := i/16 - 1
	lo := int64(16+i%16) << e
	return lo + (int64(1)<<e)/2
}

func (h *histogram) add(v int64) {
	h.counts[histIndex(v)]++
	h.max = max(h.max, v)
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.max = max(h.max, o.max)
}

// spread returns the histogram's quantiles in milliseconds.
func (h *histogram) spread() Spread {
	var n uint64
	for _, c := range h.counts {
		n += uint64(c)
	}
	if n == 0 {
		return Spread{}
	}
	q := func(p float64) float64 {
		rank := uint64(math.Ceil(p * float64(n)))
		var seen uint64
		for i, c := range h.counts {
			seen += uint64(c)
			if seen >= rank {
				return ms(time.Duration(min(histValue(i), h.max)))
			}
		}
		return ms(time.Duration(h.max))
	}
	return Spread{N: int(min(n, math.MaxInt32)), P50: q(0.5), P95: q(0.95), P99: q(0.99), Max: ms(time.Duration(h.max))}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// WriteTable prints the report as a table for people.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(name, format string, args ...any) {
		fmt.Fprintf(tw, "%s\t%s\n", name, fmt.Sprintf(format, args...))
	}
	mode := "watch only"
	if r.Publish {
		mode = "publish + watch"
	}
	row("server", "%s  stream %s  (%s)", r.Server, r.Stream, mode)
	row("viewers", "%d requested, %d joined, %d failed, %d got media, %d data channels", r.Requested, r.Joined, r.Failed, r.WithMedia, r.Channels)
	for _, e := range r.Errors {
		row("  join error", "%s", e)
	}
	row("measured window", "%.1f s after the last join", r.Window)
	if r.Publish {
		row("packets sent", "%d (video %d, audio %d)", r.Sent.Total(), r.Sent.Video, r.Sent.Audio)
	}
	row("packets delivered", "%d of %d expected (video %d/%d, audio %d/%d)", r.Delivered.Total(), r.Expected.Total(),
		r.Delivered.Video, r.Expected.Video, r.Delivered.Audio, r.Expected.Audio)
	if r.Publish {
		row("foreign payloads", "%d (payloads no packet sent had; 0 = byte-identical)", r.Foreign)
	}
	row("loss per viewer", "p50 %.3f%%  p99 %.3f%%  max %.3f%%", 100*r.Loss.P50, 100*r.Loss.P99, 100*r.Loss.Max)
	row("viewers below 99%", "%d", r.BelowTarget)
	if rc := r.Recovery; rc != nil {
		row("loss recovery", "%d video packets asked for again (NACK), %d recovered, %d NACKed sequence numbers sent, %d duplicates; rtt p50 %.0f ms",
			rc.Asked, rc.Recovered, rc.Requests, rc.Duplicates, rc.RTT.P50)
	}
	row("join to first packet", "p50 %.0f ms  p95 %.0f ms  p99 %.0f ms  (from the offer, before the WHEP POST)", r.JoinFirstPacket.P50, r.JoinFirstPacket.P95, r.JoinFirstPacket.P99)
	row("join to first keyframe", "p50 %.0f ms  p95 %.0f ms  p99 %.0f ms  (its first packet)", r.JoinFirstKeyframe.P50, r.JoinFirstKeyframe.P95, r.JoinFirstKeyframe.P99)
	row("join to first decodable frame", "p50 %.0f ms  p95 %.0f ms  p99 %.0f ms  (a whole keyframe, no gap; %d viewers)",
		r.JoinFirstDecodable.P50, r.JoinFirstDecodable.P95, r.JoinFirstDecodable.P99, r.JoinFirstDecodable.N)
	if r.Publish {
		row("behind live 2 s after join", "p50 %.0f ms  p95 %.0f ms  max %.0f ms  (%d viewers)", r.BehindLive.P50, r.BehindLive.P95, r.BehindLive.Max, r.BehindLive.N)
		row("forwarding latency", "p50 %.2f ms  p99 %.2f ms  max %.1f ms (%d packets sent after each viewer's first arrived)", r.Latency.P50, r.Latency.P99, r.Latency.Max, r.Latency.N)
		row("keyframe requests", "%d reached the publisher, %d answered (-pli-answer %s), %d keyframes made for them",
			r.KeyframeRequests, r.KeyframeRequestsAnswered, r.PLIAnswer, r.KeyframesOnRequest)
	}
	switch {
	case r.Overlay.Error != "":
		row("overlay", "%d messages; cues: %s", r.Overlay.Messages, r.Overlay.Error)
	case r.Overlay.CuesPosted > 0:
		row("overlay cue lag", "p50 %.1f ms  p99 %.1f ms  max %.1f ms (%d cues, %d arrivals)", r.Overlay.Lag.P50, r.Overlay.Lag.P99, r.Overlay.Lag.Max, r.Overlay.CuesPosted, r.Overlay.Lag.N)
	default:
		row("overlay", "%d messages (no cues posted: needs -key)", r.Overlay.Messages)
	}
	if c := r.Chat; c != nil {
		names := fmt.Sprintf("%d of %d chatters named", c.Named, c.Chatters)
		if c.Unnamed > 0 {
			names += fmt.Sprintf(", %d not", c.Unnamed)
			if len(c.NamesRefused) > 0 {
				names += " (" + refusals(c.NamesRefused) + ")"
			}
			if c.NamesRefused["rate_limited"] > 0 {
				names += ": start the server with chat: new_names_per_ip above -chatters times the runs in 10 minutes"
			}
		}
		row("chat names", "%s", names)
		refused := ""
		if len(c.Refused) > 0 {
			refused = " (" + refusals(c.Refused) + ")"
		}
		rate := 0.0
		if c.Seconds > 0 {
			rate = float64(c.Sent) / c.Seconds
		}
		row("chat sent", "%d messages (%.1f/s over %.1f s): %d visible, %d held, %d refused%s, %d unanswered",
			c.Sent, rate, c.Seconds, c.Visible, c.Held, sumCounts(c.Refused), refused, c.Unconfirmed)
		row("chat delivery", "%d of %d expected deliveries to %d subscribed viewers, %d missing (%d viewers), %d duplicates; %d viewers without a chat snapshot, %d disconnected",
			c.Received, c.Expected, c.Viewers, c.Missing, c.ViewersMissing, c.Duplicates, c.NoSnapshot, c.Disconnected)
		row("chat latency", "p50 %.1f ms  p95 %.1f ms  p99 %.1f ms  max %.1f ms (%d deliveries, send to arrival)",
			c.Latency.P50, c.Latency.P95, c.Latency.P99, c.Latency.Max, c.Latency.N)
		row("chat sends per viewer", "p50 %.2f  max %.2f chat and reactions messages/s", c.SendsPerViewerPerSecond.P50, c.SendsPerViewerPerSecond.Max)
	}
	if re := r.Reactions; re != nil {
		rate := 0.0
		if re.Seconds > 0 {
			rate = float64(re.Sent) / re.Seconds
		}
		row("reactions", "%d taps sent (%.0f/s over %.1f s, %d failed); %d viewers counted fewer than were sent after their snapshot",
			re.Sent, rate, re.Seconds, re.Failed, re.ViewersShort)
		row("reactions per viewer", "p50 %.2f  max %.2f reactions messages/s; taps counted p50 %.0f  max %.0f (%d viewers)",
			re.PerViewerPerSecond.P50, re.PerViewerPerSecond.Max, re.Taps.P50, re.Taps.Max, re.Taps.N)
	}
	if len(r.Layers) > 1 {
		var ls []string
		for _, l := range r.Layers {
			ls = append(ls, fmt.Sprintf("%s %.0f kbit/s", l.RID, l.Kbps))
		}
		row("simulcast layers", "%s (lowest: %s)", strings.Join(ls, ", "), r.Layers[r.Lowest].RID)
	}
	if len(r.Layers) > 1 || len(r.Groups) > 1 {
		for _, g := range r.Groups {
			row("group "+g.Name, "%d viewers (%d failed), loss p50 %.3f%%  max %.3f%%, %d below 99%%", g.Viewers, g.Failed, 100*g.Loss.P50, 100*g.Loss.Max, g.BelowTarget)
			if len(g.OnLayer) > 0 {
				var on []string
				for l, n := range g.OnLayer {
					name := r.Layers[l].RID
					if name == "" {
						name = strconv.Itoa(l)
					}
					on = append(on, fmt.Sprintf("%s: %d", name, n))
				}
				row("  layer at the end", "%s, none: %d;  switches per viewer p50 %.0f  max %.0f",
					strings.Join(on, "  "), g.NoLayer, g.Switches.P50, g.Switches.Max)
			}
			if g.Name == groupNames[groupConstrained] || g.ToLowest.N > 0 {
				row("  join to lowest layer", "p50 %.0f ms  p95 %.0f ms  (%d of %d viewers got it)", g.ToLowest.P50, g.ToLowest.P95, g.ToLowest.N, g.Viewers)
			}
		}
	}
	cpu := func(name string, c CPU, what string) {
		if c.Error != "" {
			row(name, "%s", c.Error)
			return
		}
		row(name, "%.2f s for %d %s packets = %.2f us/packet", c.Seconds, c.Packets, what, c.PerPacket)
	}
	cpu("server CPU", r.ServerCPU, "delivered")
	cpu("load tool CPU", r.ToolCPU, "received")
	if err := tw.Flush(); err != nil {
		return err
	}
	if bad := r.worstViewers(5); len(bad) > 0 {
		fmt.Fprintf(w, "\nworst viewers: %s\n", strings.Join(bad, ", "))
	}
	if bad := r.chatMissing(5); len(bad) > 0 {
		fmt.Fprintf(w, "viewers missing chat: %s\n", strings.Join(bad, ", "))
	}
	return nil
}

// worstViewers names up to n viewers under 99% delivery, worst first.
func (r *Report) worstViewers(n int) []string {
	vs := slices.Clone(r.Viewers)
	slices.SortFunc(vs, func(a, b ViewerReport) int { return cmpFloat(a.Delivery(), b.Delivery()) })
	var out []string
	for _, v := range vs {
		if len(out) == n || v.Delivery() >= 0.99 {
			break
		}
		out = append(out, fmt.Sprintf("#%d %.1f%% (%d/%d)", v.ID, 100*v.Delivery(), v.Received.Total(), v.Expected.Total()))
	}
	return out
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// chatMissing names up to n viewers that missed chat messages, most first.
func (r *Report) chatMissing(n int) []string {
	vs := slices.Clone(r.Viewers)
	slices.SortStableFunc(vs, func(a, b ViewerReport) int { return cmp.Compare(b.ChatMissing, a.ChatMissing) })
	var out []string
	for _, v := range vs {
		if len(out) == n || v.ChatMissing == 0 {
			break
		}
		out = append(out, fmt.Sprintf("#%d %d of %d", v.ID, v.ChatMissing, v.ChatExpected))
	}
	return out
}

func sumCounts(m map[string]int) int {
	n := 0
	for _, c := range m {
		n += c
	}
	return n
}
