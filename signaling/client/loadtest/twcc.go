package loadtest

import (
	"time"

	"github.com/pion/rtcp"
)

// twccRecorder is a lite viewer's side of transport-wide congestion control
// (draft-holmer-rmcat-transport-wide-cc-extensions-01), as a browser does
// it: note when each packet carrying a transport-wide sequence number
// arrived, and about every 100 ms report the packets since the last report,
// received (with their arrival times) or not. The server's bandwidth
// estimate for the viewer is made of these reports.
//
// observe is the per-packet part: an index and a store, nothing allocated.
// feedback builds the report (and allocates for it). Both are called from
// the viewer's read loop only.
type twccRecorder struct {
	started  bool
	highest  uint64 // extended sequence number of the newest packet
	next     uint64 // the first sequence number not reported yet
	arrivals [twccWindow]int64
	lastFb   int64 // ns since run start: when the last report went
	count    uint8 // reports sent, mod 256 (the feedback packet count)
}

const (
	// twccWindow is how many sequence numbers are remembered (16 KiB a
	// viewer): seconds of video, far more than one report covers.
	twccWindow = 2048
	// twccEvery spaces the reports, as Chrome's 100 ms.
	twccEvery = int64(100 * time.Millisecond)
	// twccTick is the unit of receive deltas, twccRefUnit that of the
	// reference time (256 ticks).
	twccTick    = int64(250 * time.Microsecond)
	twccRefUnit = int64(64 * time.Millisecond)
	// twccMaxRun is the longest run a run-length chunk holds (13 bits).
	twccMaxRun = 1<<13 - 1
)

// observe notes that the packet with transport-wide sequence number seq
// arrived at now (ns since run start). A packet older than what was
// reported already is too late: it stays reported as lost, as in browsers.
func (r *twccRecorder) observe(seq uint16, now int64) {
	now = max(now, 1) // 0 is "not arrived"
	if !r.started {
		// Extended numbers start one lap in, so that a late packet from
		// before the first one still has a number.
		r.started, r.highest, r.next = true, 1<<16|uint64(seq), 1<<16|uint64(seq)
		r.arrivals[r.highest%twccWindow] = now
		return
	}
	var ext uint64
	if d := int16(seq - uint16(r.highest)); d > 0 {
		ext = r.highest + uint64(d)
		if ext-r.highest >= twccWindow {
			r.arrivals = [twccWindow]int64{}
		} else {
			for i := r.highest + 1; i < ext; i++ {
				r.arrivals[i%twccWindow] = 0
			}
		}
		r.highest = ext
	} else {
		ext = r.highest - uint64(-int32(d))
		if ext < r.next || r.highest-ext >= twccWindow {
			return
		}
	}
	r.arrivals[ext%twccWindow] = now
}

// due reports whether a report should go now.
func (r *twccRecorder) due(now int64) bool {
	return r.started && r.highest >= r.next && now-r.lastFb >= twccEvery
}

