package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/internal/sqlstore"
)

func (db *DB) queryCerts(ctx context.Context, op, q string, args ...any) ([]*iothub.Certificate, error) {
	return sqlstore.QueryCerts(ctx, db.read, "sqlite", op, q, args...)
}

// CreateCertificate stores c. A taken serial, or a public key already bound
// to another device, is ECONFLICT. CreatedAt is set to now if zero.
func (db *DB) CreateCertificate(ctx context.Context, c *iothub.Certificate) error {
	switch {
	case c.Serial == "":
		return sqlstore.Invalid("certificate serial must not be empty")
	case c.PublicKeySHA256 == "":
		return sqlstore.Invalid("certificate public key hash must not be empty")
	case c.ProductKey == "" || c.DeviceKey == "":
		return sqlstore.Invalid("certificate must name its device")
	case c.CertPEM == "":
		return sqlstore.Invalid("certificate PEM must not be empty")
	case !c.NotAfter.After(c.NotBefore):
		return sqlstore.Invalid("certificate notAfter must be after notBefore")
	}
	created := db.truncMS(c.CreatedAt)
	err := db.tx(ctx, func(tx *sql.Tx) error {
		var pk, dk string
		err := tx.QueryRowContext(ctx, `SELECT product_key, device_key FROM certificates
			WHERE public_key_sha256 = ? AND (product_key <> ? OR device_key <> ?) LIMIT 1`,
			c.PublicKeySHA256, c.ProductKey, c.DeviceKey).Scan(&pk, &dk)
		if err == nil {
			return sqlstore.Conflict("public key is already bound to another device")
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return wrap("create certificate", err)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO certificates (`+sqlstore.CertCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?)`,
			c.Serial, c.OrgID, c.ProductKey, c.DeviceKey, c.PublicKeySHA256, c.CertPEM,
			sqlstore.MS(c.NotBefore), sqlstore.MS(c.NotAfter), sqlstore.NullMS(c.RevokedAt), c.Reason, sqlstore.MS(created))
		if kind, _ := constraint(err); kind == "unique" {
			return sqlstore.Conflict("certificate serial %q already exists", c.Serial)
		}
		return wrap("create certificate", err)
	})
	if err != nil {
		return err
	}
	c.CreatedAt = created
	return nil
}

// Certificate returns the certificate with that serial or ENOTFOUND.
func (db *DB) Certificate(ctx context.Context, serial string) (*iothub.Certificate, error) {
	c, err := sqlstore.ScanCert(db.read.QueryRowContext(ctx, `SELECT `+sqlstore.CertCols+` FROM certificates WHERE serial = ?`, serial))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, sqlstore.NotFound("certificate %q not found", serial)
	}
	return c, wrap("certificate", err)
}

// CertificatesByDevice lists a device's certificates, oldest first.
func (db *DB) CertificatesByDevice(ctx context.Context, productKey, deviceKey string) ([]*iothub.Certificate, error) {
	return db.queryCerts(ctx, "certificates by device", `SELECT `+sqlstore.CertCols+` FROM certificates
		WHERE product_key = ? AND device_key = ? ORDER BY created_at, serial`, productKey, deviceKey)
}

// CertificateByPublicKey returns the newest certificate with that key hash, or ENOTFOUND.
func (db *DB) CertificateByPublicKey(ctx context.Context, publicKeySHA256 string) (*iothub.Certificate, error) {
	c, err := sqlstore.ScanCert(db.read.QueryRowContext(ctx, `SELECT `+sqlstore.CertCols+` FROM certificates
		WHERE public_key_sha256 = ? ORDER BY created_at DESC, not_before DESC, serial DESC LIMIT 1`, publicKeySHA256))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, sqlstore.NotFound("no certificate with that public key")
	}
	return c, wrap("certificate by public key", err)
}

// RevokeCertificate marks a certificate revoked at at with an RFC 5280
// reason name; ENOTFOUND if absent, ECONFLICT if already revoked.
func (db *DB) RevokeCertificate(ctx context.Context, serial, reason string, at time.Time) error {
	if reason == "" {
		return sqlstore.Invalid("revocation needs a reason")
	}
	return db.tx(ctx, func(tx *sql.Tx) error {
		var revoked sql.NullInt64
		err := tx.QueryRowContext(ctx, `SELECT revoked_at FROM certificates WHERE serial = ?`, serial).Scan(&revoked)
		if errors.Is(err, sql.ErrNoRows) {
			return sqlstore.NotFound("certificate %q not found", serial)
		}
		if err != nil {
			return wrap("revoke certificate", err)
		}
		if revoked.Valid {
			return sqlstore.Conflict("certificate %q is already revoked", serial)
		}
		_, err = tx.ExecContext(ctx, `UPDATE certificates SET revoked_at = ?, reason = ? WHERE serial = ?`,
			sqlstore.MS(db.truncMS(at)), reason, serial)
		return wrap("revoke certificate", err)
	})
}

