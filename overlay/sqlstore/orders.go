package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

const orderColumns = `id, stream, sku, sale_id, viewer_id, qty, unit_price_minor, currency, status,
	idempotency_key, created_at, expires_at, confirmed_at`

func scanOrder(row interface{ Scan(...any) error }) (overlay.Order, error) {
	var o overlay.Order
	var created, expires, confirmed int64
	err := row.Scan(&o.ID, &o.Stream, &o.SKU, &o.SaleID, &o.ViewerID, &o.Qty, &o.UnitPriceMinor, &o.Currency,
		&o.Status, &o.IdempotencyKey, &created, &expires, &confirmed)
	o.CreatedAt, o.ExpiresAt, o.ConfirmedAt = fromMicros(created), fromMicros(expires), fromMicros(confirmed)
	o.ShopperID = overlay.ShopperOf(o.ViewerID)
	return o, err
}

func getOrder(ctx context.Context, q execer, id string) (overlay.Order, error) {
	o, err := scanOrder(q.QueryRowContext(ctx, `SELECT `+orderColumns+` FROM orders WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return overlay.Order{}, fmt.Errorf("order %s: %w", id, overlay.ErrNotFound)
	}
	return o, err
}

// Buy implements overlay.Store. Everything happens in one transaction:
//
//  1. claim the idempotency key (a second buy with the key waits here until
//     the first commits, then reads its stored result);
//  2. write the order and its outbox event;
//  3. add the units to the viewer's counter only if the limit allows;
//  4. take the units from the sale only if enough are left;
//  5. take them from the product's stock only if enough are left;
//  6. store the result for the key.
//
// Steps 3-5 are conditional UPDATEs: the database decides atomically, so no
// interleaving of buyers can oversell. If one of them refuses, the steps
// before it are rolled back to a savepoint and the refusal is stored as the
// key's result.
func (s *Store) Buy(ctx context.Context, req overlay.BuyRequest, now time.Time, ttl time.Duration) (overlay.BuyResult, error) {
	if err := overlay.ValidateBuyRequest(req); err != nil {
		return overlay.BuyResult{}, fmt.Errorf("buy: %w", err)
	}
	if ttl <= 0 {
		return overlay.BuyResult{}, errors.New("buy: reservation time must be positive")
	}
	now = now.UTC().Truncate(time.Microsecond)
	request := req.Stream + "\n" + req.SKU + "\n" + strconv.FormatInt(req.Qty, 10)
	var res overlay.BuyResult
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		n, err := execN(ctx, tx, `INSERT INTO buy_keys (viewer_id, idempotency_key, request, result, created_at)
			VALUES ($1, $2, $3, '', $4) ON CONFLICT (viewer_id, idempotency_key) DO NOTHING`,
			req.ViewerID, req.IdempotencyKey, request, micros(now))
		if err != nil {
			return err
		}
		if n == 0 {
			res, err = firstResult(ctx, tx, req, request)
			return err
		}
		if res, err = s.reserve(ctx, tx, req, now, ttl); err != nil {
			return err
		}
		stored, err := json.Marshal(res)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE buy_keys SET result = $3 WHERE viewer_id = $1 AND idempotency_key = $2`,
			req.ViewerID, req.IdempotencyKey, string(stored))
		return err
	})
	if err != nil {
		return overlay.BuyResult{}, fmt.Errorf("buy %s on %s: %w", req.SKU, req.Stream, err)
	}
	return res, nil
}

// firstResult answers a buy whose key was seen before with the stored result.
func firstResult(ctx context.Context, tx *sql.Tx, req overlay.BuyRequest, request string) (overlay.BuyResult, error) {
	var firstRequest, stored string
	err := tx.QueryRowContext(ctx, `SELECT request, result FROM buy_keys WHERE viewer_id = $1 AND idempotency_key = $2`,
		req.ViewerID, req.IdempotencyKey).Scan(&firstRequest, &stored)
	if err != nil {
		return overlay.BuyResult{}, err
	}
	if firstRequest != request {
		return overlay.BuyResult{}, overlay.ErrKeyReused
	}
	var res overlay.BuyResult
	if err := json.Unmarshal([]byte(stored), &res); err != nil {
		return overlay.BuyResult{}, fmt.Errorf("stored result of key: %w", err)
	}
	return res, nil
}

