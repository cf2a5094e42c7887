package bwe

import (
	"bytes"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtcp"
)

var t0 = time.Unix(1_700_000_000, 0)

const mtu = 1200

// link is a bottleneck: a drop-tail queue of up to limit drained at rate,
// then 20 ms of propagation, with random loss before the queue.
type link struct {
	rate  float64 // bit/s
	limit time.Duration
	loss  float64
	rng   *rand.Rand
	free  time.Duration // when all that is queued has been sent
}

func (l *link) send(t time.Duration, size int) (time.Duration, bool) {
	if l.loss > 0 && l.rng.Float64() < l.loss {
		return 0, false
	}
	l.free = max(l.free, t)
	if l.free-t > l.limit {
		return 0, false
	}
	l.free += time.Duration(float64(size*8) / l.rate * float64(time.Second))
	return l.free + 20*time.Millisecond, true
}

type arrival struct {
	seq uint16
	at  time.Duration
}

type flight struct {
	at time.Duration
	fb *rtcp.TransportLayerCC
}

// sim runs a sender, the link and a receiver that sends TWCC feedback every
// 50 ms (its clock is offset so that the 24-bit reference time wraps 2 s
// in), in steps of 1 ms.
type sim struct {
	e        *Estimator
	link     link
	t        time.Duration
	off      time.Duration // receiver clock - sender clock
	got      []arrival     // arrived, not yet reported
	next     uint16        // the first sequence number not yet reported
	started  bool
	fbAt     time.Duration
	fbCount  uint8
	inflight []flight
	credit   float64
	media    func() float64      // media bit/s now
	probe    func(now time.Time) // called every step
}

func newSim(e *Estimator, rate, loss float64, seed int64) *sim {
	return &sim{
		e:    e,
		link: link{rate: rate, limit: 250 * time.Millisecond, loss: loss, rng: rand.New(rand.NewSource(seed))},
		off:  refSpan*64*time.Millisecond - 2*time.Second,
	}
}

func (s *sim) send(size int, probe bool) {
	seq := s.e.Sent(size, t0.Add(s.t), probe)
	if at, ok := s.link.send(s.t, size); ok {
		s.got = append(s.got, arrival{seq, at})
	}
}

// run steps for d, calling each (if any) after every step.
func (s *sim) run(d time.Duration, each func()) {
	for end := s.t + d; s.t < end; s.t += time.Millisecond {
		now := t0.Add(s.t)
		for len(s.inflight) > 0 && s.inflight[0].at <= s.t {
			s.e.Feedback(onWire(s.inflight[0].fb), now)
			s.inflight = s.inflight[1:]
		}
		if s.probe != nil {
			s.probe(now)
		}
		s.credit += s.media() / 8 / 1000
		for ; s.credit >= mtu; s.credit -= mtu {
			s.send(mtu, false)
		}
		for b := s.e.ProbeBytes(now, time.Millisecond); b >= 100; b -= mtu {
			s.send(min(b, mtu), true)
		}
		if s.t >= s.fbAt {
			s.feedback()
			s.fbAt += 50 * time.Millisecond
		}
		if each != nil {
			each()
		}
	}
}

// feedback reports what arrived since the last one, through the wire
// format.
func (s *sim) feedback() {
	n := 0
	for n < len(s.got) && s.got[n].at <= s.t {
		n++
	}
	if n == 0 {
		return
	}
	if !s.started {
		s.started, s.next = true, s.got[0].seq
	}
	last := s.got[n-1].seq
	recv := make([]bool, int(last-s.next)+1)
	arr := make([]time.Duration, len(recv))
	for _, a := range s.got[:n] {
		recv[a.seq-s.next] = true
		arr[a.seq-s.next] = a.at + s.off
	}
	s.got = s.got[n:]
	fb := build(s.next, recv, arr, s.fbCount)
	s.fbCount++
	s.next = last + 1
	s.inflight = append(s.inflight, flight{s.t + 20*time.Millisecond, wire(fb)})
}

