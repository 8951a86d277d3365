package mqtt

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// bucketSet is a set of token buckets keyed by a string (a device, a
// source address, a product). Full buckets are pruned so the set stays
// small when nobody misbehaves.
type bucketSet struct {
	mu    sync.Mutex
	every rate.Limit
	burst int
	m     map[string]*rate.Limiter
	max   int
}

func newBucketSet(every time.Duration, burst int) *bucketSet {
	return &bucketSet{every: rate.Every(every), burst: burst, m: map[string]*rate.Limiter{}, max: 100000}
}

// blocked reports whether key's bucket is empty, without taking a token.
func (b *bucketSet) blocked(key string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.m[key]
	return l != nil && l.TokensAt(now) < 1
}

// take takes one token from key's bucket and reports whether one was there.
func (b *bucketSet) take(key string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.m[key]
	if l == nil {
		if len(b.m) >= b.max {
			b.pruneLocked(now)
			if len(b.m) >= b.max {
				// Memory stays bounded under a flood of distinct keys; the
				// per-address buckets still hold the flood back.
				clear(b.m)
			}
		}
		l = rate.NewLimiter(b.every, b.burst)
		b.m[key] = l
	}
	return l.AllowN(now, 1)
}

// prune drops buckets that have refilled completely.
func (b *bucketSet) prune(now time.Time) {
	b.mu.Lock()
	b.pruneLocked(now)
	b.mu.Unlock()
}

func (b *bucketSet) pruneLocked(now time.Time) {
	for k, l := range b.m {
		if l.TokensAt(now) >= float64(b.burst) {
			delete(b.m, k)
		}
	}
}

// limiters are the login throttles. Failed static logins drain a bucket
// per device and one per source address; activation attempts (securemode
// 3) drain one per product and one per source address whatever their
// result.
type limiters struct {
	failDevice *bucketSet
	failAddr   *bucketSet
	actProduct *bucketSet
	actAddr    *bucketSet
}

func newLimiters() *limiters {
	return &limiters{
		failDevice: newBucketSet(10*time.Second, 5), // 5 wrong guesses, then one per 10 s
		failAddr:   newBucketSet(2*time.Second, 20),
		actProduct: newBucketSet(100*time.Millisecond, 50),
		actAddr:    newBucketSet(5*time.Second, 10),
	}
}

func (l *limiters) prune(now time.Time) {
	for _, b := range []*bucketSet{l.failDevice, l.failAddr, l.actProduct, l.actAddr} {
		b.prune(now)
	}
}
