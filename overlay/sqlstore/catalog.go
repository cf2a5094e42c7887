package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

const productColumns = `sku, title, description, price_minor, currency, image_url, stock, per_viewer_limit, active, created_at, updated_at`

func scanProduct(row interface{ Scan(...any) error }) (overlay.Product, error) {
	var p overlay.Product
	var created, updated int64
	err := row.Scan(&p.SKU, &p.Title, &p.Description, &p.PriceMinor, &p.Currency, &p.ImageURL,
		&p.Stock, &p.PerViewerLimit, &p.Active, &created, &updated)
	p.CreatedAt, p.UpdatedAt = fromMicros(created), fromMicros(updated)
	return p, err
}

// CreateProduct implements overlay.Store.
func (s *Store) CreateProduct(ctx context.Context, p overlay.Product) (overlay.Product, error) {
	if err := overlay.ValidateProduct(p); err != nil {
		return overlay.Product{}, fmt.Errorf("create product: %w", err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	p.CreatedAt, p.UpdatedAt = now, now
	n, err := s.execWrite(ctx, `INSERT INTO products (`+productColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (sku) DO NOTHING`,
		p.SKU, p.Title, p.Description, p.PriceMinor, p.Currency, p.ImageURL,
		p.Stock, p.PerViewerLimit, p.Active, micros(now), micros(now))
	if err != nil {
		return overlay.Product{}, fmt.Errorf("create product %s: %w", p.SKU, err)
	}
	if n == 0 {
		return overlay.Product{}, fmt.Errorf("create product %s: %w", p.SKU, overlay.ErrExists)
	}
	return p, nil
}

// UpdateProduct implements overlay.Store.
func (s *Store) UpdateProduct(ctx context.Context, p overlay.Product) (overlay.Product, error) {
	if err := overlay.ValidateProduct(p); err != nil {
		return overlay.Product{}, fmt.Errorf("update product: %w", err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	var got overlay.Product
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		got, err = scanProduct(tx.QueryRowContext(ctx, `UPDATE products SET title = $2, description = $3,
			price_minor = $4, currency = $5, image_url = $6, stock = $7, per_viewer_limit = $8, active = $9,
			updated_at = $10 WHERE sku = $1 RETURNING `+productColumns,
			p.SKU, p.Title, p.Description, p.PriceMinor, p.Currency, p.ImageURL,
			p.Stock, p.PerViewerLimit, p.Active, micros(now)))
		return err
	})
	if errors.Is(err, sql.ErrNoRows) {
		return overlay.Product{}, fmt.Errorf("update product %s: %w", p.SKU, overlay.ErrNotFound)
	}
	if err != nil {
		return overlay.Product{}, fmt.Errorf("update product %s: %w", p.SKU, err)
	}
	return got, nil
}

// Product implements overlay.Store.
func (s *Store) Product(ctx context.Context, sku string) (overlay.Product, error) {
	p, err := scanProduct(s.read.QueryRowContext(ctx, `SELECT `+productColumns+` FROM products WHERE sku = $1`, sku))
	if errors.Is(err, sql.ErrNoRows) {
		return overlay.Product{}, fmt.Errorf("product %s: %w", sku, overlay.ErrNotFound)
	}
	if err != nil {
		return overlay.Product{}, fmt.Errorf("product %s: %w", sku, err)
	}
	return p, nil
}

// Products implements overlay.Store.
func (s *Store) Products(ctx context.Context) ([]overlay.Product, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+productColumns+` FROM products ORDER BY sku`)
	if err != nil {
		return nil, fmt.Errorf("products: %w", err)
	}
	defer rows.Close()
	var ps []overlay.Product
	for rows.Next() {
		p, err := scanProduct(rows)
		if err != nil {
			return nil, fmt.Errorf("products: %w", err)
		}
		ps = append(ps, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("products: %w", err)
	}
	return ps, nil
}

// DeleteProduct implements overlay.Store.
func (s *Store) DeleteProduct(ctx context.Context, sku string) error {
	n, err := s.execWrite(ctx, `DELETE FROM products WHERE sku = $1`, sku)
	if err != nil {
		return fmt.Errorf("delete product %s: %w", sku, err)
	}
	if n == 0 {
		return fmt.Errorf("delete product %s: %w", sku, overlay.ErrNotFound)
	}
	return nil
}

// ImportProducts implements overlay.Store. An existing SKU is replaced but
// keeps its creation time.
func (s *Store) ImportProducts(ctx context.Context, ps []overlay.Product) error {
	for i, p := range ps {
		if err := overlay.ValidateProduct(p); err != nil {
			return fmt.Errorf("import products: %w", &overlay.RowError{Row: i + 1, Err: err})
		}
	}
	now := micros(time.Now())
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO products (`+productColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
			ON CONFLICT (sku) DO UPDATE SET title = excluded.title, description = excluded.description,
				price_minor = excluded.price_minor, currency = excluded.currency, image_url = excluded.image_url,
				stock = excluded.stock, per_viewer_limit = excluded.per_viewer_limit, active = excluded.active,
				updated_at = excluded.updated_at`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, p := range ps {
			if _, err := stmt.ExecContext(ctx, p.SKU, p.Title, p.Description, p.PriceMinor, p.Currency,
				p.ImageURL, p.Stock, p.PerViewerLimit, p.Active, now); err != nil {
				return fmt.Errorf("%s: %w", p.SKU, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("import products: %w", err)
	}
	return nil
}

const saleColumns = `id, stream, sku, price_minor, units, units_left, starts_at, ends_at, status`

func scanSale(row interface{ Scan(...any) error }) (overlay.Sale, error) {
	var sl overlay.Sale
	var starts, ends int64
	err := row.Scan(&sl.ID, &sl.Stream, &sl.SKU, &sl.PriceMinor, &sl.Units, &sl.UnitsLeft, &starts, &ends, &sl.Status)
	sl.StartsAt, sl.EndsAt = fromMicros(starts), fromMicros(ends)
	return sl, err
}

// StartSale implements overlay.Store.
func (s *Store) StartSale(ctx context.Context, sale overlay.Sale, now time.Time) (overlay.Sale, error) {
	sale, err := prepareSale(sale, now)
	if err == nil {
		err = s.inTx(ctx, func(tx *sql.Tx) error { return startSale(ctx, tx, &sale, now) })
	}
	if err != nil {
		return overlay.Sale{}, fmt.Errorf("start sale of %s on %s: %w", sale.SKU, sale.Stream, err)
	}
	return sale, nil
}

// prepareSale checks a sale to open and gives it its id and first state.
func prepareSale(sale overlay.Sale, now time.Time) (overlay.Sale, error) {
	if sale.StartsAt.IsZero() {
		sale.StartsAt = now
	}
	if err := overlay.ValidateSale(sale); err != nil {
		return sale, err
	}
	sale.ID = newID("sale_")
	sale.UnitsLeft = sale.Units
	sale.Status = overlay.SaleActive
	sale.StartsAt = sale.StartsAt.UTC().Truncate(time.Microsecond)
	sale.EndsAt = sale.EndsAt.UTC().Truncate(time.Microsecond)
	return sale, nil
}

// startSale inserts a prepared sale in tx, filling in the list price.
func startSale(ctx context.Context, tx *sql.Tx, sale *overlay.Sale, now time.Time) error {
	var listPrice int64
	err := tx.QueryRowContext(ctx, `SELECT price_minor FROM products WHERE sku = $1`, sale.SKU).Scan(&listPrice)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("product %s: %w", sale.SKU, overlay.ErrNotFound)
	}
	if err != nil {
		return err
	}
	if sale.PriceMinor == 0 {
		sale.PriceMinor = listPrice
	}
	// A sale that ran out of time but was never ended must not block
	// the next one.
	if _, err := tx.ExecContext(ctx, `UPDATE sales SET status = 'ended'
		WHERE stream = $1 AND sku = $2 AND status = 'active' AND ends_at <= $3`,
		sale.Stream, sale.SKU, micros(now)); err != nil {
		return err
	}
	n, err := execN(ctx, tx, `INSERT INTO sales (`+saleColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT DO NOTHING`,
		sale.ID, sale.Stream, sale.SKU, sale.PriceMinor, sale.Units, sale.UnitsLeft,
		micros(sale.StartsAt), micros(sale.EndsAt), sale.Status)
	if err != nil {
		return err
	}
	if n == 0 {
		return overlay.ErrSaleRunning
	}
	return nil
}

// EndSale implements overlay.Store. Reservations made during the sale stay
// valid until confirmed or expired.
func (s *Store) EndSale(ctx context.Context, saleID string, now time.Time) (overlay.Sale, error) {
	var sale overlay.Sale
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		sale, _, err = endSale(ctx, tx, saleID, now)
		return err
	})
	if err != nil {
		return overlay.Sale{}, fmt.Errorf("end sale %s: %w", saleID, err)
	}
	return sale, nil
}

// endSale ends a sale in tx and reports whether this call ended it (false
// when it had ended before).
func endSale(ctx context.Context, tx *sql.Tx, saleID string, now time.Time) (overlay.Sale, bool, error) {
	sale, err := scanSale(tx.QueryRowContext(ctx, `UPDATE sales SET status = 'ended',
		ends_at = CASE WHEN ends_at > $2 THEN $2 ELSE ends_at END
		WHERE id = $1 AND status = 'active' RETURNING `+saleColumns, saleID, micros(now)))
	if err == nil {
		return sale, true, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return sale, false, err
	}
	sale, err = scanSale(tx.QueryRowContext(ctx, `SELECT `+saleColumns+` FROM sales WHERE id = $1`, saleID))
	if errors.Is(err, sql.ErrNoRows) {
		return sale, false, overlay.ErrNotFound
	}
	return sale, false, err
}

// ActiveSale implements overlay.Store.
func (s *Store) ActiveSale(ctx context.Context, stream, sku string, now time.Time) (overlay.Sale, error) {
	return activeSale(ctx, s.read, stream, sku, now)
}

func activeSale(ctx context.Context, q execer, stream, sku string, now time.Time) (overlay.Sale, error) {
	sale, err := scanSale(q.QueryRowContext(ctx, `SELECT `+saleColumns+` FROM sales
		WHERE stream = $1 AND sku = $2 AND status = 'active' AND starts_at <= $3 AND ends_at > $3`,
		stream, sku, micros(now)))
	if errors.Is(err, sql.ErrNoRows) {
		return overlay.Sale{}, fmt.Errorf("sale of %s on %s: %w", sku, stream, overlay.ErrNotFound)
	}
	if err != nil {
		return overlay.Sale{}, fmt.Errorf("sale of %s on %s: %w", sku, stream, err)
	}
	return sale, nil
}
