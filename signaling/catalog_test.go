package signaling

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/overlay/sqlstore"
)

const testAdminToken = "catalog-test-admin-token"

// catalogAPI is a server on a real SQLite store, reached over HTTP.
type catalogAPI struct {
	t     *testing.T
	url   string
	store overlay.Store
}

func newCatalogAPI(t *testing.T) *catalogAPI {
	t.Helper()
	st, err := sqlstore.Open(context.Background(), filepath.Join(t.TempDir(), "vitrine.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	// The catalog never touches media, so no WebRTC and no streams.
	srv := New(Config{AdminToken: testAdminToken}, nil, nil, st,
		prometheus.NewRegistry(), prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	ts := httptest.NewServer(srv.Handler(nil))
	t.Cleanup(ts.Close)
	return &catalogAPI{t: t, url: ts.URL, store: st}
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

// errorCode returns the code and message of an error body.
func (a answer) errorCode() (code, message string) {
	var e struct {
		Error struct{ Code, Message string }
	}
	_ = json.Unmarshal(a.body, &e)
	return e.Error.Code, e.Error.Message
}

// do sends a request; token "" sends no Authorization header.
func (c *catalogAPI) do(method, path, token, contentType, body string) answer {
	c.t.Helper()
	req, err := http.NewRequest(method, c.url+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

func (c *catalogAPI) admin(method, path, body string) answer {
	c.t.Helper()
	return c.do(method, path, testAdminToken, "application/json", body)
}

// expect fails the test unless a has the status and, for errors, the code.
func (c *catalogAPI) expect(a answer, status int, code string) {
	c.t.Helper()
	got, msg := a.errorCode()
	if a.status != status || got != code {
		c.t.Fatalf("got %d %q (%s), want %d %q; body %s", a.status, got, msg, status, code, a.body)
	}
}

// skus lists the SKUs a listing answers, in order.
func (c *catalogAPI) skus(token string) []string {
	c.t.Helper()
	a := c.do("GET", "/api/v1/products", token, "", "")
	c.expect(a, http.StatusOK, "")
	var list struct{ Products []overlay.Product }
	if err := json.Unmarshal(a.body, &list); err != nil {
		c.t.Fatalf("list: %v: %s", err, a.body)
	}
	out := []string{}
	for _, p := range list.Products {
		out = append(out, p.SKU)
	}
	return out
}

func decodeProduct(t *testing.T, a answer) overlay.Product {
	t.Helper()
	var p overlay.Product
	if err := json.Unmarshal(a.body, &p); err != nil {
		t.Fatalf("%v: %s", err, a.body)
	}
	return p
}

const mugJSON = `{"sku":"mug-1","title":"Enamel mug","price_minor":1800,"currency":"EUR","stock":40,"per_viewer_limit":2}`

func TestProductRoundTrip(t *testing.T) {
	c := newCatalogAPI(t)

	a := c.admin("POST", "/api/v1/products", mugJSON)
	c.expect(a, http.StatusCreated, "")
	if loc := a.header.Get("Location"); loc != "/api/v1/products/mug-1" {
		t.Fatalf("Location %q", loc)
	}
	created := decodeProduct(t, a)
	if !created.Active || created.CreatedAt.IsZero() {
		t.Fatalf("a product sent without \"active\" should be active and dated: %+v", created)
	}

	// A viewer's page reads it without a token.
	a = c.do("GET", "/api/v1/products/mug-1", "", "", "")
	c.expect(a, http.StatusOK, "")
	if got := decodeProduct(t, a); got.Title != "Enamel mug" || got.PriceMinor != 1800 || got.PerViewerLimit != 2 {
		t.Fatalf("got %+v", got)
	}
	if got := c.skus(""); !slices.Equal(got, []string{"mug-1"}) {
		t.Fatalf("list %v", got)
	}

	// What GET returned can be changed and PUT back, timestamps included.
	got := decodeProduct(t, c.do("GET", "/api/v1/products/mug-1", "", "", ""))
	got.Title, got.PriceMinor = "Enamel mug, blue", 1500
	body, _ := json.Marshal(got)
	a = c.admin("PUT", "/api/v1/products/mug-1", string(body))
	c.expect(a, http.StatusOK, "")
	a = c.do("GET", "/api/v1/products/mug-1", "", "", "")
	if p := decodeProduct(t, a); p.Title != "Enamel mug, blue" || p.PriceMinor != 1500 || !p.CreatedAt.Equal(created.CreatedAt) {
		t.Fatalf("after PUT: %+v (created %v)", p, created.CreatedAt)
	}

	// The SKU comes from the path: an empty body SKU is fine, another is not.
	c.expect(c.admin("PUT", "/api/v1/products/mug-1",
		`{"title":"Mug","price_minor":1500,"currency":"EUR","stock":5}`), http.StatusOK, "")
	c.expect(c.admin("PUT", "/api/v1/products/mug-1",
		`{"sku":"mug-2","title":"Mug","price_minor":1500,"currency":"EUR","stock":5}`), http.StatusBadRequest, "invalid")
	c.expect(c.admin("PUT", "/api/v1/products/nope",
		`{"title":"Mug","price_minor":1500,"currency":"EUR","stock":5}`), http.StatusNotFound, "unknown_product")

	c.expect(c.admin("DELETE", "/api/v1/products/mug-1", ""), http.StatusNoContent, "")
	c.expect(c.do("GET", "/api/v1/products/mug-1", "", "", ""), http.StatusNotFound, "unknown_product")
	c.expect(c.admin("DELETE", "/api/v1/products/mug-1", ""), http.StatusNotFound, "unknown_product")
	if got := c.skus(""); len(got) != 0 {
		t.Fatalf("list after delete %v", got)
	}
}

func TestProductsInactiveOnlyForAdmin(t *testing.T) {
	c := newCatalogAPI(t)
	c.expect(c.admin("POST", "/api/v1/products", mugJSON), http.StatusCreated, "")
	c.expect(c.admin("POST", "/api/v1/products",
		`{"sku":"drop-1","title":"Secret drop","price_minor":9900,"currency":"EUR","stock":10,"active":false}`), http.StatusCreated, "")

	if got := c.skus(""); !slices.Equal(got, []string{"mug-1"}) {
		t.Fatalf("public list %v, want the active product only", got)
	}
	if got := c.skus(testAdminToken); !slices.Equal(got, []string{"drop-1", "mug-1"}) {
		t.Fatalf("admin list %v, want every product", got)
	}
	c.expect(c.do("GET", "/api/v1/products/drop-1", "", "", ""), http.StatusNotFound, "unknown_product")
	c.expect(c.do("GET", "/api/v1/products/drop-1", testAdminToken, "", ""), http.StatusOK, "")
	// A wrong token is refused, not quietly served the public view.
	c.expect(c.do("GET", "/api/v1/products", "stale-token", "", ""), http.StatusForbidden, "forbidden")
	c.expect(c.do("GET", "/api/v1/products/drop-1", "stale-token", "", ""), http.StatusForbidden, "forbidden")
}

func TestProductChangesNeedAdmin(t *testing.T) {
	c := newCatalogAPI(t)
	c.expect(c.admin("POST", "/api/v1/products", mugJSON), http.StatusCreated, "")
	changes := []struct{ method, path, ctype, body string }{
		{"POST", "/api/v1/products", "application/json", strings.Replace(mugJSON, "mug-1", "mug-2", 1)},
		{"PUT", "/api/v1/products/mug-1", "application/json", mugJSON},
		{"DELETE", "/api/v1/products/mug-1", "", ""},
		{"POST", "/api/v1/products/import", "application/json", "[" + strings.Replace(mugJSON, "mug-1", "mug-3", 1) + "]"},
	}
	for _, ch := range changes {
		a := c.do(ch.method, ch.path, "", ch.ctype, ch.body)
		c.expect(a, http.StatusUnauthorized, "unauthorized")
		if a.header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s %s: 401 without WWW-Authenticate", ch.method, ch.path)
		}
		c.expect(c.do(ch.method, ch.path, "wrong-token", ch.ctype, ch.body), http.StatusForbidden, "forbidden")
	}
	a := c.do("GET", "/api/v1/products/mug-1", "", "", "")
	if p := decodeProduct(t, a); p.Title != "Enamel mug" {
		t.Fatalf("refused requests changed the product: %+v", p)
	}
	if got := c.skus(testAdminToken); !slices.Equal(got, []string{"mug-1"}) {
		t.Fatalf("refused requests changed the catalog: %v", got)
	}
}

func TestCreateProductRefused(t *testing.T) {
	c := newCatalogAPI(t)
	c.expect(c.admin("POST", "/api/v1/products", mugJSON), http.StatusCreated, "")

	a := c.admin("POST", "/api/v1/products", strings.Replace(mugJSON, "Enamel mug", "Another mug", 1))
	c.expect(a, http.StatusConflict, "product_exists")
	if p := decodeProduct(t, c.do("GET", "/api/v1/products/mug-1", "", "", "")); p.Title != "Enamel mug" {
		t.Fatalf("a refused duplicate replaced the product: %+v", p)
	}

	invalid := []struct{ body, field string }{
		{`{"sku":"mug-2","title":"Mug","price_minor":-5,"currency":"EUR","stock":1}`, "price_minor"},
		{`{"sku":"mug-2","title":"Mug","price_minor":500,"currency":"euro","stock":1}`, "currency"},
		{`{"sku":"mug 2","title":"Mug","price_minor":500,"currency":"EUR","stock":1}`, "sku"},
		{`{"sku":"mug-2","title":"","price_minor":500,"currency":"EUR","stock":1}`, "title"},
	}
	for _, in := range invalid {
		a := c.admin("POST", "/api/v1/products", in.body)
		c.expect(a, http.StatusBadRequest, "invalid")
		if _, msg := a.errorCode(); !strings.HasPrefix(msg, in.field+": ") {
			t.Errorf("%s: message %q does not name %s", in.body, msg, in.field)
		}
	}
	c.expect(c.admin("PUT", "/api/v1/products/mug-1",
		`{"title":"Mug","price_minor":-1,"currency":"EUR","stock":5}`), http.StatusBadRequest, "invalid")

	c.expect(c.do("POST", "/api/v1/products", testAdminToken, "text/plain", mugJSON), http.StatusUnsupportedMediaType, "unsupported_media_type")
	c.expect(c.admin("POST", "/api/v1/products", `{"sku":"mug-2","price":500}`), http.StatusBadRequest, "invalid_json")
	if got := c.skus(testAdminToken); !slices.Equal(got, []string{"mug-1"}) {
		t.Fatalf("refused requests changed the catalog: %v", got)
	}
}

func TestImportCatalog(t *testing.T) {
	c := newCatalogAPI(t)
	// An import replaces a product it names and leaves the others alone.
	c.expect(c.admin("POST", "/api/v1/products", `{"sku":"cap-1","title":"Old cap","price_minor":900,"currency":"EUR","stock":3}`), http.StatusCreated, "")
	c.expect(c.admin("POST", "/api/v1/products", mugJSON), http.StatusCreated, "")

	jsonCatalog := `[
		{"sku":"cap-1","title":"Cap","price_minor":1200,"currency":"EUR","stock":30},
		{"sku":"tee-1","title":"T-shirt","price_minor":2500,"currency":"EUR","stock":50,"per_viewer_limit":3},
		{"sku":"bag-1","title":"Tote bag","price_minor":1900,"currency":"USD","stock":20,"active":false}
	]`
	a := c.do("POST", "/api/v1/products/import", testAdminToken, "application/json", jsonCatalog)
	c.expect(a, http.StatusOK, "")
	if strings.TrimSpace(string(a.body)) != `{"imported":3}` {
		t.Fatalf("answer %s", a.body)
	}
	if got := c.skus(testAdminToken); !slices.Equal(got, []string{"bag-1", "cap-1", "mug-1", "tee-1"}) {
		t.Fatalf("after JSON import %v", got)
	}
	if p := decodeProduct(t, c.do("GET", "/api/v1/products/cap-1", "", "", "")); p.Title != "Cap" || p.PriceMinor != 1200 {
		t.Fatalf("import did not replace cap-1: %+v", p)
	}

	csvCatalog := "sku,title,description,price_minor,currency,stock,per_viewer_limit\n" +
		"sock-1,Wool socks,\"Merino, two pairs\",1400,EUR,80,2\n" +
		"sock-2,Running socks,,1100,EUR,60,\n" +
		"sock-3,Ski socks,,2100,USD,15,1\n"
	a = c.do("POST", "/api/v1/products/import", testAdminToken, "text/csv; charset=utf-8", csvCatalog)
	c.expect(a, http.StatusOK, "")
	if p := decodeProduct(t, c.do("GET", "/api/v1/products/sock-1", "", "", "")); p.Description != "Merino, two pairs" || p.PerViewerLimit != 2 || !p.Active {
		t.Fatalf("CSV row stored as %+v", p)
	}
	if got := c.skus(""); !slices.Equal(got, []string{"cap-1", "mug-1", "sock-1", "sock-2", "sock-3", "tee-1"}) {
		t.Fatalf("public list after CSV import %v", got)
	}
}

func TestImportBadRowImportsNothing(t *testing.T) {
	c := newCatalogAPI(t)
	c.expect(c.admin("POST", "/api/v1/products", mugJSON), http.StatusCreated, "")

	bad := []struct{ name, ctype, body string }{
		// In CSV the header is row 1, as in a spreadsheet: the second
		// product is on row 3.
		{"csv", "text/csv", "sku,title,price_minor,currency,stock\n" +
			"tee-1,T-shirt,2500,EUR,50\n" +
			"tee-2,Hoodie,forty,EUR,20\n" +
			"mug-1,Mug replaced,100,EUR,1\n"},
		// In JSON the first product is row 1.
		{"json", "application/json", `[
			{"sku":"tee-1","title":"T-shirt","price_minor":2500,"currency":"EUR","stock":50},
			{"sku":"mug-1","title":"Mug replaced","price_minor":100,"currency":"EUR","stock":1},
			{"sku":"tee-2","title":"Hoodie","price_minor":"forty","currency":"EUR","stock":20}
		]`},
	}
	for _, b := range bad {
		a := c.do("POST", "/api/v1/products/import", testAdminToken, b.ctype, b.body)
		c.expect(a, http.StatusBadRequest, "invalid_row")
		_, msg := a.errorCode()
		if !strings.Contains(msg, "row 3: price_minor") {
			t.Errorf("%s: message %q does not name row 3's price", b.name, msg)
		}
		t.Logf("%s: %s", b.name, msg)
		if got := c.skus(testAdminToken); !slices.Equal(got, []string{"mug-1"}) {
			t.Fatalf("%s: a refused import changed the catalog: %v", b.name, got)
		}
		if p := decodeProduct(t, c.do("GET", "/api/v1/products/mug-1", "", "", "")); p.Title != "Enamel mug" {
			t.Fatalf("%s: a refused import replaced mug-1: %+v", b.name, p)
		}
	}

	c.expect(c.do("POST", "/api/v1/products/import", testAdminToken, "application/json", `{"sku":"tee-1"}`),
		http.StatusBadRequest, "invalid")
}

func TestImportRefusedBySizeAndType(t *testing.T) {
	c := newCatalogAPI(t)
	row := "tee-1,T-shirt,2500,EUR,50\n"
	huge := "sku,title,price_minor,currency,stock\n" + strings.Repeat(row, maxImportBytes/len(row)+1)
	c.expect(c.do("POST", "/api/v1/products/import", testAdminToken, "text/csv", huge), http.StatusRequestEntityTooLarge, "too_large")

	for _, ctype := range []string{"", "text/plain", "application/vnd.ms-excel", "multipart/form-data; boundary=x"} {
		c.expect(c.do("POST", "/api/v1/products/import", testAdminToken, ctype, "sku,title,price_minor,currency,stock\n"+row),
			http.StatusUnsupportedMediaType, "unsupported_media_type")
	}
	if got := c.skus(testAdminToken); len(got) != 0 {
		t.Fatalf("refused imports changed the catalog: %v", got)
	}
}
