package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/iothub/iothub"
)

// CreateCertificate stores cert. A taken serial, or a public key already bound
// to another device (another assetId), is ECONFLICT. CreatedAt is set to now if zero.
func (c *Core) CreateCertificate(ctx context.Context, cert *iothub.Certificate) error {
	switch {
	case cert.Serial == "":
		return Invalid("certificate serial must not be empty")
	case cert.PublicKeySHA256 == "":
		return Invalid("certificate public key hash must not be empty")
	case cert.ProductKey == "" || cert.DeviceKey == "" || cert.AssetID == "":
		return Invalid("certificate must name its device")
	case cert.CertPEM == "":
		return Invalid("certificate PEM must not be empty")
	case !cert.NotAfter.After(cert.NotBefore):
		return Invalid("certificate notAfter must be after notBefore")
	}
	created := c.truncMS(cert.CreatedAt)
	err := c.tx(ctx, func(tx *sql.Tx) error {
		if c.cfg.LockKey != nil {
			if err := c.cfg.LockKey(ctx, tx, cert.PublicKeySHA256); err != nil {
				return c.wrap("create certificate", err)
			}
		}
		var other string
		err := tx.QueryRowContext(ctx, c.q(`SELECT asset_id FROM certificates
			WHERE public_key_sha256 = ? AND asset_id <> ? LIMIT 1`),
			cert.PublicKeySHA256, cert.AssetID).Scan(&other)
		if err == nil {
			return Conflict("public key is already bound to another device")
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return c.wrap("create certificate", err)
		}
		_, err = tx.ExecContext(ctx, c.q(`INSERT INTO certificates (`+CertCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)`),
			cert.Serial, cert.OrgID, cert.ProductKey, cert.DeviceKey, cert.AssetID, cert.PublicKeySHA256, cert.CertPEM,
			MS(cert.NotBefore), MS(cert.NotAfter), NullMS(cert.RevokedAt), cert.Reason, MS(created))
		if kind, _ := c.cfg.Constraint(err); kind == "unique" {
			return Conflict("certificate serial %q already exists", cert.Serial)
		}
		return c.wrap("create certificate", err)
	})
	if err != nil {
		return err
	}
	cert.CreatedAt = created
	return nil
}

// Certificate returns the certificate with that serial or ENOTFOUND.
func (c *Core) Certificate(ctx context.Context, serial string) (*iothub.Certificate, error) {
	cert, err := ScanCert(c.cfg.Read.QueryRowContext(ctx, c.q(`SELECT `+CertCols+` FROM certificates WHERE serial = ?`), serial))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, NotFound("certificate %q not found", serial)
	}
	return cert, c.wrap("certificate", err)
}

// CertificatesByAsset lists the certificates of the device with assetID, oldest first.
func (c *Core) CertificatesByAsset(ctx context.Context, assetID string) ([]*iothub.Certificate, error) {
	if assetID == "" {
		return []*iothub.Certificate{}, nil
	}
	return queryCerts(ctx, c.cfg.Read, c.cfg.Name, "certificates by asset", c.q(`SELECT `+CertCols+` FROM certificates
		WHERE asset_id = ? ORDER BY created_at, serial`), assetID)
}

// CertificateByPublicKey returns the newest certificate with that key hash, or ENOTFOUND.
func (c *Core) CertificateByPublicKey(ctx context.Context, publicKeySHA256 string) (*iothub.Certificate, error) {
	cert, err := ScanCert(c.cfg.Read.QueryRowContext(ctx, c.q(`SELECT `+CertCols+` FROM certificates
		WHERE public_key_sha256 = ? ORDER BY created_at DESC, not_before DESC, serial DESC LIMIT 1`), publicKeySHA256))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, NotFound("no certificate with that public key")
	}
	return cert, c.wrap("certificate by public key", err)
}

// RevokeCertificate marks a certificate revoked at at with an RFC 5280
// reason name; ENOTFOUND if absent, ECONFLICT if already revoked.
func (c *Core) RevokeCertificate(ctx context.Context, serial, reason string, at time.Time) error {
	if reason == "" {
		return Invalid("revocation needs a reason")
	}
	return c.tx(ctx, func(tx *sql.Tx) error {
		var revoked sql.NullInt64
		err := tx.QueryRowContext(ctx, c.q(`SELECT revoked_at FROM certificates WHERE serial = ?`+c.cfg.ForUpdate), serial).Scan(&revoked)
		if errors.Is(err, sql.ErrNoRows) {
			return NotFound("certificate %q not found", serial)
		}
		if err != nil {
			return c.wrap("revoke certificate", err)
		}
		if revoked.Valid {
			return Conflict("certificate %q is already revoked", serial)
		}
		_, err = tx.ExecContext(ctx, c.q(`UPDATE certificates SET revoked_at = ?, reason = ? WHERE serial = ?`),
			MS(c.truncMS(at)), reason, serial)
		return c.wrap("revoke certificate", err)
	})
}

// RevokedCertificates lists every revoked certificate that has not
// expired, by serial.
func (c *Core) RevokedCertificates(ctx context.Context) ([]*iothub.Certificate, error) {
	return queryCerts(ctx, c.cfg.Read, c.cfg.Name, "revoked certificates", c.q(`SELECT `+CertCols+` FROM certificates
		WHERE revoked_at IS NOT NULL AND not_after > ? ORDER BY serial`), MS(c.cfg.Now()))
}

const caCols = `id, org_id, product_key, cert_pem, fingerprint, verification_code, verified, verified_at, created_at`

func scanCA(row Scanner) (*iothub.ExternalCA, error) {
	var (
		ca       iothub.ExternalCA
		verified int
		at       sql.NullInt64
		created  int64
	)
	if err := row.Scan(&ca.ID, &ca.OrgID, &ca.ProductKey, &ca.CertPEM, &ca.Fingerprint, &ca.VerificationCode,
		&verified, &at, &created); err != nil {
		return nil, err
	}
	ca.Verified = verified != 0
	ca.VerifiedAt = TimePtr(at)
	ca.CreatedAt = FromMS(created)
	return &ca, nil
}

// CreateExternalCA stores ca for its product. A taken id, or the same CA
// (fingerprint) registered twice for one product, is ECONFLICT; an unknown
// product ENOTFOUND. The CA goes when its product is deleted.
func (c *Core) CreateExternalCA(ctx context.Context, ca *iothub.ExternalCA) error {
	switch {
	case ca.ID == "":
		return Invalid("external CA id must not be empty")
	case ca.ProductKey == "":
		return Invalid("external CA needs a productKey")
	case ca.CertPEM == "" || ca.Fingerprint == "":
		return Invalid("external CA needs its certificate and fingerprint")
	}
	created := c.truncMS(ca.CreatedAt)
	_, err := c.cfg.Write.ExecContext(ctx, c.q(`INSERT INTO external_cas (`+caCols+`) VALUES (?,?,?,?,?,?,?,?,?)`),
		ca.ID, ca.OrgID, ca.ProductKey, ca.CertPEM, ca.Fingerprint, ca.VerificationCode,
		Bool01(ca.Verified), NullMS(ca.VerifiedAt), MS(created))
	switch kind, _ := c.cfg.Constraint(err); kind {
	case "unique":
		return Conflict("external CA already registered for product %q", ca.ProductKey)
	case "foreign":
		return NotFound("product %q not found", ca.ProductKey)
	}
	if err != nil {
		return c.wrap("create external CA", err)
	}
	ca.CreatedAt = created
	return nil
}

// ExternalCA returns the external CA with that id or ENOTFOUND.
func (c *Core) ExternalCA(ctx context.Context, id string) (*iothub.ExternalCA, error) {
	ca, err := scanCA(c.cfg.Read.QueryRowContext(ctx, c.q(`SELECT `+caCols+` FROM external_cas WHERE id = ?`), id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, NotFound("external CA %q not found", id)
	}
	return ca, c.wrap("external CA", err)
}

// ExternalCAs lists a product's external CAs, oldest first.
func (c *Core) ExternalCAs(ctx context.Context, productKey string) ([]*iothub.ExternalCA, error) {
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT `+caCols+` FROM external_cas
		WHERE product_key = ? ORDER BY created_at, id`), productKey)
	if err != nil {
		return nil, c.wrap("external CAs", err)
	}
	defer rows.Close()
	out := []*iothub.ExternalCA{}
	for rows.Next() {
		ca, err := scanCA(rows)
		if err != nil {
			return nil, c.wrap("external CAs", err)
		}
		out = append(out, ca)
	}
	return out, c.wrap("external CAs", rows.Err())
}

// MarkExternalCAVerified marks a CA verified at at; ENOTFOUND if absent,
// ECONFLICT if already verified.
func (c *Core) MarkExternalCAVerified(ctx context.Context, id string, at time.Time) error {
	return c.tx(ctx, func(tx *sql.Tx) error {
		var verified int
		err := tx.QueryRowContext(ctx, c.q(`SELECT verified FROM external_cas WHERE id = ?`+c.cfg.ForUpdate), id).Scan(&verified)
		if errors.Is(err, sql.ErrNoRows) {
			return NotFound("external CA %q not found", id)
		}
		if err != nil {
			return c.wrap("verify external CA", err)
		}
		if verified != 0 {
			return Conflict("external CA %q is already verified", id)
		}
		_, err = tx.ExecContext(ctx, c.q(`UPDATE external_cas SET verified = 1, verified_at = ? WHERE id = ?`),
			MS(c.truncMS(at)), id)
		return c.wrap("verify external CA", err)
	})
}

// AddSupersessions records that newSerial supersedes olds, due at due.
func (c *Core) AddSupersessions(ctx context.Context, newSerial string, olds []string, due time.Time) error {
	if newSerial == "" {
		return Invalid("supersession needs the new serial")
	}
	return c.tx(ctx, func(tx *sql.Tx) error {
		for _, old := range olds {
			_, err := tx.ExecContext(ctx, c.q(`INSERT INTO cert_supersessions (new_serial, old_serial, due_at) VALUES (?, ?, ?)
				ON CONFLICT (new_serial, old_serial) DO NOTHING`), newSerial, old, MS(due))
			if err != nil {
				return c.wrap("add supersessions", err)
			}
		}
		return nil
	})
}

// Supersessions lists the pending supersessions of newSerial, or every
// one when it is "", by new serial.
func (c *Core) Supersessions(ctx context.Context, newSerial string) ([]iothub.Supersession, error) {
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT new_serial, old_serial, due_at FROM cert_supersessions
		WHERE new_serial = ? OR ? = '' ORDER BY new_serial, old_serial`), newSerial, newSerial)
	if err != nil {
		return nil, c.wrap("supersessions", err)
	}
	defer rows.Close()
	var out []iothub.Supersession
	for rows.Next() {
		var s iothub.Supersession
		var due int64
		if err := rows.Scan(&s.New, &s.Old, &due); err != nil {
			return nil, c.wrap("supersessions", err)
		}
		s.Due = FromMS(due)
		out = append(out, s)
	}
	return out, c.wrap("supersessions", rows.Err())
}

// DeleteSupersessions forgets the supersessions of newSerial.
func (c *Core) DeleteSupersessions(ctx context.Context, newSerial string) error {
	_, err := c.cfg.Write.ExecContext(ctx, c.q(`DELETE FROM cert_supersessions WHERE new_serial = ?`), newSerial)
	return c.wrap("delete supersessions", err)
}

// DeleteExternalCA removes the CA id with its leaf revocations; ENOTFOUND if absent.
func (c *Core) DeleteExternalCA(ctx context.Context, id string) error {
	return c.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, c.q(`DELETE FROM external_revocations WHERE ca_id = ?`), id); err != nil {
			return c.wrap("delete external CA", err)
		}
		res, err := tx.ExecContext(ctx, c.q(`DELETE FROM external_cas WHERE id = ?`), id)
		if err != nil {
			return c.wrap("delete external CA", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return NotFound("external CA %q not found", id)
		}
		return nil
	})
}

const extRevCols = `ca_id, product_key, issuer_sha256, serial, reason, revoked_at`

// RevokeExternalLeaf records r; ECONFLICT if that CA's serial is revoked
// already, ENOTFOUND if the CA is absent.
func (c *Core) RevokeExternalLeaf(ctx context.Context, r *iothub.ExternalRevocation) error {
	if r.CAID == "" || r.ProductKey == "" || r.IssuerSHA256 == "" || r.Serial == "" || r.Reason == "" {
		return Invalid("external revocation needs its CA, product, issuer, serial and reason")
	}
	at := c.truncMS(r.RevokedAt)
	_, err := c.cfg.Write.ExecContext(ctx, c.q(`INSERT INTO external_revocations (`+extRevCols+`) VALUES (?,?,?,?,?,?)`),
		r.CAID, r.ProductKey, r.IssuerSHA256, r.Serial, r.Reason, MS(at))
	switch kind, _ := c.cfg.Constraint(err); kind {
	case "unique":
		return Conflict("serial %s of CA %s is already revoked", r.Serial, r.CAID)
	case "foreign":
		return NotFound("external CA %q not found", r.CAID)
	}
	if err != nil {
		return c.wrap("revoke external leaf", err)
	}
	r.RevokedAt = at
	return nil
}

// ExternalRevocations lists the revoked external leaves of productKey, or
// of every product when it is "".
func (c *Core) ExternalRevocations(ctx context.Context, productKey string) ([]*iothub.ExternalRevocation, error) {
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT `+extRevCols+` FROM external_revocations
		WHERE product_key = ? OR ? = '' ORDER BY ca_id, serial`), productKey, productKey)
	if err != nil {
		return nil, c.wrap("external revocations", err)
	}
	defer rows.Close()
	out := []*iothub.ExternalRevocation{}
	for rows.Next() {
		var r iothub.ExternalRevocation
		var at int64
		if err := rows.Scan(&r.CAID, &r.ProductKey, &r.IssuerSHA256, &r.Serial, &r.Reason, &at); err != nil {
			return nil, c.wrap("external revocations", err)
		}
		r.RevokedAt = FromMS(at)
		out = append(out, &r)
	}
	return out, c.wrap("external revocations", rows.Err())
}