// wire marshals and unmarshals fb.
func wire(fb *rtcp.TransportLayerCC) *rtcp.TransportLayerCC {
	raw, err := fb.Marshal()
	if err != nil {
		panic(err)
	}
	pkts, err := rtcp.Unmarshal(raw)
	if err != nil {
		panic(err)
	}
	return pkts[0].(*rtcp.TransportLayerCC)
}

// build makes the TWCC packet for the statuses from base on (arrival times
// in the receiver's clock; at least one received), the way a browser
// would: run-length chunks for runs of 14 or more, else 1-bit status
// vectors, else 2-bit ones.
func build(base uint16, recv []bool, arr []time.Duration, count uint8) *rtcp.TransportLayerCC {
	const unit = 250 * time.Microsecond
	first := 0
	for !recv[first] {
		first++
	}
	ref := int64(arr[first] / (64 * time.Millisecond))
	fb := &rtcp.TransportLayerCC{
		BaseSequenceNumber: base,
		PacketStatusCount:  uint16(len(recv)),
		ReferenceTime:      uint32(ref % refSpan),
		FbPktCount:         count,
	}
	syms := make([]uint16, len(recv))
	q := ref * 256
	size := 20
	for i, r := range recv {
		if !r {
			continue
		}
		u := int64(arr[i] / unit)
		d := u - q
		q = u
		syms[i], size = rtcp.TypeTCCPacketReceivedSmallDelta, size+1
		if d < 0 || d > 255 {
			syms[i], size = rtcp.TypeTCCPacketReceivedLargeDelta, size+1
		}
		fb.RecvDeltas = append(fb.RecvDeltas, &rtcp.RecvDelta{Type: syms[i], Delta: d * 250})
	}
	for i := 0; i < len(syms); {
		run := 1
		for i+run < len(syms) && syms[i+run] == syms[i] && run < 8191 {
			run++
		}
		if run >= 14 {
			fb.PacketChunks = append(fb.PacketChunks, &rtcp.RunLengthChunk{PacketStatusSymbol: syms[i], RunLength: uint16(run)})
			i += run
			continue
		}
		width, oneBit := 14, true
		for j := i; j < min(i+14, len(syms)); j++ {
			oneBit = oneBit && syms[j] <= 1
		}
		if !oneBit {
			width = 7
		}
		list := make([]uint16, width)
		copy(list, syms[i:min(i+width, len(syms))])
		c := &rtcp.StatusVectorChunk{SymbolSize: rtcp.TypeTCCSymbolSizeOneBit, SymbolList: list}
		if !oneBit {
			c.SymbolSize = rtcp.TypeTCCSymbolSizeTwoBit
		}
		fb.PacketChunks = append(fb.PacketChunks, c)
		i += width
	}
	size += 2 * len(fb.PacketChunks)
	fb.Header = rtcp.Header{
		Padding: size%4 != 0,
		Count:   rtcp.FormatTCC,
		Type:    rtcp.TypeTransportSpecificFeedback,
		Length:  uint16(fb.MarshalSize()/4 - 1),
	}
	return fb
}

// layer is what the sender sends for an estimate: the highest of the three
// simulcast layers that fits in 85 % of it.
func layer(est int) float64 {
	for _, l := range []int{2_500_000, 800_000} {
		if float64(l) <= 0.85*float64(est) {
			return float64(l)
		}
	}
	return 250_000
}

// probeUnder3M asks for probes, doubling the estimate up to 4 Mbit/s, while
// the estimate is under 3 Mbit/s.
func probeUnder3M(e *Estimator) func(time.Time) {
	return func(now time.Time) {
		if st := e.Stats(); st.Estimate < 3_000_000 && !st.Probing {
			e.Probe(min(2*st.Estimate, 4_000_000), now)
		}
	}
}

func logEvery(t *testing.T, s *sim) func() {
	return func() {
		if s.t%(500*time.Millisecond) == 0 {
			t.Logf("%5.1fs %+v", s.t.Seconds(), s.e.Stats())
		}
	}
}