// RevokedCertificates lists every revoked certificate that has not
// expired, by serial.
func (db *DB) RevokedCertificates(ctx context.Context) ([]*iothub.Certificate, error) {
	return db.queryCerts(ctx, "revoked certificates", `SELECT `+sqlstore.CertCols+` FROM certificates
		WHERE revoked_at IS NOT NULL AND not_after > ? ORDER BY serial`, sqlstore.MS(db.now()))
}

const caCols = `id, org_id, product_key, cert_pem, fingerprint, verification_code, verified, verified_at, created_at`

func scanCA(row interface{ Scan(...any) error }) (*iothub.ExternalCA, error) {
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
	ca.VerifiedAt = sqlstore.TimePtr(at)
	ca.CreatedAt = sqlstore.FromMS(created)
	return &ca, nil
}

// CreateExternalCA stores ca for its product. A taken id, or the same CA
// (fingerprint) registered twice for one product, is ECONFLICT; an unknown
// product ENOTFOUND. The CA goes when its product is deleted.
func (db *DB) CreateExternalCA(ctx context.Context, ca *iothub.ExternalCA) error {
	switch {
	case ca.ID == "":
		return sqlstore.Invalid("external CA id must not be empty")
	case ca.ProductKey == "":
		return sqlstore.Invalid("external CA needs a productKey")
	case ca.CertPEM == "" || ca.Fingerprint == "":
		return sqlstore.Invalid("external CA needs its certificate and fingerprint")
	}
	created := db.truncMS(ca.CreatedAt)
	_, err := db.write.ExecContext(ctx, `INSERT INTO external_cas (`+caCols+`) VALUES (?,?,?,?,?,?,?,?,?)`,
		ca.ID, ca.OrgID, ca.ProductKey, ca.CertPEM, ca.Fingerprint, ca.VerificationCode,
		sqlstore.Bool01(ca.Verified), sqlstore.NullMS(ca.VerifiedAt), sqlstore.MS(created))
	switch kind, _ := constraint(err); kind {
	case "unique":
		return sqlstore.Conflict("external CA already registered for product %q", ca.ProductKey)
	case "foreign":
		return sqlstore.NotFound("product %q not found", ca.ProductKey)
	}
	if err != nil {
		return wrap("create external CA", err)
	}
	ca.CreatedAt = created
	return nil
}

// ExternalCA returns the external CA with that id or ENOTFOUND.
func (db *DB) ExternalCA(ctx context.Context, id string) (*iothub.ExternalCA, error) {
	ca, err := scanCA(db.read.QueryRowContext(ctx, `SELECT `+caCols+` FROM external_cas WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, sqlstore.NotFound("external CA %q not found", id)
	}
	return ca, wrap("external CA", err)
}

// ExternalCAs lists a product's external CAs, oldest first.
func (db *DB) ExternalCAs(ctx context.Context, productKey string) ([]*iothub.ExternalCA, error) {
	rows, err := db.read.QueryContext(ctx, `SELECT `+caCols+` FROM external_cas
		WHERE product_key = ? ORDER BY created_at, id`, productKey)
	if err != nil {
		return nil, wrap("external CAs", err)
	}
	defer rows.Close()
	out := []*iothub.ExternalCA{}
	for rows.Next() {
		ca, err := scanCA(rows)
		if err != nil {
			return nil, wrap("external CAs", err)
		}
		out = append(out, ca)
	}
	return out, wrap("external CAs", rows.Err())
}

// MarkExternalCAVerified marks a CA verified at at; ENOTFOUND if absent,
// ECONFLICT if already verified.
func (db *DB) MarkExternalCAVerified(ctx context.Context, id string, at time.Time) error {
	return db.tx(ctx, func(tx *sql.Tx) error {
		var verified int
		err := tx.QueryRowContext(ctx, `SELECT verified FROM external_cas WHERE id = ?`, id).Scan(&verified)
		if errors.Is(err, sql.ErrNoRows) {
			return sqlstore.NotFound("external CA %q not found", id)
		}
		if err != nil {
			return wrap("verify external CA", err)
		}
		if verified != 0 {
			return sqlstore.Conflict("external CA %q is already verified", id)
		}
		_, err = tx.ExecContext(ctx, `UPDATE external_cas SET verified = 1, verified_at = ? WHERE id = ?`,
			sqlstore.MS(db.truncMS(at)), id)
		return wrap("verify external CA", err)
	})
}
