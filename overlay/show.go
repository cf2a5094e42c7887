package overlay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"
)

// Clock is a stream's media clock as the overlay sees it: the RTP timestamp
// (90 kHz) of the video viewers receive. The media layer hands it in; the
// overlay knows nothing else of RTP.
type Clock interface {
	// Latest is the timestamp of the newest video frame ingested.
	Latest() (uint32, bool)
	// At maps an instant on the creator's own clock (a browser's wall
	// clock, through its RTCP Sender Reports) to the media clock.
	At(t time.Time) (uint32, bool)
}

// Cue types a creator or a merchant's backend can send.
const (
	CueShowCard  = "card.show"
	CueHideCard  = "card.hide"
	CueSaleStart = "sale.start"
	CueSaleEnd   = "sale.end"
	CueCustom    = "custom"
)

// MaxCustomCue bounds a custom cue's data, like AWS IVS timed metadata.
const MaxCustomCue = 1024

// CueRequest is one cue as the API receives it.
type CueRequest struct {
	Type string `json:"type"`
	SKU  string `json:"sku,omitempty"`
	// ClickTime is when the creator clicked, on the creator's clock
	// (milliseconds since the Unix epoch, as a browser's Date.now()). With
	// it, the cue lands on the frame the creator saw; without it, on the
	// newest frame ingested plus LeadMS.
	ClickTime int64 `json:"click_time_ms,omitempty"`
	LeadMS    int64 `json:"lead_ms,omitempty"`
	// Flash sale fields.
	PriceMinor  int64 `json:"price_minor,omitempty"`
	Units       int64 `json:"units,omitempty"`
	DurationSec int64 `json:"duration_s,omitempty"`
	// Data is a custom cue's JSON payload.
	Data json.RawMessage `json:"data,omitempty"`
}

