package signaling

import (
	"testing"
	"time"
)

func TestTokenBucket(t *testing.T) {
	b := &tokenBucket{rate: 5, burst: 10}
	now := time.Unix(1000, 0)
	allowed := 0
	for range 50 {
		if b.allow(now) {
			allowed++
		}
	}
	if allowed != 10 {
		t.Errorf("a burst of 50 at once: %d allowed, want 10", allowed)
	}
	if !b.allow(now.Add(250 * time.Millisecond)) {
		t.Error("a quarter second later one more is allowed (5 per second)")
	}
	if b.allow(now.Add(250 * time.Millisecond)) {
		t.Error("but not two")
	}
}
