package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

// ownPostgres starts a PostgreSQL of this test's own (.ci/postgres.sh), so
// that the test can take it down without touching the suite's.
func ownPostgres(t *testing.T) (dsn, dir string) {
	t.Helper()
	if os.Getenv("VITRINE_TEST_POSTGRES") == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("VITRINE_TEST_POSTGRES is empty in CI: .ci/test.sh starts PostgreSQL")
		}
		t.Skip("PostgreSQL not set up; run through .ci/test.sh")
	}
	dir, err := os.MkdirTemp("", "vitrine-pg-outage-")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("../../.ci/postgres.sh", "start", dir).Output()
	if err != nil {
		t.Fatalf("start PostgreSQL: %v", err)
	}
	t.Cleanup(func() { _ = exec.Command("../../.ci/postgres.sh", "stop", dir).Run() })
	return strings.TrimSpace(string(out)), dir
}

// TestPostgresRestartDuringFlashSale: PostgreSQL goes down for 2 s in the
// middle of a flash sale. Buys and confirms then get 503 with Retry-After,
// never another answer; the store reconnects by itself; each buyer retries
// with the same idempotency key, so no confirmed order is lost or doubled;
// and the merchant's webhook gets every confirmed order once the outbox
// drains.
func TestPostgresRestartDuringFlashSale(t *testing.T) {
	dsn, dir := ownPostgres(t)
	hook := newConfirmHook(t)
	a, base := testApp(t, func(c *Config) {
		c.Store = dsn
		c.Commerce.WebhookURL, c.Commerce.WebhookSecret = hook.URL, "outage-webhook-secret"
	})
	if _, err := a.store.CreateProduct(context.Background(), overlay.Product{SKU: "drop-1", Title: "Drop", PriceMinor: 5000,
		Currency: "EUR", Stock: 100_000, Active: true}); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := postJSON(t, base+"/api/v1/streams/demo/cues", a.demo.Key,
		map[string]any{"type": "sale.start", "sku": "drop-1", "price_minor": 2500, "units": 100_000, "duration_s": 300}); code != 201 {
		t.Fatalf("sale.start: %d %v", code, out)
	}

	var c storeClient
	post := func(url, viewer, body string) (int, map[string]any, http.Header) {
		return c.post(t, "", url, viewer, body)
	}

	// 8 buyers buy and confirm in a loop; PostgreSQL goes down 1 s in.
	stop := make(chan struct{})
	var mu sync.Mutex
	confirmed := map[string]bool{} // order ids the server said it confirmed
	var wg sync.WaitGroup
	for b := range 8 {
		wg.Go(func() {
			viewer := ""
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				code, res, h := post(base+"/api/v1/streams/demo/buy", viewer, fmt.Sprintf(`{"sku":"drop-1","qty":1,"key":"outage-%d-%04d"}`, b, i))
				if tok := h.Get("Vitrine-Viewer"); tok != "" {
					viewer = tok
				}
				if code != 200 || res["outcome"] != "reserved" {
					continue
				}
				order := res["order"].(map[string]any)
				code, o, _ := post(base+"/api/v1/orders/"+order["id"].(string)+"/confirm", viewer, "")
				if code == 200 && o["status"] == "confirmed" {
					mu.Lock()
					if confirmed[o["id"].(string)] {
						t.Errorf("order %s confirmed twice", o["id"])
					}
					confirmed[o["id"].(string)] = true
					mu.Unlock()
				}
			}
		})
	}
	time.Sleep(time.Second)
	down := time.Now()
	if out, err := exec.Command("../../.ci/postgres.sh", "outage", dir, "2").CombinedOutput(); err != nil {
		t.Fatalf("outage: %v %s", err, out)
	}
	t.Logf("PostgreSQL down and up again in %s", time.Since(down).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()

	c.mu.Lock()
	unavailable, other := c.unavailable[""], c.other
	c.mu.Unlock()
	t.Logf("%d answers 503 during the outage; %d orders confirmed", unavailable, len(confirmed))
	if unavailable == 0 {
		t.Error("no 503 while PostgreSQL was down: the outage was not seen")
	}
	if len(other) > 0 {
		t.Errorf("%d answers other than 200 and 503, first: %s", len(other), other[0])
	}

	// What the store holds is exactly what buyers were told.
	ctx := context.Background()
	orders, err := a.store.Orders(ctx, "demo", 100_000)
	if err != nil {
		t.Fatal(err)
	}
	stored := 0
	for _, o := range orders {
		if o.Status == overlay.OrderConfirmed {
			stored++
			if !confirmed[o.ID] {
				t.Errorf("order %s is confirmed in the store but its buyer was never told", o.ID)
			}
		}
	}
	if stored != len(confirmed) {
		t.Errorf("%d confirmed orders stored, %d confirmations answered", stored, len(confirmed))
	}
	eventually(t, "the webhook gets every confirmed order", 20*time.Second, func() bool {
		return hook.hasAll(slices.Collect(maps.Keys(confirmed)))
	})
}

// storeClient sends buys and confirms as a player meets a store outage:
// one request until the answer is not 503, at most 60 tries 200 ms apart
// (shorter than Retry-After, to see the store come back soon). Every 503
// must carry Retry-After and the code store_unavailable. It counts the
// 503s by a label of the caller's, and keeps answers other than 200 and
// 503.
type storeClient struct {
	mu          sync.Mutex
	unavailable map[string]int
	other       []string
}

func (c *storeClient) post(t *testing.T, label, url, viewer, body string) (int, map[string]any, http.Header) {
	for range 60 {
		req, _ := http.NewRequest("POST", url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if viewer != "" {
			req.Header.Set("Vitrine-Viewer", viewer)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("POST %s: %v", url, err)
			return 0, nil, nil
		}
		var out map[string]any
		raw, _ := io.ReadAll(res.Body)
		res.Body.Close()
		_ = json.Unmarshal(raw, &out)
		c.mu.Lock()
		switch res.StatusCode {
		case 503:
			if c.unavailable == nil {
				c.unavailable = map[string]int{}
			}
			c.unavailable[label]++
		case 200:
		default:
			c.other = append(c.other, fmt.Sprintf("%s %s: %d %s", label, url, res.StatusCode, raw))
		}
		c.mu.Unlock()
		if res.StatusCode != 503 {
			return res.StatusCode, out, res.Header
		}
		if res.Header.Get("Retry-After") == "" || errCode(out) != "store_unavailable" {
			t.Errorf("%s: 503 without Retry-After or code store_unavailable: %s", url, raw)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("POST %s: still 503 after 60 tries", url)
	return 0, nil, nil
}

// confirmHook is a merchant's webhook receiver that keeps the ids of the
// orders its order.confirmed events name.
type confirmHook struct {
	*httptest.Server
	mu   sync.Mutex
	seen map[string]bool
}

func newConfirmHook(t *testing.T) *confirmHook {
	h := &confirmHook{seen: map[string]bool{}}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev struct {
			Type string `json:"type"`
			Data struct {
				Order overlay.Order `json:"order"`
			} `json:"data"`
		}
		_ = json.NewDecoder(r.Body).Decode(&ev)
		if ev.Type == overlay.EventOrderConfirmed {
			h.mu.Lock()
			h.seen[ev.Data.Order.ID] = true
			h.mu.Unlock()
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(h.Close)
	return h
}

// hasAll reports whether every one of the orders was in an event.
func (h *confirmHook) hasAll(ids []string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, id := range ids {
		if !h.seen[id] {
			return false
		}
	}
	return true
}
