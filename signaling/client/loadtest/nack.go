package loadtest

import "time"

// nackState is a lite viewer's loss recovery for video, done as a browser
// does it: a gap in sequence numbers is asked for at once with an RTCP NACK,
// asked for again about a round trip later while it is still missing, and
// given up after a while. The round trip comes from the viewer's own ICE
// consent checks. Owned by the viewer's read loop; the totals are read for
// the report after that loop ended.
type nackState struct {
	started  bool
	highest  uint16
	pending  []missingPacket // oldest first
	srtt     int64           // smoothed round trip in ns, 0: none measured yet
	lastScan int64
	out      []uint16 // what observe returns, reused

	asked     uint64 // sequence numbers found missing and asked for
	requests  uint64 // sequence numbers in NACKs sent, repeats included
	recovered uint64 // missing packets that arrived after all
	gaveUp    uint64
}

type missingPacket struct {
	seq          uint16
	since, asked int64 // ns since run start
	tries        uint8
}

const (
	nackMaxGap     = 512  // a bigger jump is a new source, not loss
	nackMaxPending = 1024 // what the server's packet cache can answer at most
	nackMaxTries   = 10
	nackGiveUp     = int64(3 * time.Second)
	nackScanEvery  = int64(20 * time.Millisecond)
	nackDefaultRTT = int64(100 * time.Millisecond)
)

// rtt takes one round-trip sample (a STUN request answered).
func (n *nackState) rtt(sample int64) {
	if n.srtt == 0 {
		n.srtt = sample
		return
	}
	n.srtt += (sample - n.srtt) / 8
}

// retryAfter is how long a NACK may go unanswered before it is repeated: a
// round trip and a margin for the server's and the kernel's queues.
func (n *nackState) retryAfter() int64 {
	rtt := n.srtt
	if rtt == 0 {
		rtt = nackDefaultRTT
	}
	return rtt + rtt/4 + int64(20*time.Millisecond)
}

// observe takes the sequence number of one video packet (original or
// retransmission) and returns the sequence numbers to ask for now; the
// slice is reused by the next call.
func (n *nackState) observe(seq uint16, now int64) []uint16 {
	out := n.out[:0]
	if !n.started {
		n.started, n.highest, n.lastScan = true, seq, now
		return nil
	}
	// Repeats first, then new gaps: the list stays in sequence order, which
	// is what packs into the fewest NACK pairs.
	if len(n.pending) > 0 && now-n.lastScan >= nackScanEvery {
		n.lastScan = now
		retry := n.retryAfter()
		kept := n.pending[:0]
		for _, m := range n.pending {
			if now-m.since > nackGiveUp || m.tries >= nackMaxTries {
				n.gaveUp++
				continue
			}
			if now-m.asked >= retry {
				m.asked, m.tries = now, m.tries+1
				out = append(out, m.seq)
			}
			kept = append(kept, m)
		}
		n.pending = kept
	}
	switch d := int16(seq - n.highest); {
	case d > nackMaxGap:
		n.gaveUp += uint64(len(n.pending))
		n.pending = n.pending[:0]
		n.highest = seq
	case d > 0:
		for s := n.highest + 1; s != seq; s++ {
			if len(n.pending) == nackMaxPending {
				break
			}
			n.pending = append(n.pending, missingPacket{seq: s, since: now, asked: now, tries: 1})
			n.asked++
			out = append(out, s)
		}
		n.highest = seq
	default: // late: perhaps one asked for
		for i, m := range n.pending {
			if m.seq == seq {
				n.pending = append(n.pending[:i], n.pending[i+1:]...)
				n.recovered++
				break
			}
		}
	}
	n.requests += uint64(len(out))
	n.out = out
	return out
}
