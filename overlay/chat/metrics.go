package chat

import "github.com/prometheus/client_golang/prometheus"

// Metrics are chat's collectors, registered on the registry handed to
// NewMetrics.
type Metrics struct {
	messages   *prometheus.CounterVec
	refused    *prometheus.CounterVec
	moderation *prometheus.CounterVec
	reactions  prometheus.Counter
	deliveries *prometheus.CounterVec
	handOff    prometheus.Histogram
	saveErrors prometheus.Counter
}

// NewMetrics creates the collectors and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_chat_messages_total", Help: "Chat messages taken, by status: visible, held (for approval)."}, []string{"status"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_chat_refused_total", Help: "Chat messages, names and reactions refused, by reason (muted, banned, slow_mode, rate_limited, name_taken, ...)."}, []string{"reason"}),
		moderation: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_chat_moderation_total", Help: "Moderation actions taken, by action."}, []string{"action"}),
		reactions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitrine_chat_reactions_total", Help: "Reaction taps counted."}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_chat_deliveries_total", Help: "Chat messages sent to viewers (one per viewer), by type."}, []string{"type"}),
		handOff: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vitrine_chat_handoff_seconds",
			Help:    "From a chat message's server time (ts) to its hand-off to the last of this node's viewers: the batch wait and the fan-out; on cluster edges the NATS hop too.",
			Buckets: []float64{.01, .025, .05, .1, .15, .2, .3, .5, 1, 2, 5}}),
		saveErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitrine_chat_store_errors_total", Help: "Failed writes of chat messages (kept and tried again)."}),
	}
	for _, s := range []string{StatusVisible, StatusHeld} {
		m.messages.WithLabelValues(s)
	}
	for _, r := range []string{"invalid", "name_required", "muted", "banned", "slow_mode", "rate_limited", "reaction_dropped"} {
		m.refused.WithLabelValues(r)
	}
	for _, a := range []string{"delete", "approve", "reject", "answer", "pin", "unpin", "mute", "unmute", "ban", "unban", "slow", "filter", "calm", "moderator_key"} {
		m.moderation.WithLabelValues(a)
	}
	for _, t := range []string{"chat", "chat.snapshot", "chat.delete", "chat.rejected", "chat.pin", "reactions"} {
		m.deliveries.WithLabelValues(t)
	}
	reg.MustRegister(m.messages, m.refused, m.moderation, m.reactions, m.deliveries, m.handOff, m.saveErrors)
	return m
}

// Refused counts a refusal decided outside a room (a name).
func (m *Metrics) Refused(reason string) { m.refused.WithLabelValues(reason).Inc() }
