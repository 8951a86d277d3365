package iothub

import (
	"context"
	"encoding/json"
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
)

// Event is a notice on the Bus.
type Event struct {
	Kind       EventKind `json:"kind"`
	ProductKey string    `json:"productKey,omitempty"`
	DeviceKey  string    `json:"deviceKey,omitempty"`
	Serial     string    `json:"serial,omitempty"`
	Reason     string    `json:"reason,omitempty"`
}

// Bus carries events between the parts of one hub and, with NATS, between
// hub nodes. Subscribers must not block.
type Bus interface {
	Publish(ctx context.Context, e Event) error
	Subscribe(fn func(Event)) (unsubscribe func())
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
