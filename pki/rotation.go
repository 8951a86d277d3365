package pki

import (
	"context"
	"time"

	"github.com/iothub/iothub"
)

// BundlePEM is every CA a device should trust now.
func (s *Service) BundlePEM() []byte { return s.a.BundlePEM() }

// BundleSignature is the detached signature of BundlePEM with its signer.
func (s *Service) BundleSignature() []byte { return s.a.BundleSignature() }

// Authorities lists the hub's CAs, oldest first.
func (s *Service) Authorities() []iothub.Authority { return s.a.Authorities() }

// AuthorityPEM is the certificate of the hub's CA id, PEM.
func (s *Service) AuthorityPEM(id string) ([]byte, bool) {
	g := s.a.cur.Load().gen(id)
	if g == nil {
		return nil, false
	}
	return pemCert(g.cert.Raw), true
}

// RotateAuthority rotates the issuing CA (and the root with root set) and
// signs a CRL for the new issuing CA at once.
func (s *Service) RotateAuthority(ctx context.Context, root bool) (string, string, error) {
	id, issuingID, err := s.a.Rotate(root)
	if err != nil {
		return "", "", err
	}
	if err := s.signCRL(); err != nil {
		return "", "", err
	}
	s.log.Info("pki: CA rotated", "id", id, "issuing", issuingID, "root", root)
	return id, issuingID, nil
}

// RetireAuthority retires CA id; certificates it issued stop logging in
// and its CRL is no longer served.
func (s *Service) RetireAuthority(ctx context.Context, id string) ([]string, error) {
	ids, err := s.a.Retire(id)
	if err != nil {
		return nil, err
	}
	if err := s.signCRL(); err != nil {
		return nil, err
	}
	s.log.Info("pki: CA retired", "ids", ids)
	return ids, nil
}

// ReloadAuthority re-reads the CAs from the CA directory (another node
// rotated or retired one) and re-signs the CRLs when they changed.
func (s *Service) ReloadAuthority() error {
	changed, err := s.a.Reload()
	if err != nil || !changed {
		return err
	}
	return s.signCRL()
}

// renewServer re-issues the hub's server certificates when they near expiry.
func (s *Service) renewServer(now time.Time) {
	renewed, err := s.a.RenewServerIfDue(now)
	if err != nil {
		s.log.Error("pki: renew server certificates", "err", err)
	} else if renewed {
		s.log.Info("pki: server certificates renewed")
	}
}
