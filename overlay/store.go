package overlay

import (
	"context"
	"errors"
	"time"
)

// Errors a Store returns, wrapped with context; test them with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	// ErrSaleRunning: a stream runs at most one sale per product at a time.
	ErrSaleRunning = errors.New("a sale of this product is already running on this stream")
	// ErrForeignViewer: only the viewer who reserved an order may act on it.
	ErrForeignViewer = errors.New("order belongs to another viewer")
	// ErrReservationExpired: the reservation ran out; its units went back on sale.
	ErrReservationExpired = errors.New("reservation expired")
	// ErrOrderClosed: the order was cancelled and can no longer change.
	ErrOrderClosed = errors.New("order is cancelled")
	// ErrKeyReused: an idempotency key came back with a different request.
	ErrKeyReused = errors.New("idempotency key already used for a different request")
)

// How long Prune keeps what it deletes.
const (
	KeyRetention   = 24 * time.Hour
	EventRetention = 7 * 24 * time.Hour
)

// Order event types, as the merchant's webhook receives them.
const (
	EventOrderReserved  = "order.reserved"
	EventOrderConfirmed = "order.confirmed"
	EventOrderExpired   = "order.expired"
	EventOrderCancelled = "order.cancelled"
)

// EventSaleEnded tells the merchant a flash sale is over (by cue, when its
// time ran out, or at start when it ran out while the server was down),
// with the sale as it ended: units - units_left is what it sold. List-price
// sales, which a shown card opens, are plumbing and send none.
const EventSaleEnded = "sale.ended"

// Event is one message for the merchant, waiting in the store's outbox. The
// store writes it in the same transaction as the change it reports, so an
// event exists exactly when its change does.
type Event struct {
	ID        string    `json:"id"`
	Type      string    `json:"type"`
	CreatedAt time.Time `json:"created_at"`
	// Payload is the JSON body sent to the merchant, fixed when the event is
	// written so every retry sends the same bytes.
	Payload  []byte `json:"-"`
	Attempts int    `json:"-"` // delivery attempts so far, this one included
}

// OrderStats sums a stream's orders.
type OrderStats struct {
	Reserved  int64 `json:"reserved"`
	Confirmed int64 `json:"confirmed"`
	Expired   int64 `json:"expired"`
	Cancelled int64 `json:"cancelled"`
	// UnitsSold counts units of confirmed orders.
	UnitsSold int64 `json:"units_sold"`
	// RevenueMinor is confirmed revenue per currency, in minor units.
	RevenueMinor map[string]int64 `json:"revenue_minor"`
}

