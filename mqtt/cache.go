package mqtt

import (
	"context"
	"sync"
	"time"

	"github.com/iothub/iothub"
)

// Bounds of the registry cache.
const (
	cacheMaxDevices  = 100_000
	cacheMaxProducts = 10_000
	// cacheTTL bounds how long an entry is trusted without a bus event:
	// a safety net for an event lost on the way (NATS core is at most once).
	cacheTTL = 60 * time.Second
)

// registryCache keeps the products and devices that static logins read, as
// the store returned them (secrets in clear, as in any login), so that a
// login touches memory only. The bus events that announce a change drop
// the entry (recheck and the other nodes hear the same events); a miss
// (unknown product or device) is never cached, so a device created right
// after a refused login can log in at once.
//
// A read that started before an invalidation is not stored after it: every
// drop bumps epoch, and a fill records only if epoch did not move while the
// store was read. The store is written before its event is published, so a
// fill either started after the write or is discarded.
type registryCache struct {
	store iothub.Store
	now   func() time.Time

	mu       sync.RWMutex
	epoch    uint64
	products map[string]cachedProduct
	devices  map[iothub.DeviceID]cachedDevice
}

type cachedProduct struct {
	p  *iothub.Product
	at time.Time
}

type cachedDevice struct {
	d  *iothub.Device
	at time.Time
}

func newRegistryCache(store iothub.Store, now func() time.Time) *registryCache {
	return &registryCache{
		store:    store,
		now:      now,
		products: map[string]cachedProduct{},
		devices:  map[iothub.DeviceID]cachedDevice{},
	}
}

// product returns the product from memory or the store. The result is
// shared: callers must not modify it.
func (c *registryCache) product(ctx context.Context, pk string) (*iothub.Product, error) {
	now := c.now()
	c.mu.RLock()
	e, ok := c.products[pk]
	epoch := c.epoch
	c.mu.RUnlock()
	if ok && now.Sub(e.at) < cacheTTL {
		return e.p, nil
	}
	p, err := c.store.Product(ctx, pk)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.epoch == epoch {
		if len(c.products) >= cacheMaxProducts {
			evictOne(c.products)
		}
		c.products[pk] = cachedProduct{p, now}
	}
	c.mu.Unlock()
	return p, nil
}

// device returns the device from memory or the store. The result is
// shared: callers must not modify it.
func (c *registryCache) device(ctx context.Context, id iothub.DeviceID) (*iothub.Device, error) {
	now := c.now()
	c.mu.RLock()
	e, ok := c.devices[id]
	epoch := c.epoch
	c.mu.RUnlock()
	if ok && now.Sub(e.at) < cacheTTL {
		return e.d, nil
	}
	d, err := c.store.Device(ctx, id.ProductKey, id.DeviceKey)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.epoch == epoch {
		if len(c.devices) >= cacheMaxDevices {
			evictOne(c.devices)
		}
		c.devices[id] = cachedDevice{d, now}
	}
	c.mu.Unlock()
	return d, nil
}

// dropDevice forgets a device (disabled, enabled, reset or deleted).
func (c *registryCache) dropDevice(id iothub.DeviceID) {
	c.mu.Lock()
	c.epoch++
	delete(c.devices, id)
	c.mu.Unlock()
}

// dropProduct forgets a product (settings or secret changed, deleted).
func (c *registryCache) dropProduct(pk string) {
	c.mu.Lock()
	c.epoch++
	delete(c.products, pk)
	c.mu.Unlock()
}

// evictOne removes one entry, whichever map iteration yields first
// (Go randomizes it): simple, and fair enough for a bounded cache.
func evictOne[K comparable, V any](m map[K]V) {
	for k := range m {
		delete(m, k)
		return
	}
}
