package loadtest

import (
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/vitrine-live/vitrine/media/bwe"
)

// arrival is one packet a test viewer gets: its transport-wide sequence
// number and when it came (ns since run start).
type arrival struct {
	seq uint16
	at  int64
}

// decodeTWCC reads a report back the way a sender does: the statuses its
// chunks give for PacketStatusCount packets from the base, and each
// received packet's arrival time in µs from the reference time and the
// deltas.
func decodeTWCC(t *testing.T, fb *rtcp.TransportLayerCC) (statuses []uint16, arrivals map[uint16]int64) {
	t.Helper()
	for _, c := range fb.PacketChunks {
		switch c := c.(type) {
		case *rtcp.RunLengthChunk:
			for range c.RunLength {
				statuses = append(statuses, c.PacketStatusSymbol)
			}
		case *rtcp.StatusVectorChunk:
			statuses = append(statuses, c.SymbolList...)
		default:
			t.Fatalf("chunk %T", c)
		}
	}
	if len(statuses) < int(fb.PacketStatusCount) {
		t.Fatalf("chunks hold %d statuses, the count says %d", len(statuses), fb.PacketStatusCount)
	}
	statuses = statuses[:fb.PacketStatusCount]
	arrivals = map[uint16]int64{}
	at := int64(fb.ReferenceTime) * 64000
	d := 0
	for i, s := range statuses {
		if s != rtcp.TypeTCCPacketReceivedSmallDelta && s != rtcp.TypeTCCPacketReceivedLargeDelta {
			continue
		}
		if d >= len(fb.RecvDeltas) || fb.RecvDeltas[d].Type != s {
			t.Fatalf("status %d (%d) has no delta of its kind", i, s)
		}
		at += fb.RecvDeltas[d].Delta
		d++
		arrivals[fb.BaseSequenceNumber+uint16(i)] = at
	}
	if d != len(fb.RecvDeltas) {
		t.Fatalf("%d deltas for %d received packets", len(fb.RecvDeltas), d)
	}
	return statuses, arrivals
}

// roundTrip marshals a report and parses it back with rtcp.Unmarshal, as
// the server does.
func roundTrip(t *testing.T, fb *rtcp.TransportLayerCC) *rtcp.TransportLayerCC {
	t.Helper()
	raw, err := fb.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if len(raw)%4 != 0 {
		t.Fatalf("report of %d bytes, not whole words", len(raw))
	}
	pkts, err := rtcp.Unmarshal(raw)
	if err != nil {
		t.Fatalf("rtcp.Unmarshal: %v", err)
	}
	if len(pkts) != 1 {
		t.Fatalf("%d packets", len(pkts))
	}
	got, ok := pkts[0].(*rtcp.TransportLayerCC)
	if !ok {
		t.Fatalf("parsed as %T", pkts[0])
	}
	return got
}

