// Package bwe is a send-side bandwidth estimate for one viewer, from the
// transport-wide congestion control feedback (TWCC,
// draft-holmer-rmcat-transport-wide-cc-extensions) the viewer's browser
// sends. It is a cut-down GCC: no pacer, no goroutine, no allocation per
// packet, one mutex. The SFU stamps each video packet with the sequence
// number Sent returns, hands every TWCC packet to Feedback, and lets the
// allocator pick the layer that fits in Estimate.
//
// The rules, and why:
//   - Received rate: the bytes acknowledged as received over the last
//     500 ms of their arrival times (receiver clock): what the path
//     delivered, whatever was sent.
//   - Delay: one-way delay variation, (arrival - send) less its minimum
//     over the last 10 s (the base: propagation plus the clock offset,
//     which cancels out). The mean per feedback is smoothed; above 40 ms
//     and still growing is overuse: estimate = 0.85 × received rate, no
//     increase for 1 s, the probe result forgotten. A queue above 40 ms
//     that is not growing holds the estimate (no increase); above 100 ms it
//     is overuse too: a full drop-tail buffer (a phone network's, tc's tbf)
//     stops growing while the link stays saturated, and waiting for the loss
//     to show took seconds in Chromium.
//   - Loss: the fraction of the packets newly reported that were reported
//     not received, smoothed per packet (≈ the last 128, and at least with
//     a 2 s time constant so that old loss fades when little is sent). Over
//     10 %: estimate × (1 - 0.5·loss) at most every 300 ms, but not under
//     0.85 × received rate (what got through is proven capacity; the rest
//     was overshoot). Under 10 % it never lowers the estimate: random
//     wireless loss must not push a viewer down a layer.
//   - Increase: otherwise +5 % per second (scaled by the time between
//     feedbacks), capped at max(1.5 × received rate, last successful probe
//     result): an estimate grows only with what the path showed it carries.
//     Never lowered by the cap; always within [Min, Max].
//   - Probes: Probe(target) opens a cluster of target × 1.2 × 30 ms bytes
//     (at least 6 kB, to be measurable): every packet sent until it is
//     complete (or 150 ms) counts, media included, and ProbeBytes, called
//     every few milliseconds by the caller, tops the media up with padding
//     at target × 1.2 from the probe's start (paced: a burst sent at once
//     arrives within one 250 µs tick and measures nothing). Its result is the cluster's
//     received rate (bytes after the first arrival over the arrival span,
//     and no more than that of its second half: a burst allowance lets
//     the first bytes through at line speed).
//     At least 0.9 × target and no overuse meanwhile: the estimate jumps to
//     min(result, target), the increase cap becomes min(result,
//     1.2 × target), and the smoothed loss restarts from the cluster's
//     (fresh evidence beats a stale average). Otherwise, or when its
//     feedback is not all back within 1 s, probes back off 2 s, then 4 s
//     (a probe is a few kB: cheap on a weak link, and a viewer whose link
//     opens must find out within seconds). No probe starts in the 1 s hold after an overuse.
//   - Feedback is parsed here (run-length and status-vector chunks, deltas
//     in 250 µs units from a reference time in 64 ms units that wraps at
//     24 bits; sequence numbers wrap at 16 bits) and is not trusted:
//     unknown or already reported sequence numbers are skipped (a packet
//     reported lost stays lost), a chunk or delta that is missing, nil, of
//     an unknown kind or out of range ends the packet there, and a
//     reference time more than 1 s backwards restarts the arrival history
//     (rate and delay base).
package bwe

import (
	"encoding/binary"
	"sync"
	"time"

	"github.com/pion/rtcp"
)

// Config bounds the estimate, in bit/s; zero fields take the defaults.
type Config struct{ Initial, Min, Max int }

// Stats is a snapshot: the estimate and received rate in bit/s, the
// smoothed queuing delay, the smoothed loss fraction, and whether a probe
// is running.
type Stats struct {
	Estimate, Received int
	Delay              time.Duration
	Loss               float64
	Probing            bool
}

