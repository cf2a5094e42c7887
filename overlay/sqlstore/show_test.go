package sqlstore

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

// testShowState: what a show writes comes back as written, with the ids of
// the sales the same change opened, and those sales are open.
func testShowState(t *testing.T, s *Store) {
	ctx := context.Background()
	if st, err := s.ShowState(ctx, "live"); err != nil || !reflect.DeepEqual(st, overlay.ShowState{Stream: "live"}) {
		t.Fatalf("state of a stream never shown: %+v, %v", st, err)
	}
	for _, sku := range []string{"mug-1", "tee-1"} {
		if _, err := s.CreateProduct(ctx, product(sku, 10, 0)); err != nil {
			t.Fatal(err)
		}
	}
	run := overlay.RunOfShow{
		Cues: []overlay.TimedCue{
			{OffsetMS: 0, Cue: overlay.CueRequest{Type: overlay.CueShowCard, SKU: "mug-1"}},
			{OffsetMS: 5000, Cue: overlay.CueRequest{Type: overlay.CueSaleStart, SKU: "tee-1", PriceMinor: 990, Units: 3, DurationSec: 60}},
		},
		Running: true, StartedAt: t0, Fired: 1,
	}
	res, err := s.ChangeShow(ctx, overlay.ShowChange{
		StartList:  &overlay.Sale{Stream: "live", SKU: "mug-1", EndsAt: t0.Add(24 * time.Hour)},
		StartFlash: &overlay.Sale{Stream: "live", SKU: "tee-1", PriceMinor: 990, Units: 3, EndsAt: t0.Add(time.Minute)},
		State:      overlay.ShowState{Stream: "live", CardSKU: "mug-1", Run: run},
	}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if res.StartedList == nil || res.StartedFlash == nil || res.State.ListSaleID != res.StartedList.ID || res.State.SaleID != res.StartedFlash.ID {
		t.Fatalf("result %+v: the state must name the sales the change opened", res)
	}
	if res.StartedList.PriceMinor != 2500 || res.StartedFlash.UnitsLeft != 3 {
		t.Errorf("list sale at %d (want the list price 2500), flash sale with %d units left (want 3)",
			res.StartedList.PriceMinor, res.StartedFlash.UnitsLeft)
	}
	got, err := s.ShowState(ctx, "live")
	if err != nil || !reflect.DeepEqual(got, res.State) {
		t.Fatalf("stored state\n%+v, %v\nwant\n%+v", got, err, res.State)
	}
	if other, _ := s.ShowState(ctx, "other"); other.CardSKU != "" || other.SaleID != "" {
		t.Errorf("another stream's state: %+v", other)
	}
	open, err := s.OpenSales(ctx, "live")
	if err != nil || len(open) != 2 {
		t.Fatalf("open sales: %+v, %v", open, err)
	}
	// A buy counts against the flash sale the state names.
	if r := mustBuy(t, s, buyReq("tee-1", "ann", "key-show-1", 2), t0.Add(time.Second)); r.Order == nil || r.Order.SaleID != res.State.SaleID {
		t.Fatalf("buy in the stored flash sale: %+v", r)
	}
	// Its time runs out; nobody ended it: still open, no longer running.
	open, err = s.OpenSales(ctx, "live")
	if err != nil || len(open) != 2 {
		t.Fatalf("open sales after the flash sale's end time: %+v, %v", open, err)
	}
	for _, sale := range open {
		if sale.ID == res.State.SaleID && (sale.UnitsLeft != 1 || sale.Running(t0.Add(2*time.Minute))) {
			t.Errorf("flash sale %+v: want 1 unit left and not running after its end", sale)
		}
	}
}

// testShowChangeAllOrNothing: a change that cannot be made entirely is not
// made at all: the sale it was to end runs on, the state is unchanged.
func testShowChangeAllOrNothing(t *testing.T, s *Store) {
	ctx := context.Background()
	if _, err := s.CreateProduct(ctx, product("mug-1", 10, 0)); err != nil {
		t.Fatal(err)
	}
	first, err := s.ChangeShow(ctx, overlay.ShowChange{
		StartList: &overlay.Sale{Stream: "live", SKU: "mug-1", EndsAt: t0.Add(24 * time.Hour)},
		State:     overlay.ShowState{Stream: "live", CardSKU: "mug-1"},
	}, t0)
	if err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name string
		ch   overlay.ShowChange
		want error
	}{
		{"unknown product", overlay.ShowChange{
			End:        []string{first.State.ListSaleID},
			StartFlash: &overlay.Sale{Stream: "live", SKU: "nope-1", EndsAt: t0.Add(time.Hour)},
			State:      overlay.ShowState{Stream: "live", CardSKU: "nope-1"},
		}, overlay.ErrNotFound},
		{"a second sale of the product", overlay.ShowChange{
			StartFlash: &overlay.Sale{Stream: "live", SKU: "mug-1", EndsAt: t0.Add(time.Hour)},
			State:      overlay.ShowState{Stream: "live", CardSKU: "mug-1"},
		}, overlay.ErrSaleRunning},
		{"unknown sale", overlay.ShowChange{
			End:   []string{first.State.ListSaleID, "sale_nope"},
			State: overlay.ShowState{Stream: "live"},
		}, overlay.ErrNotFound},
	}
	for _, b := range bad {
		if _, err := s.ChangeShow(ctx, b.ch, t0.Add(time.Second)); !errors.Is(err, b.want) {
			t.Errorf("%s: %v, want %v", b.name, err, b.want)
		}
	}
	// Another stream's change cannot end this stream's sale.
	if _, err := s.ChangeShow(ctx, overlay.ShowChange{End: []string{first.State.ListSaleID},
		State: overlay.ShowState{Stream: "other"}}, t0.Add(time.Second)); err == nil {
		t.Error("a show ended another stream's sale")
	}
	if st, _ := s.ShowState(ctx, "live"); !reflect.DeepEqual(st, first.State) {
		t.Errorf("state after failed changes: %+v, want %+v", st, first.State)
	}
	if _, err := s.ActiveSale(ctx, "live", "mug-1", t0.Add(time.Minute)); err != nil {
		t.Errorf("the card's sale after failed changes: %v", err)
	}
	if events, _ := s.ClaimEvents(ctx, t0.Add(time.Hour), 10, time.Minute); len(events) != 0 {
		t.Errorf("failed changes wrote events: %+v", events)
	}
}

