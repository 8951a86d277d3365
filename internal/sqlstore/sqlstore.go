// Package sqlstore holds what the sqlite and postgres stores share apart
// from their SQL text: the column lists, scanning rows into iothub types,
// sealing secrets bound to their rows, input checks, time and boolean
// encodings, and the error helpers. Each store keeps its own statements
// (placeholders, upserts and locking clauses differ) and its own
// classifier of constraint violations.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/seal"
)

// Page sizes of the Devices and AuditEvents listings: the default when the
// caller gives none, and the cap.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// Column lists, in the order the Scan functions read them.
const (
	DeviceCols = `org_id, product_key, device_key, asset_id, name, state, device_secret, secret_version,
	last_seen_at, activated_at, created_at`
	ProductCols = `org_id, product_key, product_secret, name, auth_mode, dynamic_activation, auto_register,
	device_limit, offline_timeout_sec, max_cert_days, created_at, node_type, allow_gateway_registration, sign_methods`
	CertCols = `serial, org_id, product_key, device_key, asset_id, public_key_sha256, cert_pem,
	not_before, not_after, revoked_at, reason, created_at`
)

// Scanner is a *sql.Row or *sql.Rows.
type Scanner interface{ Scan(...any) error }

// DeviceAAD binds a sealed device secret to its row.
func DeviceAAD(productKey, deviceKey string) string {
	return "device\x00" + productKey + "\x00" + deviceKey
}

// ProductAAD binds a sealed product secret to its row.
func ProductAAD(productKey string) string { return "product\x00" + productKey }

// ScanDevice reads a DeviceCols row and opens its secret; prefix names the
// store in errors.
func ScanDevice(row Scanner, s *seal.Sealer, prefix string) (*iothub.Device, error) {
	var (
		d               iothub.Device
		sealed, state   string
		seen, activated sql.NullInt64
		created         int64
	)
	if err := row.Scan(&d.OrgID, &d.ProductKey, &d.DeviceKey, &d.AssetID, &d.Name, &state, &sealed,
		&d.SecretVersion, &seen, &activated, &created); err != nil {
		return nil, err
	}
	secret, err := s.Open(sealed, DeviceAAD(d.ProductKey, d.DeviceKey))
	if err != nil {
		return nil, Wrap(prefix, "device "+d.ProductKey+"/"+d.DeviceKey+" secret", err)
	}
	d.DeviceSecret = secret
	d.State = iothub.DeviceState(state)
	d.LastSeenAt = TimePtr(seen)
	d.ActivatedAt = TimePtr(activated)
	d.CreatedAt = FromMS(created)
	return &d, nil
}

// ScanProduct reads a ProductCols row and opens its secret; prefix names
// the store in errors.
func ScanProduct(row Scanner, s *seal.Sealer, prefix string) (*iothub.Product, error) {
	var (
		p         iothub.Product
		sealed    string
		dyn, auto int
		gwReg     int
		created   int64
		mode      string
		node      string
		methods   string
	)
	if err := row.Scan(&p.OrgID, &p.ProductKey, &sealed, &p.Name, &mode, &dyn, &auto,
		&p.DeviceLimit, &p.OfflineTimeoutSec, &p.MaxCertDays, &created, &node, &gwReg, &methods); err != nil {
		return nil, err
	}
	secret, err := s.Open(sealed, ProductAAD(p.ProductKey))
	if err != nil {
		return nil, Wrap(prefix, "product "+p.ProductKey+" secret", err)
	}
	p.ProductSecret = secret
	p.AuthMode = iothub.AuthMode(mode)
	p.DynamicActivation = dyn != 0
	p.AutoRegister = auto != 0
	p.NodeType = iothub.NodeType(node)
	p.AllowGatewayRegistration = gwReg != 0
	if methods != "" {
		p.SignMethods = strings.Split(methods, ",")
	}
	p.CreatedAt = FromMS(created)
	return &p, nil
}

// ScanCert reads a CertCols row.
func ScanCert(row Scanner) (*iothub.Certificate, error) {
	var (
		c                           iothub.Certificate
		notBefore, notAfter, create int64
		revoked                     sql.NullInt64
	)
	if err := row.Scan(&c.Serial, &c.OrgID, &c.ProductKey, &c.DeviceKey, &c.AssetID, &c.PublicKeySHA256, &c.CertPEM,
		&notBefore, &notAfter, &revoked, &c.Reason, &create); err != nil {
		return nil, err
	}
	c.NotBefore, c.NotAfter, c.CreatedAt = FromMS(notBefore), FromMS(notAfter), FromMS(create)
	c.RevokedAt = TimePtr(revoked)
	return &c, nil
}

