package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

// TestShowSurvivesRestart: the real binary is stopped (SIGKILL, or SIGTERM
// for a planned restart) while a card is shown, a flash sale runs, a sale's
// time runs out, a run-of-show is half fired. After the restart a new
// viewer's snapshot (and the studio's SSE stream and run-of-show view) shows
// the show as it was, buys go on at the same price without overselling,
// sale.end ends the restored sale, a sale that ran out while the server was
// down is ended at start, and the merchant gets each sale.ended event. On
// SQLite, and on PostgreSQL when VITRINE_TEST_POSTGRES is set.
func TestShowSurvivesRestart(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "vitrine")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cases := []struct {
		name string
		fn   func(t *testing.T, s *showServer)
	}{
		{"CardSIGKILL", restartWithCard},
		{"SaleSIGKILL", func(t *testing.T, s *showServer) { restartDuringSale(t, s, syscall.SIGKILL) }},
		{"SaleSIGTERM", func(t *testing.T, s *showServer) { restartDuringSale(t, s, syscall.SIGTERM) }},
		{"SaleRanOutWhileDown", restartAfterSaleRanOut},
		{"RunOfShowHalfFired", restartDuringRunOfShow},
	}
	for _, store := range []string{"SQLite", "PostgreSQL"} {
		t.Run(store, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					dir := t.TempDir()
					s := &showServer{t: t, bin: bin, data: filepath.Join(dir, "data"), merchant: newMerchant(t)}
					if store == "PostgreSQL" {
						s.store = postgresSchema(t)
					}
					c.fn(t, s)
				})
			}
		})
	}
}

func restartWithCard(t *testing.T, s *showServer) {
	s.start()
	s.cue(201, map[string]any{"type": "card.show", "sku": "demo-mug"})
	s.stop(syscall.SIGKILL)
	s.start()

	snap := s.snapshot()
	if snap.Card == nil || snap.Card.SKU != "demo-mug" || snap.Card.PriceMinor != 1600 || snap.Sale != nil {
		t.Fatalf("a new viewer's snapshot after the restart: %+v, want the mug at 16.00", snap)
	}
	if snap.At != nil {
		t.Errorf("restored card stamped at %d: it should show at once", *snap.At)
	}
	if sse := s.sseSnapshot(); sse.Card == nil || sse.Card.SKU != "demo-mug" || sse.At != nil {
		t.Errorf("studio's SSE snapshot after the restart: %+v", sse)
	}
	res := s.buy("demo-mug", 1)
	if res.Order == nil || res.Order.UnitPriceMinor != 1600 {
		t.Fatalf("buy of the restored card: %+v", res)
	}
	s.merchant.wait(t, "order.reserved of the buy after the restart", func() bool {
		return len(s.merchant.orderEvents(overlay.EventOrderReserved, res.Order.ID)) == 1
	})
	s.cue(201, map[string]any{"type": "card.hide"})
	if snap := s.snapshot(); snap.Card != nil {
		t.Errorf("card.hide after the restart left %+v", snap.Card)
	}
	s.cue(409, map[string]any{"type": "sale.end"})
}

