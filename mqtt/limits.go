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

// take takes one token from key's bucket and reports whether one was there.
func (b *bucketSet) take(key string, now time.Time) bool { return b.takeN(key, 1, now) }

// takeN takes n tokens from key's bucket and reports whether n were there;
// if not, it takes none.
func (b *bucketSet) takeN(key string, n int, now time.Time) bool {
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
	return l.AllowN(now, n)
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

// limiters are the device-facing throttles. Failed static logins drain a
// bucket per device and source address and one per source address: only
// failures count, and a login with the right signature is never throttled,
// so guessing from elsewhere cannot lock the real device out. Activation
// attempts (securemode 3) drain one per product and one per source address
// whatever their result. Gateway registrations drain one per gateway per
// device created.
type limiters struct {
	failDevice *bucketSet // key: "pk/dk|source"
	failAddr   *bucketSet
	actProduct *bucketSet
	actAddr    *bucketSet
	gwRegister *bucketSet
}

func newLimiters() *limiters {
	return &limiters{
		failDevice: newBucketSet(10*time.Second, 5), // 5 wrong guesses, then one per 10 s
		failAddr:   newBucketSet(2*time.Second, 20),
		actProduct: newBucketSet(100*time.Millisecond, 50),
		actAddr:    newBucketSet(5*time.Second, 10),
		gwRegister: newBucketSet(100*time.Millisecond, maxRegisterBatch), // one full request, then 10 devices a second
	}
}

// failed records a failed login of device (pk/dk, "" when the login did
// not parse) from source and reports whether its buckets were already
// empty, i.e. whether the failure is answered as throttled.
func (l *limiters) failed(device, source string, now time.Time) bool {
	throttled := !l.failAddr.take(source, now)
	if device != "" && !l.failDevice.take(device+"|"+source, now) {
		throttled = true
	}
	return throttled
}

func (l *limiters) prune(now time.Time) {
	for _, b := range []*bucketSet{l.failDevice, l.failAddr, l.actProduct, l.actAddr, l.gwRegister} {
		b.prune(now)
	}
}

// maxSubscriptions caps the topic filters one session holds (F11): a
// SUBSCRIBE past it gets a failure code (0x97, quota exceeded; 0x80 in
// MQTT 3.1.1) for each filter over the cap.
const maxSubscriptions = 100
