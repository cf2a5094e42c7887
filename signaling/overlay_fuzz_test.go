package signaling

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/overlay/sqlstore"
)

const fuzzStreamKey = "fuzz-stream-key-0123456789"

// fuzzAPI is a server on a real SQLite store with one stream, "s", and one
// product, "mug", reached through its handler (no network).
func fuzzAPI(f *testing.F) (*Server, http.Handler, *sqlstore.Store) {
	ctx := context.Background()
	dir := f.TempDir()
	store, err := sqlstore.Open(ctx, filepath.Join(dir, "fuzz.db"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { store.Close() })
	if _, err := store.CreateProduct(ctx, overlay.Product{SKU: "mug", Title: "Mug", PriceMinor: 900, Currency: "EUR", Stock: 1_000_000_000, Active: true}); err != nil {
		f.Fatal(err)
	}
	mm := media.NewMetrics(prometheus.NewRegistry())
	log := slog.New(slog.DiscardHandler)
	streams, err := OpenStreams(filepath.Join(dir, "streams.json"), func(name string) *media.Stream {
		return media.NewStream(name, media.StreamOptions{}, mm, log)
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(streams.Close)
	if _, err := streams.Create("s", fuzzStreamKey); err != nil {
		f.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srv := New(Config{AdminToken: testAdminToken, ViewerSecret: []byte("fuzz-secret")}, nil, streams, store, reg, reg, log)
	f.Cleanup(func() { srv.Shows(func(sh *overlay.Show) { sh.Close() }) })
	return srv, srv.Handler(nil), store
}

// serve sends one request to h and returns the answer; an error answer
// must have the API's shape.
func serve(t *testing.T, h http.Handler, method, path, token, ctype string, body []byte) answer {
	t.Helper()
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	a := answer{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
	if a.status >= 400 {
		if code, msg := a.errorCode(); code == "" || msg == "" {
			t.Fatalf("%s %s %q: %d without an error code and message: %s", method, path, body, a.status, a.body)
		}
	}
	if a.status >= 500 {
		t.Fatalf("%s %s %q: %d: %s", method, path, body, a.status, a.body)
	}
	return a
}

// FuzzCueAPI sends a cue (POST /api/v1/streams/s/cues) or a run-of-show
// (PUT .../run-of-show) as a creator's studio or a merchant's backend
// could, to the real handlers on a real store. A bad body is a 4xx with an
// error code, never a 5xx; a run-of-show taken is what GET answers and what
// a show restored from the store (a restart) runs, and every cue of it
// passes the checks a cue meets when it fires.
func FuzzCueAPI(f *testing.F) {
	for _, seed := range []struct {
		run  bool
		body string
	}{
		{false, `{"type":"card.show","sku":"mug","lead_ms":200}`},
		{false, `{"type":"card.show","sku":"../x"}`},
		{false, `{"type":"card.show","sku":"nope"}`},
		{false, `{"type":"card.hide"}`},
		{false, `{"type":"sale.start","sku":"mug","price_minor":500,"units":10,"duration_s":60}`},
		{false, `{"type":"sale.end"}`},
		{false, `{"type":"custom","data":{"poll":"a or b?"}}`},
		{false, `{"type":"custom","data":"x","click_time_ms":9223372036854775807}`},
		{false, `{"type":"card.show","sku":"mug","lead_ms":-1}`},
		{false, `{"type":"boom"}`},
		{false, `{"type":"card.show","extra":1}`},
		{false, `[]`},
		{true, `{"cues":[{"offset_ms":0,"cue":{"type":"card.show","sku":"mug"}},{"offset_ms":500,"cue":{"type":"custom","data":{"step":2}}},{"offset_ms":3600000,"cue":{"type":"card.hide"}}]}`},
		{true, `{"cues":[{"offset_ms":0,"cue":{"type":"sale.start","sku":"mug","price_minor":1,"duration_s":600}},{"offset_ms":1,"cue":{"type":"sale.end"}}]}`},
		{true, `{"cues":[{"offset_ms":500,"cue":{"type":"custom","data":{}}},{"offset_ms":100,"cue":{"type":"card.hide"}}]}`},
		{true, `{"cues":[{"offset_ms":0,"cue":{"type":"card.show","sku":"mug","lead_ms":90000}}]}`},
		{true, `{"cues":[{"offset_ms":0,"cue":{"type":"custom"}}]}`},
		{true, `{"cues":[{"offset_ms":0,"cue":{"type":"sale.start","sku":"mug"}}]}`},
		{true, `{"cues":[{"offset_ms":0,"cue":{"type":"card.show","sku":"mug","click_time_ms":1}}]}`},
		{true, `{"cues":[]}`},
		{true, `{"cues":null}`},
	} {
		f.Add(seed.run, []byte(seed.body))
	}
	srv, h, _ := fuzzAPI(f)
	ctx := context.Background()
	const base = "/api/v1/streams/s"
	f.Fuzz(func(t *testing.T, run bool, body []byte) {
		if !run {
			a := serve(t, h, "POST", base+"/cues", fuzzStreamKey, "application/json", body)
			switch a.status {
			case http.StatusCreated:
				var m overlay.Message
				if err := json.Unmarshal(a.body, &m); err != nil || m.V != 1 || m.Type == "" || m.ID == "" {
					t.Fatalf("%q: cue answered %s (%v)", body, a.body, err)
				}
			case http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusRequestEntityTooLarge:
			default:
				t.Fatalf("%q: %d %s", body, a.status, a.body)
			}
			return
		}
		a := serve(t, h, "PUT", base+"/run-of-show", fuzzStreamKey, "application/json", body)
		switch a.status {
		case http.StatusOK:
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			return
		default:
			t.Fatalf("%q: %d %s", body, a.status, a.body)
		}
		var loaded overlay.RunOfShow
		if err := json.Unmarshal(a.body, &loaded); err != nil {
			t.Fatalf("%q: %v: %s", body, err, a.body)
		}
		if loaded.Running || loaded.Fired != 0 || len(loaded.Cues) == 0 || len(loaded.Cues) > overlay.MaxRunOfShow {
			t.Fatalf("%q: loaded %+v", body, loaded)
		}
		for i, c := range loaded.Cues {
			if i > 0 && c.OffsetMS < loaded.Cues[i-1].OffsetMS {
				t.Fatalf("%q: offsets decrease at cue %d", body, i+1)
			}
			if c.Cue.LeadMS < 0 || c.Cue.LeadMS > 60_000 || c.Cue.ClickTime != 0 {
				t.Fatalf("%q: cue %d taken: %+v", body, i+1, c.Cue)
			}
			if c.Cue.Type == overlay.CueCustom && (len(c.Cue.Data) == 0 || len(c.Cue.Data) > overlay.MaxCustomCue) {
				t.Fatalf("%q: custom cue %d with %d bytes of data taken", body, i+1, len(c.Cue.Data))
			}
			if c.Cue.Type == overlay.CueSaleStart && (c.Cue.DurationSec < 1 || c.Cue.DurationSec > 24*3600) {
				t.Fatalf("%q: sale cue %d of %d s taken", body, i+1, c.Cue.DurationSec)
			}
		}
		got := serve(t, h, "GET", base+"/run-of-show", fuzzStreamKey, "", nil)
		if got.status != http.StatusOK || !bytes.Equal(got.body, a.body) {
			t.Fatalf("%q: loaded %s, GET answers %d %s", body, a.body, got.status, got.body)
		}
		// A restart: the show is read back from the store.
		restored, err := overlay.NewShow(ctx, "s", noMedia{}, srv.showCfg)
		if err != nil {
			t.Fatalf("%q: the show does not restore: %v", body, err)
		}
		back := restored.RunOfShowState()
		restored.Close()
		if !reflect.DeepEqual(normalRun(t, back), normalRun(t, loaded)) {
			t.Fatalf("%q: restored run-of-show %+v, loaded %+v", body, back, loaded)
		}
	})
}

// normalRun is a run-of-show as JSON values, so that equal custom data
// compares equal however it was spaced.
func normalRun(t *testing.T, r overlay.RunOfShow) any {
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// FuzzCatalogImport sends a catalog (POST /api/v1/products/import) as JSON
// or CSV to the real handler on a real store: a bad file is a 400 naming
// what is wrong and changes nothing; a file taken is stored exactly as
// parsed, every product readable back (GET /api/v1/products/{sku}).
func FuzzCatalogImport(f *testing.F) {
	for _, seed := range []struct {
		csv  bool
		body string
	}{
		{false, `[{"sku":"cap-1","title":"Cap","price_minor":1200,"currency":"EUR","stock":30},{"sku":"bag-1","title":"Tote","price_minor":1900,"currency":"USD","stock":20,"active":false}]`},
		{false, `[{"sku":"mug","title":"Mug again","price_minor":950,"currency":"EUR","stock":5}]`},
		{false, `[{"sku":"tee","title":"T","price_minor":"forty","currency":"EUR","stock":1}]`},
		{false, `[] trailing`},
		{false, `{"sku":"x"}`},
		{true, "sku,title,description,price_minor,currency,stock,per_viewer_limit\nsock-1,Wool socks,\"Merino, two pairs\",1400,EUR,80,2\n"},
		{true, "sku,title,price_minor,currency,stock,active\nmug,Mug,900,EUR,1,no\nmug,Mug,900,EUR,1,yes\n"},
		{true, "sku,title,price_minor,currency,stock\ntee,T,12.50,EUR,1\n"},
		{true, "sku,title\n"},
	} {
		f.Add(seed.csv, []byte(seed.body))
	}
	_, h, store := fuzzAPI(f)
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, isCSV bool, body []byte) {
		hung := time.AfterFunc(20*time.Second, func() {
			buf := make([]byte, 1<<20)
			panic(fmt.Sprintf("import %q: still running after 20 s\n%s", body, buf[:runtime.Stack(buf, true)]))
		})
		defer hung.Stop()
		ctype, parse := "application/json", overlay.ParseCatalogJSON
		if isCSV {
			ctype, parse = "text/csv", overlay.ParseCatalogCSV
		}
		before, err := store.Products(ctx)
		if err != nil {
			t.Fatal(err)
		}
		a := serve(t, h, "POST", "/api/v1/products/import", testAdminToken, ctype, body)
		after, err := store.Products(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if a.status != http.StatusOK {
			if a.status != http.StatusBadRequest && a.status != http.StatusRequestEntityTooLarge {
				t.Fatalf("%q: %d %s", body, a.status, a.body)
			}
			if !sameProducts(before, after) {
				t.Fatalf("%q: refused (%s), but the catalog changed", body, a.body)
			}
			return
		}
		ps, err := parse(bytes.NewReader(body))
		if err != nil {
			t.Fatalf("%q: imported, but does not parse: %v", body, err)
		}
		var res struct{ Imported int }
		if err := json.Unmarshal(a.body, &res); err != nil || res.Imported != len(ps) {
			t.Fatalf("%q: answered %s for %d products", body, a.body, len(ps))
		}
		for _, want := range ps {
			got, err := store.Product(ctx, want.SKU)
			if err != nil {
				t.Fatalf("%q: %s not stored: %v", body, want.SKU, err)
			}
			want.CreatedAt, want.UpdatedAt = got.CreatedAt, got.UpdatedAt
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("%q: stored %+v, imported %+v", body, got, want)
			}
			read := serve(t, h, "GET", "/api/v1/products/"+want.SKU, testAdminToken, "", nil)
			if read.status != http.StatusOK {
				t.Fatalf("%q: GET %s: %d %s", body, want.SKU, read.status, read.body)
			}
		}
	})
}

func sameProducts(a, b []overlay.Product) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !reflect.DeepEqual(a[i], b[i]) {
			return false
		}
	}
	return true
}
