package pki

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"fmt"

	"github.com/iothub/iothub"
)

// productLister is the part of iothub.ProductStore used to find every
// product's external CAs at start.
type productLister interface {
	Products(ctx context.Context, orgID string) ([]*iothub.Product, error)
}

// loadExternalCAs puts the verified external CAs of every product, and
// the leaves revoked under them, into memory.
func (s *Service) loadExternalCAs(ctx context.Context) error {
	pl, ok := s.store.(productLister)
	if !ok {
		return nil
	}
	products, err := pl.Products(ctx, "")
	if err != nil {
		return err
	}
	for _, p := range products {
		if err := s.reloadExternal(ctx, p.ProductKey); err != nil {
			return err
		}
	}
	return nil
}

// reloadExternal replaces what memory holds about productKey's external
// CAs with what the store holds: its verified CAs and their revoked
// leaves. A product that is gone, or has no verified CA, trusts none.
func (s *Service) reloadExternal(ctx context.Context, productKey string) error {
	// One reload at a time: a reload that read the store earlier must not
	// overwrite one that read it later.
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	cas, err := s.store.ExternalCAs(ctx, productKey)
	if err != nil {
		return err
	}
	revs, err := s.store.ExternalRevocations(ctx, productKey)
	if err != nil {
		return err
	}
	var pool *x509.CertPool
	for _, ca := range cas {
		if !ca.Verified {
			continue
		}
		c, err := parseCertPEM(ca.CertPEM, "external CA certificate")
		if err != nil {
			s.log.Error("pki: stored external CA does not parse; it is not trusted", "id", ca.ID, "err", err)
			continue
		}
		if pool == nil {
			pool = x509.NewCertPool()
		}
		pool.AddCert(c)
	}
	revoked := make(map[string]struct{}, len(revs))
	for _, r := range revs {
		revoked[r.IssuerSHA256+":"+r.Serial] = struct{}{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if pool == nil {
		delete(s.external, productKey)
	} else {
		s.external[productKey] = pool // readers hold the old pool without a lock
	}
	if len(revoked) == 0 {
		delete(s.extRevoked, productKey)
	} else {
		s.extRevoked[productKey] = revoked
	}
	return nil
}

// externalLeafKey names a leaf of an external CA among revocations.
func externalLeafKey(leaf *x509.Certificate) string {
	h := sha256.Sum256(leaf.RawIssuer)
	return hex.EncodeToString(h[:]) + ":" + serialHex(leaf.SerialNumber)
}

// RegisterCA records certPEM, a customer's CA certificate, for product p
// and returns it with a fresh verification code. The CA is not trusted
// until VerifyCA proves possession of its key.
func (s *Service) RegisterCA(ctx context.Context, p *iothub.Product, certPEM string) (*iothub.ExternalCA, error) {
	if p == nil {
		return nil, iothub.Errorf(iothub.EINVALID, "product is required")
	}
	c, err := parseCertPEM(certPEM, "CA certificate")
	if err != nil {
		return nil, err
	}
	if !c.BasicConstraintsValid || !c.IsCA {
		return nil, iothub.Errorf(iothub.EINVALID, "certificate is not a CA (basicConstraints CA:TRUE is missing)")
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, iothub.Errorf(iothub.EINVALID, "CA certificate's key usage does not allow signing certificates (keyCertSign)")
	}
	if err := checkCAKey(c); err != nil {
		return nil, err
	}
	now := s.now()
	if now.Before(c.NotBefore) || now.After(c.NotAfter) {
		return nil, iothub.Errorf(iothub.EINVALID, "CA certificate is outside its validity period")
	}
	if s.a.cur.Load().gen(keyID(c)) != nil {
		return nil, iothub.Errorf(iothub.EINVALID, "that is the hub's own CA")
	}
	fp := sha256.Sum256(c.Raw)
	fingerprint := hex.EncodeToString(fp[:])
	existing, err := s.store.ExternalCAs(ctx, p.ProductKey)
	if err != nil {
		return nil, err
	}
	for _, e := range existing {
		if e.Fingerprint == fingerprint {
			return nil, iothub.Errorf(iothub.ECONFLICT, "CA is already registered for this product as %s", e.ID)
		}
	}
	ca := &iothub.ExternalCA{
		ID:               randomHex(16),
		OrgID:            p.OrgID,
		ProductKey:       p.ProductKey,
		CertPEM:          string(pemCert(c.Raw)),
		Fingerprint:      fingerprint,
		VerificationCode: randomHex(16),
		CreatedAt:        now,
	}
	if err := s.store.CreateExternalCA(ctx, ca); err != nil {
		return nil, err
	}
	s.log.Info("pki: external CA registered", "id", ca.ID, "productKey", ca.ProductKey, "fingerprint", fingerprint)
	return ca, nil
}

// VerifyCA accepts proofPEM, a certificate signed by the registered CA id
// whose subject CN is the CA's verification code, and marks the CA
// verified: from then on its certificates may log in the product's
// devices. A wrong CN or signer is EINVALID and changes nothing.
func (s *Service) VerifyCA(ctx context.Context, id, proofPEM string) (*iothub.ExternalCA, error) {
	ca, err := s.store.ExternalCA(ctx, id)
	if err != nil {
		return nil, err
	}
	if ca.Verified {
		return nil, iothub.Errorf(iothub.ECONFLICT, "CA %s is already verified", id)
	}
	caCert, err := parseCertPEM(ca.CertPEM, "stored CA certificate")
	if err != nil {
		return nil, err
	}
	proof, err := parseCertPEM(proofPEM, "proof certificate")
	if err != nil {
		return nil, err
	}
	if err := proof.CheckSignatureFrom(caCert); err != nil {
		return nil, iothub.Errorf(iothub.EINVALID, "proof certificate is not signed by this CA")
	}
	if ca.VerificationCode == "" || subtle.ConstantTimeCompare([]byte(proof.Subject.CommonName), []byte(ca.VerificationCode)) != 1 {
		return nil, iothub.Errorf(iothub.EINVALID, "proof certificate's subject CN is not the verification code")
	}
	now := s.now()
	if now.Before(proof.NotBefore) || now.After(proof.NotAfter) {
		return nil, iothub.Errorf(iothub.EINVALID, "proof certificate is outside its validity period")
	}
	if err := s.store.MarkExternalCAVerified(ctx, id, now); err != nil {
		return nil, err
	}
	if err := s.reloadExternal(ctx, ca.ProductKey); err != nil {
		return nil, err
	}
	s.publish(ctx, iothub.Event{Kind: iothub.EventProductChanged, ProductKey: ca.ProductKey, Reason: "ca.verified"})
	ca.Verified, ca.VerifiedAt = true, &now
	s.log.Info("pki: external CA verified", "id", id, "productKey", ca.ProductKey)
	return ca, nil
}

// ExternalCA returns the registered external CA id.
func (s *Service) ExternalCA(ctx context.Context, id string) (*iothub.ExternalCA, error) {
	return s.store.ExternalCA(ctx, id)
}

// RemoveCA deletes the external CA id, verified or not, with the leaf
// revocations recorded under it. Its leaves stop logging in at once here
// and, through EventProductChanged, on every other node.
func (s *Service) RemoveCA(ctx context.Context, id string) error {
	ca, err := s.store.ExternalCA(ctx, id)
	if err != nil {
		return err
	}
	if err := s.store.DeleteExternalCA(ctx, id); err != nil {
		return err
	}
	if err := s.reloadExternal(ctx, ca.ProductKey); err != nil {
		return err
	}
	s.publish(ctx, iothub.Event{Kind: iothub.EventProductChanged, ProductKey: ca.ProductKey, Reason: "ca.removed"})
	s.log.Info("pki: external CA removed", "id", id, "productKey", ca.ProductKey)
	return nil
}

// RevokeExternal revokes the leaf with serial (hex) that the external CA
// ca issued, for reason (an RFC 5280 name): it no longer logs in, here or
// on any other node, and its live sessions are closed (EventCertRevoked).
func (s *Service) RevokeExternal(ctx context.Context, ca *iothub.ExternalCA, serial, reason string) (*iothub.ExternalRevocation, error) {
	if err := checkReason(reason); err != nil {
		return nil, err
	}
	serial, err := normalizeSerial(serial)
	if err != nil {
		return nil, err
	}
	caCert, err := parseCertPEM(ca.CertPEM, "stored CA certificate")
	if err != nil {
		return nil, err
	}
	issuer := sha256.Sum256(caCert.RawSubject)
	r := &iothub.ExternalRevocation{CAID: ca.ID, ProductKey: ca.ProductKey, IssuerSHA256: hex.EncodeToString(issuer[:]),
		Serial: serial, Reason: reason, RevokedAt: s.now()}
	if err := s.store.RevokeExternalLeaf(ctx, r); err != nil {
		return nil, err
	}
	if err := s.reloadExternal(ctx, ca.ProductKey); err != nil {
		return nil, err
	}
	s.publish(ctx, iothub.Event{Kind: iothub.EventProductChanged, ProductKey: ca.ProductKey, Reason: "ca.leaf_revoked"})
	s.publish(ctx, iothub.Event{Kind: iothub.EventCertRevoked, ProductKey: ca.ProductKey, Serial: serial, Reason: reason})
	s.log.Info("pki: external leaf revoked", "ca", ca.ID, "serial", serial, "reason", reason)
	return r, nil
}

// publish sends e on the bus, logging (not failing) when the bus refuses.
func (s *Service) publish(ctx context.Context, e iothub.Event) {
	if err := s.bus.Publish(ctx, e); err != nil {
		s.log.Error("pki: publish", "kind", e.Kind, "err", err)
	}
}

// checkCAKey refuses CA keys too weak to trust.
func checkCAKey(c *x509.Certificate) error {
	switch k := c.PublicKey.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return iothub.Errorf(iothub.EINVALID, "CA has an RSA-%d key; at least %d bits are required", k.N.BitLen(), minRSABits)
		}
	case *ecdsa.PublicKey:
		if k.Curve.Params().BitSize < 256 {
			return iothub.Errorf(iothub.EINVALID, "CA has an ECDSA %s key; P-256 or stronger is required", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return iothub.Errorf(iothub.EINVALID, "CA has an unsupported key type (%v)", c.PublicKeyAlgorithm)
	}
	return nil
}

// randomHex returns n random bytes as lower-case hex.
func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("pki: crypto/rand failed: %v", err))
	}
	return hex.EncodeToString(b)
}
