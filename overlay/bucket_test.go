package overlay

import (
	"testing"
	"time"
)

// TestBucket: a burst at once, then the rate; a refused take spends
// nothing and says how long to wait; a refilled bucket is full.
func TestBucket(t *testing.T) {
	b := &Bucket{Rate: 5, Burst: 10}
	now := time.Unix(1000, 0)
	allowed := 0
	for range 50 {
		if b.Take(now) == 0 {
			allowed++
		}
	}
	if allowed != 10 {
		t.Errorf("a burst of 50 at once: %d allowed, want 10", allowed)
	}
	if wait := b.Wait(now); wait != 200*time.Millisecond {
		t.Errorf("empty at 5 per second: wait %s, want 200ms", wait)
	}
	later := now.Add(250 * time.Millisecond)
	if b.Take(later) != 0 {
		t.Error("a quarter second later one more is allowed (5 per second)")
	}
	if wait := b.Take(later); wait <= 0 || wait > 200*time.Millisecond {
		t.Errorf("but not two: wait %s", wait)
	}
	if b.Full(later.Add(time.Second)) {
		t.Error("full one second after being empty (10 at 5 per second need 2)")
	}
	if !b.Full(later.Add(3 * time.Second)) {
		t.Error("not full 3 s later")
	}
}
