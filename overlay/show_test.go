package overlay_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/overlay"
)

// noMedia is a stream that has not ingested video: cues apply at once.
type noMedia struct{}

func (noMedia) Latest() (uint32, bool)      { return 0, false }
func (noMedia) At(time.Time) (uint32, bool) { return 0, false }

// clock is a settable now for the shows of a test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// restartable is a store and the show on it that a test "restarts": the
// show is closed and a new one made on the same store, as at a new start.
type restartable struct {
	t     *testing.T
	store overlay.Store
	clock *clock
	show  *overlay.Show
}

func newRestartable(t *testing.T) *restartable {
	r := &restartable{t: t, store: openTestStore(t), clock: &clock{t: time.Now()}}
	for _, p := range []overlay.Product{
		{SKU: "mug-1", Title: "Mug", PriceMinor: 1800, Currency: "EUR", Stock: 40, Active: true},
		{SKU: "tee-1", Title: "T-shirt", PriceMinor: 2500, Currency: "EUR", Stock: 100, Active: true},
	} {
		if _, err := r.store.CreateProduct(context.Background(), p); err != nil {
			t.Fatal(err)
		}
	}
	r.restart()
	return r
}

func (r *restartable) restart() {
	r.t.Helper()
	if r.show != nil {
		r.show.Close()
	}
	sh, err := overlay.NewShow(context.Background(), "live", noMedia{}, overlay.ShowConfig{
		Store: r.store, Metrics: overlay.NewMetrics(prometheus.NewRegistry()),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: r.clock.Now})
	if err != nil {
		r.t.Fatal(err)
	}
	r.show = sh
	r.t.Cleanup(sh.Close)
}

func (r *restartable) cue(req overlay.CueRequest) overlay.Message {
	r.t.Helper()
	m, err := r.show.Cue(context.Background(), req)
	if err != nil {
		r.t.Fatalf("cue %s: %v", req.Type, err)
	}
	return m
}

func (r *restartable) buy(sku, key string, qty int64) overlay.BuyResult {
	r.t.Helper()
	res, err := r.show.Buy(context.Background(), "ann", sku, qty, key)
	if err != nil {
		r.t.Fatal(err)
	}
	return res
}

// saleEnded returns the sales of the sale.ended events in the outbox.
func (r *restartable) saleEnded() []overlay.Sale {
	r.t.Helper()
	events, err := r.store.ClaimEvents(context.Background(), r.clock.Now().Add(time.Hour), 100, time.Minute)
	if err != nil {
		r.t.Fatal(err)
	}
	var sales []overlay.Sale
	for _, e := range events {
		var body struct{ Data struct{ Sale overlay.Sale } }
		if err := json.Unmarshal(e.Payload, &body); err != nil {
			r.t.Fatal(err)
		}
		if e.Type == overlay.EventSaleEnded {
			sales = append(sales, body.Data.Sale)
		}
	}
	return sales
}

func TestShowRestoresCard(t *testing.T) {
	r := newRestartable(t)
	r.cue(overlay.CueRequest{Type: overlay.CueShowCard, SKU: "mug-1"})
	r.restart()
	snap := r.show.Snapshot()
	if snap.Card == nil || snap.Card.SKU != "mug-1" || snap.Card.PriceMinor != 1800 || snap.At != nil || snap.Sale != nil {
		t.Fatalf("snapshot after restart: %+v, want the mug at 1800 without at", snap)
	}
	if res := r.buy("mug-1", "key-card-1", 1); res.Order == nil || res.Order.UnitPriceMinor != 1800 {
		t.Fatalf("buy after restart: %+v", res)
	}
	r.cue(overlay.CueRequest{Type: overlay.CueHideCard})
	r.restart()
	if snap := r.show.Snapshot(); snap.Card != nil {
		t.Fatalf("hidden card came back: %+v", snap.Card)
	}
	if res := r.buy("mug-1", "key-card-2", 1); res.Outcome != overlay.OutcomeSaleOver {
		t.Fatalf("buy of a hidden card after restart: %+v", res)
	}
}

