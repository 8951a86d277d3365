package mqtt

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/iothub/iothub"
)

// sampleWriter batches measurepoint posts: a flood of posts costs one
// store transaction per batch (up to max samples, or every interval), not
// one per message. Close writes everything accepted.
type sampleWriter struct {
	store    iothub.TelemetryStore
	log      *slog.Logger
	in       chan iothub.Sample
	interval time.Duration
	max      int
	mu       sync.RWMutex
	closed   bool
	done     chan struct{}
}

func newSampleWriter(store iothub.TelemetryStore, log *slog.Logger, interval time.Duration, max int) *sampleWriter {
	w := &sampleWriter{store: store, log: log, in: make(chan iothub.Sample, 4*max), interval: interval, max: max, done: make(chan struct{})}
	go w.run()
	return w
}

// Add queues a sample; it blocks while the queue is full (back-pressure on
// the device's connection). After Close it drops the sample.
func (w *sampleWriter) Add(s iothub.Sample) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return
	}
	w.in <- s
}

// Close stops accepting samples and returns once every queued one is written.
func (w *sampleWriter) Close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	close(w.in)
	w.mu.Unlock()
	<-w.done
}

func (w *sampleWriter) run() {
	defer close(w.done)
	t := time.NewTicker(w.interval)
	defer t.Stop()
	batch := make([]iothub.Sample, 0, w.max)
	flush := func() {
		if len(batch) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := w.store.AppendSamples(ctx, batch); err != nil {
			w.log.Error("mqtt: storing measurepoints", "samples", len(batch), "error", err)
		}
		cancel()
		batch = batch[:0]
	}
	for {
		select {
		case s, ok := <-w.in:
			if !ok {
				flush()
				return
			}
			batch = append(batch, s)
			if len(batch) >= w.max {
				flush()
			}
		case <-t.C:
			flush()
		}
	}
}
