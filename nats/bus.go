// Package nats is the hub's bus between nodes: an iothub.Bus over NATS
// core (github.com/nats-io/nats.go). Every node publishes its events on one
// subject and hears the other nodes' events there.
//
// A node hears its own events once: Publish delivers them to the local
// subscribers in the caller's goroutine, as the in-process bus does, and
// the connection is opened with NoEcho so the server does not send them
// back. Events from other nodes are decoded and delivered, in the order
// they were published, on the subscription's own goroutine, never on the
// connection's reader.
//
// NATS core delivers at most once: a node cut off from the server misses
// the events published meanwhile (the connection reconnects on its own and
// calls Options.OnReconnect; the hub then catches up from its change log).
package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	nats "github.com/nats-io/nats.go"

	"github.com/iothub/iothub"
)

// DefaultSubject is the subject events travel on unless Options says otherwise.
const DefaultSubject = "iothub.events"

// MaxEventSize caps an encoded event; larger messages on the subject are dropped.
const MaxEventSize = 16 << 10

// Options tune a Bus; the zero value is usable.
type Options struct {
	// Subject carries the events (DefaultSubject if empty). Hubs that must
	// not hear each other use different subjects on one server.
	Subject string
	// Name identifies the connection in the server's monitoring (default "iothub").
	Name string
	// Logger receives connection changes and dropped messages (slog.Default if nil).
	Logger *slog.Logger
	// OnReconnect, if set, runs (on the connection's callback goroutine)
	// each time the connection is back: the events published meanwhile
	// were missed, and the caller catches up from its own record.
	OnReconnect func()
}

// Bus is an iothub.Bus over NATS. It is safe for concurrent use.
type Bus struct {
	nc      *nats.Conn
	sub     *nats.Subscription
	subject string
	log     *slog.Logger

	mu   sync.RWMutex
	next int
	subs map[int]func(iothub.Event)
}

var _ iothub.Bus = (*Bus)(nil)

// Open connects to the NATS server(s) at url (nats://host:port, tls://…,
// or a comma-separated list) and subscribes to the events of other nodes.
// The URL is never logged: it may carry credentials.
func Open(url string, o Options) (*Bus, error) {
	if url == "" {
		return nil, errors.New("nats: empty server url")
	}
	b := &Bus{subject: o.Subject, log: o.Logger, subs: map[int]func(iothub.Event){}}
	if b.subject == "" {
		b.subject = DefaultSubject
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	name := o.Name
	if name == "" {
		name = "iothub"
	}
	nc, err := nats.Connect(url,
		nats.Name(name),
		nats.NoEcho(),
		nats.Timeout(5*time.Second),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500*time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				b.log.Warn("nats: disconnected; events from other nodes are missed until reconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			b.log.Info("nats: reconnected", "server", nc.ConnectedServerId())
			if o.OnReconnect != nil {
				o.OnReconnect()
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			b.log.Error("nats: subscription error", "error", err)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("nats: connect: %w", err)
	}
	b.nc = nc
	b.sub, err = nc.Subscribe(b.subject, b.receive)
	if err == nil {
		// Events are small and rare; a backlog this deep means a stuck
		// subscriber, and the server's slow-consumer handling takes over.
		err = b.sub.SetPendingLimits(65536, 64<<20)
	}
	if err == nil {
		err = nc.FlushTimeout(5 * time.Second) // the subscription is live when Open returns
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("nats: subscribe %s: %w", b.subject, err)
	}
	return b, nil
}

// Publish delivers e to this node's subscribers, then sends it to the
// other nodes. An error means the other nodes may not hear of e.
func (b *Bus) Publish(_ context.Context, e iothub.Event) error {
	if e.Kind == "" {
		return iothub.Errorf(iothub.EINVALID, "event needs a kind")
	}
	data, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("nats: encode event: %w", err)
	}
	if len(data) > MaxEventSize {
		return iothub.Errorf(iothub.ETOOLARGE, "event of %d bytes is over %d", len(data), MaxEventSize)
	}
	b.deliver(e)
	if err := b.nc.Publish(b.subject, data); err != nil {
		return fmt.Errorf("nats: publish: %w", err)
	}
	return nil
}

// Subscribe registers fn for events from this node and the others and
// returns a function that removes it. fn must not block.
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

// Close sends what is still buffered, then closes the connection.
func (b *Bus) Close() error {
	err := b.nc.FlushTimeout(2 * time.Second)
	b.nc.Close()
	if err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		return fmt.Errorf("nats: close: %w", err)
	}
	return nil
}

// receive handles an event from another node.
func (b *Bus) receive(m *nats.Msg) {
	if len(m.Data) > MaxEventSize {
		b.log.Warn("nats: dropped an oversized event", "bytes", len(m.Data))
		return
	}
	var e iothub.Event
	if err := json.Unmarshal(m.Data, &e); err != nil || e.Kind == "" {
		b.log.Warn("nats: dropped a malformed event", "bytes", len(m.Data))
		return
	}
	b.deliver(e)
}

func (b *Bus) deliver(e iothub.Event) {
	b.mu.RLock()
	fns := make([]func(iothub.Event), 0, len(b.subs))
	for _, fn := range b.subs {
		fns = append(fns, fn)
	}
	b.mu.RUnlock()
	for _, fn := range fns {
		fn(e)
	}
}

// Ready reports whether the connection to NATS is up, for readiness checks.
func (b *Bus) Ready(context.Context) error {
	if s := b.nc.Status(); s != nats.CONNECTED {
		return fmt.Errorf("nats connection is %v", s)
	}
	return nil
}