// TestTWCCFeedback: what the lite viewer records of the transport-wide
// sequence numbers it gets, reported and parsed back with pion's rtcp
// package, says which packets arrived (across the 16-bit wrap, with a lost
// pair, a reordered pair, a long loss run and a long received run) and when,
// to the 250 µs of the format; the next report starts where the first
// ended, a packet too late for its report is left out, and a gap in time
// too long for one delta ends a report and starts the next at a reference
// time of its own.
func TestTWCCFeedback(t *testing.T) {
	const ms = int64(time.Millisecond)
	base := int64(5*time.Second) + 3*ms // not on a 64 ms boundary
	var in []arrival
	lost := map[uint16]bool{65533: true, 65534: true}
	at := base
	seq := uint16(65530)
	add := func(n int, every int64) {
		for range n {
			if !lost[seq] {
				in = append(in, arrival{seq, at})
			}
			seq++
			at += every
		}
	}
	add(9, ms)                                                                // 65530..2, 65533 and 65534 lost
	in = append(in, arrival{4, at + ms}, arrival{3, at + ms + 250_000 + 100}) // reordered; 3 arrives later, off the 250 µs grid
	seq, at = 5, at+3*ms
	add(5, ms)                          // 5..9
	at += 100 * ms                      // a large delta
	add(7, ms)                          // 10..16
	for s := uint16(17); s <= 36; s++ { // a run of 20 lost
		lost[s] = true
	}
	add(20, ms)
	add(24, 2*ms) // 37..60: a run of 24 received

	var r twccRecorder
	for _, a := range in {
		r.observe(a.seq, a.at)
	}
	now := in[len(in)-1].at
	if !r.due(now) {
		t.Fatal("no report due")
	}
	fb := r.feedback(0x1111, 0x2222, now)
	if fb == nil {
		t.Fatal("no report")
	}
	got := roundTrip(t, fb)
	if got.SenderSSRC != 0x1111 || got.MediaSSRC != 0x2222 || got.BaseSequenceNumber != 65530 || got.PacketStatusCount != 61+6 || got.FbPktCount != 0 {
		t.Fatalf("report from %d, to %x, base %d, %d statuses, count %d; want 1111, 2222, 65530, 67, 0",
			got.SenderSSRC, got.MediaSSRC, got.BaseSequenceNumber, got.PacketStatusCount, got.FbPktCount)
	}
	if want := uint32(base / (64 * ms)); got.ReferenceTime != want {
		t.Errorf("reference time %d, want %d (the first arrival in 64 ms units)", got.ReferenceTime, want)
	}
	statuses, arrivals := decodeTWCC(t, got)
	for i, s := range statuses {
		q := uint16(65530) + uint16(i)
		if received := s != rtcp.TypeTCCPacketNotReceived; received == lost[q] {
			t.Errorf("packet %d: status %d, lost %v", q, s, lost[q])
		}
	}
	for _, a := range in {
		want := a.at / 250_000 * 250 // µs, down to the 250 µs grid
		if arrivals[a.seq] != want {
			t.Errorf("packet %d: arrival %d µs, want %d", a.seq, arrivals[a.seq], want)
		}
	}
	var runs, vectors int
	for _, c := range got.PacketChunks {
		if _, ok := c.(*rtcp.RunLengthChunk); ok {
			runs++
		} else {
			vectors++
		}
	}
	// 67 statuses: three two-bit vectors for the first 21 (large deltas
	// among them), one-bit vectors, and a run for the last received ones.
	if runs == 0 || runs+vectors > 6 {
		t.Errorf("%d run-length chunks and %d vectors for 67 statuses with a run of 20 lost and one of 24 received", runs, vectors)
	}

	// Already reported: a late packet is left out; the next report starts
	// at 61 and has its own count.
	r.observe(65533, now+ms)
	r.observe(61, now+ms)
	if r.due(now + 50*ms) {
		t.Error("a report due 50 ms after the last")
	}
	// 61 arrived, then 62 more than 8 s later: too far for a delta.
	r.observe(62, now+9*int64(time.Second))
	fb2 := roundTrip(t, r.feedback(0x1111, 0x2222, now+9*int64(time.Second)))
	if fb2.BaseSequenceNumber != 61 || fb2.PacketStatusCount != 1 || fb2.FbPktCount != 1 {
		t.Errorf("second report: base %d, %d statuses, count %d; want 61, 1, 1", fb2.BaseSequenceNumber, fb2.PacketStatusCount, fb2.FbPktCount)
	}
	fb3 := roundTrip(t, r.feedback(0x1111, 0x2222, now+9*int64(time.Second)))
	_, arr3 := decodeTWCC(t, fb3)
	if fb3.BaseSequenceNumber != 62 || fb3.PacketStatusCount != 1 || arr3[62] != (now+9*int64(time.Second))/250_000*250 {
		t.Errorf("third report: base %d, %d statuses, arrivals %v", fb3.BaseSequenceNumber, fb3.PacketStatusCount, arr3)
	}
	if r.feedback(0x1111, 0x2222, now+10*int64(time.Second)) != nil {
		t.Error("a report with nothing new")
	}
}