func (s *Store) reserve(ctx context.Context, tx *sql.Tx, req overlay.BuyRequest, now time.Time, ttl time.Duration) (overlay.BuyResult, error) {
	// These reads pick the price and the rules, and may refuse early; they
	// never grant anything: every guard that lets a buy through is a
	// conditional update below.
	var active bool
	var currency string
	var limit, stock int64
	err := tx.QueryRowContext(ctx, `SELECT active, currency, per_viewer_limit, stock FROM products WHERE sku = $1`,
		req.SKU).Scan(&active, &currency, &limit, &stock)
	if errors.Is(err, sql.ErrNoRows) {
		return overlay.NewBuyResult(overlay.OutcomeUnknownProduct, nil), nil
	}
	if err != nil {
		return overlay.BuyResult{}, err
	}
	if !active {
		return overlay.NewBuyResult(overlay.OutcomeInactive, nil), nil
	}
	sale, err := activeSale(ctx, tx, req.Stream, req.SKU, now)
	if errors.Is(err, overlay.ErrNotFound) {
		return overlay.NewBuyResult(overlay.OutcomeSaleOver, nil), nil
	}
	if err != nil {
		return overlay.BuyResult{}, err
	}
	if limit > 0 && req.Qty > limit {
		return overlay.NewBuyResult(overlay.OutcomeLimitReached, nil), nil
	}
	// Once a flash sale is gone most buyers arrive too late: answer them
	// without queueing on the sale's row lock. A stale read here can only
	// refuse a buy that a moment earlier would have been refused anyway.
	if stock < req.Qty || (sale.Units > 0 && sale.UnitsLeft < req.Qty) {
		return overlay.NewBuyResult(overlay.OutcomeSoldOut, nil), nil
	}

	o := overlay.Order{
		ID:             newID("ord_"),
		Stream:         req.Stream,
		SKU:            req.SKU,
		SaleID:         sale.ID,
		ViewerID:       req.ViewerID,
		ShopperID:      overlay.ShopperOf(req.ViewerID),
		Qty:            req.Qty,
		UnitPriceMinor: sale.PriceMinor,
		Currency:       currency,
		Status:         overlay.OrderReserved,
		IdempotencyKey: req.IdempotencyKey,
		CreatedAt:      now,
		ExpiresAt:      now.Add(ttl).Truncate(time.Microsecond),
	}
	if _, err := tx.ExecContext(ctx, `SAVEPOINT buy`); err != nil {
		return overlay.BuyResult{}, err
	}
	refuse := func(outcome string) (overlay.BuyResult, error) {
		if _, err := tx.ExecContext(ctx, `ROLLBACK TO SAVEPOINT buy`); err != nil {
			return overlay.BuyResult{}, err
		}
		return overlay.NewBuyResult(outcome, nil), nil
	}

	// The order and its event are new rows that nobody else waits for:
	// writing them first keeps them out of the time the shared rows below
	// stay locked (PostgreSQL holds those locks until commit).
	if _, err := tx.ExecContext(ctx, `INSERT INTO orders (`+orderColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
		o.ID, o.Stream, o.SKU, o.SaleID, o.ViewerID, o.Qty, o.UnitPriceMinor, o.Currency, o.Status,
		o.IdempotencyKey, micros(o.CreatedAt), micros(o.ExpiresAt), micros(o.ConfirmedAt)); err != nil {
		return overlay.BuyResult{}, err
	}
	if err := addEvent(ctx, tx, overlay.EventOrderReserved, o, now); err != nil {
		return overlay.BuyResult{}, err
	}

	// The counter is kept even without a limit, so a limit set later
	// counts what viewers already hold.
	n, err := execN(ctx, tx, `INSERT INTO viewer_units (sku, viewer_id, units) VALUES ($1, $2, $3)
		ON CONFLICT (sku, viewer_id) DO UPDATE SET units = viewer_units.units + excluded.units
		WHERE $4 = 0 OR viewer_units.units + excluded.units <= $4`,
		req.SKU, req.ViewerID, req.Qty, limit)
	if err != nil {
		return overlay.BuyResult{}, err
	}
	if n == 0 {
		return refuse(overlay.OutcomeLimitReached)
	}

	// A sale with units = 0 has no cap of its own: only stock limits it.
	n, err = execN(ctx, tx, `UPDATE sales SET units_left = units_left - CASE WHEN units = 0 THEN 0 ELSE $2 END
		WHERE id = $1 AND status = 'active' AND starts_at <= $3 AND ends_at > $3 AND (units = 0 OR units_left >= $2)`,
		sale.ID, req.Qty, micros(now))
	if err != nil {
		return overlay.BuyResult{}, err
	}
	if n == 0 {
		// Refused either for lack of units or because the sale ended
		// since it was read; tell the viewer which.
		if _, err := activeSale(ctx, tx, req.Stream, req.SKU, now); errors.Is(err, overlay.ErrNotFound) {
			return refuse(overlay.OutcomeSaleOver)
		}
		return refuse(overlay.OutcomeSoldOut)
	}

	n, err = execN(ctx, tx, `UPDATE products SET stock = stock - $2 WHERE sku = $1 AND stock >= $2`, req.SKU, req.Qty)
	if err != nil {
		return overlay.BuyResult{}, err
	}
	if n == 0 {
		return refuse(overlay.OutcomeSoldOut)
	}
	return overlay.NewBuyResult(overlay.OutcomeReserved, &o), nil
}

