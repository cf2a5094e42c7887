package overlay

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// Limits of one catalog import: a bigger catalog is split by the merchant,
// and a file full of mistakes is answered with its first few.
const (
	MaxImportRows   = 10_000
	maxImportErrors = 20
)

// RowError names the row of an imported catalog that is wrong. In a CSV file
// a row is numbered by the line it starts on (the header is row 1, as in a
// spreadsheet); in a JSON array the first product is row 1.
type RowError struct {
	Row int
	Err error
}

func (e *RowError) Error() string { return fmt.Sprintf("row %d: %v", e.Row, e.Err) }
func (e *RowError) Unwrap() error { return e.Err }

// ProductInput is a product as a merchant writes it, in an import or an API
// call. Active is a pointer so that a missing "active" means active: leaving
// a field out should not take a product off sale. The store sets the
// timestamps; they are accepted and ignored so a client can send back the
// object it got, while other unknown fields are still refused.
type ProductInput struct {
	SKU            string          `json:"sku"`
	Title          string          `json:"title"`
	Description    string          `json:"description"`
	PriceMinor     int64           `json:"price_minor"`
	Currency       string          `json:"currency"`
	ImageURL       string          `json:"image_url"`
	Stock          int64           `json:"stock"`
	PerViewerLimit int             `json:"per_viewer_limit"`
	Active         *bool           `json:"active"`
	CreatedAt      json.RawMessage `json:"created_at"`
	UpdatedAt      json.RawMessage `json:"updated_at"`
}

// Product is the product the input describes.
func (ip ProductInput) Product() Product {
	p := Product{
		SKU: ip.SKU, Title: ip.Title, Description: ip.Description,
		PriceMinor: ip.PriceMinor, Currency: ip.Currency, ImageURL: ip.ImageURL,
		Stock: ip.Stock, PerViewerLimit: ip.PerViewerLimit, Active: true,
	}
	if ip.Active != nil {
		p.Active = *ip.Active
	}
	return p
}

// ParseCatalogJSON reads a JSON array of products and validates each one.
// The caller bounds the input's size (http.MaxBytesReader).
// It returns either every product or, for a bad file, no product and an
// error listing the bad rows (each a *RowError), so an import is never partial.
func ParseCatalogJSON(r io.Reader) ([]Product, error) {
	var raw []json.RawMessage
	dec := json.NewDecoder(r)
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("catalog: not a JSON array of products: %w", err)
	}
	// One array and nothing after it: a second array (two files pasted
	// together) must not be dropped without a word.
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("catalog: not a JSON array of products: data after the array")
	}
	if len(raw) > MaxImportRows {
		return nil, fmt.Errorf("catalog: %d products, at most %d per import", len(raw), MaxImportRows)
	}
	rows := make([]rowProduct, 0, len(raw))
	var errs []error
	for i, item := range raw {
		var ip ProductInput
		dec := json.NewDecoder(bytes.NewReader(item))
		// Unknown fields are refused: a typo like "price" must not import
		// a product silently missing its price.
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ip); err != nil {
			errs = append(errs, &RowError{Row: i + 1, Err: jsonProblem(err)})
			continue
		}
		rows = append(rows, rowProduct{row: i + 1, p: ip.Product()})
	}
	return checkRows(rows, errs)
}

// jsonProblem turns a decoding error into words about the field.
func jsonProblem(err error) error {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) && typeErr.Field != "" {
		want := "a string"
		switch typeErr.Type.Kind() {
		case reflect.Int, reflect.Int64:
			want = "a whole number"
		case reflect.Bool, reflect.Pointer:
			want = "true or false"
		}
		return fieldErr(typeErr.Field, "wrong type: want %s, got %s", want, typeErr.Value)
	}
	return err
}

