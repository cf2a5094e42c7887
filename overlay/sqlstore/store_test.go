package sqlstore

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

// The same suite runs against every backend: SQLite in a temp dir, and
// PostgreSQL when VITRINE_TEST_POSTGRES holds a DSN (.ci/postgres.sh prints
// one). In CI a missing PostgreSQL is a failure, not a skip.

func TestSQLite(t *testing.T) {
	runConformance(t, func(t *testing.T) *Store { return openTestSQLite(t) })
}

func TestPostgres(t *testing.T) {
	dsn := postgresDSN(t)
	runConformance(t, func(t *testing.T) *Store { return openTestPostgres(t, dsn) })
}

func openTestSQLite(t testing.TB) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "vitrine.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func postgresDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("VITRINE_TEST_POSTGRES")
	if dsn == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("VITRINE_TEST_POSTGRES is empty in CI: start PostgreSQL with .ci/postgres.sh")
		}
		t.Skip("VITRINE_TEST_POSTGRES not set; start one with: export VITRINE_TEST_POSTGRES=$(.ci/postgres.sh start)")
	}
	return dsn
}

// openTestPostgres opens a store in a schema of its own, dropped at the end,
// so every test starts empty and reruns are clean.
func openTestPostgres(t testing.TB, dsn string) *Store {
	t.Helper()
	s, err := Open(context.Background(), freshSchema(t, dsn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() }) // runs before the schema is dropped
	return s
}

// freshSchema creates an empty schema, dropped when the test ends, and
// returns dsn pointed at it.
func freshSchema(t testing.TB, dsn string) string {
	t.Helper()
	ctx := context.Background()
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	schema := "test_" + strings.ToLower(rand.Text())
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		if _, err := admin.ExecContext(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema) // pgx sends unknown keys as run-time parameters
	u.RawQuery = q.Encode()
	return u.String()
}