// 2.5 Mbit/s into 600 kbit/s: under 600k (and over 300k) within 3 s, and
// it stays there.
func TestCongestedLink(t *testing.T) {
	e := New(Config{})
	s := newSim(e, 600_000, 0, 1)
	s.media = func() float64 { return 2_500_000 }
	s.run(3*time.Second, logEvery(t, s))
	s.run(5*time.Second, func() {
		if est := e.Estimate(); est >= 600_000 || est <= 300_000 {
			t.Fatalf("at %v: estimate %d, want in (300k, 600k)", s.t, est)
		}
	})
}

// The link lifted from 600 kbit/s to 5 Mbit/s, the sender sending the layer
// the estimate allows plus probes: the estimate carries the top layer with
// 20 % headroom (2.5/0.8 Mbit/s) within 15 s, and keeps it. Sequence
// numbers wrap 1 s in.
func TestRecoveryWithProbes(t *testing.T) {
	e := New(Config{})
	for range 65_200 {
		e.Sent(100, t0, false) // never reported
	}
	s := newSim(e, 600_000, 0, 2)
	s.media = func() float64 { return 2_500_000 }
	s.run(3*time.Second, nil)
	s.link.rate = 5_000_000
	s.media = func() float64 { return layer(e.Estimate()) }
	s.probe = probeUnder3M(e)
	lift, reached := s.t, time.Duration(-1)
	s.run(15*time.Second, func() {
		if reached < 0 && e.Estimate() >= 3_125_000 {
			reached = s.t
		}
		logEvery(t, s)()
	})
	if reached < 0 {
		t.Fatalf("estimate %d 15 s after the lift, want ≥ 3.125M", e.Estimate())
	}
	t.Logf("≥ 3.125M %v after the lift", reached-lift)
	s.run(5*time.Second, func() {
		if est := e.Estimate(); est < 3_125_000 {
			t.Fatalf("at %v: estimate %d fell under 3.125M", s.t, est)
		}
	})
}

// 5 % random loss on an unconstrained link at 2.5 Mbit/s: once ramped up
// (with probes), the estimate never drops under 2.5/0.8 Mbit/s in 30 s.
func TestRandomLoss(t *testing.T) {
	e := New(Config{})
	s := newSim(e, 100_000_000, 0.05, 3)
	s.media = func() float64 { return 2_500_000 }
	s.probe = probeUnder3M(e)
	s.run(10*time.Second, nil)
	if est := e.Estimate(); est < 3_125_000 {
		t.Fatalf("estimate %d after 10 s of ramp-up, want ≥ 3.125M", est)
	}
	s.run(30*time.Second, func() {
		if est := e.Estimate(); est < 3_125_000 {
			t.Fatalf("at %v: estimate %d under 3.125M", s.t, est)
		}
		logEvery(t, s)()
	})
	if l := e.Stats().Loss; l < 0.02 || l > 0.09 {
		t.Errorf("smoothed loss %.3f, want about 0.05", l)
	}
}

// Probes for 4 Mbit/s over a 1 Mbit/s link all fail: they back off 2, 4,
// 4, 4 s, and the estimate is never lifted to the target.
func TestProbeBackoff(t *testing.T) {
	e := New(Config{Initial: 800_000})
	s := newSim(e, 1_000_000, 0, 4)
	s.media = func() float64 { return 800_000 }
	var starts []time.Duration
	s.probe = func(now time.Time) {
		if e.Probe(4_000_000, now) {
			starts = append(starts, s.t)
		}
	}
	s.run(18*time.Second, func() {
		if est := e.Estimate(); est > 1_500_000 {
			t.Fatalf("at %v: estimate %d after failed probes", s.t, est)
		}
	})
	t.Logf("probes started at %v", starts)
	want := []time.Duration{2, 4, 4, 4}
	if len(starts) != len(want)+1 {
		t.Fatalf("probes started at %v, want %d", starts, len(want)+1)
	}
	for i, b := range want {
		if gap := starts[i+1] - starts[i]; gap < b*time.Second || gap > b*time.Second+time.Second {
			t.Errorf("probe %d started %v after the one before, want %d s + the feedback delay", i+1, gap, b)
		}
	}
}