// ParseCatalogCSV reads a CSV catalog whose first row names the columns:
// sku, title, price_minor, currency, stock, and optionally description,
// image_url, per_viewer_limit, active (true/false, default true). Prices are
// whole minor units (1250 for 12.50). Like ParseCatalogJSON it returns all
// products or none.
func ParseCatalogCSV(r io.Reader) ([]Product, error) {
	cr := csv.NewReader(r)
	cr.TrimLeadingSpace = true
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("catalog: read CSV header: %w", err)
	}
	cols := make(map[string]int, len(header))
	for i, name := range header {
		name = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(name, "\ufeff")))
		switch name {
		case "sku", "title", "description", "price_minor", "currency", "image_url", "stock", "per_viewer_limit", "active":
		default:
			return nil, &RowError{Row: 1, Err: fmt.Errorf("unknown column %q", name)}
		}
		if _, dup := cols[name]; dup {
			return nil, &RowError{Row: 1, Err: fmt.Errorf("column %q appears twice", name)}
		}
		cols[name] = i
	}
	for _, name := range []string{"sku", "title", "price_minor", "currency", "stock"} {
		if _, ok := cols[name]; !ok {
			return nil, &RowError{Row: 1, Err: fmt.Errorf("missing column %q", name)}
		}
	}

	var rows []rowProduct
	var errs []error
	for n := 1; ; n++ {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		var perr *csv.ParseError
		if err != nil && !(errors.As(err, &perr) && errors.Is(perr.Err, csv.ErrFieldCount)) {
			// Broken quoting: the rest of the file cannot be trusted.
			if perr != nil {
				return nil, &RowError{Row: perr.StartLine, Err: perr.Err}
			}
			return nil, fmt.Errorf("catalog: read CSV: %w", err)
		}
		row, _ := cr.FieldPos(0)
		if err != nil {
			errs = append(errs, &RowError{Row: row, Err: fmt.Errorf("has %d columns, the header has %d", len(rec), len(header))})
			continue
		}
		if n > MaxImportRows {
			return nil, fmt.Errorf("catalog: more than %d products, split the file", MaxImportRows)
		}
		p, err := csvProduct(rec, cols)
		if err != nil {
			errs = append(errs, &RowError{Row: row, Err: err})
			continue
		}
		rows = append(rows, rowProduct{row: row, p: p})
	}
	return checkRows(rows, errs)
}

func csvProduct(rec []string, cols map[string]int) (Product, error) {
	get := func(name string) string {
		if i, ok := cols[name]; ok {
			return strings.TrimSpace(rec[i])
		}
		return ""
	}
	p := Product{
		SKU: get("sku"), Title: get("title"), Description: get("description"),
		Currency: get("currency"), ImageURL: get("image_url"), Active: true,
	}
	var err error
	if p.PriceMinor, err = csvInt("price_minor", get("price_minor"), true); err != nil {
		return p, err
	}
	if p.Stock, err = csvInt("stock", get("stock"), true); err != nil {
		return p, err
	}
	limit, err := csvInt("per_viewer_limit", get("per_viewer_limit"), false)
	if err != nil {
		return p, err
	}
	if limit > MaxPerViewerLimit {
		return p, fieldErr("per_viewer_limit", "must be between 0 (no limit) and %d", MaxPerViewerLimit)
	}
	p.PerViewerLimit = int(limit)
	if v := get("active"); v != "" {
		switch strings.ToLower(v) {
		case "true", "yes", "1":
			p.Active = true
		case "false", "no", "0":
			p.Active = false
		default:
			return p, fieldErr("active", "must be true or false, got %q", v)
		}
	}
	return p, nil
}

func csvInt(field, v string, required bool) (int64, error) {
	if v == "" {
		if required {
			return 0, fieldErr(field, "missing")
		}
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		if strings.ContainsAny(v, ".,") {
			return 0, fieldErr(field, "must be whole minor units (1250 for 12.50), got %q", v)
		}
		return 0, fieldErr(field, "not a number: %q", v)
	}
	return n, nil
}

type rowProduct struct {
	row int
	p   Product
}

// checkRows validates parsed rows, refuses duplicate SKUs, and returns all
// products only when no row at all is wrong.
func checkRows(rows []rowProduct, errs []error) ([]Product, error) {
	seen := make(map[string]int, len(rows))
	products := make([]Product, 0, len(rows))
	for _, r := range rows {
		if err := ValidateProduct(r.p); err != nil {
			errs = append(errs, &RowError{Row: r.row, Err: err})
			continue
		}
		if first, dup := seen[r.p.SKU]; dup {
			errs = append(errs, &RowError{Row: r.row, Err: fmt.Errorf("sku: %q already on row %d", r.p.SKU, first)})
			continue
		}
		seen[r.p.SKU] = r.row
		products = append(products, r.p)
	}
	if len(errs) > 0 {
		sortRowErrors(errs)
		if len(errs) > maxImportErrors {
			errs = append(errs[:maxImportErrors], fmt.Errorf("and %d more bad rows", len(errs)-maxImportErrors))
		}
		return nil, fmt.Errorf("catalog: nothing imported: %w", errors.Join(errs...))
	}
	return products, nil
}

// sortRowErrors orders errors by row so the report reads top to bottom
// (parse errors and validation errors are found in two passes).
func sortRowErrors(errs []error) {
	row := func(err error) int {
		var re *RowError
		if errors.As(err, &re) {
			return re.Row
		}
		return 0
	}
	slices.SortStableFunc(errs, func(a, b error) int { return row(a) - row(b) })
}