func restartDuringSale(t *testing.T, s *showServer, sig syscall.Signal) {
	s.start()
	s.product("flash-tee", 4000)
	m := s.cue(201, map[string]any{"type": "sale.start", "sku": "flash-tee", "price_minor": 500, "units": 30, "duration_s": 300})
	saleID := m.Sale.ID
	var orders []string
	for range 4 {
		res := s.buy("flash-tee", 3)
		if res.Order == nil || res.Order.UnitPriceMinor != 500 {
			t.Fatalf("buy before the restart: %+v", res)
		}
		orders = append(orders, res.Order.ID)
	}
	s.merchant.wait(t, "the 4 reservations before the restart", func() bool { return s.merchant.count(overlay.EventOrderReserved) == 4 })
	s.stop(sig)
	s.start()

	snap := s.snapshot()
	if snap.Sale == nil || snap.Sale.ID != saleID || snap.Sale.PriceMinor != 500 || snap.Sale.Units != 30 || snap.Sale.UnitsLeft != 18 {
		t.Fatalf("sale in a new viewer's snapshot after the restart: %+v, want %s at 5.00 with 18 of 30 left", snap.Sale, saleID)
	}
	if snap.Sale.MSLeft <= 0 || snap.Sale.MSLeft > 300_000 || !snap.Sale.EndsAt.Equal(m.Sale.EndsAt) {
		t.Errorf("sale's end after the restart: %s (%d ms left), want %s", snap.Sale.EndsAt, snap.Sale.MSLeft, m.Sale.EndsAt)
	}
	if snap.Card == nil || snap.Card.SKU != "flash-tee" || snap.Card.PriceMinor != 500 || snap.Card.ListPriceMinor != 4000 {
		t.Errorf("card after the restart: %+v", snap.Card)
	}
	if sse := s.sseSnapshot(); sse.Sale == nil || sse.Sale.ID != saleID || sse.Sale.UnitsLeft != 18 {
		t.Errorf("studio's SSE snapshot after the restart: %+v", sse)
	}
	if stats := s.orderStats(); stats.Reserved != 4 {
		t.Errorf("studio's orders after the restart: %+v, want 4 reserved", stats)
	}

	// Eight buyers at once want 3 each; 18 units are left: six get them.
	var mu sync.Mutex
	var wg sync.WaitGroup
	sold, soldOut := int64(0), 0
	for range 8 {
		wg.Go(func() {
			res, err := s.tryBuy("flash-tee", 3)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				t.Error(err)
			case res.Order != nil:
				if res.Order.UnitPriceMinor != 500 || res.Order.SaleID != saleID {
					t.Errorf("buy after the restart: %+v, want 5.00 in sale %s", res.Order, saleID)
				}
				sold += res.Order.Qty
				orders = append(orders, res.Order.ID)
			case res.Outcome == overlay.OutcomeSoldOut:
				soldOut++
			default:
				t.Errorf("buy after the restart: %+v", res)
			}
		})
	}
	wg.Wait()
	if sold != 18 || soldOut != 2 {
		t.Fatalf("after the restart %d units sold and %d buyers told sold out, want 18 and 2 (30 units, 12 sold before)", sold, soldOut)
	}

	end := s.cue(201, map[string]any{"type": "sale.end"})
	if end.Sale == nil || end.Sale.ID != saleID || end.Sale.UnitsLeft != 0 || end.Card == nil || end.Card.PriceMinor != 4000 {
		t.Fatalf("sale.end after the restart: %+v", end)
	}
	if snap := s.snapshot(); snap.Sale != nil || snap.Card == nil || snap.Card.PriceMinor != 4000 {
		t.Errorf("snapshot after sale.end: %+v, want the card at list price and no sale", snap)
	}
	if res := s.buy("flash-tee", 1); res.Order == nil || res.Order.UnitPriceMinor != 4000 || res.Order.SaleID == saleID {
		t.Errorf("buy after the sale ended: %+v, want list price", res)
	}
	s.merchant.wait(t, "sale.ended of the restored sale", func() bool { return len(s.merchant.saleEnded()) == 1 })
	if got := s.merchant.saleEnded()[0]; got.ID != saleID || got.UnitsLeft != 0 || got.Units != 30 || got.PriceMinor != 500 {
		t.Errorf("sale.ended: %+v, want %s with 0 of 30 left at 5.00", got, saleID)
	}
	s.merchant.wait(t, "every order's order.reserved", func() bool {
		for _, id := range orders {
			if len(s.merchant.orderEvents(overlay.EventOrderReserved, id)) != 1 {
				return false
			}
		}
		return true
	})
}

