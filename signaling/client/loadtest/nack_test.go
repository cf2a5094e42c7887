package loadtest

import (
	"slices"
	"testing"
	"time"
)

// TestSeqDuplicates: a packet counts once, however often it comes; a late
// one (a retransmission of a lost packet) counts when it comes; the span
// covers what was missing.
func TestSeqDuplicates(t *testing.T) {
	var k kindStats
	fresh := func(s uint16, want bool) {
		t.Helper()
		if _, got := k.seq(s); got != want {
			t.Fatalf("seq %d: new %v, want %v", s, got, want)
		}
	}
	fresh(65530, true)
	fresh(65530, false)
	fresh(65533, true) // 65531 and 65532 missing
	fresh(2, true)     // across the wrap: 65534..1 missing
	fresh(65531, true) // recovered
	fresh(65531, false)
	fresh(0, true)
	fresh(2, false)
	if span := k.seqSpan.Load(); span != 9 {
		t.Errorf("span %d, want 9 (65530..2)", span)
	}
	fresh(65529, false) // before the first: not counted
	// A window's worth later, the same slot is a new packet.
	for s := uint16(3); s < 3+seqWindow; s++ {
		fresh(s, true)
	}
	fresh(3+seqWindow-seqWindow/2, false)
	fresh(5, false) // too old to tell
}

// TestNACKState: gaps are asked for at once, asked again after the round
// trip while missing, counted when they arrive, and given up.
func TestNACKState(t *testing.T) {
	var n nackState
	n.rtt(int64(400 * time.Millisecond))
	ms := func(d int) int64 { return int64(d) * int64(time.Millisecond) }
	if got := n.observe(100, 0); got != nil {
		t.Fatalf("first packet asked for %v", got)
	}
	if got := n.observe(104, ms(1)); !slices.Equal(got, []uint16{101, 102, 103}) {
		t.Fatalf("gap: asked for %v", got)
	}
	if got := n.observe(102, ms(300)); len(got) != 0 {
		t.Fatalf("recovered 102, asked for %v before the round trip", got)
	}
	// 101 and 103 still missing after 400 ms * 1.25 + 20 ms.
	if got := n.observe(105, ms(530)); !slices.Equal(got, []uint16{101, 103}) {
		t.Fatalf("repeat: asked for %v", got)
	}
	if got := n.observe(103, ms(540)); len(got) != 0 {
		t.Fatalf("asked for %v", got)
	}
	if n.asked != 3 || n.recovered != 2 || n.requests != 5 {
		t.Errorf("asked %d recovered %d requests %d, want 3 2 5", n.asked, n.recovered, n.requests)
	}
	// 101 is given up after three seconds.
	for i, now := 106, ms(600); now < ms(4000); i, now = i+1, now+ms(50) {
		n.observe(uint16(i), now)
	}
	if n.gaveUp != 1 || len(n.pending) != 0 {
		t.Errorf("gave up %d, pending %v", n.gaveUp, n.pending)
	}
	// A jump beyond what loss looks like is a new source: nothing asked.
	if got := n.observe(40000, ms(4000)); len(got) != 0 {
		t.Errorf("jump: asked for %d packets", len(got))
	}
}
