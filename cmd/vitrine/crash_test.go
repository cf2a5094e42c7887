package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/overlay/sqlstore"
)

// TestKillDuringFlashSale: the real binary is killed with SIGKILL while
// viewers buy and confirm in a flash sale. After a restart, every order that
// was confirmed to a viewer is in the store, confirmed, and the merchant got
// its order.confirmed event exactly once (by event id), signed.
func TestKillDuringFlashSale(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "vitrine")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	data := filepath.Join(dir, "data")
	const admin, key, secret = "admin-token-for-the-crash-test", "demo-key-for-the-crash-test", "webhook-secret-of-the-merchant"

	// The merchant: verifies every signature, counts deliveries per event.
	var mu sync.Mutex
	deliveries := map[string]int{}           // event id -> deliveries
	confirmedEvents := map[string][]string{} // order id -> distinct order.confirmed event ids
	merchant := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := overlay.VerifySignature([]byte(secret), body, r.Header.Get(overlay.HeaderTimestamp), r.Header.Get(overlay.HeaderSignature), time.Now(), 5*time.Minute); err != nil {
			t.Errorf("webhook signature: %v", err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var ev struct {
			ID, Type string
			Data     struct{ Order overlay.Order }
		}
		json.Unmarshal(body, &ev)
		mu.Lock()
		deliveries[ev.ID]++
		if ev.Type == overlay.EventOrderConfirmed && deliveries[ev.ID] == 1 {
			confirmedEvents[ev.Data.Order.ID] = append(confirmedEvents[ev.Data.Order.ID], ev.ID)
		}
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer merchant.Close()

	start := func() (*exec.Cmd, string) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		cmd := exec.Command(bin, "-data", data, "-http", addr, "-udp-port", "0", "-rtmp", "off", "-rtsp", "off")
		cmd.Env = append(os.Environ(), "VITRINE_ADMIN_TOKEN="+admin, "VITRINE_DEMO_KEY="+key,
			"VITRINE_WEBHOOK_URL="+merchant.URL, "VITRINE_WEBHOOK_SECRET="+secret, "VITRINE_LOG_LEVEL=warn")
		cmd.Stderr = testLog{t}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		base := "http://" + addr
		eventually(t, "server ready", 20*time.Second, func() bool {
			res, err := http.Get(base + "/readyz")
			if err != nil {
				return false
			}
			res.Body.Close()
			return res.StatusCode == 200
		})
		return cmd, base
	}

	srv, base := start()
	if code, m, _ := postJSON(t, base+"/api/v1/products", admin, map[string]any{
		"sku": "flash-1", "title": "Flash sneaker", "price_minor": 9900, "currency": "EUR", "stock": 100000, "active": true}); code != 201 {
		t.Fatalf("create product: %d %v", code, m)
	}
	if code, m, _ := postJSON(t, base+"/api/v1/streams/demo/cues", key, map[string]any{
		"type": "sale.start", "sku": "flash-1", "price_minor": 4900, "units": 50000, "duration_s": 600}); code != 201 {
		t.Fatalf("start sale: %d %v", code, m)
	}

	// Buyers: buy, then confirm; remember every order confirmed to them.
	var confirmedMu sync.Mutex
	var confirmed []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 5 * time.Second}
	for b := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf(`{"sku":"flash-1","qty":1,"key":"crash-%d-%d-key"}`, b, i)
				res, err := client.Post(base+"/api/v1/streams/demo/buy", "application/json", strings.NewReader(body))
				if err != nil {
					return // the server is gone
				}
				var r overlay.BuyResult
				json.NewDecoder(res.Body).Decode(&r)
				res.Body.Close()
				if r.Order == nil {
					continue
				}
				req, _ := http.NewRequest("POST", base+"/api/v1/orders/"+r.Order.ID+"/confirm", nil)
				req.Header.Set("Vitrine-Viewer", res.Header.Get("Vitrine-Viewer"))
				res, err = client.Do(req)
				if err != nil {
					return
				}
				res.Body.Close()
				if res.StatusCode == http.StatusOK {
					confirmedMu.Lock()
					confirmed = append(confirmed, r.Order.ID)
					confirmedMu.Unlock()
				}
			}
		})
	}
	time.Sleep(1500 * time.Millisecond)
	if err := srv.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	srv.Wait()
	close(stop)
	wg.Wait()
	t.Logf("%d orders confirmed to viewers before SIGKILL", len(confirmed))
	if len(confirmed) < 10 {
		t.Fatalf("only %d orders confirmed before the kill: the load did not run", len(confirmed))
	}

	// Restart: the outbox delivers what was left.
	srv, _ = start()
	restarted := time.Now()
	eventually(t, "every confirmed order's event delivered", 90*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range confirmed {
			if len(confirmedEvents[id]) == 0 {
				return false
			}
		}
		return true
	})
	t.Logf("outbox drained %s after the restart", time.Since(restarted).Round(100*time.Millisecond))
	srv.Process.Signal(syscall.SIGTERM)
	srv.Wait()

	st, err := sqlstore.Open(context.Background(), filepath.Join(data, "vitrine.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	mu.Lock()
	defer mu.Unlock()
	duplicates := 0
	for _, n := range deliveries {
		duplicates += n - 1
	}
	t.Logf("%d webhook events delivered, %d redelivered after the kill (same event id)", len(deliveries), duplicates)
	for _, id := range confirmed {
		o, err := st.Order(context.Background(), id)
		if err != nil || o.Status != overlay.OrderConfirmed {
			t.Errorf("order %s confirmed to a viewer: after restart %+v, %v", id, o, err)
		}
		if n := len(confirmedEvents[id]); n != 1 {
			t.Errorf("order %s: %d distinct order.confirmed events, want 1", id, n)
		}
	}
	p, err := st.Product(context.Background(), "flash-1")
	if err != nil || p.Stock < 0 {
		t.Errorf("stock after the kill: %+v %v", p, err)
	}
}