// The builder's packets survive Marshal/Unmarshal: same fields, each chunk
// kind used, and two estimators fed the built and the decoded packet agree.
// Sequence numbers wrap inside it; deltas are large, negative, and small.
func TestFeedbackRoundTrip(t *testing.T) {
	var recv []bool
	var arr []time.Duration
	at := 3 * time.Second
	add := func(ok bool, step time.Duration) {
		at += step
		recv, arr = append(recv, ok), append(arr, at)
	}
	for range 20 {
		add(true, time.Millisecond) // run-length
	}
	for i := range 14 {
		add(i%3 != 0, time.Millisecond) // 1-bit vector
	}
	add(true, 100*time.Millisecond) // large
	add(true, -2*time.Millisecond)  // negative: 2-bit vector
	for range 30 {
		add(false, 0) // run-length of lost
	}
	add(true, time.Millisecond)
	fb := build(65_530, recv, arr, 7)
	got := wire(fb)
	if got.BaseSequenceNumber != fb.BaseSequenceNumber || got.PacketStatusCount != fb.PacketStatusCount ||
		got.ReferenceTime != fb.ReferenceTime || got.FbPktCount != 7 ||
		len(got.PacketChunks) != len(fb.PacketChunks) || len(got.RecvDeltas) != len(fb.RecvDeltas) {
		t.Fatalf("decoded\n%v\nbuilt\n%v", got, fb)
	}
	kinds := map[string]bool{}
	for _, c := range got.PacketChunks {
		switch c := c.(type) {
		case *rtcp.RunLengthChunk:
			kinds["run"] = true
		case *rtcp.StatusVectorChunk:
			kinds[map[uint16]string{0: "1-bit", 1: "2-bit"}[c.SymbolSize]] = true
		}
	}
	if len(kinds) != 3 {
		t.Errorf("chunk kinds %v, want run, 1-bit and 2-bit", kinds)
	}
	for i, d := range got.RecvDeltas {
		if *d != *fb.RecvDeltas[i] {
			t.Errorf("delta %d: %+v, built %+v", i, *d, *fb.RecvDeltas[i])
		}
	}
	var st [2]Stats
	for i, f := range []*rtcp.TransportLayerCC{fb, got} {
		e := New(Config{})
		for range 65_530 + len(recv) {
			e.Sent(mtu, t0.Add(at-time.Second), false)
		}
		e.Feedback(onWire(f), t0.Add(at))
		st[i] = e.Stats()
	}
	if st[0] != st[1] || st[0].Loss == 0 || st[0].Received == 0 {
		t.Errorf("stats from the built packet %+v, from the decoded one %+v", st[0], st[1])
	}
}