// Times are µs since the first time given to the estimator.
const (
	ringSize      = 1024   // 4 s at 2.5 Mbit/s: feedback comes within a round trip and 100 ms
	rateBucket    = 10_000 // µs; the 500 ms window is 50 of them
	rateWindow    = 50
	baseWindow    = 10 // 1 s buckets of the delay base
	overuseDelay  = 40_000
	standingDelay = 100_000 // a queue this long is overuse even when it stopped growing (a full drop-tail buffer)
	holdTime      = 1_000_000
	lossEvery     = 300_000
	lossPackets   = 128
	clusterTime   = 30_000
	clusterMax    = 150_000
	clusterMin    = 6000 // bytes: 5 full packets, for a measurable train
	probeWait     = 1_000_000
	backoffMin    = 2_000_000
	backoffMax    = 4_000_000 // a viewer whose link opens finds out within seconds
	maxDelta      = 8_192_000 // a large delta is an int16 of 250 µs
	refSpan       = 1 << 24
	noKey         = -1 << 62
)

// Packet states in the ring.
const (
	unreported = iota
	lost
	received
)

// Probe cluster states.
const (
	idle = iota
	sending
	awaiting
)

type entry struct {
	sent    int64
	size    uint16
	cluster uint16 // the probe cluster it was sent in, 0 for none
	state   uint8
}

type bucket struct{ key, val int64 }

type cluster struct {
	id                          uint16
	state                       uint8
	overuse                     bool
	target, size                float64 // bit/s, bytes to send
	start, end                  int64
	sentN, rep, lost, recvN     int
	sentBytes, recvBytes        int64
	firstArr, lastArr, arrived0 int64 // arrived0: bytes arrived at firstArr
	midArr, midBytes            int64 // when half the cluster's bytes had arrived, and how many
}

// Estimator is one viewer's estimate. Its methods are safe for concurrent
// use.
type Estimator struct {
	mu       sync.Mutex
	epoch    time.Time
	started  bool
	min, max float64
	est      float64

	next  uint16 // the next transport-wide sequence number
	total uint64 // packets sent so far
	ring  [ringSize]entry

	haveRef      bool
	lastRef, ref int64 // last raw reference time, and unwrapped
	rate         [64]bucket
	haveArr      bool
	firstArr     int64
	firstSize    int64
	lastArr      int64
	base         [16]bucket // min one-way delay per second of send time
	baseKey      int64
	haveDelay    bool
	delay, loss  float64 // µs, fraction
	recv         float64
	lastFb       int64
	haveFb       bool
	holdUntil    int64
	lastCut      int64
	probeCap     float64
	backoff      int64
	backoffUntil int64
	cl           cluster
}

// New returns an estimator at c.Initial.
func New(c Config) *Estimator {
	if c.Initial <= 0 {
		c.Initial = 1_000_000
	}
	if c.Min <= 0 {
		c.Min = 100_000
	}
	if c.Max <= 0 {
		c.Max = 10_000_000
	}
	c.Max = max(c.Max, c.Min)
	e := &Estimator{min: float64(c.Min), max: float64(c.Max), backoff: backoffMin, lastCut: noKey}
	e.est = min(max(float64(c.Initial), e.min), e.max)
	e.resetArrivals()
	return e
}

func (e *Estimator) resetArrivals() {
	for i := range e.rate {
		e.rate[i].key = noKey
	}
	for i := range e.base {
		e.base[i].key = noKey
	}
	e.haveArr, e.haveDelay, e.baseKey = false, false, noKey
}

func (e *Estimator) clock(now time.Time) int64 {
	if !e.started {
		e.started, e.epoch = true, now
	}
	return int64(now.Sub(e.epoch) / time.Microsecond)
}

// floorDiv divides rounding towards minus infinity (arrival times can be
// negative).
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// Sent records one packet about to be sent (size: the whole RTP packet) and
// returns its transport-wide sequence number. probe marks padding sent for
// a probe: it still counts in a cluster that is due to end, as it is the
// padding the last ProbeBytes asked for.
func (e *Estimator) Sent(size int, now time.Time, probe bool) uint16 {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.clock(now)
	size = min(max(size, 0), 0xffff)
	seq := e.next
	e.next++
	e.total++
	p := &e.ring[seq%ringSize]
	*p = entry{sent: t, size: uint16(size)}
	if e.cl.state != idle {
		e.tick(t, probe)
	}
	if c := &e.cl; c.state == sending {
		p.cluster = c.id
		c.sentN++
		c.sentBytes += int64(size)
	}
	return seq
}

