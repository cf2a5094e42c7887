package overlay

import (
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"
)

// Bounds of accepted input. They keep arithmetic far from overflow
// (MaxPriceMinor * MaxQty fits in int64 many times over) and rows small.
const (
	MaxSKULen         = 64
	MaxTitleLen       = 200
	MaxDescriptionLen = 5000
	MaxURLLen         = 2048
	MaxPriceMinor     = 1_000_000_000_000
	MaxStock          = 1_000_000_000
	MaxPerViewerLimit = 1000
	MaxQty            = 99
	MinKeyLen         = 8
	MaxKeyLen         = 128
	MaxViewerIDLen    = 128
	MaxStreamLen      = 64
)

// FieldError says which field of an input is wrong and why.
type FieldError struct {
	Field   string // JSON name of the field
	Problem string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Problem }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)}
}

// ValidateProduct checks a product before it is stored and returns the first
// problem found as a *FieldError.
func ValidateProduct(p Product) error {
	if err := validateSKU("sku", p.SKU); err != nil {
		return err
	}
	if err := validateText("title", p.Title, 1, MaxTitleLen); err != nil {
		return err
	}
	if err := validateText("description", p.Description, 0, MaxDescriptionLen); err != nil {
		return err
	}
	if p.PriceMinor < 1 || p.PriceMinor > MaxPriceMinor {
		return fieldErr("price_minor", "must be between 1 and %d minor units", int64(MaxPriceMinor))
	}
	if err := ValidateCurrency(p.Currency); err != nil {
		return err
	}
	if err := validateImageURL(p.ImageURL); err != nil {
		return err
	}
	if p.Stock < 0 || p.Stock > MaxStock {
		return fieldErr("stock", "must be between 0 and %d", MaxStock)
	}
	if p.PerViewerLimit < 0 || p.PerViewerLimit > MaxPerViewerLimit {
		return fieldErr("per_viewer_limit", "must be between 0 (no limit) and %d", MaxPerViewerLimit)
	}
	return nil
}

// ValidateCurrency accepts the shape of an ISO 4217 code: three upper-case
// ASCII letters. It does not check the code list, which changes over time;
// the merchant's payment provider is the judge of that.
func ValidateCurrency(c string) error {
	if len(c) != 3 {
		return fieldErr("currency", "must be a 3-letter ISO 4217 code like EUR, got %q", c)
	}
	for i := 0; i < 3; i++ {
		if c[i] < 'A' || c[i] > 'Z' {
			return fieldErr("currency", "must be a 3-letter upper-case ISO 4217 code like EUR, got %q", c)
		}
	}
	return nil
}

// ValidateBuyRequest checks a viewer's buy before it reaches the store.
func ValidateBuyRequest(r BuyRequest) error {
	if err := validateName("stream", r.Stream, MaxStreamLen); err != nil {
		return err
	}
	if err := validateSKU("sku", r.SKU); err != nil {
		return err
	}
	if err := validateToken("viewer_id", r.ViewerID, 1, MaxViewerIDLen); err != nil {
		return err
	}
	if r.Qty < 1 || r.Qty > MaxQty {
		return fieldErr("qty", "must be between 1 and %d", MaxQty)
	}
	return validateToken("idempotency_key", r.IdempotencyKey, MinKeyLen, MaxKeyLen)
}

// ValidateSale checks a sale that is about to start.
func ValidateSale(s Sale) error {
	if err := validateName("stream", s.Stream, MaxStreamLen); err != nil {
		return err
	}
	if err := validateSKU("sku", s.SKU); err != nil {
		return err
	}
	if s.PriceMinor < 0 || s.PriceMinor > MaxPriceMinor {
		return fieldErr("price_minor", "must be between 0 (list price) and %d", int64(MaxPriceMinor))
	}
	if s.Units < 0 || s.Units > MaxStock {
		return fieldErr("units", "must be between 0 (no cap) and %d", MaxStock)
	}
	if s.StartsAt.IsZero() || s.EndsAt.IsZero() {
		return fieldErr("ends_at", "a sale needs a start and an end")
	}
	if !s.EndsAt.After(s.StartsAt) {
		return fieldErr("ends_at", "must be after starts_at")
	}
	return nil
}

// SKUs appear in URLs, CSV files and logs, so they stay in a plain alphabet.
func validateSKU(field, s string) error {
	if s == "" || len(s) > MaxSKULen {
		return fieldErr(field, "must be 1 to %d characters", MaxSKULen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fieldErr(field, "may contain only letters, digits, '-', '_' and '.', got %q", s)
		}
	}
	if s == "." || s == ".." {
		return fieldErr(field, "cannot be %q: it is a path step in URLs", s)
	}
	return nil
}

// validateName checks a stream name: it appears in URL paths.
func validateName(field, s string, max int) error {
	if s == "" || len(s) > max {
		return fieldErr(field, "must be 1 to %d characters", max)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fieldErr(field, "may contain only letters, digits, '-' and '_', got %q", s)
		}
	}
	return nil
}

// validateToken accepts printable ASCII without spaces: opaque identifiers
// chosen by clients, which end up in headers and logs.
func validateToken(field, s string, min, max int) error {
	if len(s) < min || len(s) > max {
		return fieldErr(field, "must be %d to %d characters", min, max)
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return fieldErr(field, "must be printable ASCII without spaces")
		}
	}
	return nil
}

func validateText(field, s string, min, max int) error {
	if !utf8.ValidString(s) {
		return fieldErr(field, "must be valid UTF-8")
	}
	n := utf8.RuneCountInString(s)
	if n < min || n > max {
		if min > 0 {
			return fieldErr(field, "must be %d to %d characters", min, max)
		}
		return fieldErr(field, "must be at most %d characters", max)
	}
	return nil
}

func validateImageURL(s string) error {
	if s == "" {
		return nil
	}
	if len(s) > MaxURLLen {
		return fieldErr("image_url", "must be at most %d characters", MaxURLLen)
	}
	// A path on this server, like the demo catalog's /static/demo/mug.svg.
	// "//host/..." and "/\host/..." are refused: browsers read both as
	// another host.
	if strings.HasPrefix(s, "/") && !strings.HasPrefix(s, "//") && !strings.ContainsRune(s, '\\') {
		if u, err := url.Parse(s); err == nil && u.Scheme == "" && u.Host == "" {
			return nil
		}
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fieldErr("image_url", "must be an absolute http(s) URL or a path on this server starting with /")
	}
	return nil
}
