package iothub

import (
	"context"
	"crypto/x509"
	"time"
)

// CertificateService is the hub's X.509 certificate service: it issues
// device certificates from CSRs, binds them to devices, revokes them and
// decides whether a client certificate may log a device in. The pki
// package implements it; the http and mqtt adapters consume it.
type CertificateService interface {
	// Enroll checks csrPEM (signature; RSA ≥ 2048 or ECDSA P-256), issues a
	// certificate bound to d valid for validDays (capped by the product) and
	// stores it. A public key bound to another device is ECONFLICT.
	Enroll(ctx context.Context, p *Product, d *Device, csrPEM string, validDays int) (*Certificate, error)
	// Renew issues a successor for d; the superseded certificates are revoked
	// (reason superseded) once the new one is used or after a grace period.
	Renew(ctx context.Context, p *Product, d *Device, csrPEM string) (*Certificate, error)
	// Revoke revokes by serial with an RFC 5280 reason name, signs a new CRL
	// and publishes EventCertRevoked.
	Revoke(ctx context.Context, serial, reason string) (*Certificate, error)
	Certificate(ctx context.Context, serial string) (*Certificate, error)
	// Certificates lists the certificates of the device with assetID.
	Certificates(ctx context.Context, assetID string) ([]*Certificate, error)

	// ChainPEM is the active chain: the active issuing CA then its root.
	ChainPEM() []byte
	// CRL is the active issuing CA's current CRL in DER.
	CRL() []byte
	// CRLOf is the current CRL in DER of the hub's issuing CA id (not
	// retired): the one its certificates name.
	CRLOf(id string) ([]byte, bool)
	// AuthorityPEM is the certificate of the hub's CA id, PEM.
	AuthorityPEM(id string) ([]byte, bool)
	// BundlePEM is every CA a device should trust now.
	BundlePEM() []byte
	// BundleSignature is BundlePEM's detached signature by the active root,
	// followed by the root's certificate and its cross certificate.
	BundleSignature() []byte
	// Authorities lists the hub's own CAs, oldest first.
	Authorities() []Authority
	// RotateAuthority makes a new issuing CA active (with root, a new root
	// cross-signed by the old one and an issuing CA under it) and re-issues
	// the hub's server certificates. It returns the new CA's id and the
	// new issuing CA's id.
	RotateAuthority(ctx context.Context, root bool) (id, issuingID string, err error)
	// RetireAuthority stops trusting CA id (and, for a root, the issuing CAs
	// under it) and returns the ids retired.
	RetireAuthority(ctx context.Context, id string) ([]string, error)
	// ReloadAuthority re-reads the CAs after another node changed them.
	ReloadAuthority() error
	// OCSP answers a DER OCSP request with a signed DER response.
	OCSP(request []byte) ([]byte, error)

	// RegisterCA records an external CA for a product and returns it with a
	// verification code; it is not trusted until VerifyCA succeeds.
	RegisterCA(ctx context.Context, p *Product, certPEM string) (*ExternalCA, error)
	// VerifyCA accepts proofPEM, a certificate signed by the CA whose
	// subject CN is the verification code, and marks the CA verified.
	VerifyCA(ctx context.Context, id, proofPEM string) (*ExternalCA, error)
	ExternalCA(ctx context.Context, id string) (*ExternalCA, error)
	// RemoveCA deletes an external CA, verified or not: its leaves stop
	// logging in at once, on every node (EventProductChanged).
	RemoveCA(ctx context.Context, id string) error
	// RevokeExternal revokes the leaf with serial issued by the external CA
	// ca: it no longer logs in, on any node (EventCertRevoked).
	RevokeExternal(ctx context.Context, ca *ExternalCA, serial, reason string) (*ExternalRevocation, error)

	// AuthorizeClient decides whether the verified-or-not client chain
	// presented on a TLS connection may log in device (p, deviceKey): it must
	// chain to the hub's issuing CA or to a verified external CA of p, be
	// within its validity at now, not be revoked, and name the device. It
	// uses memory only. It returns the leaf's serial (lower-case hex).
	AuthorizeClient(p *Product, deviceKey string, peer []*x509.Certificate, now time.Time) (serial string, err error)
	// IsRevoked reports from memory whether serial is revoked.
	IsRevoked(serial string) bool
	// NoteUsed tells the service a certificate logged in, so the ones it superseded can be revoked.
	NoteUsed(ctx context.Context, serial string)
}

// Authority is one of the hub's own CAs (GET /api/v1/authority).
type Authority struct {
	ID        string    `json:"id"`
	Kind      string    `json:"kind"` // root or issuing
	Subject   string    `json:"subject"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	Status    string    `json:"status"` // active, trusted or retired
}
