package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

// eventBody is the JSON the merchant receives. id lets the merchant drop a
// duplicate: delivery is at least once. data holds the order of an order
// event, the sale of a sale event.
type eventBody struct {
	ID        string    `json:"id"`
	Type      string    `json:"type"`
	CreatedAt time.Time `json:"created_at"`
	Data      struct {
		Order *overlay.Order `json:"order,omitempty"`
		Sale  *overlay.Sale  `json:"sale,omitempty"`
	} `json:"data"`
}

// addEvent writes an order event into the outbox inside tx, so the event is
// committed exactly when the change it reports is.
func addEvent(ctx context.Context, tx *sql.Tx, typ string, o overlay.Order, now time.Time) error {
	body := eventBody{ID: newID("evt_"), Type: typ, CreatedAt: now}
	body.Data.Order = &o
	return writeEvent(ctx, tx, body)
}

// addSaleEvent is addEvent for a sale.
func addSaleEvent(ctx context.Context, tx *sql.Tx, typ string, sale overlay.Sale, now time.Time) error {
	body := eventBody{ID: newID("evt_"), Type: typ, CreatedAt: now}
	body.Data.Sale = &sale
	return writeEvent(ctx, tx, body)
}

func writeEvent(ctx context.Context, tx *sql.Tx, body eventBody) error {
	payload, err := json.Marshal(body)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO outbox (id, type, payload, created_at, next_attempt_at)
		VALUES ($1, $2, $3, $4, $4)`, body.ID, body.Type, string(payload), micros(body.CreatedAt))
	return err
}

// ClaimEvents implements overlay.Store. Claiming moves an event's next
// attempt to now+lease: if the worker dies mid-delivery the event comes due
// again after the lease, and no one else sends it meanwhile.
func (s *Store) ClaimEvents(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]overlay.Event, error) {
	if limit <= 0 {
		return nil, nil
	}
	var events []overlay.Event
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `UPDATE outbox SET next_attempt_at = $2, attempts = attempts + 1
			WHERE id IN (SELECT id FROM outbox WHERE delivered_at = 0 AND next_attempt_at <= $1
				ORDER BY next_attempt_at, created_at LIMIT $3 `+s.d.skipLocked+`)
			RETURNING id, type, payload, created_at, attempts`,
			micros(now), micros(now.Add(lease)), limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var e overlay.Event
			var payload string
			var created int64
			if err := rows.Scan(&e.ID, &e.Type, &payload, &created, &e.Attempts); err != nil {
				return err
			}
			e.Payload, e.CreatedAt = []byte(payload), fromMicros(created)
			events = append(events, e)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("claim events: %w", err)
	}
	// RETURNING keeps no order; merchants are better served oldest first.
	sort.Slice(events, func(i, j int) bool { return events[i].CreatedAt.Before(events[j].CreatedAt) })
	return events, nil
}

// MarkDelivered implements overlay.Store.
func (s *Store) MarkDelivered(ctx context.Context, eventID string, now time.Time) error {
	if _, err := s.execWrite(ctx, `UPDATE outbox SET delivered_at = $2, last_error = '' WHERE id = $1`,
		eventID, micros(now)); err != nil {
		return fmt.Errorf("mark event %s delivered: %w", eventID, err)
	}
	return nil
}

// RetryEvent implements overlay.Store.
func (s *Store) RetryEvent(ctx context.Context, eventID string, next time.Time, lastError string) error {
	if len(lastError) > 500 {
		lastError = lastError[:500]
	}
	if _, err := s.execWrite(ctx, `UPDATE outbox SET next_attempt_at = $2, last_error = $3
		WHERE id = $1 AND delivered_at = 0`, eventID, micros(next), lastError); err != nil {
		return fmt.Errorf("retry event %s: %w", eventID, err)
	}
	return nil
}

// OutboxDepth counts events not yet acknowledged by the merchant.
func (s *Store) OutboxDepth(ctx context.Context) (int64, error) {
	var n int64
	if err := s.read.QueryRowContext(ctx, `SELECT count(*) FROM outbox WHERE delivered_at = 0`).Scan(&n); err != nil {
		return 0, fmt.Errorf("outbox depth: %w", err)
	}
	return n, nil
}

// pruneBatch bounds the rows one Prune statement deletes, so that buys
// queued behind the writer wait for a short statement only.
const pruneBatch = 5000

// Prune implements overlay.Store.
func (s *Store) Prune(ctx context.Context, now time.Time) (keys, events int64, err error) {
	keys, err = s.execWrite(ctx, `DELETE FROM buy_keys WHERE (viewer_id, idempotency_key) IN
		(SELECT viewer_id, idempotency_key FROM buy_keys WHERE created_at < $1 LIMIT $2)`,
		micros(now.Add(-overlay.KeyRetention)), pruneBatch)
	if err != nil {
		return 0, 0, fmt.Errorf("prune idempotency keys: %w", err)
	}
	events, err = s.execWrite(ctx, `DELETE FROM outbox WHERE id IN
		(SELECT id FROM outbox WHERE delivered_at <> 0 AND delivered_at < $1 LIMIT $2)`,
		micros(now.Add(-overlay.EventRetention)), pruneBatch)
	if err != nil {
		return keys, 0, fmt.Errorf("prune delivered events: %w", err)
	}
	return keys, events, nil
}
