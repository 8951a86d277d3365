package manage

import (
	"context"

	"github.com/iothub/iothub"
)

// EnrollCertificate issues a certificate for d from csrPEM, valid for
// validDays (0: the product's maximum). Enrolling a key d already holds a
// valid certificate for answers that certificate.
func (s *Service) EnrollCertificate(ctx context.Context, a Actor, d *iothub.Device, csrPEM string, validDays int) (*iothub.Certificate, error) {
	return s.issue(ctx, a, d, func(certs iothub.CertificateService, p *iothub.Product) (*iothub.Certificate, error) {
		return certs.Enroll(ctx, p, d, csrPEM, validDays)
	}, "cert.issued")
}

// RenewCertificate issues a successor certificate for d; the ones it
// replaces are revoked as superseded once it logs in or after a grace period.
func (s *Service) RenewCertificate(ctx context.Context, a Actor, d *iothub.Device, csrPEM string) (*iothub.Certificate, error) {
	return s.issue(ctx, a, d, func(certs iothub.CertificateService, p *iothub.Product) (*iothub.Certificate, error) {
		return certs.Renew(ctx, p, d, csrPEM)
	}, "cert.renewed")
}

func (s *Service) issue(ctx context.Context, a Actor, d *iothub.Device, do func(iothub.CertificateService, *iothub.Product) (*iothub.Certificate, error), kind string) (*iothub.Certificate, error) {
	certs, err := s.certs()
	if err != nil {
		return nil, err
	}
	p, err := s.cfg.Store.Product(ctx, d.ProductKey)
	if err != nil {
		return nil, err
	}
	c, err := do(certs, p)
	if err != nil {
		return nil, err
	}
	s.audit(ctx, a, iothub.AuditEvent{OrgID: d.OrgID, Kind: kind, ProductKey: d.ProductKey, DeviceKey: d.DeviceKey, Reason: c.Serial})
	return c, nil
}

// Certificates lists d's certificates: those issued to this device, not to
// an earlier one under the same keys.
func (s *Service) Certificates(ctx context.Context, d *iothub.Device) ([]*iothub.Certificate, error) {
	certs, err := s.certs()
	if err != nil {
		return nil, err
	}
	return certs.Certificates(ctx, d.AssetID)
}

// Certificate returns the certificate with serial if it belongs to an org
// that visible accepts; ENOTFOUND otherwise, as if absent.
func (s *Service) Certificate(ctx context.Context, serial string, visible func(orgID string) bool) (*iothub.Certificate, error) {
	certs, err := s.certs()
	if err != nil {
		return nil, err
	}
	c, err := certs.Certificate(ctx, serial)
	if err == nil && !visible(c.OrgID) {
		err = iothub.Errorf(iothub.ENOTFOUND, "certificate %q not found", serial)
	}
	return c, err
}

// DeviceCertificate returns the certificate with serial if it was issued
// to d itself (same org and assetId); ENOTFOUND otherwise.
func (s *Service) DeviceCertificate(ctx context.Context, d *iothub.Device, serial string) (*iothub.Certificate, error) {
	c, err := s.Certificate(ctx, serial, func(org string) bool { return org == d.OrgID })
	if err == nil && c.AssetID != d.AssetID {
		err = iothub.Errorf(iothub.ENOTFOUND, "certificate %q not found", serial)
	}
	return c, err
}

// RevokeCertificate revokes c for reason ("" is unspecified).
func (s *Service) RevokeCertificate(ctx context.Context, a Actor, c *iothub.Certificate, reason string) (*iothub.Certificate, error) {
	certs, err := s.certs()
	if err != nil {
		return nil, err
	}
	if reason == "" {
		reason = "unspecified"
	}
	revoked, err := certs.Revoke(ctx, c.Serial, reason)
	if err != nil {
		return nil, err
	}
	s.audit(ctx, a, iothub.AuditEvent{OrgID: c.OrgID, Kind: "cert.revoked", ProductKey: c.ProductKey, DeviceKey: c.DeviceKey, Reason: c.Serial + " " + reason})
	return revoked, nil
}

// RegisterCA records an external CA for p; it is trusted once verified.
func (s *Service) RegisterCA(ctx context.Context, a Actor, p *iothub.Product, certPEM string) (*iothub.ExternalCA, error) {
	certs, err := s.certs()
	if err != nil {
		return nil, err
	}
	ca, err := certs.RegisterCA(ctx, p, certPEM)
	if err != nil {
		return nil, err
	}
	s.audit(ctx, a, iothub.AuditEvent{OrgID: p.OrgID, Kind: "ca.registered", ProductKey: p.ProductKey, Reason: ca.ID})
	return ca, nil
}

// ExternalCA returns the CA id if it belongs to an org that visible
// accepts; ENOTFOUND otherwise, as if absent.
func (s *Service) ExternalCA(ctx context.Context, id string, visible func(orgID string) bool) (*iothub.ExternalCA, error) {
	certs, err := s.certs()
	if err != nil {
		return nil, err
	}
	ca, err := certs.ExternalCA(ctx, id)
	if err == nil && !visible(ca.OrgID) {
		err = iothub.Errorf(iothub.ENOTFOUND, "CA %q not found", id)
	}
	return ca, err
}

// VerifyCA checks the proof of possession for ca and trusts it; a refused
// proof is audited too.
func (s *Service) VerifyCA(ctx context.Context, a Actor, ca *iothub.ExternalCA, proofPEM string) (*iothub.ExternalCA, error) {
	certs, err := s.certs()
	if err != nil {
		return nil, err
	}
	verified, err := certs.VerifyCA(ctx, ca.ID, proofPEM)
	if err != nil {
		s.audit(ctx, a, iothub.AuditEvent{OrgID: ca.OrgID, Kind: "ca.verify_refused", ProductKey: ca.ProductKey, Reason: ca.ID + ": " + iothub.ErrorMessage(err)})
		return nil, err
	}
	s.audit(ctx, a, iothub.AuditEvent{OrgID: ca.OrgID, Kind: "ca.verified", ProductKey: ca.ProductKey, Reason: ca.ID})
	return verified, nil
}

// RemoveCA deletes ca, verified or not: its leaves stop logging in at once
// on every node.
func (s *Service) RemoveCA(ctx context.Context, a Actor, ca *iothub.ExternalCA) error {
	certs, err := s.certs()
	if err != nil {
		return err
	}
	if err := certs.RemoveCA(ctx, ca.ID); err != nil {
		return err
	}
	s.audit(ctx, a, iothub.AuditEvent{OrgID: ca.OrgID, Kind: "ca.removed", ProductKey: ca.ProductKey, Reason: ca.ID})
	return nil
}

// RevokeExternal revokes the leaf with serial issued by ca.
func (s *Service) RevokeExternal(ctx context.Context, a Actor, ca *iothub.ExternalCA, serial, reason string) (*iothub.ExternalRevocation, error) {
	certs, err := s.certs()
	if err != nil {
		return nil, err
	}
	if reason == "" {
		reason = "unspecified"
	}
	r, err := certs.RevokeExternal(ctx, ca, serial, reason)
	if err != nil {
		return nil, err
	}
	s.audit(ctx, a, iothub.AuditEvent{OrgID: ca.OrgID, Kind: "cert.revoked", ProductKey: ca.ProductKey, Reason: "external " + ca.ID + " " + r.Serial + " " + reason})
	return r, nil
}
