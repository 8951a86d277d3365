package nats

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	nats "github.com/nats-io/nats.go"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/nats/natstest"
)

var ctx = context.Background()

// recorder collects the events a subscriber receives.
type recorder struct {
	mu  sync.Mutex
	got []iothub.Event
	ch  chan struct{}
}

func newRecorder() *recorder { return &recorder{ch: make(chan struct{}, 1000)} }

func (r *recorder) fn(e iothub.Event) {
	r.mu.Lock()
	r.got = append(r.got, e)
	r.mu.Unlock()
	r.ch <- struct{}{}
}

// wait waits for n events in total, failing after 5 s.
func (r *recorder) wait(t *testing.T, n int) []iothub.Event {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		r.mu.Lock()
		if len(r.got) >= n {
			out := append([]iothub.Event(nil), r.got...)
			r.mu.Unlock()
			return out
		}
		r.mu.Unlock()
		select {
		case <-r.ch:
		case <-deadline:
			t.Fatalf("waited for %d events, got %d", n, len(r.got))
		}
	}
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

func open(t *testing.T, url string) *Bus {
	t.Helper()
	b, err := Open(url, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// Each node hears every event exactly once: its own in Publish, the other
// node's through NATS, in the order they were published.
func TestEventsReachEveryNodeOnce(t *testing.T) {
	url := natstest.URL(t)
	a, b := open(t, url), open(t, url)
	ra, rb := newRecorder(), newRecorder()
	a.Subscribe(ra.fn)
	b.Subscribe(rb.fn)

	e1 := iothub.Event{Kind: iothub.EventCertRevoked, Serial: "0a1b", Reason: "keyCompromise"}
	if err := a.Publish(ctx, e1); err != nil {
		t.Fatal(err)
	}
	// Local delivery is synchronous, as with the in-process bus.
	if ra.count() != 1 {
		t.Fatalf("publisher's own subscriber got %d events right after Publish, want 1", ra.count())
	}
	if got := rb.wait(t, 1); got[0] != e1 {
		t.Fatalf("node b got %+v, want %+v", got[0], e1)
	}
	const n = 50
	for i := range n {
		if err := b.Publish(ctx, iothub.Event{Kind: iothub.EventDeviceChanged, ProductKey: "pk", DeviceKey: string(rune('a' + i%26))}); err != nil {
			t.Fatal(err)
		}
	}
	got := ra.wait(t, n+1)
	for i, e := range got[1:] {
		if want := string(rune('a' + i%26)); e.Kind != iothub.EventDeviceChanged || e.DeviceKey != want {
			t.Fatalf("event %d on node a: %+v, want device %s in order", i, e, want)
		}
	}
	rb.wait(t, n+1)
	// A marker from b, then no more than n+2 on either side: nothing echoed.
	if err := b.Publish(ctx, iothub.Event{Kind: iothub.EventProductChanged, ProductKey: "marker"}); err != nil {
		t.Fatal(err)
	}
	ra.wait(t, n+2)
	if err := a.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if ra.count() != n+2 || rb.count() != n+2 {
		t.Fatalf("a heard %d, b heard %d, want %d each (an echo would add more)", ra.count(), rb.count(), n+2)
	}
}

func TestUnsubscribe(t *testing.T) {
	url := natstest.URL(t)
	a, b := open(t, url), open(t, url)
	r := newRecorder()
	unsub := b.Subscribe(r.fn)
	a.Publish(ctx, iothub.Event{Kind: iothub.EventCertRevoked, Serial: "01"})
	r.wait(t, 1)
	unsub()
	keep := newRecorder()
	b.Subscribe(keep.fn)
	a.Publish(ctx, iothub.Event{Kind: iothub.EventCertRevoked, Serial: "02"})
	keep.wait(t, 1)
	if r.count() != 1 {
		t.Fatalf("unsubscribed function got %d events", r.count())
	}
}

// Garbage on the subject (another publisher, a bug) is dropped; the
// events after it still arrive.
func TestMalformedMessagesDropped(t *testing.T) {
	url := natstest.URL(t)
	b := open(t, url)
	r := newRecorder()
	b.Subscribe(r.fn)
	raw, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	for _, m := range []string{`not json`, `{}`, `{"kind":""}`, `{"kind":"cert.revoked","serial":` + strings.Repeat("1", MaxEventSize) + `}`} {
		raw.Publish(DefaultSubject, []byte(m))
	}
	raw.Publish(DefaultSubject, []byte(`{"kind":"cert.revoked","serial":"ff"}`))
	raw.Flush()
	got := r.wait(t, 1)
	if len(got) != 1 || got[0].Serial != "ff" {
		t.Fatalf("got %+v, want only the well-formed event", got)
	}
}

func TestPublishRefusesBadEvents(t *testing.T) {
	url := natstest.URL(t)
	a, b := open(t, url), open(t, url)
	r := newRecorder()
	b.Subscribe(r.fn)
	if err := a.Publish(ctx, iothub.Event{}); iothub.ErrorCode(err) != iothub.EINVALID {
		t.Fatalf("event without kind: %v", err)
	}
	big := iothub.Event{Kind: iothub.EventDeviceChanged, Reason: strings.Repeat("x", MaxEventSize)}
	if err := a.Publish(ctx, big); iothub.ErrorCode(err) != iothub.ETOOLARGE {
		t.Fatalf("oversized event: %v", err)
	}
	a.Publish(ctx, iothub.Event{Kind: iothub.EventDeviceChanged, DeviceKey: "ok"})
	if got := r.wait(t, 1); len(got) != 1 || got[0].DeviceKey != "ok" {
		t.Fatalf("refused events travelled: %+v", got)
	}
}

// Hubs on different subjects share a server without hearing each other.
func TestSubjectsSeparateHubs(t *testing.T) {
	url := natstest.URL(t)
	a := open(t, url)
	b, err := Open(url, Options{Subject: "other.events"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a2 := open(t, url)
	rb, ra2 := newRecorder(), newRecorder()
	b.Subscribe(rb.fn)
	a2.Subscribe(ra2.fn)
	a.Publish(ctx, iothub.Event{Kind: iothub.EventCertRevoked, Serial: "01"})
	ra2.wait(t, 1)
	b.nc.Flush()
	if rb.count() != 0 {
		t.Fatal("a hub on another subject heard the event")
	}
}

func TestOpenFails(t *testing.T) {
	if _, err := Open("", Options{}); err == nil {
		t.Fatal("Open with an empty url succeeded")
	}
	if _, err := Open("nats://127.0.0.1:1", Options{}); err == nil {
		t.Fatal("Open with nothing listening succeeded")
	}
}