// testSaleEndedEvent: ending the flash sale the stored state names writes
// one sale.ended event, with the sale as it ended, in the same transaction;
// a list-price sale's end and a second end write none.
func testSaleEndedEvent(t *testing.T, s *Store) {
	ctx := context.Background()
	if _, err := s.CreateProduct(ctx, product("tee-1", 10, 0)); err != nil {
		t.Fatal(err)
	}
	started, err := s.ChangeShow(ctx, overlay.ShowChange{
		StartFlash: &overlay.Sale{Stream: "live", SKU: "tee-1", PriceMinor: 990, Units: 5, EndsAt: t0.Add(time.Minute)},
		State:      overlay.ShowState{Stream: "live", CardSKU: "tee-1"},
	}, t0)
	if err != nil {
		t.Fatal(err)
	}
	mustBuy(t, s, buyReq("tee-1", "ann", "key-ended-1", 2), t0.Add(time.Second))
	// Ended after its time ran out (as at a restart): its end stays its end.
	late := t0.Add(time.Hour)
	ended, err := s.ChangeShow(ctx, overlay.ShowChange{
		End:       []string{started.State.SaleID},
		StartList: &overlay.Sale{Stream: "live", SKU: "tee-1", EndsAt: late.Add(24 * time.Hour)},
		State:     overlay.ShowState{Stream: "live", CardSKU: "tee-1"},
	}, late)
	if err != nil {
		t.Fatal(err)
	}
	if len(ended.Ended) != 1 || ended.Ended[0].Status != overlay.SaleEnded || !ended.Ended[0].EndsAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("ended %+v", ended.Ended)
	}
	if st, _ := s.ShowState(ctx, "live"); st.SaleID != "" || st.ListSaleID != ended.StartedList.ID {
		t.Fatalf("state after the end: %+v", st)
	}
	// Again, and the list sale: no more events.
	if _, err := s.ChangeShow(ctx, overlay.ShowChange{
		End:   []string{started.State.SaleID, ended.StartedList.ID},
		State: overlay.ShowState{Stream: "live"},
	}, late.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	events, err := s.ClaimEvents(ctx, late.Add(time.Minute), 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var sales []overlay.Sale
	for _, e := range events {
		if e.Type != overlay.EventSaleEnded {
			continue
		}
		var body struct {
			Type string
			Data struct{ Sale overlay.Sale }
		}
		if err := json.Unmarshal(e.Payload, &body); err != nil || body.Type != overlay.EventSaleEnded {
			t.Fatalf("payload %s: %v", e.Payload, err)
		}
		sales = append(sales, body.Data.Sale)
	}
	if len(sales) != 1 {
		t.Fatalf("%d sale.ended events, want 1", len(sales))
	}
	if got := sales[0]; got.ID != started.State.SaleID || got.Units != 5 || got.UnitsLeft != 3 || got.PriceMinor != 990 {
		t.Errorf("sale in the event: %+v, want units 5, 3 left, at 990", got)
	}
	if open, err := s.OpenSales(ctx, "live"); err != nil || len(open) != 0 {
		t.Errorf("open sales after both ended: %+v, %v", open, err)
	}
}
