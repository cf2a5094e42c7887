package overlay

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"testing"
)

// checkCatalog holds for any catalog an import accepts: every product
// valid, no SKU twice, within the row limit.
func checkCatalog(t *testing.T, in []byte, ps []Product) {
	t.Helper()
	if len(ps) > MaxImportRows {
		t.Fatalf("%q: %d products", in, len(ps))
	}
	seen := map[string]bool{}
	for _, p := range ps {
		if err := ValidateProduct(p); err != nil {
			t.Fatalf("%q: invalid product taken: %v (%+v)", in, err, p)
		}
		if seen[p.SKU] {
			t.Fatalf("%q: SKU %q twice", in, p.SKU)
		}
		seen[p.SKU] = true
	}
}

// refusedCatalog holds for a refused import: nothing, and words why.
func refusedCatalog(t *testing.T, in []byte, ps []Product, err error) {
	t.Helper()
	if ps != nil || err.Error() == "" {
		t.Fatalf("%q: refused with %v, and %d products", in, err, len(ps))
	}
	var re *RowError
	if errors.As(err, &re) && re.Row < 1 {
		t.Fatalf("%q: row %d in %v", in, re.Row, err)
	}
}

// FuzzCatalogCSV: a CSV catalog (POST /api/v1/products/import as text/csv)
// is imported whole or not at all; what is taken is valid, and written
// back as CSV reads the same.
func FuzzCatalogCSV(f *testing.F) {
	for _, seed := range []string{
		"sku,title,description,price_minor,currency,stock,per_viewer_limit\n" +
			"sock-1,Wool socks,\"Merino, two pairs\",1400,EUR,80,2\n" +
			"sock-2,Running socks,,1100,EUR,60,\n",
		"\ufeffSKU, Title ,price_minor,currency,stock,image_url,active\r\nmug,Mug,900,USD,1,/static/mug.svg,no\r\n",
		"sku,title,price_minor,currency,stock\ntee,\"multi\nline\",12.50,EUR,1\n",
		"sku,title,price_minor,currency,stock\ntee,T,1,EUR\n",
		"sku,title,price_minor,currency,stock\n\"tee,T,1,EUR,1\n",
		"sku,sku\n", "title\n", "", "\n\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		ps, err := ParseCatalogCSV(bytes.NewReader(in))
		if err != nil {
			refusedCatalog(t, in, ps, err)
			return
		}
		checkCatalog(t, in, ps)
		var out bytes.Buffer
		w := csv.NewWriter(&out)
		_ = w.Write([]string{"sku", "title", "description", "price_minor", "currency", "image_url", "stock", "per_viewer_limit", "active"})
		for _, p := range ps {
			_ = w.Write([]string{p.SKU, p.Title, p.Description, strconv.FormatInt(p.PriceMinor, 10), p.Currency, p.ImageURL,
				strconv.FormatInt(p.Stock, 10), strconv.Itoa(p.PerViewerLimit), strconv.FormatBool(p.Active)})
		}
		w.Flush()
		again, err := ParseCatalogCSV(&out)
		if err != nil {
			t.Fatalf("%q: taken, but written back it is refused: %v\n%s", in, err, out.Bytes())
		}
		if len(ps) == 0 && len(again) == 0 {
			return
		}
		if !reflect.DeepEqual(again, ps) {
			t.Fatalf("%q: written back and read again:\n%+v\nwas\n%+v", in, again, ps)
		}
	})
}

// FuzzCatalogJSON: a JSON catalog (the import as application/json) is one
// JSON array, imported whole or not at all; what is taken is valid, and
// sent back as JSON reads the same.
func FuzzCatalogJSON(f *testing.F) {
	for _, seed := range []string{
		`[{"sku":"cap-1","title":"Cap","price_minor":1200,"currency":"EUR","stock":30},
		  {"sku":"bag-1","title":"Tote bag","price_minor":1900,"currency":"USD","stock":20,"active":false,"image_url":"https://x.example/b.png"}]`,
		`[{"sku":"tee-2","title":"Hoodie","price_minor":"forty","currency":"EUR","stock":20}]`,
		`[{"sku":"a","title":"A","price_minor":1,"currency":"EUR","stock":1,"created_at":"2024-01-01T00:00:00Z","updated_at":null}]`,
		`[{"sku":"a","title":"A","price":1}]`,
		`[{"sku":"a","title":"A","price_minor":1,"currency":"EUR","stock":1}] {"sku":"b"}`,
		`[]`, `[] []`, `{"sku":"x"}`, `[null]`, `[`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		ps, err := ParseCatalogJSON(bytes.NewReader(in))
		if err != nil {
			refusedCatalog(t, in, ps, err)
			return
		}
		if !json.Valid(in) {
			t.Fatalf("%q: not one JSON value, taken as %d products", in, len(ps))
		}
		checkCatalog(t, in, ps)
		inputs := make([]ProductInput, len(ps))
		for i, p := range ps {
			inputs[i] = ProductInput{SKU: p.SKU, Title: p.Title, Description: p.Description, PriceMinor: p.PriceMinor,
				Currency: p.Currency, ImageURL: p.ImageURL, Stock: p.Stock, PerViewerLimit: p.PerViewerLimit, Active: &p.Active}
		}
		out, err := json.Marshal(inputs)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseCatalogJSON(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("%q: taken, but sent back it is refused: %v\n%s", in, err, out)
		}
		if !reflect.DeepEqual(again, ps) {
			t.Fatalf("%q: sent back and read again:\n%+v\nwas\n%+v", in, again, ps)
		}
	})
}
