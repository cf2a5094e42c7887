package overlay

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func validProduct() Product {
	return Product{SKU: "tee-1", Title: "T-shirt", PriceMinor: 1500, Currency: "EUR", Stock: 10, Active: true}
}

func TestValidateProduct(t *testing.T) {
	if err := ValidateProduct(validProduct()); err != nil {
		t.Fatalf("valid product refused: %v", err)
	}
	cases := []struct {
		field  string
		change func(p *Product)
	}{
		{"sku", func(p *Product) { p.SKU = "" }},
		{"sku", func(p *Product) { p.SKU = "tee 1" }},
		{"title", func(p *Product) { p.Title = "" }},
		{"title", func(p *Product) { p.Title = strings.Repeat("é", MaxTitleLen+1) }},
		{"price_minor", func(p *Product) { p.PriceMinor = 0 }},
		{"currency", func(p *Product) { p.Currency = "eur" }},
		{"currency", func(p *Product) { p.Currency = "EURO" }},
		{"image_url", func(p *Product) { p.ImageURL = "javascript:alert(1)" }},
		{"stock", func(p *Product) { p.Stock = -1 }},
		{"per_viewer_limit", func(p *Product) { p.PerViewerLimit = -1 }},
	}
	for _, c := range cases {
		p := validProduct()
		c.change(&p)
		var fe *FieldError
		if err := ValidateProduct(p); !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%+v: got %v, want a problem with %s", p, err, c.field)
		}
	}
}

func TestValidateBuyRequest(t *testing.T) {
	ok := BuyRequest{Stream: "demo", SKU: "tee-1", ViewerID: "v-1", Qty: 1, IdempotencyKey: "0123456789abcdef"}
	if err := ValidateBuyRequest(ok); err != nil {
		t.Fatalf("valid request refused: %v", err)
	}
	cases := []struct {
		field  string
		change func(r *BuyRequest)
	}{
		{"stream", func(r *BuyRequest) { r.Stream = "a/b" }},
		{"viewer_id", func(r *BuyRequest) { r.ViewerID = "" }},
		{"qty", func(r *BuyRequest) { r.Qty = 0 }},
		{"qty", func(r *BuyRequest) { r.Qty = 100 }},
		{"idempotency_key", func(r *BuyRequest) { r.IdempotencyKey = "1234567" }},
		{"idempotency_key", func(r *BuyRequest) { r.IdempotencyKey = strings.Repeat("k", 129) }},
		{"idempotency_key", func(r *BuyRequest) { r.IdempotencyKey = "has a space" }},
	}
	for _, c := range cases {
		r := ok
		c.change(&r)
		var fe *FieldError
		if err := ValidateBuyRequest(r); !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%+v: got %v, want a problem with %s", r, err, c.field)
		}
	}
}

