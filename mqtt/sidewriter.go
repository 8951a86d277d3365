package mqtt

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/feed"
)

// sideItem is one side effect of a login or logout: a state change (State
// "" for none), an audit event (Kind "" for none), or both. ss is the login
// whose online write this is, to be closed if the device turns out to be
// disabled.
type sideItem struct {
	change iothub.StateChange
	audit  iothub.AuditEvent
	ss     *session
	synced chan struct{} // a Sync marker: closed once everything before it is written
}

// sideWriter takes the store writes of logins and logouts off their path:
// items queue and are written every interval, or as soon as max are
// waiting, with one ApplyDeviceStates and one AuditBatch transaction per
// batch, in the order they were queued. An online change the store refuses
// because the device is disabled (or gone) calls conflict with its session,
// and the login's audit row becomes a refusal. Close writes everything queued.
type sideWriter struct {
	store    iothub.Store
	feed     *feed.Feed // may be nil
	log      *slog.Logger
	conflict func(ss *session, deleted bool)
	in       chan sideItem
	interval time.Duration
	max      int
	mu       sync.RWMutex
	closed   bool
	done     chan struct{}
}

func newSideWriter(store iothub.Store, f *feed.Feed, log *slog.Logger, conflict func(*session, bool), interval time.Duration, max int) *sideWriter {
	w := &sideWriter{store: store, feed: f, log: log, conflict: conflict, in: make(chan sideItem, 8*max),
		interval: interval, max: max, done: make(chan struct{})}
	go w.run()
	return w
}

// Add queues an item; it blocks while the queue is full (the store is
// behind: logins then wait, as they did when they wrote themselves).
// After Close it writes the item directly.
func (w *sideWriter) Add(it sideItem) {
	w.mu.RLock()
	if !w.closed {
		w.in <- it
		w.mu.RUnlock()
		return
	}
	w.mu.RUnlock()
	if it.synced != nil {
		close(it.synced) // Close wrote everything
		return
	}
	w.write([]sideItem{it})
}

// Sync returns once every item queued before it is written.
func (w *sideWriter) Sync() {
	done := make(chan struct{})
	w.Add(sideItem{synced: done})
	<-done
}

// Close stops the queue and returns once every queued item is written.
func (w *sideWriter) Close() {
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

func (w *sideWriter) run() {
	defer close(w.done)
	t := time.NewTicker(w.interval)
	defer t.Stop()
	batch := make([]sideItem, 0, w.max)
	for {
		select {
		case it, ok := <-w.in:
			if !ok {
				w.write(batch)
				return
			}
			if it.synced != nil {
				w.write(batch)
				batch = batch[:0]
				close(it.synced)
				continue
			}
			batch = append(batch, it)
			if len(batch) >= w.max {
				w.write(batch)
				batch = batch[:0]
			}
		case <-t.C:
			w.write(batch)
			batch = batch[:0]
		}
	}
}

// write stores one batch: the state changes first, so that a refused
// login's audit row says so, then the audit rows.
func (w *sideWriter) write(batch []sideItem) {
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var changes []iothub.StateChange
	var owners []int // index in batch of each change
	for i, it := range batch {
		// A session the hub already closed for a change (reset, disable,
		// deletion) must not bring the device back online over it.
		if it.change.State != "" && (it.ss == nil || !it.ss.quiet.Load()) {
			changes = append(changes, it.change)
			owners = append(owners, i)
		}
	}
	if len(changes) > 0 {
		res, err := w.store.ApplyDeviceStates(ctx, changes)
		if err != nil {
			w.log.Error("mqtt: writing device states", "changes", len(changes), "error", err)
		}
		var applied []iothub.DataChange
		for j, e := range res {
			it := &batch[owners[j]]
			switch {
			case e == nil:
				applied = append(applied, feed.State(it.change.Device.ProductKey, it.change.Device.DeviceKey, it.change.At, it.change.State))
			case iothub.ErrorCode(e) == iothub.ECONFLICT && it.ss != nil:
				// Disabled between the login's read and its online write.
				if it.audit.Kind != "" {
					it.audit.Kind, it.audit.Reason = "login.refused", "723: device disabled"
				}
				go w.conflict(it.ss, false) // not on this goroutine: the kick ends in endSession, which may queue
			case iothub.ErrorCode(e) == iothub.ENOTFOUND && it.ss != nil:
				if it.audit.Kind != "" {
					it.audit.Kind, it.audit.Reason = "login.refused", "device deleted"
				}
				go w.conflict(it.ss, true)
			case iothub.ErrorCode(e) != iothub.ENOTFOUND && iothub.ErrorCode(e) != iothub.ECONFLICT:
				w.log.Error("mqtt: writing device state", "productKey", it.change.Device.ProductKey,
					"deviceKey", it.change.Device.DeviceKey, "state", it.change.State, "error", e)
			}
		}
		if w.feed != nil {
			if err := w.feed.Record(ctx, applied); err != nil {
				w.log.Error("mqtt: recording device states for applications", "changes", len(applied), "error", err)
			}
		}
	}
	events := make([]iothub.AuditEvent, 0, len(batch))
	for _, it := range batch {
		if it.audit.Kind != "" {
			events = append(events, it.audit)
		}
	}
	if len(events) > 0 {
		if err := w.store.AuditBatch(ctx, events); err != nil {
			w.log.Error("mqtt: audit", "events", len(events), "error", err)
		}
	}
}
