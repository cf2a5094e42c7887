package overlay

import (
	"context"
	"encoding/json"
	"sync"
	"time"
)

// Mirror is a show that runs on another node, as a node relaying the stream
// serves it to its own viewers: it keeps what a late joiner needs (card,
// sale) from the messages the show's node sends, and hands every message on
// in the order it came. Buys and confirms go to the store, which holds every
// rule; a reservation is told to onStock so that the show's node, the one
// place that coalesces stock messages, announces the new stock.
type Mirror struct {
	stream  string
	clock   Clock
	cfg     ShowConfig
	onStock func(sku string)

	mu      sync.Mutex
	card    *Card
	sale    *SaleInfo
	saleEnd time.Time // local deadline of sale, from its ms_left
	subs    map[int]func([]byte)
	nextSub int
}

// NewMirror makes an empty mirror; the first message applied is normally the
// show's snapshot.
func NewMirror(stream string, clock Clock, cfg ShowConfig, onStock func(sku string)) *Mirror {
	return &Mirror{stream: stream, clock: clock, cfg: cfg.withDefaults(), onStock: onStock, subs: map[int]func([]byte){}}
}

// Apply takes one message of the show, its At already on this node's media
// clock, updates the state and sends it to every subscriber. Messages that
// are not the show's (welcome, replies) are ignored.
func (m *Mirror) Apply(msg Message) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch msg.Type {
	case "snapshot":
		m.card = msg.Card
		m.setSale(msg.Sale)
	case CueShowCard:
		m.card = msg.Card
	case CueHideCard:
		m.card = nil
	case CueSaleStart:
		m.card = msg.Card
		m.setSale(msg.Sale)
	case CueSaleEnd:
		m.setSale(nil)
		if msg.Card != nil {
			m.card = msg.Card
		}
	case "stock":
		for _, st := range msg.Stock {
			if m.card != nil && m.card.SKU == st.SKU {
				card := *m.card
				card.Stock = st.Stock
				m.card = &card
			}
			if m.sale != nil && m.sale.SKU == st.SKU && st.UnitsLeft != nil {
				sale := *m.sale
				sale.UnitsLeft = *st.UnitsLeft
				m.sale = &sale
			}
		}
	case CueCustom:
	default:
		return
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return
	}
	for _, send := range m.subs {
		send(b)
	}
	m.cfg.Metrics.messages.WithLabelValues(msg.Type).Add(float64(len(m.subs)))
}

// setSale keeps a sale with its deadline on this node's clock: the time
// left as the show's node counted it, not its end time, so that the nodes'
// clocks need not agree. m.mu must be held.
func (m *Mirror) setSale(sale *SaleInfo) {
	m.sale = sale
	if sale != nil {
		m.saleEnd = m.cfg.Now().Add(time.Duration(sale.MSLeft) * time.Millisecond)
	}
}

// Snapshot is the state a late joiner gets first.
func (m *Mirror) Snapshot() Message {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.snapshot()
}

func (m *Mirror) snapshot() Message {
	snap := Message{V: 1, Type: "snapshot", Card: m.card}
	if m.sale != nil {
		sale := *m.sale
		sale.MSLeft = max(0, m.saleEnd.Sub(m.cfg.Now()).Milliseconds())
		snap.Sale = &sale
	}
	if at, ok := m.clock.Latest(); ok {
		snap.At = &at
	}
	return snap
}

// Subscribe sends the snapshot at once, then every message until cancel.
// send must not block.
func (m *Mirror) Subscribe(send func([]byte)) (cancel func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id := m.nextSub
	m.nextSub++
	m.subs[id] = send
	b, _ := json.Marshal(m.snapshot())
	send(b)
	m.cfg.Metrics.messages.WithLabelValues("snapshot").Inc()
	m.cfg.Metrics.subscribers.Inc()
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if _, ok := m.subs[id]; ok {
			delete(m.subs, id)
			m.cfg.Metrics.subscribers.Dec()
		}
	}
}

// OnScreen is the SKU whose card viewers see now, "" for none.
func (m *Mirror) OnScreen() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.card == nil {
		return ""
	}
	return m.card.SKU
}

// Buy reserves units for a viewer of this node.
func (m *Mirror) Buy(ctx context.Context, viewer, sku string, qty int64, key string) (BuyResult, error) {
	res, err := buy(ctx, m.cfg, m.stream, viewer, sku, qty, key)
	if err == nil && res.Outcome == OutcomeReserved && m.onStock != nil {
		m.onStock(sku)
	}
	return res, err
}

// Confirm turns a viewer's reservation into an order.
func (m *Mirror) Confirm(ctx context.Context, viewer, orderID string) (Order, error) {
	return confirm(ctx, m.cfg, viewer, orderID)
}