func TestParseCatalogCSV(t *testing.T) {
	in := "\ufeffSKU,title,price_minor,currency,stock,active,image_url\n" +
		"tee-1,\"T-shirt, black\",1500,EUR,10,,https://shop.example/t.png\n" +
		"tee-2,Hoodie,4500,USD,0,false,\n"
	ps, err := ParseCatalogCSV(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Title != "T-shirt, black" || !ps[0].Active || ps[1].Active || ps[1].Currency != "USD" {
		t.Fatalf("parsed %+v", ps)
	}

	bad := []struct{ in, want string }{
		{"sku,title,price_minor,currency,stock\ntee-1,T,1500,EUR,1\ntee-2,T,abc,EUR,1\n", `row 3: price_minor: not a number`},
		{"sku,title,price_minor,currency,stock\ntee-1,T,15.00,EUR,1\n", `row 2: price_minor: must be whole minor units`},
		{"sku,title,price_minor,currency,stock\ntee-1,T,1500,eur,1\n", `row 2: currency:`},
		{"sku,title,price_minor,currency,stock\ntee-1,T,1500,EUR,1\ntee-1,T,1500,EUR,1\n", `row 3: sku: "tee-1" already on row 2`},
		{"sku,title,price_minor,currency,stock\ntee-1,T,1500,EUR\n", `row 2: has 4 columns, the header has 5`},
		{"sku,title,price,currency,stock\n", `row 1: unknown column "price"`},
		{"sku,title,currency,stock\n", `row 1: missing column "price_minor"`},
	}
	for _, c := range bad {
		ps, err := ParseCatalogCSV(strings.NewReader(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) || ps != nil {
			t.Errorf("%q: got %v (%d products), want error containing %q and no product", c.in, err, len(ps), c.want)
		}
	}
}

func TestParseCatalogJSON(t *testing.T) {
	ps, err := ParseCatalogJSON(strings.NewReader(`[
		{"sku": "tee-1", "title": "T-shirt", "price_minor": 1500, "currency": "EUR", "stock": 3},
		{"sku": "tee-2", "title": "Hoodie", "price_minor": 4500, "currency": "EUR", "stock": 1, "active": false, "per_viewer_limit": 1}
	]`))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || !ps[0].Active || ps[1].Active || ps[1].PerViewerLimit != 1 {
		t.Fatalf("parsed %+v", ps)
	}
	bad := []struct{ in, want string }{
		{`[{"sku":"a","title":"A","price_minor":1,"currency":"EUR","stock":1},{"sku":"b","title":"B","price_minor":"12","currency":"EUR","stock":1}]`, `row 2: price_minor: wrong type: want a whole number`},
		{`[{"sku":"a","title":"A","price":1,"currency":"EUR","stock":1}]`, `row 1: json: unknown field "price"`},
		{`[{"sku":"a","title":"A","price_minor":1,"currency":"EUR","stock":-4}]`, `row 1: stock:`},
		{`{"sku":"a"}`, `not a JSON array`},
	}
	for _, c := range bad {
		ps, err := ParseCatalogJSON(strings.NewReader(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) || ps != nil {
			t.Errorf("%s: got %v, want error containing %q and no product", c.in, err, c.want)
		}
	}
}

func TestVerifySignature(t *testing.T) {
	secret := []byte("whsec_0123456789abcdef")
	body := []byte(`{"id":"evt_1","type":"order.confirmed"}`)
	now := time.Unix(1_800_000_000, 0)
	ts := "1800000000"
	sig := Sign(secret, ts, body)
	if !strings.HasPrefix(sig, "v1=") || len(sig) != 3+64 {
		t.Fatalf("signature %q is not v1=<64 hex>", sig)
	}
	if err := VerifySignature(secret, body, ts, sig, now.Add(30*time.Second), 5*time.Minute); err != nil {
		t.Fatalf("fresh signature refused: %v", err)
	}
	// During a secret rotation the header carries both signatures.
	both := Sign([]byte("whsec_old_secret_value"), ts, body) + ", " + sig
	if err := VerifySignature(secret, body, ts, both, now, 5*time.Minute); err != nil {
		t.Fatalf("rotated signature list refused: %v", err)
	}
	cases := []struct {
		name       string
		body       []byte
		ts, sig    string
		now        time.Time
		wantErr    error
		wantInText string
	}{
		{"replayed an hour later", body, ts, sig, now.Add(time.Hour), ErrStaleSignature, "tolerance"},
		{"from the future", body, ts, sig, now.Add(-time.Hour), ErrStaleSignature, ""},
		{"body changed", []byte(`{"id":"evt_1","type":"order.cancelled"}`), ts, sig, now, ErrBadSignature, ""},
		{"timestamp changed", body, "1800000001", sig, now, ErrBadSignature, ""},
		{"wrong secret", body, ts, Sign([]byte("another-secret-value"), ts, body), now, ErrBadSignature, ""},
		{"no timestamp", body, "", sig, now, ErrBadSignature, ""},
	}
	for _, c := range cases {
		err := VerifySignature(secret, c.body, c.ts, c.sig, c.now, 5*time.Minute)
		if !errors.Is(err, c.wantErr) || !strings.Contains(err.Error(), c.wantInText) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.wantErr)
		}
	}
}

func TestBackoff(t *testing.T) {
	lo, hi := time.Second, time.Minute
	prev := time.Duration(0)
	for attempt := 1; attempt <= 10; attempt++ {
		d := Backoff(attempt, lo, hi)
		base := min(lo<<(attempt-1), hi)
		if d < base || d > base+base/5 {
			t.Fatalf("attempt %d: %s, want %s plus at most 20%%", attempt, d, base)
		}
		if base < hi && d <= prev {
			t.Fatalf("attempt %d: %s does not grow from %s", attempt, d, prev)
		}
		prev = d
	}
	if d := Backoff(1_000_000, lo, hi); d > hi+hi/5 {
		t.Fatalf("huge attempt count: %s, want capped near %s", d, hi)
	}
}

func TestParseCatalogCSVRowsAreFileLines(t *testing.T) {
	// A blank line and a quoted field spanning two lines: rows stay the
	// lines a merchant sees in an editor.
	in := "sku,title,price_minor,currency,stock\n" +
		"tee-1,\"Two\nlines\",1500,EUR,1\n" +
		"\n" +
		"tee-2,T,oops,EUR,1\n"
	_, err := ParseCatalogCSV(strings.NewReader(in))
	if err == nil || !strings.Contains(err.Error(), "row 5: price_minor: not a number") {
		t.Fatalf("got %v, want row 5", err)
	}
	_, err = ParseCatalogCSV(strings.NewReader("sku,title,price_minor,currency,stock\ntee-1,\"open,1,EUR,1\n"))
	var re *RowError
	if !errors.As(err, &re) || re.Row != 2 {
		t.Fatalf("broken quote: got %v, want row 2", err)
	}
}