func restartAfterSaleRanOut(t *testing.T, s *showServer) {
	s.start()
	s.product("flash-cap", 3000)
	m := s.cue(201, map[string]any{"type": "sale.start", "sku": "flash-cap", "price_minor": 900, "units": 10, "duration_s": 3})
	if res := s.buy("flash-cap", 2); res.Order == nil {
		t.Fatalf("buy in the sale: %+v", res)
	}
	s.stop(syscall.SIGKILL)
	if time.Now().After(m.Sale.EndsAt) {
		t.Fatal("the sale ended before the kill: the machine is too slow for this test")
	}
	time.Sleep(time.Until(m.Sale.EndsAt.Add(500 * time.Millisecond)))
	s.start()

	snap := s.snapshot()
	if snap.Sale != nil || snap.Card == nil || snap.Card.SKU != "flash-cap" || snap.Card.PriceMinor != 3000 {
		t.Fatalf("snapshot after the sale ran out while the server was down: %+v, want the card at list price, no sale", snap)
	}
	if sse := s.sseSnapshot(); sse.Sale != nil {
		t.Errorf("studio's SSE snapshot still has the sale: %+v", sse.Sale)
	}
	s.merchant.wait(t, "sale.ended of the sale that ran out", func() bool { return len(s.merchant.saleEnded()) == 1 })
	got := s.merchant.saleEnded()[0]
	if got.ID != m.Sale.ID || got.Status != overlay.SaleEnded || got.UnitsLeft != 8 || !got.EndsAt.Equal(m.Sale.EndsAt) {
		t.Errorf("sale.ended: %+v, want %s ended at %s with 8 left", got, m.Sale.ID, m.Sale.EndsAt)
	}
	s.cue(409, map[string]any{"type": "sale.end"})
	res := s.buy("flash-cap", 1)
	if res.Order == nil || res.Order.UnitPriceMinor != 3000 {
		t.Fatalf("buy after the restart: %+v, want list price", res)
	}
	// A second start does not end it again.
	s.stop(syscall.SIGTERM)
	s.start()
	s.merchant.wait(t, "order.reserved of the last buy", func() bool {
		return len(s.merchant.orderEvents(overlay.EventOrderReserved, res.Order.ID)) == 1
	})
	if n := len(s.merchant.saleEnded()); n != 1 {
		t.Errorf("%d sale.ended events after a second restart, want 1", n)
	}
}

func restartDuringRunOfShow(t *testing.T, s *showServer) {
	s.start()
	s.product("flash-bag", 5000)
	const later = 10_000 // ms: the third cue fires after the restart
	var run overlay.RunOfShow
	s.call("PUT", "/api/v1/streams/demo/run-of-show", 200, map[string]any{"cues": []map[string]any{
		{"offset_ms": 0, "cue": map[string]any{"type": "card.show", "sku": "demo-mug"}},
		{"offset_ms": 0, "cue": map[string]any{"type": "sale.start", "sku": "flash-bag", "price_minor": 2500, "units": 20, "duration_s": 600}},
		{"offset_ms": later, "cue": map[string]any{"type": "card.show", "sku": "demo-sneakers"}},
		{"offset_ms": 3_600_000, "cue": map[string]any{"type": "card.hide"}},
	}}, nil)
	s.call("POST", "/api/v1/streams/demo/run-of-show/start", 200, nil, &run)
	started := run.StartedAt
	eventually(t, "the first two cues fired", 10*time.Second, func() bool { return s.runOfShow().Fired == 2 })
	sale := s.snapshot().Sale
	if sale == nil {
		t.Fatal("the run-of-show's sale is not in the snapshot")
	}
	s.stop(syscall.SIGKILL)
	s.start()
	if time.Since(started) > later*time.Millisecond {
		t.Fatal("restart took longer than the third cue's offset: the machine is too slow for this test")
	}

	run = s.runOfShow()
	if !run.Running || run.Fired != 2 || len(run.Cues) != 4 || !run.StartedAt.Equal(started) {
		t.Fatalf("studio's run-of-show after the restart: running %v, %d of %d fired, started %s; want running, 2 of 4, started %s",
			run.Running, run.Fired, len(run.Cues), run.StartedAt, started)
	}
	snap := s.snapshot()
	if snap.Sale == nil || snap.Sale.ID != sale.ID || snap.Card == nil || snap.Card.SKU != "flash-bag" || snap.Card.PriceMinor != 2500 {
		t.Fatalf("snapshot after the restart: %+v, want the bag's flash sale", snap)
	}
	// The show goes on: the third cue fires on its first schedule.
	eventually(t, "the third cue fired after the restart", 20*time.Second, func() bool { return s.runOfShow().Fired == 3 })
	if snap := s.sseSnapshot(); snap.Card == nil || snap.Card.SKU != "demo-sneakers" || snap.Sale == nil || snap.Sale.ID != sale.ID {
		t.Fatalf("studio's SSE snapshot after the third cue: %+v, want the sneakers' card beside the bag's sale", snap)
	}
	end := s.cue(201, map[string]any{"type": "sale.end"})
	if end.Sale == nil || end.Sale.ID != sale.ID {
		t.Fatalf("sale.end after the restart: %+v", end)
	}
	s.merchant.wait(t, "sale.ended of the run-of-show's sale", func() bool { return len(s.merchant.saleEnded()) == 1 })
	if got := s.merchant.saleEnded()[0]; got.ID != sale.ID || got.UnitsLeft != 20 {
		t.Errorf("sale.ended: %+v", got)
	}

	s.call("POST", "/api/v1/streams/demo/run-of-show/stop", 200, nil, &run)
	s.stop(syscall.SIGTERM)
	s.start()
	if run := s.runOfShow(); run.Running || run.Fired != 3 || len(run.Cues) != 4 {
		t.Errorf("stopped run-of-show after a restart: running %v, %d of %d fired; want stopped, 3 of 4", run.Running, run.Fired, len(run.Cues))
	}
	if snap := s.snapshot(); snap.Sale != nil || snap.Card == nil || snap.Card.SKU != "demo-sneakers" {
		t.Errorf("snapshot after the last restart: %+v", snap)
	}
}