// tick ends the sending part of a cluster once all its bytes are sent
// (unless extend: the padding last asked for is still coming) or after
// clusterMax, and gives up on its feedback after probeWait.
func (e *Estimator) tick(t int64, extend bool) {
	c := &e.cl
	if c.state == sending {
		if t-c.start >= clusterMax || float64(c.sentBytes) >= c.size && !extend {
			c.state, c.end = awaiting, t
		}
	}
	if c.state == awaiting && (c.sentN == 0 || t >= c.end+probeWait) {
		e.finishProbe(t)
	}
}

// Probe asks for a probe towards target bit/s. It returns false when a probe
// is running, when probes are backing off after a failure, and for 1 s
// after an overuse.
func (e *Estimator) Probe(target int, now time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.clock(now)
	e.tick(t, false)
	if target <= 0 || e.cl.state != idle || t < e.backoffUntil || t < e.holdUntil {
		return false
	}
	id := e.cl.id + 1
	if id == 0 {
		id = 1
	}
	tg := min(float64(target), e.max)
	e.cl = cluster{id: id, state: sending, target: tg, size: max(1.2*tg*clusterTime/8e6, clusterMin), start: t}
	return true
}

// ProbeBytes is how many bytes of padding to send now, for the running
// probe: what brings everything sent since the probe started (media
// included) up to target × 1.2 as of ahead from now (the caller's next
// call). -1 when no probe is sending: the caller stops.
func (e *Estimator) ProbeBytes(now time.Time, ahead time.Duration) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.clock(now)
	e.tick(t, false)
	c := &e.cl
	if c.state != sending {
		return -1
	}
	b := min(1.2*c.target*float64(t-c.start+ahead.Microseconds())/8e6, c.size) - float64(c.sentBytes)
	return int(max(b, 0))
}

func (e *Estimator) finishProbe(t int64) {
	c := &e.cl
	c.state = idle
	result := 0.0
	if c.recvN >= 3 && c.lastArr > c.firstArr {
		result = float64(c.recvBytes-c.arrived0) * 8e6 / float64(c.lastArr-c.firstArr)
	}
	// The second half of the cluster's bytes alone, when it spread: a link
	// with a burst allowance (a token bucket: carriers' shapers, tc's tbf)
	// lets the first kilobytes through at line speed, and a probe measured
	// from its first packet read a 600 kbit/s link as 5 Mbit/s.
	if c.midArr > 0 && c.lastArr > c.midArr && c.recvBytes > c.midBytes {
		result = min(result, float64(c.recvBytes-c.midBytes)*8e6/float64(c.lastArr-c.midArr))
	}
	if c.overuse || result < 0.9*c.target {
		e.backoffUntil = t + e.backoff
		e.backoff = min(2*e.backoff, backoffMax)
		return
	}
	e.backoff = backoffMin
	e.probeCap = min(result, 1.2*c.target)
	e.est = min(max(e.est, min(result, c.target)), e.max)
	if c.rep > 0 {
		e.loss = float64(c.lost) / float64(c.rep)
	}
}

// lookup is the ring entry of seq if it is one of the last ringSize sent.
func (e *Estimator) lookup(seq uint16) *entry {
	d := e.next - seq
	if d == 0 || d > ringSize || uint64(d) > e.total {
		return nil
	}
	return &e.ring[seq%ringSize]
}

// walk is the state of reading one feedback packet.
type walk struct {
	deltas  []byte // the receive deltas still to read
	seq     uint16
	arr     int64 // µs, receiver clock
	n, lost int   // newly reported, of which not received
	owdSum  int64
	owdN    int64
}

// delta reads the next receive delta (µs): one byte for a small one, two
// (signed) for a large one, in 250 µs units. False when there is none left.
func (w *walk) delta(large bool) (int64, bool) {
	if large {
		if len(w.deltas) < 2 {
			return 0, false
		}
		d := int64(int16(binary.BigEndian.Uint16(w.deltas))) * 250
		w.deltas = w.deltas[2:]
		return d, true
	}
	if len(w.deltas) < 1 {
		return 0, false
	}
	d := int64(w.deltas[0]) * 250
	w.deltas = w.deltas[1:]
	return d, true
}

