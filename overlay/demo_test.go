package overlay_test

import (
	"bytes"
	"context"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/overlay/sqlstore"
)

func openTestStore(t *testing.T) overlay.Store {
	t.Helper()
	st, err := sqlstore.Open(context.Background(), filepath.Join(t.TempDir(), "vitrine.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestSeedDemoCatalogOnce(t *testing.T) {
	ctx := context.Background()
	st := openTestStore(t)
	if err := overlay.SeedDemoCatalog(ctx, st); err != nil {
		t.Fatal(err)
	}
	seeded, err := st.Products(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(seeded) < 4 || len(seeded) > 6 {
		t.Fatalf("seeded %d products, want a small demo catalog", len(seeded))
	}
	for _, p := range seeded {
		if !p.Active || p.Stock < 20 || p.Stock > 200 || p.PerViewerLimit < 1 || p.PerViewerLimit > 3 {
			t.Errorf("demo product %+v: want active, stock 20-200, limit 1-3", p)
		}
	}

	// The operator edits one product and removes another; a restart seeds
	// again and must change neither.
	edited := seeded[0]
	edited.Title, edited.PriceMinor, edited.Stock = "Operator's title", 4242, 7
	if _, err := st.UpdateProduct(ctx, edited); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteProduct(ctx, seeded[1].SKU); err != nil {
		t.Fatal(err)
	}
	if err := overlay.SeedDemoCatalog(ctx, st); err != nil {
		t.Fatal(err)
	}
	after, err := st.Products(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(seeded)-1 {
		t.Fatalf("second seeding: %d products, want %d", len(after), len(seeded)-1)
	}
	got, err := st.Product(ctx, edited.SKU)
	if err != nil {
		t.Fatal(err)
	}
	if got.Title != edited.Title || got.PriceMinor != 4242 || got.Stock != 7 {
		t.Fatalf("second seeding overwrote the operator's edit: %+v", got)
	}
}

// TestDemoImagesExist checks that every image the demo catalog points at is
// a small, self-contained SVG in web/static/demo, which the binary serves
// under /static/demo/.
func TestDemoImagesExist(t *testing.T) {
	ctx := context.Background()
	st := openTestStore(t)
	if err := overlay.SeedDemoCatalog(ctx, st); err != nil {
		t.Fatal(err)
	}
	ps, err := st.Products(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		name, ok := strings.CutPrefix(p.ImageURL, "/static/demo/")
		if !ok || !strings.HasSuffix(name, ".svg") || strings.Contains(name, "/") {
			t.Errorf("%s: image %q is not an SVG in /static/demo/", p.SKU, p.ImageURL)
			continue
		}
		data, err := os.ReadFile(filepath.Join("..", "web", "static", "demo", name))
		if err != nil {
			t.Errorf("%s: %v", p.SKU, err)
			continue
		}
		if len(data) >= 3<<10 {
			t.Errorf("%s: %s is %d bytes, want under 3 KiB", p.SKU, name, len(data))
		}
		var root struct{ XMLName xml.Name }
		if err := xml.Unmarshal(data, &root); err != nil || root.XMLName.Local != "svg" {
			t.Errorf("%s: %s is not an SVG document (root %q, %v)", p.SKU, name, root.XMLName.Local, err)
		}
		// The only URL allowed is the SVG namespace: a fetched font or
		// image would break the offline demo and leak viewers' addresses.
		rest := bytes.ReplaceAll(data, []byte(`xmlns="http://www.w3.org/2000/svg"`), nil)
		for _, ref := range []string{"://", "href", "@import", "url("} {
			if bytes.Contains(rest, []byte(ref)) {
				t.Errorf("%s: %s contains %q: demo images must not reference anything", p.SKU, name, ref)
			}
		}
	}
}
