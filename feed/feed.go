// Package feed is the one place committed device data leaves the hub: the
// writers record what they committed in the change log (a table of the
// store, so it survives restarts and is shared by the nodes of a cluster),
// and readers follow the log by id: the live stream, application sessions
// over MQTT and forwarding rules. A reader sees only committed changes, in
// commit order, so in order per device.
package feed

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/iothub/iothub"
)

// Defaults of Config.
const (
	DefaultRetention = 24 * time.Hour
	// pollInterval is how often a follower looks at the log when no wake-up
	// came: the fallback for a missed bus event.
	pollInterval = time.Second
)

// Config wires a Feed.
type Config struct {
	Store iothub.DataLog
	// Bus, if set, tells the other nodes of each append (and this node of
	// theirs).
	Bus    iothub.Bus
	Logger *slog.Logger
	// Retention is how long changes are kept for resuming readers
	// (DefaultRetention if zero).
	Retention time.Duration
	Now       func() time.Time
}

// Feed records and follows the change log.
type Feed struct {
	cfg   Config
	mu    sync.Mutex
	woken chan struct{} // closed, and replaced, when changes may have been appended
	unsub func()
	stop  chan struct{}
	done  chan struct{}
}

// New starts a Feed and its retention trimmer.
func New(cfg Config) *Feed {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	f := &Feed{cfg: cfg, woken: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	if cfg.Bus != nil {
		f.unsub = cfg.Bus.Subscribe(func(e iothub.Event) {
			if e.Kind == iothub.EventDataAppended {
				f.wake()
			}
		})
	}
	go f.trim()
	return f
}

// Close stops the trimmer and the bus subscription.
func (f *Feed) Close() {
	if f.unsub != nil {
		f.unsub()
	}
	close(f.stop)
	<-f.done
}

// Done is closed when the feed closes: followers should end.
func (f *Feed) Done() <-chan struct{} { return f.stop }

// Retention is how long changes are kept.
func (f *Feed) Retention() time.Duration { return f.cfg.Retention }

// Record appends committed changes to the log and wakes the followers on
// every node. Writers call it after their own commit and before they
// acknowledge, so an acknowledged post is in the log.
func (f *Feed) Record(ctx context.Context, changes []iothub.DataChange) error {
	if len(changes) == 0 {
		return nil
	}
	if err := f.cfg.Store.AppendData(ctx, changes); err != nil {
		return err
	}
	f.wake()
	if f.cfg.Bus != nil {
		if err := f.cfg.Bus.Publish(ctx, iothub.Event{Kind: iothub.EventDataAppended}); err != nil {
			f.cfg.Logger.Warn("feed: other nodes not told of new changes; they poll", "error", err)
		}
	}
	return nil
}

func (f *Feed) wake() {
	f.mu.Lock()
	close(f.woken)
	f.woken = make(chan struct{})
	f.mu.Unlock()
}

func (f *Feed) wakeup() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.woken
}

// ErrExpired is returned by Follow for a cursor older than what the log keeps.
var ErrExpired = iothub.Errorf(iothub.EGONE, "cursor is older than the change log keeps; start again without one")

// Check fails with ErrExpired if changes after cursor after were trimmed.
func (f *Feed) Check(ctx context.Context, after int64) error {
	if after <= 0 {
		return nil
	}
	oldest, newest, err := f.cfg.Store.DataBounds(ctx)
	if err != nil {
		return err
	}
	if after > newest {
		return iothub.Errorf(iothub.EINVALID, "cursor %d is ahead of the change log (%d)", after, newest)
	}
	if oldest == 0 && after < newest || oldest > after+1 {
		return ErrExpired
	}
	return nil
}

// Newest is the id of the newest change: the cursor of a reader that wants
// only what comes next.
func (f *Feed) Newest(ctx context.Context) (int64, error) {
	_, newest, err := f.cfg.Store.DataBounds(ctx)
	return newest, err
}

// Follow calls fn with the changes that match filter, after filter.After,
// in order and in batches, until ctx ends or fn fails; fn's error is
// returned. A store error is retried.
func (f *Feed) Follow(ctx context.Context, filter iothub.DataFilter, fn func([]iothub.DataChange) error) error {
	t := time.NewTimer(pollInterval)
	defer t.Stop()
	for {
		woken := f.wakeup() // before reading, so an append during the read is not missed
		changes, err := f.cfg.Store.DataAfter(ctx, filter)
		if err != nil && ctx.Err() == nil {
			f.cfg.Logger.Warn("feed: reading the change log", "error", err)
		}
		if len(changes) > 0 {
			if err := fn(changes); err != nil {
				return err
			}
			filter.After = changes[len(changes)-1].ID
			continue
		}
		t.Reset(pollInterval)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-woken:
		case <-t.C:
		}
	}
}

// trim deletes changes past the retention, every minute.
func (f *Feed) trim() {
	defer close(f.done)
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if err := f.cfg.Store.TrimData(ctx, f.cfg.Now().Add(-f.cfg.Retention)); err != nil {
				f.cfg.Logger.Warn("feed: trimming the change log", "error", err)
			}
			cancel()
		}
	}
}

// change builds a Change whose Data is head ({productKey, deviceKey,
// time}) followed by the kind's own fields.
func change(kind iothub.DataKind, pk, dk string, t time.Time, fields map[string]any) iothub.DataChange {
	body := map[string]any{"productKey": pk, "deviceKey": dk, "time": t.UTC()}
	for k, v := range fields {
		body[k] = v
	}
	data, err := json.Marshal(body)
	if err != nil { // the fields are JSON already; nothing here fails to encode
		panic("feed: encoding a change: " + err.Error())
	}
	return iothub.DataChange{Kind: kind, ProductKey: pk, DeviceKey: dk, Time: t, Data: data}
}

// Samples are the changes of committed measurepoint posts.
func Samples(samples []iothub.Sample) []iothub.DataChange {
	out := make([]iothub.DataChange, len(samples))
	for i, s := range samples {
		out[i] = change(iothub.DataMeasurepoints, s.ProductKey, s.DeviceKey, s.Time, map[string]any{"measurepoints": s.Measurepoints})
	}
	return out
}

// Events are the changes of committed event posts.
func Events(events []iothub.DeviceEvent) []iothub.DataChange {
	out := make([]iothub.DataChange, len(events))
	for i, e := range events {
		out[i] = change(iothub.DataEvents, e.ProductKey, e.DeviceKey, e.Time, map[string]any{"eventId": e.EventID, "events": e.Events})
	}
	return out
}

// Attributes is the change of a committed attribute update.
func Attributes(pk, dk string, t time.Time, attrs map[string]json.RawMessage) iothub.DataChange {
	return change(iothub.DataAttributes, pk, dk, t, map[string]any{"attributes": attrs})
}

// State is the change of a device's state.
func State(pk, dk string, t time.Time, state iothub.DeviceState) iothub.DataChange {
	return change(iothub.DataStates, pk, dk, t, map[string]any{"state": state})
}
