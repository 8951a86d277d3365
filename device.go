package iothub

import (
	"context"
	"encoding/json"
	"time"
	"unicode/utf8"
)

// AuthMode is how a product's devices prove who they are.
type AuthMode string

// Authentication modes of a product.
const (
	// AuthSecret: secret-based one-way authentication (securemode 2 over TCP or TLS).
	AuthSecret AuthMode = "secret"
	// AuthCertificate: mutual TLS with a certificate bound to the device, then securemode 2.
	AuthCertificate AuthMode = "certificate"
)

// Valid reports whether m is a known mode.
func (m AuthMode) Valid() bool { return m == AuthSecret || m == AuthCertificate }

// Product is a device model: its devices share the ProductKey and the
// product's authentication rules.
type Product struct {
	OrgID             string   `json:"orgId"`
	ProductKey        string   `json:"productKey"`
	ProductSecret     string   `json:"productSecret,omitempty"` // clear only in memory; sealed at rest
	Name              string   `json:"name"`
	AuthMode          AuthMode `json:"authMode"`
	DynamicActivation bool     `json:"dynamicActivation"`
	AutoRegister      bool     `json:"autoRegister"`
	// NodeType is what the product's devices are; fixed at creation.
	NodeType NodeType `json:"nodeType"`
	// AllowGatewayRegistration lets gateways of the product's org create
	// its devices (thing.device.register).
	AllowGatewayRegistration bool `json:"allowGatewayRegistration"`
	// SignMethods lists the login sign methods the product's devices may
	// use, lower case (empty: every method the hub knows).
	SignMethods []string `json:"signMethods,omitempty"`
	// DeviceLimit caps the product's devices, however they are created
	// (0: DefaultDeviceLimit).
	DeviceLimit int `json:"deviceLimit"`
	// OfflineTimeoutSec marks an online device offline after this long without
	// data (0: 1.5 × the session's keepalive).
	OfflineTimeoutSec int `json:"offlineTimeoutSec"`
	// MaxCertDays caps the validity of device certificates (0: DefaultMaxCertDays).
	MaxCertDays int       `json:"maxCertDays"`
	CreatedAt   time.Time `json:"createdAt"`
}

// Defaults applied when a product leaves a limit at zero.
const (
	DefaultDeviceLimit = 100000
	DefaultMaxCertDays = 365
)

// DeviceState is the lifecycle state of a device.
type DeviceState string

// Device states. A device starts inactive, goes online at its first login,
// offline on disconnect or silence; disabled refuses logins until enabled.
const (
	StateInactive DeviceState = "inactive"
	StateOnline   DeviceState = "online"
	StateOffline  DeviceState = "offline"
	StateDisabled DeviceState = "disabled"
)

// Valid reports whether s is a known state.
func (s DeviceState) Valid() bool {
	return s == StateInactive || s == StateOnline || s == StateOffline || s == StateDisabled
}

// Device is one registered thing.
type Device struct {
	OrgID        string      `json:"orgId"`
	ProductKey   string      `json:"productKey"`
	DeviceKey    string      `json:"deviceKey"`
	DeviceSecret string      `json:"deviceSecret,omitempty"` // clear only in memory; sealed at rest
	AssetID      string      `json:"assetId"`
	Name         string      `json:"name,omitempty"`
	State        DeviceState `json:"state"`
	// SecretVersion grows on every reset; sessions logged in with an older one are closed.
	SecretVersion int        `json:"-"`
	LastSeenAt    *time.Time `json:"lastSeenAt"`
	ActivatedAt   *time.Time `json:"activatedAt"`
	CreatedAt     time.Time  `json:"createdAt"`
}

// MaxKeyLen caps ProductKey and DeviceKey length.
const MaxKeyLen = 64

