// Package changes makes the hub's bus lossless: the database is the truth,
// the bus the fast path. Every event published through a Bus is first
// written to the store's change log; each node reads the log from its
// watermark periodically and whenever its bus reconnects, and delivers the
// entries it did not hear on the bus to its subscribers, exactly as if
// they had come over the bus. A node cut off from the bus (NATS down, its
// connection lost, the server wiped) still applies every revocation,
// disable, delete, reset and product change made elsewhere within one
// poll period.
package changes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/inmem"
)

// Defaults of Options.
const (
	DefaultEvery = time.Second
	DefaultKeep  = time.Hour
	// readBatch is how many entries one read of the log returns.
	readBatch = 500
	// appendTimeout bounds one write to the log.
	appendTimeout = 5 * time.Second
)

// Options tune a Bus; the zero value is usable.
type Options struct {
	// Every is the period of the reconcile reads (DefaultEvery if 0).
	Every time.Duration
	// Keep is how long entries stay in the log (DefaultKeep if 0); a node
	// cut off from the database for longer restarts from the newest entry.
	Keep   time.Duration
	Logger *slog.Logger
	// Registerer receives iothub_changes_from_log_total; nil registers nothing.
	Registerer prometheus.Registerer
}

// Bus is an iothub.Bus over another (the fast path) and a change log (the
// truth). It is safe for concurrent use.
type Bus struct {
	inner iothub.Bus
	log   iothub.ChangeLog
	o     Options
	l     *slog.Logger
	unsub func()

	mu   sync.Mutex
	mark int64              // every entry up to mark was delivered or predates the start
	seen map[int64]struct{} // entries above mark already heard on the bus

	local   *inmem.Bus         // this node's subscribers
	fromLog prometheus.Counter // entries delivered from the log, missed by the bus

	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	retries sync.WaitGroup // log writes retried in the background
}

var _ iothub.Bus = (*Bus)(nil)

// New starts a Bus whose watermark is the log's newest entry: what was
// logged before, the node's state read at start already holds.
func New(inner iothub.Bus, log iothub.ChangeLog, o Options) (*Bus, error) {
	if o.Every <= 0 {
		o.Every = DefaultEvery
	}
	if o.Keep <= 0 {
		o.Keep = DefaultKeep
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mark, err := log.LastChange(ctx)
	if err != nil {
		return nil, fmt.Errorf("changes: read the watermark: %w", err)
	}
	b := &Bus{inner: inner, log: log, o: o, l: o.Logger, mark: mark, seen: map[int64]struct{}{},
		local: inmem.NewBus(), kick: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	b.fromLog = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "iothub_changes_from_log_total",
		Help: "Events this node applied from the change log because the bus did not bring them.",
	})
	if o.Registerer != nil {
		if err := o.Registerer.Register(b.fromLog); err != nil {
			return nil, err
		}
	}
	b.unsub = inner.Subscribe(b.heard)
	go b.run()
	return b, nil
}

// Publish logs e, then sends it on the fast path (which delivers it to
// this node's subscribers). The log write does not end with ctx (a
// client hanging up after its change must not keep the change from the
// other nodes); when it fails, it is retried in the background until it
// succeeds or the Bus closes, and Publish reports the first failure.
func (b *Bus) Publish(ctx context.Context, e iothub.Event) error {
	if e.Kind == "" {
		return iothub.Errorf(iothub.EINVALID, "event needs a kind")
	}
	if !e.Kind.Logged() {
		return b.inner.Publish(ctx, e)
	}
	at := time.Now()
	id, logErr := b.append(context.WithoutCancel(ctx), e, at)
	if logErr != nil {
		logErr = fmt.Errorf("changes: log %s (retrying in the background): %w", e.Kind, logErr)
		b.retries.Add(1)
		go b.retryAppend(e, at)
	}
	e.Change = id
	return errors.Join(logErr, b.inner.Publish(ctx, e))
}

func (b *Bus) append(ctx context.Context, e iothub.Event, at time.Time) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, appendTimeout)
	defer cancel()
	return b.log.AppendChange(ctx, e, at)
}

// retryAppend logs e once the store takes it again.
func (b *Bus) retryAppend(e iothub.Event, at time.Time) {
	defer b.retries.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-b.stop:
			b.l.Error("changes: stopped before the change log took an event; nodes that missed it on the bus never apply it",
				"kind", e.Kind, "productKey", e.ProductKey, "deviceKey", e.DeviceKey, "serial", e.Serial)
			return
		case <-tick.C:
		}
		if _, err := b.append(context.Background(), e, at); err == nil {
			b.l.Info("changes: logged an event after a retry", "kind", e.Kind)
			return
		}
	}
}

// Subscribe registers fn for every event, heard on the bus or read from
// the log, and returns a function that removes it. fn must not block.
func (b *Bus) Subscribe(fn func(iothub.Event)) func() { return b.local.Subscribe(fn) }

// Reconcile asks for a read of the log now, without waiting for it. The
// hub calls it when the bus reconnects.
func (b *Bus) Reconcile() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// Close stops the reads. It does not close the bus underneath.
func (b *Bus) Close() {
	b.once.Do(func() {
		b.unsub()
		close(b.stop)
		<-b.done
		b.retries.Wait()
	})
}

// heard delivers an event from the fast path unless the log read
// delivered it already.
func (b *Bus) heard(e iothub.Event) {
	if e.Change > 0 {
		b.mu.Lock()
		_, dup := b.seen[e.Change]
		dup = dup || e.Change <= b.mark
		if !dup {
			b.seen[e.Change] = struct{}{}
		}
		b.mu.Unlock()
		if dup {
			return
		}
	}
	b.deliver(e)
}

func (b *Bus) deliver(e iothub.Event) { b.local.Publish(context.Background(), e) }

func (b *Bus) run() {
	defer close(b.done)
	tick := time.NewTicker(b.o.Every)
	defer tick.Stop()
	var failing bool
	lastPrune := time.Now()
	for {
		select {
		case <-b.stop:
			return
		case <-tick.C:
		case <-b.kick:
		}
		err := b.reconcile()
		switch {
		case err != nil && !failing:
			b.l.Warn("changes: cannot read the change log; changes made on other nodes wait for the bus or the next read", "error", err)
		case err == nil && failing:
			b.l.Info("changes: reading the change log again")
		}
		failing = err != nil
		if now := time.Now(); err == nil && now.Sub(lastPrune) >= time.Minute {
			lastPrune = now
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := b.log.PruneChanges(ctx, now.Add(-b.o.Keep)); err != nil {
				b.l.Warn("changes: pruning the change log", "error", err)
			}
			cancel()
		}
	}
}

// reconcile delivers the logged entries above the watermark that the bus
// did not bring, and moves the watermark past them.
func (b *Bus) reconcile() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		b.mu.Lock()
		mark := b.mark
		b.mu.Unlock()
		list, err := b.log.ChangesAfter(ctx, mark, readBatch)
		if err != nil {
			return err
		}
		for _, ch := range list {
			b.mu.Lock()
			_, dup := b.seen[ch.ID]
			delete(b.seen, ch.ID)
			b.mark = ch.ID
			b.mu.Unlock()
			if !dup && ch.Event.Kind != "" {
				b.fromLog.Inc()
				b.deliver(ch.Event)
			}
		}
		if len(list) < readBatch {
			b.mu.Lock()
			for id := range b.seen { // heard on the bus, then pruned from the log unread
				if id <= b.mark {
					delete(b.seen, id)
				}
			}
			b.mu.Unlock()
			return nil
		}
	}
}
