package inmem

import (
	"context"
	"testing"

	"github.com/iothub/iothub"
)

func TestBusDeliversUntilUnsubscribed(t *testing.T) {
	b := NewBus()
	var got []iothub.Event
	unsub := b.Subscribe(func(e iothub.Event) { got = append(got, e) })
	b.Publish(context.Background(), iothub.Event{Kind: iothub.EventCertRevoked, Serial: "01"})
	unsub()
	b.Publish(context.Background(), iothub.Event{Kind: iothub.EventCertRevoked, Serial: "02"})
	if len(got) != 1 || got[0].Serial != "01" {
		t.Fatalf("got %+v, want only serial 01", got)
	}
}