// Feedback applies one TWCC feedback packet (its RTCP bytes, as received)
// at now. It is read from the wire format here, without allocating:
// pion's parser allocates every chunk and every delta, a few hundred bytes
// of garbage per feedback, ten feedbacks a second per viewer.
func (e *Estimator) Feedback(b []byte, now time.Time) {
	// Header (V=2, FMT=15, PT=205), sender and media SSRC, base sequence
	// number, status count, 24-bit reference time, feedback count.
	if len(b) < 20 || b[0]>>6 != 2 || b[0]&0x1f != 15 || b[1] != 205 {
		return
	}
	n := (int(binary.BigEndian.Uint16(b[2:])) + 1) * 4
	if n < 20 || n > len(b) {
		return // shorter than its fixed part, or cut
	}
	b = b[:n]
	base := binary.BigEndian.Uint16(b[12:])
	count := int(binary.BigEndian.Uint16(b[14:]))
	refTime := int64(b[16])<<16 | int64(b[17])<<8 | int64(b[18])
	// The chunks, until they cover count packets; the deltas follow.
	end, covered := 20, 0
	for covered < count {
		if end+2 > len(b) {
			return
		}
		c := binary.BigEndian.Uint16(b[end:])
		end += 2
		switch {
		case c>>15 == 0:
			covered += int(c & 0x1fff)
		case c>>14&1 == 0:
			covered += 14
		default:
			covered += 7
		}
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.clock(now)
	e.reference(refTime)
	w := walk{deltas: b[end:], seq: base, arr: e.ref * 64_000}
	left := count
chunks:
	for off := 20; off < end && left > 0; off += 2 {
		c := binary.BigEndian.Uint16(b[off:])
		switch {
		case c>>15 == 0: // run length: a symbol, repeated
			for range min(int(c&0x1fff), left) {
				if !e.status(&w, c>>13&3) {
					break chunks
				}
				left--
			}
		case c>>14&1 == 0: // status vector of 14 one-bit symbols
			for i := range min(14, left) {
				if !e.status(&w, c>>(13-i)&1) {
					break chunks
				}
				left--
			}
		default: // status vector of 7 two-bit symbols
			for i := range min(7, left) {
				if !e.status(&w, c>>(12-2*i)&3) {
					break chunks
				}
				left--
			}
		}
	}
	if w.n == 0 && w.owdN == 0 {
		e.tick(t, false)
		return
	}
	e.update(&w, t)
}

// reference unwraps a feedback's 24-bit reference time (64 ms units).
func (e *Estimator) reference(ref int64) {
	if e.haveRef {
		d := (ref - e.lastRef + refSpan) % refSpan
		if d >= refSpan/2 {
			d -= refSpan
		}
		if d < -16 { // over 1 s backwards: another clock
			e.resetArrivals()
		}
		e.ref += d
	} else {
		e.ref = ref
	}
	e.haveRef, e.lastRef = true, ref
}

// status applies one packet's status; false: malformed, stop.
func (e *Estimator) status(w *walk, sym uint16) bool {
	seq := w.seq
	w.seq++
	timed := false
	switch sym {
	case rtcp.TypeTCCPacketNotReceived, rtcp.TypeTCCPacketReceivedWithoutDelta:
	case rtcp.TypeTCCPacketReceivedSmallDelta, rtcp.TypeTCCPacketReceivedLargeDelta:
		d, ok := w.delta(sym == rtcp.TypeTCCPacketReceivedLargeDelta)
		if !ok {
			return false
		}
		w.arr += d
		timed = true
	default:
		return false
	}
	p := e.lookup(seq)
	if p == nil || p.state != unreported { // unknown, or reported before
		return true
	}
	c := &e.cl
	inCluster := c.state != idle && p.cluster == c.id
	w.n++
	if inCluster {
		c.rep++
	}
	if sym == rtcp.TypeTCCPacketNotReceived {
		p.state = lost
		w.lost++
		if inCluster {
			c.lost++
		}
		return true
	}
	p.state = received
	if !timed {
		return true
	}
	size := int64(p.size)

	// Received rate.
	if !e.haveArr || w.arr < e.firstArr {
		e.firstArr, e.firstSize = w.arr, size
	}
	if !e.haveArr || w.arr > e.lastArr {
		e.lastArr = w.arr
	}
	e.haveArr = true
	if k := floorDiv(w.arr, rateBucket); k > floorDiv(e.lastArr, rateBucket)-rateWindow {
		b := &e.rate[k&63]
		if b.key != k {
			*b = bucket{key: k}
		}
		b.val += size
	}

	// Delay base.
	owd := w.arr - p.sent
	k := floorDiv(p.sent, 1_000_000)
	e.baseKey = max(e.baseKey, k)
	if b := &e.base[k&15]; b.key != k {
		*b = bucket{key: k, val: owd}
	} else {
		b.val = min(b.val, owd)
	}
	w.owdSum += owd
	w.owdN++

	if inCluster {
		if c.recvN == 0 || w.arr < c.firstArr {
			c.firstArr, c.arrived0 = w.arr, 0
		}
		if w.arr == c.firstArr {
			c.arrived0 += size
		}
		c.lastArr = max(c.lastArr, w.arr)
		c.recvN++
		c.recvBytes += size
		if c.midArr == 0 && 2*float64(c.recvBytes) >= c.size {
			c.midArr, c.midBytes = w.arr, c.recvBytes
		}
	}
	return true
}

// receivedRate is the bit/s arrived over the last 500 ms of arrival times,
// 0 while fewer than 20 ms are known.
func (e *Estimator) receivedRate() float64 {
	if !e.haveArr {
		return 0
	}
	k := floorDiv(e.lastArr, rateBucket)
	from := (k - rateWindow + 1) * rateBucket
	var bytes int64
	for _, b := range e.rate {
		if b.key > k-rateWindow && b.key <= k {
			bytes += b.val
		}
	}
	if e.firstArr >= from { // less than the window known: from the first
		from, bytes = e.firstArr, bytes-e.firstSize
	}
	if e.lastArr-from < 20_000 {
		return 0
	}
	return float64(bytes) * 8e6 / float64(e.lastArr-from)
}

// update runs the controller after one feedback packet.
func (e *Estimator) update(w *walk, t int64) {
	dt := int64(0)
	if e.haveFb {
		dt = min(max(t-e.lastFb, 0), 500_000)
	}
	e.haveFb, e.lastFb = true, t

	if w.n > 0 {
		a := max(float64(w.n)/float64(w.n+lossPackets), float64(dt)/2e6)
		e.loss += a * (float64(w.lost)/float64(w.n) - e.loss)
	}
	e.recv = e.receivedRate()

	overuse := false
	if w.owdN > 0 {
		base := int64(1) << 62
		for _, b := range e.base {
			if b.key > e.baseKey-baseWindow && b.key <= e.baseKey {
				base = min(base, b.val)
			}
		}
		sample := float64(max(w.owdSum/w.owdN-base, 0))
		prev := e.delay
		if e.haveDelay {
			e.delay += 0.25 * (sample - e.delay)
		} else {
			e.haveDelay, e.delay = true, sample
		}
		overuse = e.delay > overuseDelay && (e.delay > prev || e.delay > standingDelay)
	}

	switch {
	case overuse:
		target := 0.85 * e.recv
		if e.recv <= 0 {
			target = 0.85 * e.est
		}
		e.est = min(e.est, target)
		e.holdUntil = t + holdTime
		e.probeCap = 0
		e.cl.overuse = true
	case e.loss > 0.1:
		if t >= e.lastCut+lossEvery {
			e.lastCut = t
			e.est = min(e.est, max(e.est*(1-0.5*e.loss), 0.85*e.recv))
		}
	case t >= e.holdUntil && e.delay <= overuseDelay:
		limit := max(1.5*e.recv, e.probeCap)
		e.est = max(e.est, min(e.est*(1+0.05*float64(dt)/1e6), limit))
	}
	e.est = min(max(e.est, e.min), e.max)

	e.tick(t, false)
	if c := &e.cl; c.state == awaiting && c.rep >= c.sentN {
		e.finishProbe(t)
	}
}

// Estimate is the bandwidth estimate in bit/s.
func (e *Estimator) Estimate() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return int(e.est)
}

// Stats returns a snapshot of the estimator.
func (e *Estimator) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return Stats{
		Estimate: int(e.est),
		Received: int(e.recv),
		Delay:    time.Duration(e.delay) * time.Microsecond,
		Loss:     e.loss,
		Probing:  e.cl.state != idle,
	}
}