func runConformance(t *testing.T, open func(t *testing.T) *Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s *Store)
	}{
		{"Products", testProducts},
		{"ImportAllOrNothing", testImportAllOrNothing},
		{"FlashSaleUnderLoad", testFlashSaleUnderLoad},
		{"IdempotencyKeyReused", testKeyReused},
		{"BuyRefusals", testBuyRefusals},
		{"ExpiryReturnsStock", testExpiryReturnsStock},
		{"ConfirmAndCancel", testConfirmAndCancel},
		{"OutboxWrittenWithChange", testOutbox},
		{"PruneKeepsWhatRulesNeed", testPrune},
		{"WebhookDelivery", testWebhookDelivery},
		{"MigrationsIdempotent", testMigrationsIdempotent},
		{"ShowState", testShowState},
		{"ShowChangeAllOrNothing", testShowChangeAllOrNothing},
		{"SaleEndedEvent", testSaleEndedEvent},
		{"ChatNames", testChatNames},
		{"ChatMessages", testChatMessages},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

var t0 = time.Date(2026, 3, 1, 20, 0, 0, 0, time.UTC)

func product(sku string, stock int64, limit int) overlay.Product {
	return overlay.Product{SKU: sku, Title: "Product " + sku, PriceMinor: 2500, Currency: "EUR",
		Stock: stock, PerViewerLimit: limit, Active: true}
}

// setupSale creates a product and starts a sale of it on stream "live".
func setupSale(t testing.TB, s *Store, p overlay.Product, units int64) overlay.Sale {
	t.Helper()
	ctx := context.Background()
	if _, err := s.CreateProduct(ctx, p); err != nil {
		t.Fatal(err)
	}
	sale, err := s.StartSale(ctx, overlay.Sale{Stream: "live", SKU: p.SKU, PriceMinor: 1999, Units: units,
		StartsAt: t0, EndsAt: t0.Add(time.Hour)}, t0)
	if err != nil {
		t.Fatal(err)
	}
	return sale
}

func buyReq(sku, viewer, key string, qty int64) overlay.BuyRequest {
	return overlay.BuyRequest{Stream: "live", SKU: sku, ViewerID: viewer, Qty: qty, IdempotencyKey: key}
}

func mustBuy(t testing.TB, s *Store, req overlay.BuyRequest, now time.Time) overlay.BuyResult {
	t.Helper()
	res, err := s.Buy(context.Background(), req, now, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func stockOf(t testing.TB, s *Store, sku string) int64 {
	t.Helper()
	p, err := s.Product(context.Background(), sku)
	if err != nil {
		t.Fatal(err)
	}
	return p.Stock
}

func testProducts(t *testing.T, s *Store) {
	ctx := context.Background()
	p := product("mug-1", 10, 2)
	p.Description, p.ImageURL = "A mug", "https://shop.example/mug.png"
	created, err := s.CreateProduct(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateProduct(ctx, p); !errors.Is(err, overlay.ErrExists) {
		t.Fatalf("second create: got %v, want ErrExists", err)
	}
	got, err := s.Product(ctx, "mug-1")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, created) {
		t.Fatalf("read back %+v, want %+v", got, created)
	}
	p.Title, p.Stock, p.Active = "Big mug", 7, false
	updated, err := s.UpdateProduct(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if updated.Title != "Big mug" || updated.Stock != 7 || updated.Active || !updated.CreatedAt.Equal(created.CreatedAt) {
		t.Fatalf("updated = %+v", updated)
	}
	if _, err := s.UpdateProduct(ctx, product("nope", 1, 0)); !errors.Is(err, overlay.ErrNotFound) {
		t.Fatalf("update missing: got %v, want ErrNotFound", err)
	}
	bad := product("mug-2", 1, 0)
	bad.Currency = "eur"
	var fe *overlay.FieldError
	if _, err := s.CreateProduct(ctx, bad); !errors.As(err, &fe) || fe.Field != "currency" {
		t.Fatalf("lower-case currency: got %v, want a currency FieldError", err)
	}
	if _, err := s.CreateProduct(ctx, product("cap-1", 3, 0)); err != nil {
		t.Fatal(err)
	}
	list, err := s.Products(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].SKU != "cap-1" || list[1].SKU != "mug-1" {
		t.Fatalf("products = %+v", list)
	}
	if err := s.DeleteProduct(ctx, "cap-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteProduct(ctx, "cap-1"); !errors.Is(err, overlay.ErrNotFound) {
		t.Fatalf("second delete: got %v, want ErrNotFound", err)
	}
	if _, err := s.Product(ctx, "cap-1"); !errors.Is(err, overlay.ErrNotFound) {
		t.Fatalf("deleted product: got %v, want ErrNotFound", err)
	}
}

func testImportAllOrNothing(t *testing.T, s *Store) {
	ctx := context.Background()
	csvBad := "sku,title,price_minor,currency,stock\n" +
		"tee-1,T-shirt,1500,EUR,10\n" +
		"tee-2,T-shirt XL,abc,EUR,10\n"
	_, err := overlay.ParseCatalogCSV(strings.NewReader(csvBad))
	var re *overlay.RowError
	if !errors.As(err, &re) || re.Row != 3 || !strings.Contains(err.Error(), "row 3: price_minor: not a number") {
		t.Fatalf("bad CSV: got %v, want an error naming row 3's price_minor", err)
	}
	// The store refuses a batch with a bad product as a whole, too.
	bad := product("tee-3", 5, 0)
	bad.PriceMinor = -1
	if err := s.ImportProducts(ctx, []overlay.Product{product("tee-1", 5, 0), bad}); !errors.As(err, &re) || re.Row != 2 {
		t.Fatalf("import with bad row: got %v, want row 2", err)
	}
	if list, _ := s.Products(ctx); len(list) != 0 {
		t.Fatalf("a failed import stored %d products", len(list))
	}

	good := "sku,title,price_minor,currency,stock,per_viewer_limit,active\n" +
		"tee-1,T-shirt,1500,EUR,10,1,true\n" +
		"tee-2,T-shirt XL,1700,EUR,4,,false\n"
	ps, err := overlay.ParseCatalogCSV(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ImportProducts(ctx, ps); err != nil {
		t.Fatal(err)
	}
	// Importing again replaces: stock follows the merchant's file.
	ps[0].Stock = 3
	if err := s.ImportProducts(ctx, ps); err != nil {
		t.Fatal(err)
	}
	list, err := s.Products(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Stock != 3 || list[0].PerViewerLimit != 1 || list[1].Active {
		t.Fatalf("imported %+v", list)
	}
}

// testFlashSaleUnderLoad is the rule that must never break: 2,000 buys at
// once from 500 viewers for 100 units, one per viewer.
func testFlashSaleUnderLoad(t *testing.T, s *Store) {
	ctx := context.Background()
	const viewers, keysPerViewer, sendsPerKey, units = 500, 2, 2, 100
	sale := setupSale(t, s, product("drop-1", units, 1), units)

	type attempt struct {
		viewer, key string
		res         overlay.BuyResult
		err         error
	}
	attempts := make([]attempt, 0, viewers*keysPerViewer*sendsPerKey)
	for v := range viewers {
		for k := range keysPerViewer {
			for range sendsPerKey {
				attempts = append(attempts, attempt{viewer: fmt.Sprintf("viewer-%03d", v), key: fmt.Sprintf("key-%03d-%d", v, k)})
			}
		}
	}

	// Watch the stock while the buyers run: it must never read negative.
	stop := make(chan struct{})
	var minStock int64 = units
	var watch sync.WaitGroup
	watch.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if p, err := s.Product(ctx, "drop-1"); err == nil {
				minStock = min(minStock, p.Stock)
			}
		}
	})

	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range attempts {
		a := &attempts[i]
		wg.Go(func() {
			<-start
			a.res, a.err = s.Buy(ctx, buyReq("drop-1", a.viewer, a.key, 1), t0.Add(time.Second), 10*time.Minute)
		})
	}
	close(start)
	wg.Wait()
	close(stop)
	watch.Wait()

	first := map[string]overlay.BuyResult{}
	orders := map[string]string{} // order ID -> viewer
	perViewer := map[string]int{}
	outcomes := map[string]int{}
	for _, a := range attempts {
		if a.err != nil {
			t.Fatalf("buy by %s: %v", a.viewer, a.err)
		}
		outcomes[a.res.Outcome]++
		id := a.viewer + "/" + a.key
		if prev, seen := first[id]; seen {
			if !reflect.DeepEqual(prev, a.res) {
				t.Fatalf("key %s answered differently:\n%+v\n%+v", id, prev, a.res)
			}
			continue
		}
		first[id] = a.res
		if a.res.Outcome == overlay.OutcomeReserved {
			orders[a.res.Order.ID] = a.viewer
			perViewer[a.viewer]++
		}
	}
	t.Logf("outcomes of %d attempts: %v", len(attempts), outcomes)
	if len(orders) != units {
		t.Fatalf("%d orders reserved, want exactly %d", len(orders), units)
	}
	for v, n := range perViewer {
		if n > 1 {
			t.Fatalf("viewer %s holds %d orders, limit is 1", v, n)
		}
	}
	for o := range outcomes {
		if o != overlay.OutcomeReserved && o != overlay.OutcomeSoldOut && o != overlay.OutcomeLimitReached {
			t.Fatalf("unexpected outcome %q", o)
		}
	}
	if st := stockOf(t, s, "drop-1"); st != 0 || minStock < 0 {
		t.Fatalf("stock = %d (lowest seen %d), want 0 and never negative", st, minStock)
	}
	if got, err := s.ActiveSale(ctx, "live", "drop-1", t0.Add(time.Second)); err != nil || got.UnitsLeft != 0 {
		t.Fatalf("sale units left = %d (%v), want 0", got.UnitsLeft, err)
	}

	for id, viewer := range orders {
		if _, err := s.Confirm(ctx, id, viewer, t0.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	// A key replayed after confirmation still gets its first answer.
	for _, a := range attempts[:40] {
		res := mustBuy(t, s, buyReq("drop-1", a.viewer, a.key, 1), t0.Add(2*time.Minute))
		if !reflect.DeepEqual(res, first[a.viewer+"/"+a.key]) {
			t.Fatalf("replayed key %s: got %+v, want first result %+v", a.key, res, first[a.viewer+"/"+a.key])
		}
	}
	st, err := s.Stats(ctx, "live")
	if err != nil {
		t.Fatal(err)
	}
	if st.Confirmed != units || st.UnitsSold != units || st.RevenueMinor["EUR"] != units*sale.PriceMinor || st.Reserved != 0 {
		t.Fatalf("stats = %+v", st)
	}
	list, err := s.Orders(ctx, "live", 0)
	if err != nil || len(list) != units {
		t.Fatalf("orders listed: %d (%v), want %d", len(list), err, units)
	}
}

func testKeyReused(t *testing.T, s *Store) {
	setupSale(t, s, product("hat-1", 10, 0), 0)
	first := mustBuy(t, s, buyReq("hat-1", "ann", "key-aaaa-1", 1), t0)
	if first.Outcome != overlay.OutcomeReserved {
		t.Fatalf("first buy: %+v", first)
	}
	_, err := s.Buy(context.Background(), buyReq("hat-1", "ann", "key-aaaa-1", 2), t0, time.Minute)
	if !errors.Is(err, overlay.ErrKeyReused) {
		t.Fatalf("same key, other qty: got %v, want ErrKeyReused", err)
	}
	// Keys belong to a viewer: another viewer's identical key is a new buy.
	if res := mustBuy(t, s, buyReq("hat-1", "bob", "key-aaaa-1", 1), t0); res.Outcome != overlay.OutcomeReserved || res.Order.ViewerID != "bob" {
		t.Fatalf("bob's buy: %+v", res)
	}
	if st := stockOf(t, s, "hat-1"); st != 8 {
		t.Fatalf("stock = %d, want 8", st)
	}
}

func testBuyRefusals(t *testing.T, s *Store) {
	ctx := context.Background()
	sale := setupSale(t, s, product("lamp-1", 4, 2), 3)
	inactive := product("lamp-2", 3, 0)
	inactive.Active = false
	if _, err := s.CreateProduct(ctx, inactive); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartSale(ctx, overlay.Sale{Stream: "live", SKU: "lamp-1", EndsAt: t0.Add(time.Hour)}, t0); !errors.Is(err, overlay.ErrSaleRunning) {
		t.Fatalf("second sale: got %v, want ErrSaleRunning", err)
	}
	if _, err := s.StartSale(ctx, overlay.Sale{Stream: "live", SKU: "ghost", EndsAt: t0.Add(time.Hour)}, t0); !errors.Is(err, overlay.ErrNotFound) {
		t.Fatalf("sale of unknown product: got %v, want ErrNotFound", err)
	}
	cases := []struct {
		req  overlay.BuyRequest
		when time.Time
		want string
	}{
		{buyReq("ghost", "ann", "key-ghost-1", 1), t0, overlay.OutcomeUnknownProduct},
		{buyReq("lamp-2", "ann", "key-inact-1", 1), t0, overlay.OutcomeInactive},
		{buyReq("lamp-1", "ann", "key-toomany", 3), t0, overlay.OutcomeLimitReached},
		{buyReq("lamp-1", "ann", "key-before0", 1), t0.Add(-time.Second), overlay.OutcomeSaleOver},
		{buyReq("lamp-1", "ann", "key-ann-001", 1), t0, overlay.OutcomeReserved},
		{buyReq("lamp-1", "ann", "key-ann-002", 1), t0, overlay.OutcomeReserved},
		{buyReq("lamp-1", "ann", "key-ann-003", 1), t0, overlay.OutcomeLimitReached},
		{buyReq("lamp-1", "bob", "key-bob-001", 1), t0, overlay.OutcomeReserved},
		{buyReq("lamp-1", "bob", "key-bob-002", 1), t0, overlay.OutcomeSoldOut}, // the sale's 3 units are gone
		{buyReq("lamp-1", "bob", "key-bob-003", 1), t0.Add(2 * time.Hour), overlay.OutcomeSaleOver},
	}
	for _, c := range cases {
		res := mustBuy(t, s, c.req, c.when)
		if res.Outcome != c.want || res.Reason == "" {
			t.Fatalf("%s by %s (%s): got %+v, want %s", c.req.SKU, c.req.ViewerID, c.req.IdempotencyKey, res, c.want)
		}
	}
	ended, err := s.EndSale(ctx, sale.ID, t0.Add(time.Minute))
	if err != nil || ended.Status != overlay.SaleEnded {
		t.Fatalf("end sale: %+v, %v", ended, err)
	}
	if res := mustBuy(t, s, buyReq("lamp-1", "cy", "key-cy-0001", 1), t0.Add(2*time.Minute)); res.Outcome != overlay.OutcomeSaleOver {
		t.Fatalf("after end: %+v", res)
	}
	// A new sale can start once the last one ended; it has its own units.
	if _, err := s.StartSale(ctx, overlay.Sale{Stream: "live", SKU: "lamp-1", Units: 5, EndsAt: t0.Add(time.Hour)}, t0.Add(3*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if res := mustBuy(t, s, buyReq("lamp-1", "cy", "key-cy-0002", 1), t0.Add(4*time.Minute)); res.Outcome != overlay.OutcomeReserved || res.Order.UnitPriceMinor != 2500 {
		t.Fatalf("buy at list price: %+v", res)
	}
	if _, err := s.Buy(ctx, buyReq("lamp-1", "cy", "short", 1), t0, time.Minute); err == nil {
		t.Fatal("a 5-character idempotency key was accepted")
	}
}

func testExpiryReturnsStock(t *testing.T, s *Store) {
	ctx := context.Background()
	setupSale(t, s, product("vase-1", 5, 3), 4)
	res, err := s.Buy(ctx, buyReq("vase-1", "ann", "key-expire-1", 3), t0, time.Minute)
	if err != nil || res.Outcome != overlay.OutcomeReserved {
		t.Fatalf("buy: %+v, %v", res, err)
	}
	if st := stockOf(t, s, "vase-1"); st != 2 {
		t.Fatalf("stock after reserving 3 of 5 = %d", st)
	}
	if n, err := s.ExpireReservations(ctx, t0.Add(30*time.Second)); err != nil || n != 0 {
		t.Fatalf("expired %d early (%v)", n, err)
	}
	if n, err := s.ExpireReservations(ctx, t0.Add(time.Minute)); err != nil || n != 1 {
		t.Fatalf("expired %d at the deadline (%v), want 1", n, err)
	}
	if st := stockOf(t, s, "vase-1"); st != 5 {
		t.Fatalf("stock after expiry = %d, want 5", st)
	}
	sale, err := s.ActiveSale(ctx, "live", "vase-1", t0.Add(time.Minute))
	if err != nil || sale.UnitsLeft != 4 {
		t.Fatalf("sale units after expiry = %d (%v), want 4", sale.UnitsLeft, err)
	}
	o, err := s.Order(ctx, res.Order.ID)
	if err != nil || o.Status != overlay.OrderExpired {
		t.Fatalf("order after expiry: %+v, %v", o, err)
	}
	if _, err := s.Confirm(ctx, o.ID, "ann", t0.Add(2*time.Minute)); !errors.Is(err, overlay.ErrReservationExpired) {
		t.Fatalf("confirm expired: got %v, want ErrReservationExpired", err)
	}
	// The viewer's units came back too: the limit of 3 allows 3 again.
	if res := mustBuy(t, s, buyReq("vase-1", "ann", "key-expire-2", 3), t0.Add(2*time.Minute)); res.Outcome != overlay.OutcomeReserved {
		t.Fatalf("buy after expiry: %+v", res)
	}
	// A reservation past its deadline cannot be confirmed even before the
	// expirer ran.
	res2 := mustBuy(t, s, buyReq("vase-1", "bob", "key-expire-3", 1), t0.Add(3*time.Minute))
	if _, err := s.Confirm(ctx, res2.Order.ID, "bob", t0.Add(9*time.Minute)); !errors.Is(err, overlay.ErrReservationExpired) {
		t.Fatalf("confirm past deadline: got %v, want ErrReservationExpired", err)
	}
}

func testConfirmAndCancel(t *testing.T, s *Store) {
	ctx := context.Background()
	setupSale(t, s, product("bag-1", 4, 0), 0)
	res := mustBuy(t, s, buyReq("bag-1", "ann", "key-confirm1", 2), t0)
	id := res.Order.ID
	if _, err := s.Confirm(ctx, id, "mallory", t0.Add(time.Second)); !errors.Is(err, overlay.ErrForeignViewer) {
		t.Fatalf("confirm by another viewer: got %v, want ErrForeignViewer", err)
	}
	if _, err := s.Cancel(ctx, id, "mallory", t0.Add(time.Second)); !errors.Is(err, overlay.ErrForeignViewer) {
		t.Fatalf("cancel by another viewer: got %v, want ErrForeignViewer", err)
	}
	o, err := s.Confirm(ctx, id, "ann", t0.Add(time.Second))
	if err != nil || o.Status != overlay.OrderConfirmed || !o.ConfirmedAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("confirm: %+v, %v", o, err)
	}
	again, err := s.Confirm(ctx, id, "ann", t0.Add(time.Minute))
	if err != nil || !reflect.DeepEqual(again, o) {
		t.Fatalf("second confirm: %+v, %v; want the same order", again, err)
	}
	if _, err := s.Cancel(ctx, id, "ann", t0.Add(time.Minute)); !errors.Is(err, overlay.ErrOrderClosed) {
		t.Fatalf("cancel confirmed: got %v, want ErrOrderClosed", err)
	}
	if _, err := s.Confirm(ctx, "ord_missing", "ann", t0); !errors.Is(err, overlay.ErrNotFound) {
		t.Fatalf("confirm unknown: got %v, want ErrNotFound", err)
	}
	// Confirmed orders are not expired.
	if n, err := s.ExpireReservations(ctx, t0.Add(time.Hour)); err != nil || n != 0 {
		t.Fatalf("expired %d confirmed orders (%v)", n, err)
	}

	res = mustBuy(t, s, buyReq("bag-1", "bob", "key-cancel-1", 2), t0)
	if st := stockOf(t, s, "bag-1"); st != 0 {
		t.Fatalf("stock = %d, want 0", st)
	}
	c, err := s.Cancel(ctx, res.Order.ID, "bob", t0.Add(time.Second))
	if err != nil || c.Status != overlay.OrderCancelled {
		t.Fatalf("cancel: %+v, %v", c, err)
	}
	if st := stockOf(t, s, "bag-1"); st != 2 {
		t.Fatalf("stock after cancel = %d, want 2", st)
	}
	if _, err := s.Confirm(ctx, res.Order.ID, "bob", t0.Add(2*time.Second)); !errors.Is(err, overlay.ErrOrderClosed) {
		t.Fatalf("confirm cancelled: got %v, want ErrOrderClosed", err)
	}
}

func testOutbox(t *testing.T, s *Store) {
	ctx := context.Background()
	setupSale(t, s, product("pen-1", 5, 0), 0)
	res := mustBuy(t, s, buyReq("pen-1", "ann", "key-outbox-1", 1), t0)
	if _, err := s.Confirm(ctx, res.Order.ID, "ann", t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	// A refused buy changes nothing and writes no event.
	mustBuy(t, s, buyReq("pen-1", "ann", "key-outbox-2", 99), t0)

	events, err := s.ClaimEvents(ctx, t0.Add(time.Minute), 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 2 || events[0].Type != overlay.EventOrderReserved || events[1].Type != overlay.EventOrderConfirmed {
		t.Fatalf("events = %+v", events)
	}
	for _, e := range events {
		if !strings.Contains(string(e.Payload), res.Order.ID) || e.Attempts != 1 {
			t.Fatalf("event %s: attempts %d, payload %s", e.Type, e.Attempts, e.Payload)
		}
	}
	// Claimed events are leased: nobody else gets them meanwhile.
	if again, _ := s.ClaimEvents(ctx, t0.Add(time.Minute), 10, time.Minute); len(again) != 0 {
		t.Fatalf("claimed %d leased events", len(again))
	}
	if err := s.MarkDelivered(ctx, events[0].ID, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.RetryEvent(ctx, events[1].ID, t0.Add(5*time.Minute), "merchant answered 503"); err != nil {
		t.Fatal(err)
	}
	if due, _ := s.ClaimEvents(ctx, t0.Add(4*time.Minute), 10, time.Minute); len(due) != 0 {
		t.Fatalf("claimed %d events before their retry time", len(due))
	}
	due, err := s.ClaimEvents(ctx, t0.Add(5*time.Minute), 10, time.Minute)
	if err != nil || len(due) != 1 || due[0].ID != events[1].ID || due[0].Attempts != 2 {
		t.Fatalf("due after retry time: %+v, %v", due, err)
	}
}

// testPrune: old idempotency keys and long-acknowledged events go; a key
// still within its retention keeps its first result, and an event the
// merchant never acknowledged stays however old it is.
func testPrune(t *testing.T, s *Store) {
	ctx := context.Background()
	// A sale long enough to buy in across the retention.
	if _, err := s.CreateProduct(ctx, product("pen-1", 10, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartSale(ctx, overlay.Sale{Stream: "live", SKU: "pen-1", PriceMinor: 1999,
		StartsAt: t0, EndsAt: t0.Add(30 * 24 * time.Hour)}, t0); err != nil {
		t.Fatal(err)
	}
	old := mustBuy(t, s, buyReq("pen-1", "ann", "key-old-1", 1), t0)
	if _, err := s.Confirm(ctx, old.Order.ID, "ann", t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	// The reservation's event is acknowledged at once; the confirmation's
	// never is.
	events, err := s.ClaimEvents(ctx, t0.Add(time.Minute), 10, time.Minute)
	if err != nil || len(events) != 2 {
		t.Fatalf("claim: %+v, %v", events, err)
	}
	if err := s.MarkDelivered(ctx, events[0].ID, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	later := t0.Add(overlay.EventRetention + time.Hour)
	recent := mustBuy(t, s, buyReq("pen-1", "bob", "key-recent-1", 1), later.Add(-time.Hour))

	keys, pruned, err := s.Prune(ctx, later)
	if err != nil {
		t.Fatal(err)
	}
	if keys != 1 || pruned != 1 {
		t.Errorf("pruned %d keys and %d events, want 1 and 1", keys, pruned)
	}
	if recent.Order == nil {
		t.Fatalf("buy within the sale: %+v", recent)
	}
	if again := mustBuy(t, s, buyReq("pen-1", "bob", "key-recent-1", 1), later); again.Order == nil || again.Order.ID != recent.Order.ID {
		t.Errorf("a key within its retention got %+v, want the first order %s", again, recent.Order.ID)
	}
	if again := mustBuy(t, s, buyReq("pen-1", "ann", "key-old-1", 1), later); again.Order == nil || again.Order.ID == old.Order.ID {
		t.Errorf("a pruned key answered %+v, want a new order", again)
	}
	if depth, err := s.OutboxDepth(ctx); err != nil || depth < 1 {
		t.Fatalf("outbox depth %d, %v", depth, err)
	}
	due, err := s.ClaimEvents(ctx, later, 100, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range due {
		found = found || e.ID == events[1].ID
	}
	if !found {
		t.Error("an event the merchant never acknowledged was pruned")
	}
	if _, err := s.Order(ctx, old.Order.ID); err != nil {
		t.Errorf("the order itself went with its key: %v", err)
	}
	if keys, pruned, err := s.Prune(ctx, later); err != nil || keys != 0 || pruned != 0 {
		t.Errorf("second prune: %d keys, %d events, %v; want nothing left", keys, pruned, err)
	}
}

func testMigrationsIdempotent(t *testing.T, s *Store) {
	ctx := context.Background()
	if err := s.migrate(ctx); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	var n, version int
	if err := s.read.QueryRowContext(ctx, `SELECT COUNT(*), MAX(version) FROM schema_migrations`).Scan(&n, &version); err != nil {
		t.Fatal(err)
	}
	ms, _ := migrations()
	if n != len(ms) || version != ms[len(ms)-1].version {
		t.Fatalf("schema_migrations has %d rows up to %d, want %d", n, version, len(ms))
	}
}
