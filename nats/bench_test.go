package nats

import (
	"io"
	"log/slog"
	"testing"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/nats/natstest"
)

func benchBuses(b *testing.B) (*Bus, *Bus) {
	url := natstest.URL(b)
	quiet := Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	a, err := Open(url, quiet)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { a.Close() })
	c, err := Open(url, quiet)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return a, c
}

// BenchmarkEventAcrossNodes publishes a revocation on one node and waits
// until the other node's subscriber has it: the bus's share of the
// revocation-to-disconnect time in a cluster (through nats-server on
// 127.0.0.1).
func BenchmarkEventAcrossNodes(b *testing.B) {
	a, c := benchBuses(b)
	got := make(chan struct{}, 1)
	c.Subscribe(func(iothub.Event) { got <- struct{}{} })
	e := iothub.Event{Kind: iothub.EventCertRevoked, Serial: "3f9a0c5d1e2b47a8", Reason: "keyCompromise"}
	b.ReportAllocs()
	for b.Loop() {
		if err := a.Publish(ctx, e); err != nil {
			b.Fatal(err)
		}
		<-got
	}
}

// BenchmarkPublish is the publisher's cost alone (encode, local delivery,
// hand-off to the connection's buffer), with a remote node subscribed.
func BenchmarkPublish(b *testing.B) {
	a, c := benchBuses(b)
	c.Subscribe(func(iothub.Event) {})
	e := iothub.Event{Kind: iothub.EventDeviceChanged, ProductKey: "pk-0123456789", DeviceKey: "device-0001"}
	b.ReportAllocs()
	for b.Loop() {
		if err := a.Publish(ctx, e); err != nil {
			b.Fatal(err)
		}
	}
}