// Message is what viewers receive on the data channel and over SSE. Every
// message has the protocol version and a type; cues carry their id and the
// media-clock time at which they apply.
type Message struct {
	V    int    `json:"v"`
	Type string `json:"type"`
	ID   string `json:"id,omitempty"`
	// At is on the media clock; AtSource says how it was found:
	// "click" (Sender Report mapping of the click), "frame" (newest frame
	// ingested) or "none" (no media yet: apply at once).
	At       *uint32         `json:"at,omitempty"`
	AtSource string          `json:"at_source,omitempty"`
	Card     *Card           `json:"card,omitempty"`
	Sale     *SaleInfo       `json:"sale,omitempty"`
	SKU      string          `json:"sku,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
	Stock    []StockInfo     `json:"stock,omitempty"`
}

// Card is a product card as viewers show it.
type Card struct {
	SKU            string `json:"sku"`
	Title          string `json:"title"`
	Description    string `json:"description,omitempty"`
	ImageURL       string `json:"image_url,omitempty"`
	Currency       string `json:"currency"`
	PriceMinor     int64  `json:"price_minor"`      // what a viewer pays now
	ListPriceMinor int64  `json:"list_price_minor"` // before any sale
	Stock          int64  `json:"stock"`
	PerViewerLimit int    `json:"per_viewer_limit"`
}

// SaleInfo is a running flash sale.
type SaleInfo struct {
	ID         string    `json:"id"`
	SKU        string    `json:"sku"`
	PriceMinor int64     `json:"price_minor"`
	Units      int64     `json:"units"`
	UnitsLeft  int64     `json:"units_left"`
	EndsAt     time.Time `json:"ends_at"`
	// MSLeft lets a page count down without trusting its own clock.
	MSLeft int64 `json:"ms_left"`
}

// StockInfo is a coalesced stock update.
type StockInfo struct {
	SKU       string `json:"sku"`
	Stock     int64  `json:"stock"`
	UnitsLeft *int64 `json:"units_left,omitempty"`
}

// Errors a cue can meet, for HTTP statuses.
var (
	ErrBadCue        = errors.New("invalid cue")
	ErrUnknownSKU    = errors.New("unknown product")
	ErrNothingToHide = errors.New("no card is shown")
	ErrNoSale        = errors.New("no flash sale is running")
	ErrShowClosed    = errors.New("the show is closed (its stream was deleted)")
)

// ShowConfig is what every stream's show shares.
type ShowConfig struct {
	Store          Store
	ReservationTTL time.Duration // how long a reserved unit is held
	// StockEvery bounds stock updates per product: many buys in one
	// interval become one message to each viewer.
	StockEvery time.Duration
	Metrics    *Metrics
	Log        *slog.Logger
	Now        func() time.Time
}

func (cfg ShowConfig) withDefaults() ShowConfig {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ReservationTTL <= 0 {
		cfg.ReservationTTL = 5 * time.Minute
	}
	if cfg.StockEvery <= 0 {
		cfg.StockEvery = 250 * time.Millisecond
	}
	return cfg
}

// Show is the commerce overlay of one live stream: the card shown, the flash
// sale running, the run-of-show, and every viewer subscribed to its
// messages. Every change is written to the store before viewers hear of it,
// so that a restart finds the show where it was.
type Show struct {
	stream string
	clock  Clock
	cfg    ShowConfig

	mu       sync.Mutex
	card     *Card
	listSale string // id of the list-price sale that makes the shown card buyable
	sale     *Sale  // flash sale
	saleEnd  *time.Timer
	subs     map[int]func([]byte)
	nextSub  int
	nextCue  int
	dirty    map[string]bool
	run      RunOfShow
	runStop  chan struct{}
	closed   bool // set by Close: the show changes nothing any more
	stop     chan struct{}
	stopOnce sync.Once
}

// listSaleLength is how long a shown card stays buyable at list price.
const listSaleLength = 24 * time.Hour

// NewShow starts a stream's show where the store left it (see restore).
func NewShow(ctx context.Context, stream string, clock Clock, cfg ShowConfig) (*Show, error) {
	cfg = cfg.withDefaults()
	s := &Show{stream: stream, clock: clock, cfg: cfg, subs: map[int]func([]byte){}, dirty: map[string]bool{}, stop: make(chan struct{})}
	if err := s.restore(ctx); err != nil {
		return nil, fmt.Errorf("overlay: restore the show of %s: %w", stream, err)
	}
	go s.flushStock()
	return s, nil
}

// restore reads the show's state back from the store. The card comes back
// without its media-clock stamp (it belonged to the creator session that
// clicked) and is shown at once, rebuilt from the catalog; a product deleted
// or taken off sale meanwhile is not shown. A flash sale whose time ran out
// while the server was down is ended now, with its event, and a sale nobody
// names any more (a list-price sale past its day, or one left by a version
// that did not keep the show) is ended too: no sale stays open that nobody
// can see or stop. A run-of-show that was running goes on at its first cue
// not fired, on its first schedule.
func (s *Show) restore(ctx context.Context) error {
	st, err := s.cfg.Store.ShowState(ctx, s.stream)
	if err != nil {
		return err
	}
	open, err := s.cfg.Store.OpenSales(ctx, s.stream)
	if err != nil {
		return err
	}
	now := s.cfg.Now()
	ch := ShowChange{State: ShowState{Stream: s.stream, Run: st.Run}}
	var flash *Sale
	for _, sale := range open {
		switch {
		case sale.ID == st.SaleID && sale.Running(now):
			flash = &sale
			ch.State.SaleID = sale.ID
		case sale.ID == st.ListSaleID && sale.Running(now):
			ch.State.ListSaleID = sale.ID
		default:
			ch.End = append(ch.End, sale.ID)
		}
	}
	var card *Card
	if st.CardSKU != "" {
		p, err := s.cfg.Store.Product(ctx, st.CardSKU)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		if err == nil && p.Active {
			price := p.PriceMinor
			if flash != nil && flash.SKU == p.SKU {
				price = flash.PriceMinor
			} else if ch.State.ListSaleID == "" {
				ch.StartList = s.listSaleOf(p.SKU, now)
			}
			card = cardOf(p, price)
			ch.State.CardSKU = p.SKU
		}
	}
	if card == nil && ch.State.ListSaleID != "" {
		ch.End = append(ch.End, ch.State.ListSaleID)
		ch.State.ListSaleID = ""
	}
	res, err := s.change(ctx, ch, now)
	if err != nil {
		return err
	}
	for _, ended := range res.Ended {
		if ended.ID == st.SaleID {
			s.cfg.Log.Info("flash sale ended at start: its time ran out while the server was down",
				"stream", s.stream, "sale", ended.ID, "sku", ended.SKU, "units_left", ended.UnitsLeft)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.card, s.listSale, s.run = card, res.State.ListSaleID, st.Run
	if flash != nil {
		s.sale = flash
		s.armSaleEnd(*flash, now)
	}
	if s.run.Running {
		s.startRun()
	}
	return nil
}

// listSaleOf is the sale that makes a shown card buyable at list price.
func (s *Show) listSaleOf(sku string, now time.Time) *Sale {
	return &Sale{Stream: s.stream, SKU: sku, StartsAt: now, EndsAt: now.Add(listSaleLength)}
}

// state is the show as the store keeps it; s.mu must be held.
func (s *Show) state() ShowState {
	st := ShowState{Stream: s.stream, ListSaleID: s.listSale, Run: s.run}
	if s.card != nil {
		st.CardSKU = s.card.SKU
	}
	if s.sale != nil {
		st.SaleID = s.sale.ID
	}
	return st
}

// armSaleEnd ends the flash sale when its time runs out; s.mu must be held.
func (s *Show) armSaleEnd(sale Sale, now time.Time) {
	if s.saleEnd != nil {
		s.saleEnd.Stop()
	}
	s.saleEnd = time.AfterFunc(sale.EndsAt.Sub(now), func() { s.saleExpired(sale.ID) })
}

// Close stops the show's timers and its run-of-show. What the store holds
// stays for the next show of the stream (after a restart) to pick up.
func (s *Show) Close() {
	s.stopOnce.Do(func() {
		close(s.stop)
		s.mu.Lock()
		s.closed = true
		if s.saleEnd != nil {
			s.saleEnd.Stop()
		}
		s.stopRun()
		s.mu.Unlock()
	})
}

// change writes a step of the show through the store; s.mu must be held.
// A closed show writes nothing: a timer or cue that was already on its way
// must not overwrite what the next show of the stream has written.
func (s *Show) change(ctx context.Context, ch ShowChange, now time.Time) (ShowChangeResult, error) {
	if s.closed {
		return ShowChangeResult{}, ErrShowClosed
	}
	return s.cfg.Store.ChangeShow(ctx, ch, now)
}

// Subscribe sends the snapshot (card, sale with time left, stock) to send at
// once, then every message until cancel. send must not block: the data
// channel and the SSE writer both queue.
func (s *Show) Subscribe(send func([]byte)) (cancel func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.nextSub
	s.nextSub++
	s.subs[id] = send
	snap := Message{V: 1, Type: "snapshot", Card: s.card}
	if s.sale != nil {
		snap.Sale = s.saleInfo(*s.sale)
	}
	if at, ok := s.clock.Latest(); ok {
		snap.At = &at
	}
	b, _ := json.Marshal(snap)
	send(b)
	s.cfg.Metrics.messages.WithLabelValues("snapshot").Inc()
	s.cfg.Metrics.subscribers.Inc()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, ok := s.subs[id]; ok {
			delete(s.subs, id)
			s.cfg.Metrics.subscribers.Dec()
		}
	}
}

// Snapshot is the state a late joiner gets first.
func (s *Show) Snapshot() Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := Message{V: 1, Type: "snapshot", Card: s.card}
	if s.sale != nil {
		m.Sale = s.saleInfo(*s.sale)
	}
	return m
}

// broadcast must be called with s.mu held, so that a new subscriber's
// snapshot and the live messages never cross.
func (s *Show) broadcast(m Message) {
	b, err := json.Marshal(m)
	if err != nil {
		s.cfg.Log.Error("overlay: marshal", "err", err)
		return
	}
	for _, send := range s.subs {
		send(b)
	}
	s.cfg.Metrics.messages.WithLabelValues(m.Type).Add(float64(len(s.subs)))
}

// Cue applies a cue and sends it to every viewer, stamped with its time on
// the media clock.
func (s *Show) Cue(ctx context.Context, req CueRequest) (Message, error) {
	start := time.Now()
	m := Message{V: 1, Type: req.Type}
	if err := checkCue(req); err != nil {
		return m, err
	}
	if req.ClickTime != 0 {
		if at, ok := s.clock.At(time.UnixMilli(req.ClickTime)); ok {
			m.At, m.AtSource = &at, "click"
		}
	}
	if m.At == nil {
		if at, ok := s.clock.Latest(); ok {
			at += uint32(req.LeadMS * 90)
			m.At, m.AtSource = &at, "frame"
		} else {
			m.AtSource = "none"
		}
	}
	now := s.cfg.Now()
	var err error
	switch req.Type {
	case CueShowCard:
		err = s.showCard(ctx, req.SKU, now, &m)
	case CueHideCard:
		err = s.hideCard(ctx, now, &m)
	case CueSaleStart:
		err = s.startSale(ctx, req, now, &m)
	case CueSaleEnd:
		err = s.endSale(ctx, now, &m)
	case CueCustom:
		err = s.custom(req.Data, &m)
	default:
		err = fmt.Errorf("%w: type must be one of card.show, card.hide, sale.start, sale.end, custom", ErrBadCue)
	}
	if err != nil {
		return m, err
	}
	s.cfg.Metrics.cues.WithLabelValues(req.Type).Inc()
	s.cfg.Metrics.cueLag.Observe(time.Since(start).Seconds())
	s.cfg.Log.Info("cue", "stream", s.stream, "type", req.Type, "sku", req.SKU, "id", m.ID, "at_source", m.AtSource)
	return m, nil
}

// checkCue makes the checks of a cue that need neither the catalog nor the
// show's state: a run-of-show is refused at load time for what would make
// a cue fail whenever it fires.
func checkCue(req CueRequest) error {
	if req.LeadMS < 0 || req.LeadMS > 60_000 {
		return fmt.Errorf("%w: lead_ms must be 0-60000", ErrBadCue)
	}
	switch req.Type {
	case CueShowCard:
	case CueHideCard, CueSaleEnd:
		return nil
	case CueSaleStart:
		if req.DurationSec < 1 || req.DurationSec > 24*3600 {
			return fmt.Errorf("%w: duration_s must be 1-86400", ErrBadCue)
		}
		if req.Units < 0 || req.Units > MaxStock || req.PriceMinor < 0 || req.PriceMinor > MaxPriceMinor {
			return fmt.Errorf("%w: units and price_minor must be positive and in range", ErrBadCue)
		}
	case CueCustom:
		if len(req.Data) == 0 || len(req.Data) > MaxCustomCue || !json.Valid(req.Data) {
			return fmt.Errorf("%w: data must be valid JSON of at most %d bytes", ErrBadCue, MaxCustomCue)
		}
		return nil
	default:
		return fmt.Errorf("%w: type must be one of card.show, card.hide, sale.start, sale.end, custom", ErrBadCue)
	}
	if err := validateSKU("sku", req.SKU); err != nil {
		return fmt.Errorf("%w: %v", ErrBadCue, err)
	}
	return nil
}

func (s *Show) cueID() string {
	s.nextCue++
	return strconv.Itoa(s.nextCue)
}

func (s *Show) product(ctx context.Context, sku string) (Product, error) {
	if err := validateSKU("sku", sku); err != nil {
		return Product{}, fmt.Errorf("%w: %v", ErrBadCue, err)
	}
	p, err := s.cfg.Store.Product(ctx, sku)
	if errors.Is(err, ErrNotFound) {
		return p, fmt.Errorf("%w %q", ErrUnknownSKU, sku)
	}
	if err == nil && !p.Active {
		return p, fmt.Errorf("%w: product %q is not active", ErrBadCue, sku)
	}
	return p, err
}

func cardOf(p Product, price int64) *Card {
	return &Card{SKU: p.SKU, Title: p.Title, Description: p.Description, ImageURL: p.ImageURL, Currency: p.Currency,
		PriceMinor: price, ListPriceMinor: p.PriceMinor, Stock: p.Stock, PerViewerLimit: p.PerViewerLimit}
}

// showCard pins a product. Showing it opens a list-price sale on the stream,
// which is what makes it buyable (unless a flash sale already runs for it).
func (s *Show) showCard(ctx context.Context, sku string, now time.Time, m *Message) error {
	p, err := s.product(ctx, sku)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := ShowChange{State: s.state()}
	ch.State.CardSKU, ch.State.ListSaleID = sku, ""
	if s.listSale != "" {
		ch.End = []string{s.listSale}
	}
	price := p.PriceMinor
	if s.sale != nil && s.sale.SKU == sku {
		price = s.sale.PriceMinor
	} else {
		ch.StartList = s.listSaleOf(sku, now)
	}
	res, err := s.change(ctx, ch, now)
	if err != nil {
		return err
	}
	s.listSale = res.State.ListSaleID
	s.card = cardOf(p, price)
	m.ID, m.Card = s.cueID(), s.card
	s.broadcast(*m)
	return nil
}

func (s *Show) hideCard(ctx context.Context, now time.Time, m *Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.card == nil {
		return ErrNothingToHide
	}
	ch := ShowChange{State: s.state()}
	ch.State.CardSKU, ch.State.ListSaleID = "", ""
	if s.listSale != "" {
		ch.End = []string{s.listSale}
	}
	if _, err := s.change(ctx, ch, now); err != nil {
		return err
	}
	m.ID, m.SKU = s.cueID(), s.card.SKU
	s.card, s.listSale = nil, ""
	s.broadcast(*m)
	return nil
}

func (s *Show) startSale(ctx context.Context, req CueRequest, now time.Time, m *Message) error {
	if req.DurationSec < 1 || req.DurationSec > 24*3600 {
		return fmt.Errorf("%w: duration_s must be 1-86400", ErrBadCue)
	}
	if req.Units < 0 || req.Units > MaxStock || req.PriceMinor < 0 || req.PriceMinor > MaxPriceMinor {
		return fmt.Errorf("%w: units and price_minor must be positive and in range", ErrBadCue)
	}
	p, err := s.product(ctx, req.SKU)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sale != nil {
		return fmt.Errorf("%w: a flash sale of %s is already running; end it first", ErrBadCue, s.sale.SKU)
	}
	ch := ShowChange{State: s.state(), StartFlash: &Sale{Stream: s.stream, SKU: p.SKU, PriceMinor: req.PriceMinor, Units: req.Units,
		StartsAt: now, EndsAt: now.Add(time.Duration(req.DurationSec) * time.Second)}}
	ch.State.CardSKU, ch.State.ListSaleID = p.SKU, ""
	if s.listSale != "" {
		ch.End = []string{s.listSale}
	}
	res, err := s.change(ctx, ch, now)
	if err != nil {
		return err
	}
	sale := *res.StartedFlash
	s.sale, s.listSale = &sale, ""
	s.card = cardOf(p, sale.PriceMinor)
	s.armSaleEnd(sale, now)
	m.ID, m.Card, m.Sale = s.cueID(), s.card, s.saleInfo(sale)
	s.broadcast(*m)
	return nil
}

func (s *Show) saleInfo(sale Sale) *SaleInfo {
	return &SaleInfo{ID: sale.ID, SKU: sale.SKU, PriceMinor: sale.PriceMinor, Units: sale.Units, UnitsLeft: sale.UnitsLeft,
		EndsAt: sale.EndsAt, MSLeft: max(0, sale.EndsAt.Sub(s.cfg.Now()).Milliseconds())}
}

// saleExpired ends the flash sale id when its time ran out. If the store
// fails, it tries again a few seconds later: the store already refuses buys
// after the end, but viewers and the merchant must hear of it.
func (s *Show) saleExpired(id string) {
	s.mu.Lock()
	running := s.sale != nil && s.sale.ID == id
	s.mu.Unlock()
	if !running {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := s.Cue(ctx, CueRequest{Type: CueSaleEnd})
	if err == nil || errors.Is(err, ErrNoSale) {
		return
	}
	s.cfg.Log.Error("overlay: end of flash sale, trying again in 5 s", "stream", s.stream, "sale", id, "err", err)
	s.cfg.Metrics.StoreErrors.WithLabelValues("end_sale").Inc()
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.stop:
	default:
		if s.sale != nil && s.sale.ID == id {
			s.saleEnd = time.AfterFunc(5*time.Second, func() { s.saleExpired(id) })
		}
	}
}

// endSale closes the flash sale; the card stays, back at its list price.
func (s *Show) endSale(ctx context.Context, now time.Time, m *Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sale == nil {
		return ErrNoSale
	}
	ch := ShowChange{State: s.state(), End: []string{s.sale.ID}}
	ch.State.SaleID = ""
	onCard := s.card != nil && s.card.SKU == s.sale.SKU
	if onCard {
		ch.StartList = s.listSaleOf(s.sale.SKU, now)
	}
	res, err := s.change(ctx, ch, now)
	if err != nil {
		return err
	}
	if s.saleEnd != nil {
		s.saleEnd.Stop()
	}
	s.sale, s.listSale = nil, res.State.ListSaleID
	m.ID, m.Sale = s.cueID(), s.saleInfo(res.Ended[0])
	if onCard {
		card := *s.card
		card.PriceMinor = card.ListPriceMinor
		s.card = &card
		m.Card = s.card
	}
	s.broadcast(*m)
	return nil
}

func (s *Show) custom(data json.RawMessage, m *Message) error {
	if len(data) == 0 || len(data) > MaxCustomCue || !json.Valid(data) {
		return fmt.Errorf("%w: data must be valid JSON of at most %d bytes", ErrBadCue, MaxCustomCue)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m.ID, m.Data = s.cueID(), data
	s.broadcast(*m)
	return nil
}

// Buy reserves units for a viewer. A refusal is a result with a reason.
func (s *Show) Buy(ctx context.Context, viewer, sku string, qty int64, key string) (BuyResult, error) {
	res, err := buy(ctx, s.cfg, s.stream, viewer, sku, qty, key)
	if err == nil && res.Outcome == OutcomeReserved {
		s.StockChanged(sku)
	}
	return res, err
}

// Confirm turns a viewer's reservation into an order.
func (s *Show) Confirm(ctx context.Context, viewer, orderID string) (Order, error) {
	return confirm(ctx, s.cfg, viewer, orderID)
}

// buy and confirm are the store's side of a purchase, wherever the show
// runs: every rule (stock, limits, idempotency) is the store's.
func buy(ctx context.Context, cfg ShowConfig, stream, viewer, sku string, qty int64, key string) (BuyResult, error) {
	req := BuyRequest{Stream: stream, SKU: sku, ViewerID: viewer, Qty: qty, IdempotencyKey: key}
	if err := ValidateBuyRequest(req); err != nil {
		cfg.Metrics.buys.WithLabelValues("invalid").Inc()
		return BuyResult{}, err
	}
	start := time.Now()
	res, err := cfg.Store.Buy(ctx, req, cfg.Now(), cfg.ReservationTTL)
	cfg.Metrics.buyLatency.Observe(time.Since(start).Seconds())
	if err != nil {
		cfg.Metrics.buys.WithLabelValues("error").Inc()
		return res, err
	}
	cfg.Metrics.buys.WithLabelValues(res.Outcome).Inc()
	return res, nil
}

func confirm(ctx context.Context, cfg ShowConfig, viewer, orderID string) (Order, error) {
	now := cfg.Now()
	o, err := cfg.Store.Confirm(ctx, orderID, viewer, now)
	if err != nil {
		cfg.Metrics.confirmFailed(err)
		return o, err
	}
	// Confirming twice returns the order unchanged: count it only when this
	// call confirmed it.
	if d := now.Sub(o.ConfirmedAt); d >= -time.Millisecond && d <= time.Millisecond {
		cfg.Metrics.orderConfirmed(o)
	}
	return o, nil
}

// StockChanged marks a product's stock as changed (a buy, an expiry); viewers
// get one coalesced update per StockEvery at most.
func (s *Show) StockChanged(sku string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dirty[sku] = true
}

func (s *Show) flushStock() {
	tick := time.NewTicker(s.cfg.StockEvery)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		s.mu.Lock()
		dirty := s.dirty
		s.dirty = map[string]bool{}
		s.mu.Unlock()
		if len(dirty) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var stock []StockInfo
		now := s.cfg.Now()
		for sku := range dirty {
			p, err := s.cfg.Store.Product(ctx, sku)
			if err != nil {
				continue
			}
			info := StockInfo{SKU: sku, Stock: p.Stock}
			if sale, err := s.cfg.Store.ActiveSale(ctx, s.stream, sku, now); err == nil && sale.Units > 0 {
				left := sale.UnitsLeft
				info.UnitsLeft = &left
				s.cfg.Metrics.unitsLeft.WithLabelValues(s.stream, sku).Set(float64(left))
			}
			stock = append(stock, info)
		}
		cancel()
		s.mu.Lock()
		for _, st := range stock {
			if s.card != nil && s.card.SKU == st.SKU {
				card := *s.card
				card.Stock = st.Stock
				s.card = &card
			}
			if s.sale != nil && s.sale.SKU == st.SKU && st.UnitsLeft != nil {
				sale := *s.sale
				sale.UnitsLeft = *st.UnitsLeft
				s.sale = &sale
			}
		}
		if len(stock) > 0 {
			s.broadcast(Message{V: 1, Type: "stock", Stock: stock})
		}
		s.mu.Unlock()
	}
}

// OnScreen is the SKU whose card viewers see now, "" for none.
func (s *Show) OnScreen() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.card == nil {
		return ""
	}
	return s.card.SKU
}

// CurrentSKUs are the products the show offers now, whose stock can change
// when reservations expire.
func (s *Show) CurrentSKUs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	if s.card != nil {
		out = append(out, s.card.SKU)
	}
	if s.sale != nil && (s.card == nil || s.card.SKU != s.sale.SKU) {
		out = append(out, s.sale.SKU)
	}
	return out
}
