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
	// CreateCertificate fails with ECONFLICT if the public key is bound to another device.
	CreateCertificate(ctx context.Context, c *Certificate) error
	Certificate(ctx context.Context, serial string) (*Certificate, error)
	CertificatesByDevice(ctx context.Context, productKey, deviceKey string) ([]*Certificate, error)
	// CertificateByPublicKey returns the newest certificate with that key hash, or ENOTFOUND.
	CertificateByPublicKey(ctx context.Context, publicKeySHA256 string) (*Certificate, error)
	// RevokeCertificate marks a certificate revoked; ECONFLICT if it already is.
	RevokeCertificate(ctx context.Context, serial, reason string, at time.Time) error
	// RevokedCertificates lists every revoked certificate that has not expired.
	RevokedCertificates(ctx context.Context) ([]*Certificate, error)

	CreateExternalCA(ctx context.Context, ca *ExternalCA) error
	ExternalCA(ctx context.Context, id string) (*ExternalCA, error)
	ExternalCAs(ctx context.Context, productKey string) ([]*ExternalCA, error)
	MarkExternalCAVerified(ctx context.Context, id string, at time.Time) error
}

// Store is everything the hub persists. The sqlite and postgres adapters
// implement it with one schema.
type Store interface {
	OrgStore
	APIKeyStore
	ProductStore
	DeviceStore
	TelemetryStore
	CertStore
	AuditLog
	ChangeLog
	NodeStore
	Close() error
}