// queryCerts runs q on pool and scans every row; op names the query in
// errors.
func queryCerts(ctx context.Context, pool *sql.DB, prefix, op, q string, args ...any) ([]*iothub.Certificate, error) {
	rows, err := pool.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, Wrap(prefix, op, err)
	}
	defer rows.Close()
	out := []*iothub.Certificate{}
	for rows.Next() {
		c, err := ScanCert(rows)
		if err != nil {
			return nil, Wrap(prefix, op, err)
		}
		out = append(out, c)
	}
	return out, Wrap(prefix, op, rows.Err())
}

// CheckProduct validates the fields a product row needs and fills the
// authentication mode's default.
func CheckProduct(p *iothub.Product) error {
	if err := iothub.ValidateKey("productKey", p.ProductKey); err != nil {
		return err
	}
	if p.OrgID == "" {
		return Invalid("product needs an orgId")
	}
	if p.ProductSecret == "" {
		return Invalid("product secret must not be empty")
	}
	if p.AuthMode == "" {
		p.AuthMode = iothub.AuthSecret
	}
	if !p.AuthMode.Valid() {
		return Invalid("authMode must be %q or %q", iothub.AuthSecret, iothub.AuthCertificate)
	}
	if p.NodeType == "" {
		p.NodeType = iothub.NodeDevice
	}
	if !p.NodeType.Valid() {
		return Invalid("nodeType must be %q or %q", iothub.NodeDevice, iothub.NodeGateway)
	}
	for _, m := range p.SignMethods {
		if m == "" || strings.Contains(m, ",") {
			return Invalid("signMethods must be names of sign methods")
		}
	}
	if p.DeviceLimit < 0 || p.OfflineTimeoutSec < 0 || p.MaxCertDays < 0 {
		return Invalid("product limits must not be negative")
	}
	return nil
}

// Tx runs fn in a transaction on pool, committing if fn returns nil.
func Tx(ctx context.Context, pool *sql.DB, prefix string, fn func(tx *sql.Tx) error) error {
	tx, err := pool.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: begin: %w", prefix, err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: commit: %w", prefix, err)
	}
	return nil
}

// Wrap turns an unexpected driver error into an internal error naming the
// store (prefix) and op; an *iothub.Error passes unchanged.
func Wrap(prefix, op string, err error) error {
	if err == nil {
		return nil
	}
	var ie *iothub.Error
	if errors.As(err, &ie) {
		return err
	}
	return fmt.Errorf("%s: %s: %w", prefix, op, err)
}

// MS converts a time to unix milliseconds.
func MS(t time.Time) int64 { return t.UnixMilli() }

// FromMS converts unix milliseconds to a UTC time.
func FromMS(v int64) time.Time { return time.UnixMilli(v).UTC() }

// NullMS converts an optional time to a nullable column value.
func NullMS(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UnixMilli()
}

// TimePtr converts a nullable column to an optional time.
func TimePtr(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := FromMS(v.Int64)
	return &t
}

// TruncMS returns t cut to millisecond precision in UTC, or now() so cut
// if t is zero.
func TruncMS(t time.Time, now func() time.Time) time.Time {
	if t.IsZero() {
		t = now()
	}
	return FromMS(MS(t))
}

// Bool01 stores a boolean as INTEGER 0/1.
func Bool01(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ClampLimit applies a listing's default and maximum.
func ClampLimit(n, def, maxN int) int {
	switch {
	case n <= 0:
		return def
	case n > maxN:
		return maxN
	}
	return n
}

// NotFound is the ENOTFOUND error for a missing row.
func NotFound(format string, args ...any) error {
	return iothub.Errorf(iothub.ENOTFOUND, format, args...)
}

// Conflict is the ECONFLICT error for a taken key or a state clash.
func Conflict(format string, args ...any) error {
	return iothub.Errorf(iothub.ECONFLICT, format, args...)
}

// Invalid is the EINVALID error for bad input.
func Invalid(format string, args ...any) error {
	return iothub.Errorf(iothub.EINVALID, format, args...)
}
