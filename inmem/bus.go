// Package inmem holds the in-process adapters used when the hub runs as a
// single node: the event bus.
package inmem

import (
	"context"
	"sync"

	"github.com/iothub/iothub"
)

// Bus is an in-process iothub.Bus: Publish calls every subscriber in the
// caller's goroutine.
type Bus struct {
	mu   sync.RWMutex
	next int
	subs map[int]func(iothub.Event)
}

// NewBus returns an empty bus.
func NewBus() *Bus { return &Bus{subs: map[int]func(iothub.Event){}} }

// Publish delivers e to every subscriber.
func (b *Bus) Publish(_ context.Context, e iothub.Event) error {
	b.mu.RLock()
	fns := make([]func(iothub.Event), 0, len(b.subs))
	for _, fn := range b.subs {
		fns = append(fns, fn)
	}
	b.mu.RUnlock()
	for _, fn := range fns {
		fn(e)
	}
	return nil
}

// Subscribe registers fn and returns a function that removes it.
func (b *Bus) Subscribe(fn func(iothub.Event)) func() {
	b.mu.Lock()
	defer b.mu.Unlock()
	id := b.next
	b.next++
	b.subs[id] = fn
	return func() {
		b.mu.Lock()
		delete(b.subs, id)
		b.mu.Unlock()
	}
}
