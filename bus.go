package iothub

import (
	"context"
	"encoding/json"
	"time"
)

// EventKind names a change that live sessions must feel.
type EventKind string

// Events published on the Bus.
const (
	// EventDeviceChanged: a device was disabled, deleted or had its secret
	// reset; its live sessions must be re-checked and closed.
	EventDeviceChanged EventKind = "device.changed"
	// EventCertRevoked: the certificate with Serial was revoked.
	EventCertRevoked EventKind = "cert.revoked"
	// EventProductChanged: a product's secret, settings or external CAs changed.
	EventProductChanged EventKind = "product.changed"
	// EventCertRenewed: the certificate with Serial was issued by a renewal;
	// what it supersedes is stored, and every node loads it.
	EventCertRenewed EventKind = "cert.renewed"
	// EventAuthorityChanged: the hub's CAs were rotated or one was retired;
	// every node reloads them and closes the sessions they no longer admit.
	EventAuthorityChanged EventKind = "authority.changed"
	// EventSessionOpened: the device logged in on node Node at At; other
	// nodes close their older session of it (one session per device).
	EventSessionOpened EventKind = "session.opened"
	// EventDataAppended: device data was appended to the DataLog; its
	// readers on every node look for it.
	EventDataAppended EventKind = "data.appended"
	// EventAPIKeyRevoked: the API key KeyID was revoked; sessions logged
	// in with it end.
	EventAPIKeyRevoked EventKind = "apikey.revoked"
)

// Logged reports whether events of kind k go into the ChangeLog. Session
// notices do not: the device rows name each session's node already; nor
// do data wake-ups: the DataLog is their record, and its readers poll it.
func (k EventKind) Logged() bool { return k != EventSessionOpened && k != EventDataAppended }

// Event is a notice on the Bus.
type Event struct {
	Kind       EventKind `json:"kind"`
	ProductKey string    `json:"productKey,omitempty"`
	DeviceKey  string    `json:"deviceKey,omitempty"`
	Serial     string    `json:"serial,omitempty"`
	KeyID      string    `json:"keyId,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	// Change is the event's id in the ChangeLog (0 when it was not logged).
	Change int64 `json:"change,omitempty"`
	// Node and At: where and when a session opened (EventSessionOpened).
	Node string    `json:"node,omitempty"`
	At   time.Time `json:"at,omitzero"`
}

// Bus carries events between the parts of one hub and, with NATS, between
// hub nodes. Subscribers must not block.
type Bus interface {
	Publish(ctx context.Context, e Event) error
	Subscribe(fn func(Event)) (unsubscribe func())
}

// Change is one entry of the ChangeLog.
type Change struct {
	ID    int64
	Time  time.Time
	Event Event
}

// ChangeLog is the durable record of the Bus's events, kept in the store
// every node shares. The bus is the fast path; a node that missed events
// (bus down, node cut off) reads them here from its watermark. IDs grow by
// one per entry and become visible in ID order.
type ChangeLog interface {
	// AppendChange records e at time at and returns its ID.
	AppendChange(ctx context.Context, e Event, at time.Time) (int64, error)
	// ChangesAfter returns up to limit entries with an ID above after, oldest first.
	ChangesAfter(ctx context.Context, after int64, limit int) ([]Change, error)
	// LastChange returns the newest ID (0 for an empty log).
	LastChange(ctx context.Context) (int64, error)
	// PruneChanges deletes entries older than before, always keeping the newest.
	PruneChanges(ctx context.Context, before time.Time) error
}

// Reply is a device's answer to a downstream request.
type Reply struct {
	ID      string          `json:"id"`
	Code    int             `json:"code"`
	Data    json.RawMessage `json:"data,omitempty"`
	Message string          `json:"message"`
}

// DeviceGateway sends downstream requests to connected devices.
type DeviceGateway interface {
	// Call publishes a request with a fresh id on /sys/{pk}/{dk}/{topic} to
	// the device's live session (whether or not it subscribed) and waits for
	// the reply on {topic}_reply. It fails with EOFFLINE when the device has
	// no session and ETIMEOUT when ctx ends first.
	Call(ctx context.Context, productKey, deviceKey, topic, method string, params json.RawMessage) (*Reply, error)
	// Online reports whether the device has a live session on this node.
	Online(productKey, deviceKey string) bool
}