// feedback reports the packets from the last report's end through the
// newest one, and moves past them. sender is the viewer's SSRC, media the
// SSRC of the video it receives (the server reads feedback on that
// stream's sender). Nil when there is nothing to report.
func (r *twccRecorder) feedback(sender, media uint32, now int64) *rtcp.TransportLayerCC {
	if !r.started || r.highest < r.next {
		return nil
	}
	from := max(r.next, r.highest-twccWindow+1)
	// The reference time is the first received packet's, rounded down to
	// 64 ms; every delta is in 250 µs ticks from the packet before (the
	// first from the reference time).
	first := from
	for r.arrivals[first%twccWindow] == 0 {
		first++ // the newest packet arrived: this ends
	}
	ref := r.arrivals[first%twccWindow] / twccRefUnit
	prev := ref * (twccRefUnit / twccTick)
	var symbols []uint16
	var deltas []*rtcp.RecvDelta
	end := from
	for ; end <= r.highest && end-from < 0xffff; end++ {
		at := r.arrivals[end%twccWindow]
		if at == 0 {
			symbols = append(symbols, rtcp.TypeTCCPacketNotReceived)
			continue
		}
		tick := at / twccTick
		d := tick - prev
		sym := uint16(rtcp.TypeTCCPacketReceivedSmallDelta)
		if d < 0 || d > 0xff {
			sym = rtcp.TypeTCCPacketReceivedLargeDelta
			if d < -1<<15 || d >= 1<<15 {
				break // the rest goes in the next report, from its own reference
			}
		}
		symbols = append(symbols, sym)
		deltas = append(deltas, &rtcp.RecvDelta{Type: sym, Delta: d * (twccTick / int64(time.Microsecond))})
		prev = tick
	}
	// Losses after the last received packet wait for the next report,
	// which will have a packet to time them against.
	for len(symbols) > 0 && symbols[len(symbols)-1] == rtcp.TypeTCCPacketNotReceived {
		symbols = symbols[:len(symbols)-1]
		end--
	}
	if len(deltas) == 0 {
		return nil
	}
	fb := &rtcp.TransportLayerCC{
		SenderSSRC:         sender,
		MediaSSRC:          media,
		BaseSequenceNumber: uint16(from),
		PacketStatusCount:  uint16(len(symbols)),
		ReferenceTime:      uint32(ref) & 0xffffff,
		FbPktCount:         r.count,
		PacketChunks:       twccChunks(symbols),
		RecvDeltas:         deltas,
	}
	size := fb.MarshalSize()
	fb.Header = rtcp.Header{Padding: size != len(fb.PacketChunks)*2+twccFixed+deltaBytes(deltas), Count: rtcp.FormatTCC,
		Type: rtcp.TypeTransportSpecificFeedback, Length: uint16(size/4 - 1)}
	r.next, r.lastFb = end, now
	r.count++
	return fb
}

// twccFixed is the size of a report before its chunks: RTCP header, the two
// SSRCs, base sequence number, status count, reference time and count.
const twccFixed = 4 + 8 + 8

func deltaBytes(ds []*rtcp.RecvDelta) int {
	n := 0
	for _, d := range ds {
		n++
		if d.Type == rtcp.TypeTCCPacketReceivedLargeDelta {
			n++
		}
	}
	return n
}

// twccChunks packs packet statuses into chunks: a run-length chunk for a
// run of one status (up to 8191), a one-bit status vector for 14 statuses
// that are all "received, small delta" or "not received", a two-bit vector
// for 7 otherwise. A vector at the end may hold fewer; the status count
// says where the statuses end.
func twccChunks(symbols []uint16) []rtcp.PacketStatusChunk {
	var chunks []rtcp.PacketStatusChunk
	for i := 0; i < len(symbols); {
		run := 1
		for i+run < len(symbols) && symbols[i+run] == symbols[i] && run < twccMaxRun {
			run++
		}
		if run >= 14 {
			chunks = append(chunks, &rtcp.RunLengthChunk{Type: rtcp.TypeTCCRunLengthChunk, PacketStatusSymbol: symbols[i], RunLength: uint16(run)})
			i += run
			continue
		}
		n := min(14, len(symbols)-i)
		oneBit := true
		for _, s := range symbols[i : i+n] {
			oneBit = oneBit && s <= rtcp.TypeTCCPacketReceivedSmallDelta
		}
		switch {
		case oneBit:
			chunks = append(chunks, &rtcp.StatusVectorChunk{Type: rtcp.TypeTCCStatusVectorChunk,
				SymbolSize: rtcp.TypeTCCSymbolSizeOneBit, SymbolList: symbols[i : i+n : i+n]})
			i += n
		case run >= 7:
			chunks = append(chunks, &rtcp.RunLengthChunk{Type: rtcp.TypeTCCRunLengthChunk, PacketStatusSymbol: symbols[i], RunLength: uint16(run)})
			i += run
		default:
			n = min(7, len(symbols)-i)
			chunks = append(chunks, &rtcp.StatusVectorChunk{Type: rtcp.TypeTCCStatusVectorChunk,
				SymbolSize: rtcp.TypeTCCSymbolSizeTwoBit, SymbolList: symbols[i : i+n : i+n]})
			i += n
		}
	}
	return chunks
}
