// Package alloc picks the simulcast layer one viewer is sent, from the
// layers' bitrates and the viewer's bandwidth estimate. It only decides; the
// forwarding core switches (on a keyframe of the layer picked).
//
// The rules, in order:
//   - A viewer's own choice (High, Medium, Low) wins over the estimate.
//   - Down at once when the layer sent needs more than the estimate: to the
//     highest layer that fits in 85% of it (the lowest if none does).
//   - Up one layer at a time, only to a layer that fits in 80% of the estimate (headroom for
//     audio and for the estimate being wrong), and not within 10 s of a
//     switch down: a link that could not carry a layer is not tried again
//     at once, so a viewer does not flap. (Doubling the wait after a switch
//     up that had to be undone was tried: a probe fooled by a link's burst
//     allowance just before the link opened then kept a viewer down 20 s;
//     the undone switch itself cost no freeze in Chromium.)
//   - When a higher layer does not fit yet, ask the estimator to probe for
//     it (it may not know: an estimate grows only with what is sent).
//   - A layer that stopped sending (its bitrate is 0) is never picked; the
//     viewer moves off it whatever the estimate.
package alloc

import "time"

// Choice is what the viewer asked for in the player's quality menu.
type Choice string

// The player's menu.
const (
	Auto   Choice = "auto"
	High   Choice = "high"
	Medium Choice = "medium"
	Low    Choice = "low"
)

// Valid reports whether c is one of the menu's entries.
func (c Choice) Valid() bool { return c == Auto || c == High || c == Medium || c == Low }

// The headrooms and the hold after a switch down.
const (
	upFit    = 0.80
	downFit  = 0.85
	holdDown = 10 * time.Second
)

// Allocator is one viewer's. It is not safe for concurrent use.
type Allocator struct {
	lastDown time.Time
}

// Decision is which layer to send (an index into the layers given) and,
// when the next layer up does not fit yet, the bitrate to probe for (0:
// no probe).
type Decision struct {
	Layer int
	Probe int
}

// Decide picks a layer among bitrates (bit/s per layer, 0 for one that does
// not send; in any order), given the layer sent now (-1 for none), the
// estimate in bit/s, the viewer's choice and the time.
func (a *Allocator) Decide(bitrates []int, current, estimate int, choice Choice, now time.Time) Decision {
	order := rank(bitrates)
	if len(order) == 0 {
		return Decision{Layer: current}
	}
	switch choice {
	case High:
		return Decision{Layer: order[len(order)-1]}
	case Low:
		return Decision{Layer: order[0]}
	case Medium:
		return Decision{Layer: order[len(order)/2]}
	}
	pos := -1 // current's place in order
	for i, l := range order {
		if l == current {
			pos = i
		}
	}
	fit := func(share float64) int {
		best := 0
		for i, l := range order {
			if float64(bitrates[l]) <= share*float64(estimate) {
				best = i
			}
		}
		return best
	}
	switch {
	case pos < 0:
		// Nothing sent yet, or the layer stopped: the best that fits.
		return Decision{Layer: order[fit(downFit)]}
	case bitrates[current] > estimate:
		if d := fit(downFit); d < pos {
			a.lastDown = now
			return Decision{Layer: order[d]}
		}
		return Decision{Layer: current}
	case pos == len(order)-1 || now.Sub(a.lastDown) < holdDown:
		return Decision{Layer: current}
	}
	if up := fit(upFit); up > pos {
		// One layer at a time: what let the estimate grow is a probe for
		// the next layer (a probe can be wrong; the next one will tell).
		return Decision{Layer: order[pos+1]}
	}
	next := bitrates[order[pos+1]]
	return Decision{Layer: current, Probe: int(float64(next) / upFit)}
}

// rank lists the indexes of the layers that send, by bitrate, lowest first.
func rank(bitrates []int) []int {
	var order []int
	for i, b := range bitrates {
		if b <= 0 {
			continue
		}
		at := len(order)
		for at > 0 && bitrates[order[at-1]] > b {
			at--
		}
		order = append(order, 0)
		copy(order[at+1:], order[at:])
		order[at] = i
	}
	return order
}
