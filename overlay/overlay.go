// Package overlay is Vitrine's commerce: the catalog, flash sales on a stream,
// viewers' orders, the store that keeps them safe under load, and the signed
// webhooks that tell the merchant what happened.
package overlay

import (
	"strings"
	"time"
)

// Product is one catalog item. SKU is the merchant's own key and is unique.
type Product struct {
	SKU         string `json:"sku"`
	Title       string `json:"title"`
	Description string `json:"description,omitempty"`
	// PriceMinor is the list price in the currency's minor unit (cents), so
	// money never goes through floating point.
	PriceMinor int64  `json:"price_minor"`
	Currency   string `json:"currency"` // ISO 4217 code, e.g. "EUR"
	ImageURL   string `json:"image_url,omitempty"`
	Stock      int64  `json:"stock"`
	// PerViewerLimit caps the units one viewer may hold (reserved or
	// confirmed) of this product; 0 means no limit.
	PerViewerLimit int       `json:"per_viewer_limit"`
	Active         bool      `json:"active"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`
}

// Sale states.
const (
	SaleActive = "active"
	SaleEnded  = "ended"
)

// Sale offers a product on one stream, at a price, for a time window.
// A viewer can buy only while a sale of that product runs on the stream.
type Sale struct {
	ID     string `json:"id"`
	Stream string `json:"stream"`
	SKU    string `json:"sku"`
	// PriceMinor is the sale price; StartSale fills in the product's list
	// price when it is 0.
	PriceMinor int64 `json:"price_minor"`
	// Units caps how many units this sale sells (a flash sale's "100 pieces");
	// 0 means only the product's stock limits it.
	Units     int64     `json:"units"`
	UnitsLeft int64     `json:"units_left"`
	StartsAt  time.Time `json:"starts_at"`
	EndsAt    time.Time `json:"ends_at"`
	Status    string    `json:"status"`
}

// Running reports whether viewers can buy from s at now.
func (s Sale) Running(now time.Time) bool {
	return s.Status == SaleActive && !now.Before(s.StartsAt) && now.Before(s.EndsAt)
}

// Order states. An order is reserved first: the units are held for the viewer
// until it is confirmed (paid) or its reservation runs out.
const (
	OrderReserved  = "reserved"
	OrderConfirmed = "confirmed"
	OrderExpired   = "expired"
	OrderCancelled = "cancelled"
)

// Order is one viewer's purchase of Qty units of a product on a stream.
type Order struct {
	ID       string `json:"id"`
	Stream   string `json:"stream"`
	SKU      string `json:"sku"`
	SaleID   string `json:"sale_id"`
	ViewerID string `json:"viewer_id"`
	// ShopperID is the shop's own id of the shopper when the shop vouched
	// for the buyer (a shopper token); "" for an anonymous viewer.
	ShopperID      string    `json:"shopper_id,omitempty"`
	Qty            int64     `json:"qty"`
	UnitPriceMinor int64     `json:"unit_price_minor"`
	Currency       string    `json:"currency"`
	Status         string    `json:"status"`
	IdempotencyKey string    `json:"idempotency_key"`
	CreatedAt      time.Time `json:"created_at"`
	ExpiresAt      time.Time `json:"expires_at"`
	// ConfirmedAt is the zero time until the order is confirmed.
	ConfirmedAt time.Time `json:"confirmed_at,omitzero"`
}

// ShopperPrefix starts the viewer id of a shopper the merchant's shop
// vouched for: "shopper:" + the shop's id of the shopper, the same on every
// device, so that per-viewer limits count per shopper.
const ShopperPrefix = "shopper:"

// ShopperOf is the shop's shopper id in a viewer id, "" for an anonymous
// viewer.
func ShopperOf(viewerID string) string {
	id, _ := strings.CutPrefix(viewerID, ShopperPrefix)
	if id == viewerID {
		return ""
	}
	return id
}

// TotalMinor is what the order costs, in minor units.
func (o Order) TotalMinor() int64 { return o.Qty * o.UnitPriceMinor }

// BuyRequest is a viewer pressing Buy. The client picks IdempotencyKey once
// per press, so a retried request (lost response, double click) is answered
// with the first result instead of buying twice.
type BuyRequest struct {
	Stream         string `json:"stream"`
	SKU            string `json:"sku"`
	ViewerID       string `json:"viewer_id"`
	Qty            int64  `json:"qty"`
	IdempotencyKey string `json:"idempotency_key"`
}

// Buy outcomes. Only OutcomeReserved carries an order.
const (
	OutcomeReserved       = "reserved"
	OutcomeSoldOut        = "sold_out"
	OutcomeLimitReached   = "limit_reached"
	OutcomeSaleOver       = "sale_over"
	OutcomeUnknownProduct = "unknown_product"
	OutcomeInactive       = "inactive"
)

// BuyResult is the answer to a BuyRequest. A refused buy is a result, not an
// error: the viewer's page shows Reason.
type BuyResult struct {
	Outcome string `json:"outcome"`
	Reason  string `json:"reason"`
	Order   *Order `json:"order,omitempty"`
}

// outcomeReason is the text a page shows for an outcome.
func outcomeReason(outcome string) string {
	switch outcome {
	case OutcomeReserved:
		return "Reserved for you: confirm before the timer runs out."
	case OutcomeSoldOut:
		return "Sold out."
	case OutcomeLimitReached:
		return "You already have the most units allowed per viewer."
	case OutcomeSaleOver:
		return "This sale is not running."
	case OutcomeUnknownProduct:
		return "This product does not exist."
	case OutcomeInactive:
		return "This product is not on sale."
	}
	return ""
}

// NewBuyResult builds a result with the standard reason for outcome.
func NewBuyResult(outcome string, order *Order) BuyResult {
	return BuyResult{Outcome: outcome, Reason: outcomeReason(outcome), Order: order}
}
