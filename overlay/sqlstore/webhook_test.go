package sqlstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

// testWebhookDelivery runs the real worker on the real store against a
// merchant that fails the first two attempts of every event: each event must
// be acknowledged exactly once, after retries, with a valid signature.
func testWebhookDelivery(t *testing.T, s *Store) {
	ctx := context.Background()
	secret := []byte("whsec_0123456789abcdef")
	now := time.Now()
	if _, err := s.CreateProduct(ctx, product("cup-1", 50, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartSale(ctx, overlay.Sale{Stream: "live", SKU: "cup-1", StartsAt: now.Add(-time.Minute), EndsAt: now.Add(time.Hour)}, now); err != nil {
		t.Fatal(err)
	}
	const buys = 5
	for i := range buys {
		res := mustBuy(t, s, buyReq("cup-1", fmt.Sprintf("viewer-%d", i), fmt.Sprintf("key-hook-%03d", i), 1), now)
		if _, err := s.Confirm(ctx, res.Order.ID, res.Order.ViewerID, now); err != nil {
			t.Fatal(err)
		}
	}
	const events = 2 * buys // order.reserved + order.confirmed each

	var mu sync.Mutex
	tries := map[string]int{}
	acked := map[string]int{}
	var problems []string
	merchant := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		err := overlay.VerifySignature(secret, body, r.Header.Get(overlay.HeaderTimestamp),
			r.Header.Get(overlay.HeaderSignature), time.Now(), 5*time.Minute)
		var ev struct{ ID, Type string }
		if jerr := json.Unmarshal(body, &ev); err != nil || jerr != nil || ev.ID != r.Header.Get(overlay.HeaderEventID) {
			problems = append(problems, fmt.Sprintf("bad request: sig %v, json %v, id %q", err, jerr, ev.ID))
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		tries[ev.ID]++
		if tries[ev.ID] <= 2 {
			http.Error(w, "busy, try later", http.StatusServiceUnavailable)
			return
		}
		acked[ev.ID]++
		w.WriteHeader(http.StatusNoContent)
	}))
	defer merchant.Close()

	worker, err := overlay.NewWebhookWorker(s, overlay.WebhookConfig{
		URL: merchant.URL, Secret: secret, Client: merchant.Client(),
		Concurrency: 3, Batch: 4, PollInterval: 10 * time.Millisecond,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- worker.Run(runCtx) }()

	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n == events || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // room for a duplicate to show up
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(problems) > 0 {
		t.Fatalf("merchant saw bad requests: %v", problems)
	}
	if len(acked) != events {
		t.Fatalf("%d events acknowledged, want %d (tries %v)", len(acked), events, tries)
	}
	for id, n := range acked {
		if n != 1 || tries[id] != 3 {
			t.Fatalf("event %s: acknowledged %d times after %d tries, want once after 3", id, n, tries[id])
		}
	}
	left, err := s.ClaimEvents(ctx, time.Now().Add(time.Hour), 100, time.Minute)
	if err != nil || len(left) != 0 {
		t.Fatalf("%d events still undelivered (%v)", len(left), err)
	}
}