const (
	restartAdmin  = "admin-token-for-the-restart-test"
	restartKey    = "demo-key-for-the-restart-test"
	restartSecret = "webhook-secret-of-the-restart-test"
)

// showServer is one data directory (or PostgreSQL schema) and the vitrine
// process running on it, started and stopped as a test needs.
type showServer struct {
	t        *testing.T
	bin      string
	data     string
	store    string // PostgreSQL DSN; SQLite in data when empty
	merchant *merchant
	cmd      *exec.Cmd
	base     string
}

func (s *showServer) start() {
	t := s.t
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(s.bin, "-data", s.data, "-http", addr, "-udp-port", "0", "-rtmp", "off", "-rtsp", "off")
	cmd.Env = append(os.Environ(), "VITRINE_ADMIN_TOKEN="+restartAdmin, "VITRINE_DEMO_KEY="+restartKey,
		"VITRINE_WEBHOOK_URL="+s.merchant.srv.URL, "VITRINE_WEBHOOK_SECRET="+restartSecret,
		"VITRINE_LOG_LEVEL=warn", "VITRINE_STORE="+s.store)
	cmd.Stderr = testLog{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	s.cmd, s.base = cmd, "http://"+addr
	eventually(t, "server ready", 20*time.Second, func() bool {
		res, err := http.Get(s.base + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == 200
	})
}

func (s *showServer) stop(sig syscall.Signal) {
	s.t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
	s.cmd.Wait()
}

// call sends a JSON request with the stream key and decodes the answer
// into out, failing unless the status is want.
func (s *showServer) call(method, path string, want int, body, out any) {
	s.t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = strings.NewReader(string(b))
	}
	req, _ := http.NewRequest(method, s.base+path, r)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+restartKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != want {
		s.t.Fatalf("%s %s: %d %s, want %d", method, path, res.StatusCode, b, want)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			s.t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
}

func (s *showServer) cue(want int, body map[string]any) overlay.Message {
	s.t.Helper()
	var m overlay.Message
	var out any = &m
	if want != 201 {
		out = nil
	}
	s.call("POST", "/api/v1/streams/demo/cues", want, body, out)
	return m
}

func (s *showServer) product(sku string, price int64) {
	s.t.Helper()
	if code, m, _ := postJSON(s.t, s.base+"/api/v1/products", restartAdmin, map[string]any{
		"sku": sku, "title": "Product " + sku, "price_minor": price, "currency": "EUR", "stock": 1000}); code != 201 {
		s.t.Fatalf("create product %s: %d %v", sku, code, m)
	}
}

// buy is a new viewer buying over HTTP.
func (s *showServer) buy(sku string, qty int64) overlay.BuyResult {
	s.t.Helper()
	r, err := s.tryBuy(sku, qty)
	if err != nil {
		s.t.Fatal(err)
	}
	return r
}

// tryBuy is buy for goroutines other than the test's.
func (s *showServer) tryBuy(sku string, qty int64) (overlay.BuyResult, error) {
	b, _ := json.Marshal(map[string]any{"sku": sku, "qty": qty, "key": "restart-" + strings.ToLower(rand.Text())})
	res, err := http.Post(s.base+"/api/v1/streams/demo/buy", "application/json", strings.NewReader(string(b)))
	if err != nil {
		return overlay.BuyResult{}, err
	}
	defer res.Body.Close()
	var r overlay.BuyResult
	if err := json.NewDecoder(res.Body).Decode(&r); err != nil || res.StatusCode != 200 {
		return r, fmt.Errorf("buy %s: %d %v", sku, res.StatusCode, err)
	}
	return r, nil
}

// snapshot is what a new viewer gets first.
func (s *showServer) snapshot() overlay.Message {
	s.t.Helper()
	res, err := http.Get(s.base + "/api/v1/streams/demo/overlay")
	if err != nil {
		s.t.Fatal(err)
	}
	defer res.Body.Close()
	var m overlay.Message
	if res.StatusCode != 200 || json.NewDecoder(res.Body).Decode(&m) != nil || m.Type != "snapshot" {
		s.t.Fatalf("overlay snapshot: %d %+v", res.StatusCode, m)
	}
	return m
}

// sseSnapshot is the first message of the event stream the studio follows.
func (s *showServer) sseSnapshot() overlay.Message {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", s.base+"/api/v1/streams/demo/events", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var m overlay.Message
			if err := json.Unmarshal([]byte(data), &m); err != nil || m.Type != "snapshot" {
				s.t.Fatalf("first SSE message %s: %v", data, err)
			}
			return m
		}
	}
	s.t.Fatalf("no SSE message: %v", sc.Err())
	return overlay.Message{}
}