// Hostile or broken feedback: no panic, the estimate stays in bounds, and
// a packet reported twice is counted once.
func TestFeedbackHostile(t *testing.T) {
	cfg := Config{Min: 200_000, Max: 3_000_000}
	e := New(cfg)
	for i := range 1000 {
		e.Sent(mtu, t0.Add(time.Duration(i)*time.Millisecond), i%10 == 0)
	}
	e.Probe(2_000_000, t0.Add(time.Second))
	d := func(v int64) *rtcp.RecvDelta { return &rtcp.RecvDelta{Type: 1, Delta: v} }
	run := func(sym, n uint16) rtcp.PacketStatusChunk {
		return &rtcp.RunLengthChunk{PacketStatusSymbol: sym, RunLength: n}
	}
	bad := []*rtcp.TransportLayerCC{
		nil,
		{},
		{PacketStatusCount: 65535, PacketChunks: []rtcp.PacketStatusChunk{run(1, 8191), run(1, 8191)}},
		{PacketStatusCount: 10, PacketChunks: []rtcp.PacketStatusChunk{nil, run(1, 4)}},
		{PacketStatusCount: 10, PacketChunks: []rtcp.PacketStatusChunk{(*rtcp.RunLengthChunk)(nil)}},
		{PacketStatusCount: 10, PacketChunks: []rtcp.PacketStatusChunk{(*rtcp.StatusVectorChunk)(nil)}},
		{PacketStatusCount: 10, PacketChunks: []rtcp.PacketStatusChunk{run(1, 10)}, RecvDeltas: []*rtcp.RecvDelta{d(1000), nil, d(1)}},
		{PacketStatusCount: 3, PacketChunks: []rtcp.PacketStatusChunk{run(2, 3)}, RecvDeltas: []*rtcp.RecvDelta{d(1 << 62), d(-1 << 62), d(5)}},
		{PacketStatusCount: 3, PacketChunks: []rtcp.PacketStatusChunk{run(7, 3)}, RecvDeltas: []*rtcp.RecvDelta{d(1)}},
		{PacketStatusCount: 20, PacketChunks: []rtcp.PacketStatusChunk{&rtcp.StatusVectorChunk{SymbolSize: 9, SymbolList: []uint16{1, 1}}}},
		{PacketStatusCount: 5, PacketChunks: []rtcp.PacketStatusChunk{&rtcp.StatusVectorChunk{SymbolSize: 1}, run(0, 0), run(0, 5)}},
		{PacketStatusCount: 0, PacketChunks: []rtcp.PacketStatusChunk{run(1, 100)}, RecvDeltas: []*rtcp.RecvDelta{d(1)}},
		{PacketStatusCount: 20, PacketChunks: []rtcp.PacketStatusChunk{&rtcp.StatusVectorChunk{SymbolSize: 0, SymbolList: []uint16{1, 2, 3}}}, RecvDeltas: []*rtcp.RecvDelta{d(1)}},
		{PacketStatusCount: 20, PacketChunks: []rtcp.PacketStatusChunk{&rtcp.StatusVectorChunk{SymbolSize: 1, SymbolList: make([]uint16, 5000)}}},
		{BaseSequenceNumber: 5000, PacketStatusCount: 40, ReferenceTime: 0xffffffff, PacketChunks: []rtcp.PacketStatusChunk{&rtcp.RunLengthChunk{PacketStatusSymbol: 1, RunLength: 40}}, RecvDeltas: []*rtcp.RecvDelta{d(8_191_750), d(-8_192_000)}},
		{BaseSequenceNumber: 990, PacketStatusCount: 2000, ReferenceTime: 1 << 23, PacketChunks: []rtcp.PacketStatusChunk{run(3, 2000)}},
		{BaseSequenceNumber: 100, PacketStatusCount: 100, ReferenceTime: 5, PacketChunks: []rtcp.PacketStatusChunk{run(0, 50), run(1, 50)}, RecvDeltas: []*rtcp.RecvDelta{d(0), d(-8_000_000)}},
	}
	for i, fb := range bad {
		e.Feedback(onWire(fb), t0.Add(time.Duration(1000+i)*time.Millisecond))
		e.Probe(2_000_000, t0.Add(time.Duration(1000+i)*time.Millisecond))
		e.ProbeBytes(t0.Add(time.Duration(1000+i)*time.Millisecond), 5*time.Millisecond)
		if est := e.Estimate(); est < cfg.Min || est > cfg.Max {
			t.Fatalf("feedback %d: estimate %d out of [%d, %d]", i, est, cfg.Min, cfg.Max)
		}
	}

	// Twice the same report of 10 lost and 10 received: loss 0.5, not more.
	e = New(Config{})
	for i := range 20 {
		e.Sent(mtu, t0.Add(time.Duration(i)*time.Millisecond), false)
	}
	fb := &rtcp.TransportLayerCC{PacketStatusCount: 20, PacketChunks: []rtcp.PacketStatusChunk{run(0, 10), run(1, 10)}}
	for range 10 {
		fb.RecvDeltas = append(fb.RecvDeltas, d(1000))
	}
	e.Feedback(onWire(fb), t0.Add(100*time.Millisecond))
	l := e.Stats().Loss
	e.Feedback(onWire(fb), t0.Add(150*time.Millisecond))
	if l2 := e.Stats().Loss; l == 0 || l2 != l {
		t.Errorf("loss %.3f, then %.3f after the same report again", l, l2)
	}
}