// Confirm implements overlay.Store. The committed transaction is the
// durability point: once Confirm returns, the order survives a crash.
func (s *Store) Confirm(ctx context.Context, orderID, viewerID string, now time.Time) (overlay.Order, error) {
	now = now.UTC().Truncate(time.Microsecond)
	var o overlay.Order
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		n, err := execN(ctx, tx, `UPDATE orders SET status = 'confirmed', confirmed_at = $3
			WHERE id = $1 AND viewer_id = $2 AND status = 'reserved' AND expires_at > $3`,
			orderID, viewerID, micros(now))
		if err != nil {
			return err
		}
		if o, err = getOrder(ctx, tx, orderID); err != nil {
			return err
		}
		if n == 1 {
			return addEvent(ctx, tx, overlay.EventOrderConfirmed, o, now)
		}
		if o.Status == overlay.OrderConfirmed && o.ViewerID == viewerID {
			return nil // confirmed before: same answer, no second event
		}
		return refusal(o, viewerID)
	})
	if err != nil {
		return overlay.Order{}, fmt.Errorf("confirm order %s: %w", orderID, err)
	}
	return o, nil
}

// refusal explains why an order could not change.
func refusal(o overlay.Order, viewerID string) error {
	switch {
	case o.ViewerID != viewerID:
		return overlay.ErrForeignViewer
	case o.Status == overlay.OrderCancelled, o.Status == overlay.OrderConfirmed:
		return overlay.ErrOrderClosed
	default: // expired, or reserved with its time run out
		return overlay.ErrReservationExpired
	}
}

// Cancel implements overlay.Store.
func (s *Store) Cancel(ctx context.Context, orderID, viewerID string, now time.Time) (overlay.Order, error) {
	now = now.UTC().Truncate(time.Microsecond)
	var o overlay.Order
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		o, err = getOrder(ctx, tx, orderID)
		if err != nil {
			return err
		}
		if o.ViewerID != viewerID {
			return overlay.ErrForeignViewer
		}
		if o.Status == overlay.OrderCancelled {
			return nil
		}
		released, err := release(ctx, tx, orderID, overlay.OrderCancelled, `expires_at > $3`, now)
		if err != nil {
			return err
		}
		if !released {
			return refusal(o, viewerID)
		}
		o, err = getOrder(ctx, tx, orderID)
		return err
	})
	if err != nil {
		return overlay.Order{}, fmt.Errorf("cancel order %s: %w", orderID, err)
	}
	return o, nil
}

// expireBatch bounds the work of one ExpireReservations call.
const expireBatch = 500