// runOfShow is the studio's view of the run-of-show.
func (s *showServer) runOfShow() overlay.RunOfShow {
	s.t.Helper()
	req, _ := http.NewRequest("GET", s.base+"/api/v1/streams/demo/run-of-show", nil)
	req.Header.Set("Authorization", "Bearer "+restartKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer res.Body.Close()
	var run overlay.RunOfShow
	if res.StatusCode != 200 || json.NewDecoder(res.Body).Decode(&run) != nil {
		s.t.Fatalf("run-of-show: %d", res.StatusCode)
	}
	return run
}

// orderStats is the studio's order summary.
func (s *showServer) orderStats() overlay.OrderStats {
	s.t.Helper()
	var out struct{ Stats overlay.OrderStats }
	s.call("GET", "/api/v1/streams/demo/orders", 200, nil, &out)
	return out.Stats
}

// merchant receives the webhook on 127.0.0.1, checks every signature and
// keeps each event once (delivery is at least once).
type merchant struct {
	srv    *httptest.Server
	mu     sync.Mutex
	events map[string]merchantEvent // by event id
}

type merchantEvent struct {
	ID, Type string
	Data     struct {
		Order *overlay.Order
		Sale  *overlay.Sale
	}
}

func newMerchant(t *testing.T) *merchant {
	m := &merchant{events: map[string]merchantEvent{}}
	m.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := overlay.VerifySignature([]byte(restartSecret), body, r.Header.Get(overlay.HeaderTimestamp), r.Header.Get(overlay.HeaderSignature), time.Now(), 5*time.Minute); err != nil {
			t.Errorf("webhook signature: %v", err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var ev merchantEvent
		if err := json.Unmarshal(body, &ev); err != nil {
			t.Errorf("webhook body %s: %v", body, err)
		}
		m.mu.Lock()
		m.events[ev.ID] = ev
		m.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(m.srv.Close)
	return m
}

func (m *merchant) count(typ string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, e := range m.events {
		if e.Type == typ {
			n++
		}
	}
	return n
}

// orderEvents are the distinct events of type typ about order id.
func (m *merchant) orderEvents(typ, id string) []merchantEvent {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []merchantEvent
	for _, e := range m.events {
		if e.Type == typ && e.Data.Order != nil && e.Data.Order.ID == id {
			out = append(out, e)
		}
	}
	return out
}

// saleEnded lists the sales of distinct sale.ended events.
func (m *merchant) saleEnded() []overlay.Sale {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []overlay.Sale
	for _, e := range m.events {
		if e.Type == overlay.EventSaleEnded && e.Data.Sale != nil {
			out = append(out, *e.Data.Sale)
		}
	}
	return out
}

func (m *merchant) wait(t *testing.T, what string, ok func() bool) {
	t.Helper()
	eventually(t, what, 20*time.Second, ok)
}

// postgresSchema returns VITRINE_TEST_POSTGRES pointed at a new schema,
// dropped when the test ends; without it the test is skipped (in CI it
// fails).
func postgresSchema(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv("VITRINE_TEST_POSTGRES")
	if dsn == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("VITRINE_TEST_POSTGRES is empty in CI: start PostgreSQL with .ci/postgres.sh")
		}
		t.Skip("VITRINE_TEST_POSTGRES not set; start one with: export VITRINE_TEST_POSTGRES=$(.ci/postgres.sh start)")
	}
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	schema := "restart_" + strings.ToLower(rand.Text())
	if _, err := admin.Exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec("DROP SCHEMA " + schema + " CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