// ValidateKey checks a ProductKey or DeviceKey. Keys appear in MQTT topics
// and in the login username, so '/', '+', '#', '&', '|', whitespace and
// control characters are refused, and the length is capped.
func ValidateKey(what, k string) error {
	if k == "" {
		return Errorf(EINVALID, "%s must not be empty", what)
	}
	if len(k) > MaxKeyLen {
		return Errorf(EINVALID, "%s is longer than %d bytes", what, MaxKeyLen)
	}
	if !utf8.ValidString(k) {
		return Errorf(EINVALID, "%s is not valid UTF-8", what)
	}
	for _, r := range k {
		switch {
		case r <= 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f):
			return Errorf(EINVALID, "%s must not contain spaces or control characters", what)
		case r == '/' || r == '+' || r == '#' || r == '&' || r == '|' || r == '%':
			return Errorf(EINVALID, "%s must not contain %q", what, r)
		}
	}
	return nil
}

// DeviceFilter selects devices in a listing. Cursor is the last DeviceKey
// of the previous page.
type DeviceFilter struct {
	State  DeviceState
	Limit  int
	Cursor string
}

// ProductStore persists products; secrets are sealed by the store.
type ProductStore interface {
	CreateProduct(ctx context.Context, p *Product) error
	// Product returns the product with its secret in clear, or ENOTFOUND.
	Product(ctx context.Context, productKey string) (*Product, error)
	// Products lists an org's products ("" lists all).
	Products(ctx context.Context, orgID string) ([]*Product, error)
	UpdateProduct(ctx context.Context, p *Product) error
	// DeleteProduct fails with ECONFLICT while the product has devices.
	DeleteProduct(ctx context.Context, productKey string) error
}

// DeviceStore persists devices; secrets are sealed by the store.
type DeviceStore interface {
	// CreateDevice fails with ECONFLICT if the key exists in that product.
	CreateDevice(ctx context.Context, d *Device) error
	// Device returns the device with its secret in clear, or ENOTFOUND.
	Device(ctx context.Context, productKey, deviceKey string) (*Device, error)
	Devices(ctx context.Context, productKey string, f DeviceFilter) ([]*Device, error)
	CountDevices(ctx context.Context, productKey string) (int, error)
	// SetDeviceState records a state change; activatedAt is set the first
	// time the state becomes online. Online and offline never replace
	// disabled (ECONFLICT), so a login racing a disable cannot undo it.
	SetDeviceState(ctx context.Context, productKey, deviceKey string, s DeviceState, at time.Time) error
	// EnableDevice moves a disabled device to offline, or to inactive if it
	// never logged in, and returns the new state; ECONFLICT if not disabled.
	EnableDevice(ctx context.Context, productKey, deviceKey string) (DeviceState, error)
	// ResetDevice replaces the secret, bumps SecretVersion and returns the device, now inactive.
	ResetDevice(ctx context.Context, productKey, deviceKey, newSecret string) (*Device, error)
	// TouchDevices writes lastSeenAt for many devices in one transaction.
	TouchDevices(ctx context.Context, seen map[DeviceID]time.Time) error
	// ApplyDeviceStates records login and logout transitions in one
	// transaction, in order, and returns one result per change. Online
	// follows SetDeviceState (ECONFLICT on a disabled device, ENOTFOUND if
	// it is gone) but is a no-op (nil) while another node holds the device
	// from a later login (StateChange.At), so a login's write arriving late
	// does not take the device back; offline replaces only online owned by
	// the same node and is otherwise a no-op (nil), so a late logout never
	// undoes a disable, a reset or a login elsewhere. The second
	// result fails the whole batch (nothing written).
	ApplyDeviceStates(ctx context.Context, changes []StateChange) ([]error, error)
	DeleteDevice(ctx context.Context, productKey, deviceKey string) error
}

// DeviceID names a device across products.
type DeviceID struct{ ProductKey, DeviceKey string }

// StateChange is one login (StateOnline) or logout (StateOffline) of a
// device at time At on hub node Node, for ApplyDeviceStates. Going online
// records Node as the session's owner; going offline applies only while
// Node still owns it, so a session ending on one node does not undo a
// newer login on another.
type StateChange struct {
	Device DeviceID
	State  DeviceState
	At     time.Time
	Node   string
}

// Sample is one upstream measurepoint post as stored.
type Sample struct {
	ProductKey    string          `json:"productKey"`
	DeviceKey     string          `json:"deviceKey"`
	Time          time.Time       `json:"time"`
	Measurepoints json.RawMessage `json:"measurepoints"`
}

