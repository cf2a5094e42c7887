package layer

import "testing"

// A viewer that never switches gets the layer's own numbers.
func TestNoSwitchKeepsNumbers(t *testing.T) {
	r := New(0)
	for i := range 5 {
		seq, ts := uint16(65533+i), uint32(1000+3000*i)
		out, outTS, ok := r.Rewrite(seq, ts)
		if !ok || out != seq || outTS != ts {
			t.Fatalf("packet %d: got %d/%d ok=%v, want %d/%d", i, out, outTS, ok, seq, ts)
		}
	}
}

// Switching continues the viewer's sequence by one, puts the new layer's
// timestamps on the primary's clock, refuses the new layer's packets from
// before the switch point, and NACKs map back to the layer they came from.
func TestSwitchIsContinuous(t *testing.T) {
	r := New(0)
	for i := range 10 {
		r.Rewrite(uint16(100+i), uint32(90000+3000*i))
	}
	// Layer 2's keyframe at its seq 5000, ts 7000 (its own base); aligned
	// to the primary it is 90000+3000*10.
	align := uint32(90000 + 3000*10 - 7000)
	r.Switch(2, 5000, 7000, align, 3000)
	out, ts, ok := r.Rewrite(5000, 7000)
	if !ok || out != 110 || ts != 120000 {
		t.Fatalf("first packet of the new layer: %d/%d ok=%v, want 110/120000", out, ts, ok)
	}
	if _, _, ok := r.Rewrite(4999, 4000); ok {
		t.Fatal("a packet of the new layer from before the switch went out")
	}
	out, _, _ = r.Rewrite(5001, 7000)
	if out != 111 {
		t.Fatalf("second packet: %d, want 111", out)
	}
	if l, seq, off, ok := r.Lookup(105); !ok || l != 0 || seq != 105 || off != 0 {
		t.Fatalf("NACK of 105: layer %d seq %d off %d ok=%v, want layer 0 seq 105", l, seq, off, ok)
	}
	if l, seq, off, ok := r.Lookup(111); !ok || l != 2 || seq != 5001 || off != align {
		t.Fatalf("NACK of 111: layer %d seq %d off %d ok=%v, want layer 2 seq 5001", l, seq, off, ok)
	}
}

// An alignment that would send the viewer back in time places the new
// layer's frame one frame after the last.
func TestSwitchNeverGoesBack(t *testing.T) {
	r := New(0)
	r.Rewrite(10, 50000)
	r.Switch(1, 700, 100, 0, 3000)
	if _, ts, _ := r.Rewrite(700, 100); ts != 53000 {
		t.Fatalf("timestamp after a bad alignment: %d, want 53000", ts)
	}
}

// Spans older than the history are not retransmitted from a wrong layer.
func TestLookupForgetsOldSpans(t *testing.T) {
	r := New(0)
	seq := uint16(0)
	for l := 1; l <= history+1; l++ {
		for range 3 {
			r.Rewrite(seq, 0)
			seq++
		}
		r.Switch(l, uint16(l*1000), 0, 0, 3000)
		seq = uint16(l * 1000)
	}
	if _, _, _, ok := r.Lookup(0); ok {
		t.Fatal("a packet of a layer four switches ago was looked up")
	}
	if l, _, _, ok := r.Lookup(r.cur.from - 1); !ok || l != history {
		t.Fatalf("the packet just before the last switch: layer %d ok=%v, want %d", l, ok, history)
	}
}

func TestPad(t *testing.T) {
	r := New(0)
	if _, _, ok := r.Pad(); ok {
		t.Fatal("padding before any packet")
	}
	r.Rewrite(100, 960)
	seq, ts, ok := r.Pad()
	if !ok || seq != 101 || ts != 960 {
		t.Fatalf("Pad = %d %d %v, want 101 960", seq, ts, ok)
	}
	if out, _, _ := r.Rewrite(101, 1920); out != 102 {
		t.Fatalf("the packet after the padding is %d, want 102", out)
	}
}