// ExpireReservations implements overlay.Store. Each order is released in a
// transaction of its own: locks are then always taken in the order Buy takes
// them (viewer, sale, product), so buyers and the expirer cannot deadlock on
// PostgreSQL.
func (s *Store) ExpireReservations(ctx context.Context, now time.Time) (int, error) {
	now = now.UTC().Truncate(time.Microsecond)
	rows, err := s.read.QueryContext(ctx, `SELECT id FROM orders WHERE status = 'reserved' AND expires_at <= $1
		ORDER BY expires_at LIMIT $2`, micros(now), expireBatch)
	if err != nil {
		return 0, fmt.Errorf("expire reservations: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, fmt.Errorf("expire reservations: %w", err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("expire reservations: %w", err)
	}
	expired := 0
	for _, id := range ids {
		var released bool
		err := s.inTx(ctx, func(tx *sql.Tx) error {
			var err error
			released, err = release(ctx, tx, id, overlay.OrderExpired, `expires_at <= $3`, now)
			return err
		})
		if err != nil {
			return expired, fmt.Errorf("expire order %s: %w", id, err)
		}
		if released {
			expired++
		}
	}
	return expired, nil
}

// release moves a reserved order to status when cond (on expires_at, with $3
// = now) holds, gives its units back to the viewer's counter, the sale and
// the product, and writes the matching event. It reports false when the
// order was no longer reserved (confirmed or released meanwhile).
func release(ctx context.Context, tx *sql.Tx, orderID, status, cond string, now time.Time) (bool, error) {
	n, err := execN(ctx, tx, `UPDATE orders SET status = $2 WHERE id = $1 AND status = 'reserved' AND `+cond,
		orderID, status, micros(now))
	if err != nil || n == 0 {
		return false, err
	}
	o, err := getOrder(ctx, tx, orderID)
	if err != nil {
		return false, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE viewer_units SET units = units - $3
		WHERE sku = $1 AND viewer_id = $2 AND units >= $3`, o.SKU, o.ViewerID, o.Qty); err != nil {
		return false, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE sales SET units_left = units_left + $2 WHERE id = $1 AND units > 0`,
		o.SaleID, o.Qty); err != nil {
		return false, err
	}
	// The product may have been deleted meanwhile; then there is no stock
	// to return and nothing to do.
	if _, err := tx.ExecContext(ctx, `UPDATE products SET stock = stock + $2 WHERE sku = $1`, o.SKU, o.Qty); err != nil {
		return false, err
	}
	event := overlay.EventOrderExpired
	if status == overlay.OrderCancelled {
		event = overlay.EventOrderCancelled
	}
	return true, addEvent(ctx, tx, event, o, now)
}

// Order implements overlay.Store.
func (s *Store) Order(ctx context.Context, id string) (overlay.Order, error) {
	o, err := getOrder(ctx, s.read, id)
	if err != nil && !errors.Is(err, overlay.ErrNotFound) {
		err = fmt.Errorf("order %s: %w", id, err)
	}
	return o, err
}

// Orders implements overlay.Store.
func (s *Store) Orders(ctx context.Context, stream string, limit int) ([]overlay.Order, error) {
	if limit <= 0 || limit > 10_000 {
		limit = 10_000
	}
	rows, err := s.read.QueryContext(ctx, `SELECT `+orderColumns+` FROM orders WHERE stream = $1
		ORDER BY created_at DESC, id DESC LIMIT $2`, stream, limit)
	if err != nil {
		return nil, fmt.Errorf("orders of %s: %w", stream, err)
	}
	defer rows.Close()
	var os []overlay.Order
	for rows.Next() {
		o, err := scanOrder(rows)
		if err != nil {
			return nil, fmt.Errorf("orders of %s: %w", stream, err)
		}
		os = append(os, o)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("orders of %s: %w", stream, err)
	}
	return os, nil
}

// Stats implements overlay.Store.
func (s *Store) Stats(ctx context.Context, stream string) (overlay.OrderStats, error) {
	st := overlay.OrderStats{RevenueMinor: map[string]int64{}}
	// SUM of BIGINT is NUMERIC on PostgreSQL: cast it back so both drivers
	// return an integer.
	rows, err := s.read.QueryContext(ctx, `SELECT status, currency, COUNT(*),
		CAST(COALESCE(SUM(qty), 0) AS BIGINT), CAST(COALESCE(SUM(qty * unit_price_minor), 0) AS BIGINT)
		FROM orders WHERE stream = $1 GROUP BY status, currency`, stream)
	if err != nil {
		return st, fmt.Errorf("stats of %s: %w", stream, err)
	}
	defer rows.Close()
	for rows.Next() {
		var status, currency string
		var count, units, revenue int64
		if err := rows.Scan(&status, &currency, &count, &units, &revenue); err != nil {
			return st, fmt.Errorf("stats of %s: %w", stream, err)
		}
		switch status {
		case overlay.OrderReserved:
			st.Reserved += count
		case overlay.OrderConfirmed:
			st.Confirmed += count
			st.UnitsSold += units
			st.RevenueMinor[currency] += revenue
		case overlay.OrderExpired:
			st.Expired += count
		case overlay.OrderCancelled:
			st.Cancelled += count
		}
	}
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("stats of %s: %w", stream, err)
	}
	return st, nil
}
