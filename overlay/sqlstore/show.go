package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

// ShowState implements overlay.Store.
func (s *Store) ShowState(ctx context.Context, stream string) (overlay.ShowState, error) {
	st := overlay.ShowState{Stream: stream}
	var run string
	err := s.read.QueryRowContext(ctx, `SELECT card_sku, list_sale_id, sale_id, run_of_show FROM show_state WHERE stream = $1`,
		stream).Scan(&st.CardSKU, &st.ListSaleID, &st.SaleID, &run)
	if errors.Is(err, sql.ErrNoRows) {
		return st, nil
	}
	if err == nil && run != "" {
		err = json.Unmarshal([]byte(run), &st.Run)
	}
	if err != nil {
		return overlay.ShowState{Stream: stream}, fmt.Errorf("show state of %s: %w", stream, err)
	}
	return st, nil
}

// OpenSales implements overlay.Store.
func (s *Store) OpenSales(ctx context.Context, stream string) ([]overlay.Sale, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+saleColumns+` FROM sales WHERE stream = $1 AND status = 'active'
		ORDER BY starts_at, id`, stream)
	if err != nil {
		return nil, fmt.Errorf("open sales of %s: %w", stream, err)
	}
	defer rows.Close()
	var sales []overlay.Sale
	for rows.Next() {
		sale, err := scanSale(rows)
		if err != nil {
			return nil, fmt.Errorf("open sales of %s: %w", stream, err)
		}
		sales = append(sales, sale)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("open sales of %s: %w", stream, err)
	}
	return sales, nil
}

// ChangeShow implements overlay.Store. Which flash sale gets its
// EventSaleEnded is read from the stored state in the same transaction, so
// the event is written exactly once, by the change that ended the sale.
func (s *Store) ChangeShow(ctx context.Context, ch overlay.ShowChange, now time.Time) (overlay.ShowChangeResult, error) {
	st := ch.State
	if st.Stream == "" {
		return overlay.ShowChangeResult{}, errors.New("change show: no stream")
	}
	now = now.UTC().Truncate(time.Microsecond)
	prepare := func(from *overlay.Sale) (*overlay.Sale, error) {
		if from == nil {
			return nil, nil
		}
		if from.Stream != st.Stream {
			return nil, fmt.Errorf("change show of %s: a sale for stream %q", st.Stream, from.Stream)
		}
		sale, err := prepareSale(*from, now)
		if err != nil {
			return nil, fmt.Errorf("change show of %s: start sale: %w", st.Stream, err)
		}
		return &sale, nil
	}
	list, err := prepare(ch.StartList)
	if err != nil {
		return overlay.ShowChangeResult{}, err
	}
	flash, err := prepare(ch.StartFlash)
	if err != nil {
		return overlay.ShowChangeResult{}, err
	}
	run, err := json.Marshal(st.Run)
	if err != nil {
		return overlay.ShowChangeResult{}, fmt.Errorf("change show of %s: %w", st.Stream, err)
	}
	var ended []overlay.Sale
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		var storedFlash string
		err := tx.QueryRowContext(ctx, `SELECT sale_id FROM show_state WHERE stream = $1`, st.Stream).Scan(&storedFlash)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		for _, id := range ch.End {
			sale, endedNow, err := endSale(ctx, tx, id, now)
			if err != nil {
				return fmt.Errorf("end sale %s: %w", id, err)
			}
			if sale.Stream != st.Stream {
				return fmt.Errorf("sale %s is of stream %s", id, sale.Stream)
			}
			if endedNow && id == storedFlash {
				if err := addSaleEvent(ctx, tx, overlay.EventSaleEnded, sale, now); err != nil {
					return err
				}
			}
			ended = append(ended, sale)
		}
		if list != nil {
			if err := startSale(ctx, tx, list, now); err != nil {
				return fmt.Errorf("start sale of %s: %w", list.SKU, err)
			}
			st.ListSaleID = list.ID
		}
		if flash != nil {
			if err := startSale(ctx, tx, flash, now); err != nil {
				return fmt.Errorf("start sale of %s: %w", flash.SKU, err)
			}
			st.SaleID = flash.ID
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO show_state (stream, card_sku, list_sale_id, sale_id, run_of_show, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (stream) DO UPDATE SET card_sku = excluded.card_sku, list_sale_id = excluded.list_sale_id,
				sale_id = excluded.sale_id, run_of_show = excluded.run_of_show, updated_at = excluded.updated_at`,
			st.Stream, st.CardSKU, st.ListSaleID, st.SaleID, string(run), micros(now))
		return err
	})
	if err != nil {
		return overlay.ShowChangeResult{}, fmt.Errorf("change show of %s: %w", st.Stream, err)
	}
	return overlay.ShowChangeResult{State: st, Ended: ended, StartedList: list, StartedFlash: flash}, nil
}
