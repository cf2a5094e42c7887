package alloc

import (
	"testing"
	"time"
)

// Layers as a browser studio sends them, listed high to low as in its offer.
var layers = []int{2_500_000, 800_000, 250_000}

func TestDecide(t *testing.T) {
	t0 := time.Unix(0, 0)
	var a Allocator
	// A fast viewer starts and stays on the top layer.
	if d := a.Decide(layers, -1, 5_000_000, Auto, t0); d.Layer != 0 || d.Probe != 0 {
		t.Fatalf("fast viewer: %+v, want layer 0", d)
	}
	// Its link drops to 600 kbit/s: straight down to the low layer.
	if d := a.Decide(layers, 0, 600_000, Auto, t0); d.Layer != 2 {
		t.Fatalf("600 kbit/s: %+v, want layer 2", d)
	}
	// Within 10 s of that, no way up, however good the estimate.
	if d := a.Decide(layers, 2, 5_000_000, Auto, t0.Add(9*time.Second)); d.Layer != 2 || d.Probe != 0 {
		t.Fatalf("9 s after going down: %+v, want to stay on 2 without probing", d)
	}
	// After 10 s, up one layer at a time, even with room for the top one.
	if d := a.Decide(layers, 2, 5_000_000, Auto, t0.Add(11*time.Second)); d.Layer != 1 {
		t.Fatalf("11 s after going down with 5 Mbit/s: %+v, want layer 1", d)
	}
	if d := a.Decide(layers, 1, 5_000_000, Auto, t0.Add(12*time.Second)); d.Layer != 0 {
		t.Fatalf("then: %+v, want layer 0", d)
	}
	// An estimate that carries the low layer but not the medium one with
	// headroom: stay, and probe for the medium one.
	if d := a.Decide(layers, 2, 900_000, Auto, t0.Add(20*time.Second)); d.Layer != 2 || d.Probe != 1_000_000 {
		t.Fatalf("900 kbit/s on the low layer: %+v, want to stay and probe 1 Mbit/s", d)
	}
	// A small dip under the medium layer's need does not move it up or
	// down (hysteresis between the two headrooms).
	if d := a.Decide(layers, 1, 850_000, Auto, t0.Add(30*time.Second)); d.Layer != 1 {
		t.Fatalf("850 kbit/s on the medium layer: %+v, want to stay", d)
	}
}

func TestChoiceAndStoppedLayers(t *testing.T) {
	t0 := time.Unix(0, 0)
	var a Allocator
	if d := a.Decide(layers, 0, 5_000_000, Low, t0); d.Layer != 2 {
		t.Fatalf("Low: %+v", d)
	}
	if d := a.Decide(layers, 2, 300_000, High, t0); d.Layer != 0 {
		t.Fatalf("High: %+v", d)
	}
	if d := a.Decide(layers, 2, 300_000, Medium, t0); d.Layer != 1 {
		t.Fatalf("Medium: %+v", d)
	}
	// The top layer stopped (the creator's encoder dropped it): a viewer
	// on it moves to the best that sends.
	if d := a.Decide([]int{0, 800_000, 250_000}, 0, 5_000_000, Auto, t0); d.Layer != 1 {
		t.Fatalf("top layer stopped: %+v, want 1", d)
	}
	// One layer only (RTMP): it is the one.
	if d := a.Decide([]int{2_500_000}, 0, 300_000, Auto, t0); d.Layer != 0 {
		t.Fatalf("single layer: %+v, want 0", d)
	}
	// Nothing sends: keep what it has.
	if d := a.Decide([]int{0, 0}, 1, 300_000, Auto, t0); d.Layer != 1 {
		t.Fatalf("nothing sends: %+v, want 1", d)
	}
}
