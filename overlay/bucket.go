package overlay

import "time"

// Bucket is a token bucket: Burst events at once, Rate per second after
// that. It starts full; it is not safe for concurrent use (its owner's lock
// guards it).
type Bucket struct {
	Rate, Burst float64
	tokens      float64
	at          time.Time
}

// Take spends a token, or, spending nothing, says how long until there is
// one.
func (b *Bucket) Take(now time.Time) time.Duration {
	wait := b.Wait(now)
	if wait == 0 {
		b.tokens--
	}
	return wait
}

// Wait says how long until there is a token (0: there is one), spending
// nothing.
func (b *Bucket) Wait(now time.Time) time.Duration {
	if b.at.IsZero() {
		b.tokens = b.Burst
	} else {
		b.tokens = min(b.Burst, b.tokens+now.Sub(b.at).Seconds()*b.Rate)
	}
	b.at = now
	if b.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - b.tokens) / b.Rate * float64(time.Second))
}

// Full reports whether the bucket has refilled, so forgetting it changes
// nothing.
func (b *Bucket) Full(now time.Time) bool {
	b.Wait(now)
	return b.tokens >= b.Burst
}
