package overlay

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the commerce collectors, registered on the registry handed to
// NewMetrics.
type Metrics struct {
	cues        *prometheus.CounterVec
	cueLag      prometheus.Histogram
	messages    *prometheus.CounterVec
	subscribers prometheus.Gauge
	buys        *prometheus.CounterVec
	buyLatency  prometheus.Histogram
	orders      prometheus.Counter
	// confirmFailures counts confirms that made no order, by reason.
	confirmFailures *prometheus.CounterVec
	revenue         *prometheus.CounterVec
	unitsLeft       *prometheus.GaugeVec
	Webhooks        *prometheus.CounterVec
	OutboxDepth     prometheus.Gauge
	// StoreErrors counts failed store calls made outside a buyer's request
	// (those count as vitrine_buy_attempts_total{result="error"}).
	StoreErrors *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		cues: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_cues_total", Help: "Cues applied, by type."}, []string{"type"}),
		cueLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vitrine_cue_delivery_seconds",
			Help:    "From a cue's request to its message handed to every viewer's channel.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_overlay_messages_total", Help: "Overlay messages sent to viewers (one per viewer), by type."}, []string{"type"}),
		subscribers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vitrine_overlay_subscribers", Help: "Viewers receiving overlay messages (data channel or SSE)."}),
		buys: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_buy_attempts_total", Help: "Buy attempts by result: reserved, sold_out, limit_reached, sale_over, ..., invalid, error."}, []string{"result"}),
		buyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vitrine_buy_seconds",
			Help:    "Time to answer a buy (store round trip included).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
		orders: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitrine_orders_confirmed_total", Help: "Orders confirmed."}),
		confirmFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_confirm_failures_total", Help: "Confirms that made no order, by reason (the API's error code): reservation_expired, unknown_order, foreign_order, order_closed, store_unavailable."}, []string{"reason"}),
		revenue: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_revenue_minor_total", Help: "Confirmed revenue in minor units (cents), by currency."}, []string{"currency"}),
		unitsLeft: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vitrine_sale_units_left", Help: "Units left in a running flash sale."}, []string{"stream", "sku"}),
		Webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_webhook_deliveries_total", Help: "Webhook delivery attempts by result: delivered, failed."}, []string{"result"}),
		OutboxDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vitrine_webhook_outbox_depth", Help: "Events waiting in the outbox for the merchant."}),
		StoreErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitrine_store_errors_total", Help: "Failed store operations in background work, by operation."}, []string{"op"}),
	}
	for _, r := range []string{OutcomeReserved, OutcomeSoldOut, OutcomeLimitReached, OutcomeSaleOver, OutcomeUnknownProduct, OutcomeInactive, "invalid", "error"} {
		m.buys.WithLabelValues(r)
	}
	for _, r := range []string{"reservation_expired", "unknown_order", "foreign_order", "order_closed", "store_unavailable"} {
		m.confirmFailures.WithLabelValues(r)
	}
	for _, r := range []string{"delivered", "failed"} {
		m.Webhooks.WithLabelValues(r)
	}
	for _, op := range []string{"expire_reservations", "outbox_depth", "prune", "end_sale", "run_of_show"} {
		m.StoreErrors.WithLabelValues(op)
	}
	reg.MustRegister(m.cues, m.cueLag, m.messages, m.subscribers, m.buys, m.buyLatency, m.orders, m.confirmFailures, m.revenue, m.unitsLeft,
		m.Webhooks, m.OutboxDepth, m.StoreErrors)
	return m
}

// confirmFailed counts a confirm that made no order, by its error code.
func (m *Metrics) confirmFailed(err error) {
	m.confirmFailures.WithLabelValues(ConfirmFailure(err)).Inc()
}

// ConfirmFailure is the error code of a confirm that made no order, as
// the API answers it and the metric counts it: a buyer slower than the
// reservation, a stale or foreign order id, a cancelled order, or the
// store failing.
func ConfirmFailure(err error) string {
	switch {
	case errors.Is(err, ErrReservationExpired):
		return "reservation_expired"
	case errors.Is(err, ErrNotFound):
		return "unknown_order"
	case errors.Is(err, ErrForeignViewer):
		return "foreign_order"
	case errors.Is(err, ErrOrderClosed):
		return "order_closed"
	}
	return "store_unavailable"
}

func (m *Metrics) orderConfirmed(o Order) {
	m.orders.Inc()
	m.revenue.WithLabelValues(o.Currency).Add(float64(o.TotalMinor()))
}
