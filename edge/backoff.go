package edge

import (
	"math/rand/v2"
	"time"
)

// Backoff computes reconnect delays: exponential from Min to Max with
// "full jitter" (a uniform draw in [d/2, d]) so a fleet that lost the hub at
// once does not come back at once.
type Backoff struct {
	Min, Max time.Duration
	attempt  int
}

// Next returns the delay before the next attempt and counts the attempt.
func (b *Backoff) Next() time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = time.Second
	}
	if hi < lo {
		hi = lo
	}
	d := lo
	for i := 0; i < b.attempt && d < hi; i++ {
		d *= 2
	}
	if d > hi {
		d = hi
	}
	b.attempt++
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(d-half)+1))
}

// Reset starts the sequence again after a success.
func (b *Backoff) Reset() { b.attempt = 0 }
