package manage

import (
	"context"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/feed"
)

// CreateDevice registers a device of p under deviceKey ("" generates one).
// The answer carries the DeviceSecret in clear, once.
func (s *Service) CreateDevice(ctx context.Context, a Actor, p *iothub.Product, deviceKey, name string) (*iothub.Device, error) {
	d, err := iothub.CreateDevice(ctx, s.cfg.Store, p, deviceKey, name, s.now())
	if err != nil {
		return nil, err
	}
	s.audit(ctx, a, iothub.AuditEvent{OrgID: d.OrgID, Kind: "device.created", ProductKey: d.ProductKey, DeviceKey: d.DeviceKey})
	return d, nil
}

// DeleteDevice removes d with its data. Its certificates are revoked first
// (cessationOfOperation), so a device re-created under the same keys — or
// in a product that re-uses the productKey — cannot log in with them, and
// its live sessions are closed on every node.
func (s *Service) DeleteDevice(ctx context.Context, a Actor, d *iothub.Device) error {
	if err := s.revokeAll(ctx, a, d, "device deleted"); err != nil {
		return err
	}
	if err := s.cfg.Store.DeleteDevice(ctx, d.ProductKey, d.DeviceKey); err != nil {
		return err
	}
	s.changed(ctx, a, d, "device.deleted", "deleted")
	return nil
}

// ResetDevice gives d a new DeviceSecret and makes it inactive; its
// certificates are revoked (cessationOfOperation: "revoke the key when the
// edge is reset") and its sessions closed. The answer carries the new
// secret in clear, once.
func (s *Service) ResetDevice(ctx context.Context, a Actor, d *iothub.Device) (*iothub.Device, error) {
	if err := s.revokeAll(ctx, a, d, "device reset"); err != nil {
		return nil, err
	}
	reset, err := s.cfg.Store.ResetDevice(ctx, d.ProductKey, d.DeviceKey, iothub.RandomString(iothub.SecretLen))
	if err != nil {
		return nil, err
	}
	s.changed(ctx, a, d, "device.reset", reset.State)
	return reset, nil
}

// DisableDevice refuses d's logins from now on and closes its sessions.
func (s *Service) DisableDevice(ctx context.Context, a Actor, d *iothub.Device) error {
	if err := s.cfg.Store.SetDeviceState(ctx, d.ProductKey, d.DeviceKey, iothub.StateDisabled, s.now()); err != nil {
		return err
	}
	d.State = iothub.StateDisabled
	s.changed(ctx, a, d, "device.disabled", d.State)
	return nil
}

// EnableDevice brings a disabled device back: offline, or inactive if it
// never logged in. Enabling an enabled device changes nothing.
func (s *Service) EnableDevice(ctx context.Context, a Actor, d *iothub.Device) error {
	if d.State != iothub.StateDisabled {
		return nil
	}
	state, err := s.cfg.Store.EnableDevice(ctx, d.ProductKey, d.DeviceKey)
	if err != nil {
		return err
	}
	d.State = state
	s.changed(ctx, a, d, "device.enabled", d.State)
	return nil
}

// changed audits a lifecycle change of d, tells live sessions and records
// d's new state for applications.
func (s *Service) changed(ctx context.Context, a Actor, d *iothub.Device, kind string, state iothub.DeviceState) {
	s.audit(ctx, a, iothub.AuditEvent{OrgID: d.OrgID, Kind: kind, ProductKey: d.ProductKey, DeviceKey: d.DeviceKey})
	s.publish(ctx, iothub.Event{Kind: iothub.EventDeviceChanged, ProductKey: d.ProductKey, DeviceKey: d.DeviceKey, Reason: kind})
	if s.cfg.Feed != nil {
		// A deleted device's product is still there, so its org is known.
		if err := s.cfg.Feed.Record(ctx, []iothub.DataChange{feed.State(d.ProductKey, d.DeviceKey, s.now(), state)}); err != nil {
			s.log.Warn("manage: state change not recorded for applications", "productKey", d.ProductKey, "deviceKey", d.DeviceKey, "error", err)
		}
	}
}

// revokeAll revokes every unrevoked certificate of d (expired ones too: a
// clock set back must not bring them back) as cessationOfOperation.
func (s *Service) revokeAll(ctx context.Context, a Actor, d *iothub.Device, why string) error {
	if s.cfg.Certs == nil {
		return nil // no certificate service, so no certificate was issued
	}
	certs, err := s.cfg.Certs.Certificates(ctx, d.AssetID)
	if err != nil {
		return err
	}
	for _, c := range certs {
		if c.RevokedAt != nil {
			continue
		}
		if _, err := s.cfg.Certs.Revoke(ctx, c.Serial, "cessationOfOperation"); err != nil && iothub.ErrorCode(err) != iothub.ECONFLICT {
			return err
		}
		s.audit(ctx, a, iothub.AuditEvent{OrgID: c.OrgID, Kind: "cert.revoked", ProductKey: c.ProductKey, DeviceKey: c.DeviceKey,
			Reason: c.Serial + " cessationOfOperation (" + why + ")"})
	}
	return nil
}
