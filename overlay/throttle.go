package overlay

import (
	"sync/atomic"
	"time"
)

// Throttle keeps a burst of one failure to a log line a second: an outage
// under a flash sale writes a few lines, not thousands. The zero value is
// ready.
type Throttle struct {
	held atomic.Int64 // failures since the last line
	last atomic.Int64 // when that line was written (Unix ns)
}

// Count counts one failure and reports whether to write its line now, and
// how many failures the line stands for.
func (t *Throttle) Count() (n int64, write bool) {
	n = t.held.Add(1)
	now := time.Now().UnixNano()
	last := t.last.Load()
	if now-last < int64(time.Second) || !t.last.CompareAndSwap(last, now) {
		return n, false
	}
	t.held.Add(-n)
	return n, true
}