// Point is the latest value of one measurepoint.
type Point struct {
	Name  string          `json:"name"`
	Value json.RawMessage `json:"value"`
	Time  time.Time       `json:"time"`
}

// TelemetryStore keeps the latest value of each measurepoint and a bounded
// history of posts per device.
type TelemetryStore interface {
	// AppendSamples stores posts, updates the latest points and trims history.
	AppendSamples(ctx context.Context, samples []Sample) error
	LatestPoints(ctx context.Context, productKey, deviceKey string) ([]Point, error)
	// RecentSamples returns up to limit of the newest posts, newest first,
	// no more than MaxTelemetryReadBytes of them.
	RecentSamples(ctx context.Context, productKey, deviceKey string, limit int) ([]Sample, error)
	// SetAttributes merges attributes (ETOOLARGE past MaxAttributesPerDevice
	// or MaxAttributeBytes, nothing written); DeleteAttributes removes names.
	SetAttributes(ctx context.Context, productKey, deviceKey string, attrs map[string]json.RawMessage) error
	Attributes(ctx context.Context, productKey, deviceKey string) (map[string]json.RawMessage, error)
	DeleteAttributes(ctx context.Context, productKey, deviceKey string, names []string) error
	// AppendEvents stores event posts and trims each device's history.
	AppendEvents(ctx context.Context, events []DeviceEvent) error
	RecentEvents(ctx context.Context, productKey, deviceKey string, limit int) ([]DeviceEvent, error)
	// SetTags merges tags; DeleteTags removes names.
	SetTags(ctx context.Context, productKey, deviceKey string, tags map[string]string) error
	Tags(ctx context.Context, productKey, deviceKey string) (map[string]string, error)
	DeleteTags(ctx context.Context, productKey, deviceKey string, names []string) error
}

// AuditEvent is one security-relevant fact: a login, a refusal, an
// activation, a revocation. It never carries a secret.
type AuditEvent struct {
	ID         int64     `json:"id"`
	Time       time.Time `json:"time"`
	OrgID      string    `json:"orgId,omitempty"`
	Kind       string    `json:"kind"` // e.g. login.ok, login.refused, activation.ok, cert.revoked
	ProductKey string    `json:"productKey,omitempty"`
	DeviceKey  string    `json:"deviceKey,omitempty"`
	Remote     string    `json:"remote,omitempty"`
	Reason     string    `json:"reason,omitempty"`
}

// AuditLog records security events.
type AuditLog interface {
	Audit(ctx context.Context, e AuditEvent) error
	// AuditBatch records events in one transaction, in order; an invalid
	// event fails the batch and nothing is written.
	AuditBatch(ctx context.Context, events []AuditEvent) error
	AuditEvents(ctx context.Context, orgID string, limit int) ([]AuditEvent, error)
	// SearchAudit returns the events f selects: newest first, or oldest
	// first when f.After is set.
	SearchAudit(ctx context.Context, f AuditFilter) ([]AuditEvent, error)
}

// AuditFilter selects audit events; zero fields select everything.
type AuditFilter struct {
	OrgID string
	// Kind is an event kind (login.refused), or a prefix of kinds ending
	// in a dot (login.).
	Kind       string
	ProductKey string
	DeviceKey  string
	// Since and Until bound the event time: Since ≤ time < Until.
	Since, Until time.Time
	// Before pages a newest-first listing: only ids below it.
	Before int64
	// After follows the log: only ids above it, oldest first.
	After int64
	// Limit defaults to a page and is capped by the store.
	Limit int
}

// TopologyStore keeps which sub-devices each gateway connects.
type TopologyStore interface {
	// AddSubDevices puts devices in a gateway's topology; a device in
	// another gateway's topology is ECONFLICT.
	AddSubDevices(ctx context.Context, gateway DeviceID, subs []DeviceID) error
	SubDevices(ctx context.Context, gateway DeviceID) ([]DeviceID, error)
	// GatewayOf returns the gateway whose topology holds sub, or ENOTFOUND.
	GatewayOf(ctx context.Context, sub DeviceID) (DeviceID, error)
	RemoveSubDevices(ctx context.Context, gateway DeviceID, subs []DeviceID) error
}
