package iothub

import (
	"context"
	"strings"
	"time"
)

// NodeType is what a product's devices are.
type NodeType string

// Node types of a product.
const (
	// NodeDevice is a plain device (the default).
	NodeDevice NodeType = "device"
	// NodeGateway may register devices for others (thing.device.register).
	NodeGateway NodeType = "gateway"
)

// Valid reports whether t is a known node type.
func (t NodeType) Valid() bool { return t == NodeDevice || t == NodeGateway }

// AllowsSignMethod reports whether a login signed with method m is
// accepted for the product's devices.
func (p *Product) AllowsSignMethod(m string) bool {
	if len(p.SignMethods) == 0 {
		return true
	}
	for _, a := range p.SignMethods {
		if strings.EqualFold(a, m) {
			return true
		}
	}
	return false
}

// ErrDeviceLimit refuses a device creation past the product's DeviceLimit.
var ErrDeviceLimit = Errorf(ECONFLICT, "the product's device limit is reached")

// CreateDevice registers a new device of p. It is the one rule every
// device creation follows, whoever asks (the API, auto-registration at a
// securemode 3 login, a gateway's thing.device.register): the key is valid
// ("" generates one) and free (ECONFLICT), and the product is under its
// device limit (ErrDeviceLimit). Concurrent creations may overshoot the
// limit by the number of racing requests.
func CreateDevice(ctx context.Context, st DeviceStore, p *Product, deviceKey, name string, now time.Time) (*Device, error) {
	d, err := NewDevice(p, deviceKey, name, now)
	if err != nil {
		return nil, err
	}
	limit := p.DeviceLimit
	if limit <= 0 {
		limit = DefaultDeviceLimit
	}
	n, err := st.CountDevices(ctx, p.ProductKey)
	if err != nil {
		return nil, err
	}
	if n >= limit {
		return nil, ErrDeviceLimit
	}
	if err := st.CreateDevice(ctx, d); err != nil {
		return nil, err
	}
	return d, nil
}

// GatewayMayRegister is the rule of a gateway's thing.device.register: the
// asking device's product gw is a gateway, the target product is in the
// same org and accepts gateway registration, and the secret of a
// certificate-mode device is not sent over plain TCP. A product of another
// org is ENOTFOUND, the other refusals EFORBIDDEN; none depends on which
// device keys exist.
func GatewayMayRegister(gw, target *Product, overTLS bool) error {
	switch {
	case gw.NodeType != NodeGateway:
		return Errorf(EFORBIDDEN, "only a gateway may register devices")
	case target.OrgID != gw.OrgID:
		return Errorf(ENOTFOUND, "product %q not found", target.ProductKey)
	case !target.AllowGatewayRegistration:
		return Errorf(EFORBIDDEN, "product %q does not accept gateway registration", target.ProductKey)
	case target.AuthMode == AuthCertificate && !overTLS:
		return Errorf(EFORBIDDEN, "product %q is in certificate mode: register its devices over TLS", target.ProductKey)
	}
	return nil
}