func TestShowRestoresSale(t *testing.T) {
	r := newRestartable(t)
	r.cue(overlay.CueRequest{Type: overlay.CueSaleStart, SKU: "tee-1", PriceMinor: 990, Units: 5, DurationSec: 300})
	r.buy("tee-1", "key-sale-1", 2)
	r.restart()
	snap := r.show.Snapshot()
	if snap.Sale == nil || snap.Sale.PriceMinor != 990 || snap.Sale.Units != 5 || snap.Sale.UnitsLeft != 3 || snap.Sale.MSLeft < 290_000 {
		t.Fatalf("sale after restart: %+v, want 3 of 5 left at 990, ~300 s to go", snap.Sale)
	}
	if snap.Card == nil || snap.Card.SKU != "tee-1" || snap.Card.PriceMinor != 990 {
		t.Fatalf("card after restart: %+v", snap.Card)
	}
	if res := r.buy("tee-1", "key-sale-2", 3); res.Order == nil || res.Order.UnitPriceMinor != 990 {
		t.Fatalf("buy after restart: %+v", res)
	}
	if res := r.buy("tee-1", "key-sale-3", 1); res.Outcome != overlay.OutcomeSoldOut {
		t.Fatalf("sixth unit of five: %+v", res)
	}
	m := r.cue(overlay.CueRequest{Type: overlay.CueSaleEnd})
	if m.Card == nil || m.Card.PriceMinor != 2500 || m.Sale == nil || m.Sale.UnitsLeft != 0 {
		t.Fatalf("sale.end after restart: %+v", m)
	}
	if ended := r.saleEnded(); len(ended) != 1 || ended[0].UnitsLeft != 0 {
		t.Fatalf("sale.ended events: %+v", ended)
	}
	r.restart()
	if snap := r.show.Snapshot(); snap.Sale != nil || snap.Card == nil || snap.Card.PriceMinor != 2500 {
		t.Fatalf("after the end and a restart: %+v", snap)
	}
}

func TestShowEndsSaleThatRanOutWhileDown(t *testing.T) {
	r := newRestartable(t)
	r.cue(overlay.CueRequest{Type: overlay.CueSaleStart, SKU: "tee-1", PriceMinor: 990, Units: 5, DurationSec: 60})
	r.buy("tee-1", "key-down-1", 1)
	r.show.Close()
	// A closed show (the process going down) changes nothing any more.
	if _, err := r.show.Cue(context.Background(), overlay.CueRequest{Type: overlay.CueSaleEnd}); !errors.Is(err, overlay.ErrShowClosed) {
		t.Fatalf("sale.end on a closed show: %v, want ErrShowClosed", err)
	}
	r.clock.Set(r.clock.Now().Add(10 * time.Minute))
	r.restart()
	snap := r.show.Snapshot()
	if snap.Sale != nil || snap.Card == nil || snap.Card.SKU != "tee-1" || snap.Card.PriceMinor != 2500 {
		t.Fatalf("snapshot after the sale ran out while down: %+v, want the card at list price and no sale", snap)
	}
	ended := r.saleEnded()
	if len(ended) != 1 || ended[0].UnitsLeft != 4 || ended[0].Status != overlay.SaleEnded {
		t.Fatalf("sale.ended events: %+v", ended)
	}
	if res := r.buy("tee-1", "key-down-2", 1); res.Order == nil || res.Order.UnitPriceMinor != 2500 {
		t.Fatalf("buy after the restart: %+v, want list price", res)
	}
	if _, err := r.show.Cue(context.Background(), overlay.CueRequest{Type: overlay.CueSaleEnd}); err == nil {
		t.Fatal("sale.end of an ended sale succeeded")
	}
	r.restart()
	if len(r.saleEnded()) != 0 {
		t.Fatal("a second restart ended the sale again")
	}
}

func TestShowResumesRunOfShow(t *testing.T) {
	r := newRestartable(t)
	cues := []overlay.TimedCue{
		{OffsetMS: 0, Cue: overlay.CueRequest{Type: overlay.CueShowCard, SKU: "mug-1"}},
		{OffsetMS: 0, Cue: overlay.CueRequest{Type: overlay.CueSaleStart, SKU: "tee-1", PriceMinor: 990, DurationSec: 3600}},
		{OffsetMS: 3_600_000, Cue: overlay.CueRequest{Type: overlay.CueSaleEnd}},
	}
	if _, err := r.show.LoadRunOfShow(context.Background(), cues); err != nil {
		t.Fatal(err)
	}
	if _, err := r.show.StartRunOfShow(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two cues fired", func() bool { return r.show.RunOfShowState().Fired == 2 })
	r.restart()
	run := r.show.RunOfShowState()
	if !run.Running || run.Fired != 2 || len(run.Cues) != 3 {
		t.Fatalf("run-of-show after restart: %+v, want running with 2 of 3 fired", run)
	}
	if snap := r.show.Snapshot(); snap.Sale == nil || snap.Card == nil || snap.Card.SKU != "tee-1" {
		t.Fatalf("snapshot after restart: %+v", snap)
	}
	// The last cue's time comes while the server is down: it fires at
	// the next start, and the run is over.
	r.show.Close()
	r.clock.Set(r.clock.Now().Add(2 * time.Hour))
	r.restart()
	waitFor(t, "the last cue fired after the restart", func() bool {
		run := r.show.RunOfShowState()
		return run.Fired == 3 && !run.Running
	})
	if snap := r.show.Snapshot(); snap.Sale != nil {
		t.Fatalf("sale still on after the run ended it: %+v", snap.Sale)
	}
	r.restart()
	if run := r.show.RunOfShowState(); run.Running || run.Fired != 3 {
		t.Fatalf("finished run-of-show after restart: %+v", run)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