func TestNoAllocs(t *testing.T) {
	e := New(Config{})
	now := t0
	if a := testing.AllocsPerRun(1000, func() {
		now = now.Add(time.Millisecond)
		e.Sent(mtu, now, false)
	}); a != 0 {
		t.Errorf("Sent: %v allocs", a)
	}
	e.Probe(5_000_000, now)
	fb := onWire(feedback20())
	if a := testing.AllocsPerRun(100, func() {
		now = now.Add(time.Millisecond)
		e.ProbeBytes(now, 5*time.Millisecond)
		e.Feedback(fb, now)
	}); a != 0 {
		t.Errorf("ProbeBytes and Feedback: %v allocs", a)
	}
}

// Sent, Feedback, ProbeBytes and Stats from several goroutines (for -race).
func TestConcurrent(t *testing.T) {
	e := New(Config{})
	fb := onWire(feedback20())
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Go(func() {
			for i := range 2000 {
				now := t0.Add(time.Duration(i) * time.Millisecond)
				switch g {
				case 0:
					e.Sent(mtu, now, false)
					e.ProbeBytes(now, 5*time.Millisecond)
				case 1:
					e.Feedback(fb, now)
				case 2:
					e.Probe(3_000_000, now)
					_ = e.Stats()
				}
			}
		})
	}
	wg.Wait()
}

// onWire is fb as it comes on the wire; nil for one that cannot be written
// (a nil chunk: pion's Marshal panics), which Feedback ignores.
func onWire(fb *rtcp.TransportLayerCC) (b []byte) {
	defer func() {
		if recover() != nil {
			b = nil
		}
	}()
	if fb == nil {
		return nil
	}
	c := *fb
	c.Header = rtcp.Header{Padding: c.MarshalSize() != int(c.Len()), Count: rtcp.FormatTCC, Type: rtcp.TypeTransportSpecificFeedback,
		Length: uint16(c.MarshalSize()/4 - 1)}
	b, err := c.Marshal()
	if err != nil {
		return nil
	}
	return b
}

// feedback20 reports 20 packets from sequence 0, all received 1 ms apart.
func feedback20() *rtcp.TransportLayerCC {
	recv := make([]bool, 20)
	arr := make([]time.Duration, 20)
	for i := range recv {
		recv[i], arr[i] = true, time.Second+time.Duration(i)*time.Millisecond
	}
	return build(0, recv, arr, 0)
}

// FuzzFeedback feeds the input as a feedback packet, as it is and with its
// header made that of a TWCC packet whose length fits, and with its base
// sequence number moved into what was sent, to an estimator with a probe
// running and 300 packets sent.
func FuzzFeedback(f *testing.F) {
	f.Add(onWire(feedback20()))
	f.Fuzz(func(t *testing.T, data []byte) {
		e := New(Config{})
		for i := range 300 {
			e.Sent(mtu, t0.Add(time.Duration(i)*time.Millisecond), i%5 == 0)
		}
		e.Probe(3_000_000, t0.Add(200*time.Millisecond))
		now := t0.Add(time.Second)
		e.Feedback(data, now)
		if len(data) >= 20 {
			b := bytes.Clone(data)
			b[0], b[1] = 0x8f, 205
			b[2], b[3] = byte((len(b)/4-1)>>8), byte(len(b)/4-1)
			e.Feedback(b, now)
			b[12], b[13] = 0, b[13]%200
			e.Feedback(b, now)
		}
		e.ProbeBytes(now, 5*time.Millisecond)
		if est := e.Estimate(); est < 100_000 || est > 10_000_000 {
			t.Fatalf("estimate %d", est)
		}
	})
}

func BenchmarkSent(b *testing.B) {
	e := New(Config{})
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(100 * time.Microsecond)
		e.Sent(mtu, now, false)
	}
}

// BenchmarkFeedback is one feedback for 20 packets (their 20 Sent calls
// included).
func BenchmarkFeedback(b *testing.B) {
	e := New(Config{})
	fb := feedback20()
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		fb.BaseSequenceNumber = e.next
		fb.ReferenceTime = uint32(now.Sub(t0)/(64*time.Millisecond)) % refSpan
		raw := onWire(fb)
		for range 20 {
			e.Sent(mtu, now, false)
			now = now.Add(time.Millisecond)
		}
		e.Feedback(raw, now)
	}
}