// TestTWCCChunks: every status sequence packs into chunks that give it
// back, and a report of all packets received is one run-length chunk.
func TestTWCCChunks(t *testing.T) {
	const n, small, large = rtcp.TypeTCCPacketNotReceived, rtcp.TypeTCCPacketReceivedSmallDelta, rtcp.TypeTCCPacketReceivedLargeDelta
	cases := [][]uint16{
		{small},
		{n, n, small},
		{small, large, n, small, small, small, small, small, large},
		append(append(make([]uint16, 0, 40), repeat(small, 13)...), repeat(large, 9)...),
		append(repeat(n, 8191), repeat(n, 5)...),
		append(repeat(small, 3), append(repeat(large, 7), repeat(small, 30)...)...),
	}
	for i, c := range cases {
		var got []uint16
		for _, ch := range twccChunks(c) {
			switch ch := ch.(type) {
			case *rtcp.RunLengthChunk:
				got = append(got, repeat(ch.PacketStatusSymbol, int(ch.RunLength))...)
			case *rtcp.StatusVectorChunk:
				if ch.SymbolSize == rtcp.TypeTCCSymbolSizeOneBit && len(ch.SymbolList) > 14 || ch.SymbolSize == rtcp.TypeTCCSymbolSizeTwoBit && len(ch.SymbolList) > 7 {
					t.Fatalf("case %d: a vector of %d symbols of size %d", i, len(ch.SymbolList), ch.SymbolSize)
				}
				for _, s := range ch.SymbolList {
					if ch.SymbolSize == rtcp.TypeTCCSymbolSizeOneBit && s > small {
						t.Fatalf("case %d: status %d in a one-bit vector", i, s)
					}
				}
				got = append(got, ch.SymbolList...)
			}
		}
		if len(got) != len(c) {
			t.Fatalf("case %d: %d statuses back, want %d", i, len(got), len(c))
		}
		for j := range c {
			if got[j] != c[j] {
				t.Fatalf("case %d: status %d is %d, want %d", i, j, got[j], c[j])
			}
		}
	}
	if ch := twccChunks(repeat(small, 500)); len(ch) != 1 {
		t.Errorf("500 received packets in %d chunks", len(ch))
	}
}

func repeat(s uint16, n int) []uint16 {
	out := make([]uint16, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// TestTWCCEstimator: the server's estimator (media/bwe) reads the lite
// viewer's reports: 2 s of a 1 Mbit/s stream with every fifth packet lost
// give a received rate near 0.8 Mbit/s and a loss near 20%.
func TestTWCCEstimator(t *testing.T) {
	e := bwe.New(bwe.Config{})
	epoch := time.Now()
	var r twccRecorder
	const size, every = 1250, 10 * time.Millisecond // 1 Mbit/s
	for i := range 200 {
		sent := epoch.Add(time.Duration(i) * every)
		seq := e.Sent(size, sent, false)
		at := int64(sent.Sub(epoch)) + int64(20*time.Millisecond)
		if i%5 != 4 {
			r.observe(seq, at)
		}
		if r.due(at) {
			raw, err := r.feedback(1, 2, at).Marshal()
			if err != nil {
				t.Fatal(err)
			}
			e.Feedback(raw, epoch.Add(time.Duration(at)))
		}
	}
	st := e.Stats()
	t.Logf("estimator after 2 s: %+v", st)
	if st.Received < 700_000 || st.Received > 900_000 {
		t.Errorf("received rate %d bit/s, want about 800k", st.Received)
	}
	if st.Loss < 0.15 || st.Loss > 0.25 {
		t.Errorf("loss %.3f, want about 0.2", st.Loss)
	}
}

// TestTWCCObserveAllocs: recording a packet allocates nothing.
func TestTWCCObserveAllocs(t *testing.T) {
	var r twccRecorder
	seq, at := uint16(0), int64(0)
	if n := testing.AllocsPerRun(10_000, func() {
		r.observe(seq, at)
		seq += 1 + uint16(at%7/6) // now and then one lost
		at += int64(time.Millisecond)
	}); n != 0 {
		t.Errorf("%.1f allocations per packet", n)
	}
}
