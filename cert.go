package iothub

import (
	"context"
	"time"
)

// Certificate is a device certificate issued by the hub's CA, bound to
// exactly one device.
type Certificate struct {
	Serial     string `json:"serial"` // lower-case hex, no separators
	OrgID      string `json:"orgId"`
	ProductKey string `json:"productKey"`
	DeviceKey  string `json:"deviceKey"`
	// AssetID is the identity of the device the certificate was issued to:
	// a device deleted and re-created under the same keys has another one,
	// so it inherits none of its predecessor's certificates.
	AssetID string `json:"assetId"`
	// PublicKeySHA256 is the hex SHA-256 of the DER SubjectPublicKeyInfo; one key binds to one device.
	PublicKeySHA256 string     `json:"publicKeySha256"`
	CertPEM         string     `json:"cert"`
	NotBefore       time.Time  `json:"notBefore"`
	NotAfter        time.Time  `json:"notAfter"`
	RevokedAt       *time.Time `json:"revokedAt,omitempty"`
	Reason          string     `json:"reason,omitempty"` // RFC 5280 reason name
	CreatedAt       time.Time  `json:"createdAt"`
}

// Status is valid, revoked or expired at time now.
func (c *Certificate) Status(now time.Time) string {
	switch {
	case c.RevokedAt != nil:
		return "revoked"
	case now.After(c.NotAfter):
		return "expired"
	default:
		return "valid"
	}
}

// ExternalCA is a customer's CA registered for one product. It is trusted
// only once Verified, after proof of possession of its private key.
type ExternalCA struct {
	ID               string     `json:"id"`
	OrgID            string     `json:"orgId"`
	ProductKey       string     `json:"productKey"`
	CertPEM          string     `json:"cert"`
	Fingerprint      string     `json:"fingerprint"` // hex SHA-256 of the DER certificate
	VerificationCode string     `json:"verificationCode,omitempty"`
	Verified         bool       `json:"verified"`
	VerifiedAt       *time.Time `json:"verifiedAt,omitempty"`
	CreatedAt        time.Time  `json:"createdAt"`
}

// CertStore persists issued certificates and external CAs.
type CertStore interface {
	// CreateCertificate fails with ECONFLICT if the public key is bound to
	// another device (another AssetID).
	CreateCertificate(ctx context.Context, c *Certificate) error
	Certificate(ctx context.Context, serial string) (*Certificate, error)
	// CertificatesByAsset lists the certificates of the device with assetID, oldest first.
	CertificatesByAsset(ctx context.Context, assetID string) ([]*Certificate, error)
	// CertificateByPublicKey returns the newest certificate with that key hash, or ENOTFOUND.
	CertificateByPublicKey(ctx context.Context, publicKeySHA256 string) (*Certificate, error)
	// RevokeCertificate marks a certificate revoked; ECONFLICT if it already is.
	RevokeCertificate(ctx context.Context, serial, reason string, at time.Time) error
	// RevokedCertificates lists every revoked certificate that has not expired.
	RevokedCertificates(ctx context.Context) ([]*Certificate, error)

	// AddSupersessions records that the certificate newSerial, issued by a
	// renewal, supersedes olds: they are revoked once it logs in or at due.
	AddSupersessions(ctx context.Context, newSerial string, olds []string, due time.Time) error
	// Supersessions lists the pending supersessions of newSerial ("": all).
	Supersessions(ctx context.Context, newSerial string) ([]Supersession, error)
	// DeleteSupersessions forgets the supersessions of newSerial (done or moot).
	DeleteSupersessions(ctx context.Context, newSerial string) error

	CreateExternalCA(ctx context.Context, ca *ExternalCA) error
	ExternalCA(ctx context.Context, id string) (*ExternalCA, error)
	ExternalCAs(ctx context.Context, productKey string) ([]*ExternalCA, error)
	MarkExternalCAVerified(ctx context.Context, id string, at time.Time) error
	// DeleteExternalCA removes a CA and its leaf revocations; ENOTFOUND if absent.
	DeleteExternalCA(ctx context.Context, id string) error
	// RevokeExternalLeaf records the revocation of a leaf of an external CA;
	// ECONFLICT if that serial of that CA is revoked already.
	RevokeExternalLeaf(ctx context.Context, r *ExternalRevocation) error
	// ExternalRevocations lists the revoked external leaves of a product ("" for every product).
	ExternalRevocations(ctx context.Context, productKey string) ([]*ExternalRevocation, error)
}

// Supersession is one certificate a renewal replaces: Old is revoked
// (reason superseded) once New logs in, or at Due.
type Supersession struct {
	New, Old string
	Due      time.Time
}

// ExternalRevocation is a leaf certificate of an external CA that the
// product's org revoked: a leaf whose issuer hashes to IssuerSHA256 and
// whose serial is Serial no longer logs in.
type ExternalRevocation struct {
	CAID       string `json:"caId"`
	ProductKey string `json:"productKey"`
	// IssuerSHA256 is the hex SHA-256 of the leaf's DER-encoded issuer name.
	IssuerSHA256 string    `json:"issuerSha256"`
	Serial       string    `json:"serial"` // lower-case hex
	Reason       string    `json:"reason"`
	RevokedAt    time.Time `json:"revokedAt"`
}

// RequestLog remembers signed device requests already used, so a captured
// request cannot be replayed within its window, on any node.
type RequestLog interface {
	// UseRequest records digest until expires; ECONFLICT if it is recorded
	// and not yet expired.
	UseRequest(ctx context.Context, digest string, expires time.Time) error
}

// CAFileStore keeps the files of the hub's CA directory that every node
// of a cluster shares (CA certificates, their keys sealed, the record of
// CA generations), so a CA rotated or retired on one node reaches the others.
type CAFileStore interface {
	// CAFiles returns every shared file by name.
	CAFiles(ctx context.Context) (map[string][]byte, error)
	// PutCAFiles creates or replaces files (name → content) at once.
	PutCAFiles(ctx context.Context, files map[string][]byte) error
}

// Store is everything the hub persists. The sqlite and postgres adapters
// implement it with one schema.
type Store interface {
	OrgStore
	APIKeyStore
	ProductStore
	DeviceStore
	TelemetryStore
	TopologyStore
	OTAStore
	ThingModelStore
	RawStore
	CertStore
	CAFileStore
	RequestLog
	AuditLog
	ChangeLog
	NodeStore
	DataLog
	Close() error
}