// Store keeps the catalog, sales, orders and the outbox. Implementations
// must keep the commerce rules under any concurrency: stock and sale units
// never go below zero, per-viewer limits hold, an idempotency key seen
// before gets the first result, a confirmed order is durable once Confirm
// returns, and every order event is written with its change.
//
// Methods that decide by time take now from the caller, so one clock rules
// a request and tests can move it.
type Store interface {
	// CreateProduct adds a product; ErrExists if the SKU is taken.
	CreateProduct(ctx context.Context, p Product) (Product, error)
	// UpdateProduct replaces a product's fields; ErrNotFound if absent.
	UpdateProduct(ctx context.Context, p Product) (Product, error)
	// Product returns one product; ErrNotFound if absent.
	Product(ctx context.Context, sku string) (Product, error)
	// Products lists the catalog by SKU.
	Products(ctx context.Context) ([]Product, error)
	// DeleteProduct removes a product; ErrNotFound if absent. Orders keep
	// their copy of what was bought.
	DeleteProduct(ctx context.Context, sku string) error
	// ImportProducts creates or replaces all products in one transaction:
	// all are stored or none.
	ImportProducts(ctx context.Context, ps []Product) error

	// StartSale opens a sale; ErrSaleRunning if one runs for the same stream
	// and product, ErrNotFound if the product does not exist.
	StartSale(ctx context.Context, s Sale, now time.Time) (Sale, error)
	// EndSale closes a sale now; ending an ended sale is not an error.
	EndSale(ctx context.Context, saleID string, now time.Time) (Sale, error)
	// ActiveSale returns the sale running for a product on a stream at now;
	// ErrNotFound if none.
	ActiveSale(ctx context.Context, stream, sku string, now time.Time) (Sale, error)

	// Buy reserves units for a viewer for ttl. A refusal (sold out, limit,
	// ...) is a BuyResult, not an error; errors mean the store failed or the
	// idempotency key was reused for another request (ErrKeyReused).
	Buy(ctx context.Context, req BuyRequest, now time.Time, ttl time.Duration) (BuyResult, error)
	// Confirm turns a reservation into a sale. Confirming a confirmed order
	// returns it unchanged. Errors: ErrNotFound, ErrForeignViewer,
	// ErrReservationExpired, ErrOrderClosed.
	Confirm(ctx context.Context, orderID, viewerID string, now time.Time) (Order, error)
	// Cancel gives up a reservation and returns its units. Errors as Confirm;
	// a confirmed order cannot be cancelled here (ErrOrderClosed).
	Cancel(ctx context.Context, orderID, viewerID string, now time.Time) (Order, error)
	// ExpireReservations expires reservations whose time ran out at now,
	// returns their units to stock and reports how many expired. It may
	// stop after a batch (500 in sqlstore): call it periodically.
	ExpireReservations(ctx context.Context, now time.Time) (int, error)
	// Order returns one order; ErrNotFound if absent.
	Order(ctx context.Context, id string) (Order, error)
	// Orders lists a stream's orders, newest first, at most limit.
	Orders(ctx context.Context, stream string, limit int) ([]Order, error)
	// Stats sums a stream's orders.
	Stats(ctx context.Context, stream string) (OrderStats, error)

	// ShowState returns what a stream's show was doing when last written:
	// the zero state (with Stream set) for a stream never shown.
	ShowState(ctx context.Context, stream string) (ShowState, error)
	// OpenSales lists a stream's sales not ended yet, including those whose
	// time ran out but that nobody ended.
	OpenSales(ctx context.Context, stream string) ([]Sale, error)
	// ChangeShow ends the sales in ch.End, opens ch.StartList and
	// ch.StartFlash, and writes ch.State with their ids, in one transaction:
	// the stored state names exactly the sales the show runs, whatever
	// moment the process dies at. Ending the flash sale the stored state
	// names writes its EventSaleEnded. Errors as StartSale.
	ChangeShow(ctx context.Context, ch ShowChange, now time.Time) (ShowChangeResult, error)

	// ClaimEvents returns up to limit outbox events due at now and hides them
	// from other claims until now+lease, so concurrent workers (or nodes)
	// do not send the same event at the same time.
	ClaimEvents(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]Event, error)
	// MarkDelivered records that the merchant acknowledged an event.
	MarkDelivered(ctx context.Context, eventID string, now time.Time) error
	// RetryEvent schedules the next attempt of an event at next.
	RetryEvent(ctx context.Context, eventID string, next time.Time, lastError string) error
	// OutboxDepth counts events the merchant has not acknowledged yet.
	OutboxDepth(ctx context.Context) (int64, error)
	// Prune deletes what no rule needs any more, so the store does not
	// grow with every buy: idempotency keys older than KeyRetention (a
	// client retries within minutes; a key pruned is a new buy) and events
	// the merchant acknowledged more than EventRetention ago. An event not
	// yet acknowledged is never pruned. It may stop after a batch: call it
	// periodically. It reports how many keys and events it deleted.
	Prune(ctx context.Context, now time.Time) (keys, events int64, err error)

	Close() error
}

// ShowState is what a stream's show is doing, kept in the store so that a
// restart (planned or a crash) picks the show up where it was. Stock, units
// left and the card's text are not in it: they are read from the catalog
// and the sales when the show is restored.
type ShowState struct {
	Stream string `json:"stream"`
	// CardSKU is the product whose card is on screen, "" for none. The
	// card's media-clock stamp is not kept: it belongs to the creator
	// session that clicked.
	CardSKU string `json:"card_sku,omitempty"`
	// ListSaleID is the list-price sale that makes the card buyable, ""
	// when the flash sale covers the card's product.
	ListSaleID string `json:"list_sale_id,omitempty"`
	// SaleID is the running flash sale, "" for none.
	SaleID string    `json:"sale_id,omitempty"`
	Run    RunOfShow `json:"run_of_show"`
}

// ShowChange is one step of a show, which the store writes at once.
type ShowChange struct {
	// End lists sales to end now (ending an ended sale is no error).
	End []string
	// StartList and StartFlash, when set, are opened after End; the store
	// puts their ids in State.ListSaleID and State.SaleID.
	StartList, StartFlash *Sale
	// State is the show's state after the change.
	State ShowState
}

// ShowChangeResult is a ShowChange as stored.
type ShowChangeResult struct {
	State ShowState
	// Ended are the sales of End as they ended, in End's order.
	Ended                     []Sale
	StartedList, StartedFlash *Sale
}
