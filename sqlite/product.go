package sqlite

import (
	"context"
	"database/sql"
	"errors"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/internal/sqlstore"
)

func (db *DB) scanProduct(row sqlstore.Scanner) (*iothub.Product, error) {
	return sqlstore.ScanProduct(row, db.sealer, "sqlite")
}

// CreateProduct stores p with its secret sealed. CreatedAt is set to now if
// zero. A taken ProductKey is ECONFLICT, an unknown org ENOTFOUND.
func (db *DB) CreateProduct(ctx context.Context, p *iothub.Product) error {
	if err := sqlstore.CheckProduct(p); err != nil {
		return err
	}
	created := db.truncMS(p.CreatedAt)
	sealed, err := db.sealer.Seal(p.ProductSecret, sqlstore.ProductAAD(p.ProductKey))
	if err != nil {
		return wrap("seal product secret", err)
	}
	_, err = db.write.ExecContext(ctx, `INSERT INTO products (`+sqlstore.ProductCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?)`,
		p.OrgID, p.ProductKey, sealed, p.Name, string(p.AuthMode), sqlstore.Bool01(p.DynamicActivation), sqlstore.Bool01(p.AutoRegister),
		p.DeviceLimit, p.OfflineTimeoutSec, p.MaxCertDays, sqlstore.MS(created))
	switch kind, _ := constraint(err); kind {
	case "unique":
		return sqlstore.Conflict("product %q already exists", p.ProductKey)
	case "foreign":
		return sqlstore.NotFound("org %q not found", p.OrgID)
	}
	if err != nil {
		return wrap("create product", err)
	}
	p.CreatedAt = created
	return nil
}

// Product returns the product with its secret in clear, or ENOTFOUND.
func (db *DB) Product(ctx context.Context, productKey string) (*iothub.Product, error) {
	p, err := db.scanProduct(db.stProduct.QueryRowContext(ctx, productKey))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, sqlstore.NotFound("product %q not found", productKey)
	}
	return p, wrap("product", err)
}

// Products lists an org's products ("" lists all) by ProductKey, secrets in clear.
func (db *DB) Products(ctx context.Context, orgID string) ([]*iothub.Product, error) {
	rows, err := db.read.QueryContext(ctx, `SELECT `+sqlstore.ProductCols+` FROM products
		WHERE ? = '' OR org_id = ? ORDER BY product_key`, orgID, orgID)
	if err != nil {
		return nil, wrap("products", err)
	}
	defer rows.Close()
	out := []*iothub.Product{}
	for rows.Next() {
		p, err := db.scanProduct(rows)
		if err != nil {
			return nil, wrap("products", err)
		}
		out = append(out, p)
	}
	return out, wrap("products", rows.Err())
}

// UpdateProduct rewrites a product's mutable fields: name, secret (sealed
// anew: this is how a ProductSecret is rotated), auth mode, activation
// flags and limits. OrgID must match the stored one; CreatedAt is kept.
func (db *DB) UpdateProduct(ctx context.Context, p *iothub.Product) error {
	if err := sqlstore.CheckProduct(p); err != nil {
		return err
	}
	sealed, err := db.sealer.Seal(p.ProductSecret, sqlstore.ProductAAD(p.ProductKey))
	if err != nil {
		return wrap("seal product secret", err)
	}
	return db.tx(ctx, func(tx *sql.Tx) error {
		var org string
		var created int64
		err := tx.QueryRowContext(ctx, `SELECT org_id, created_at FROM products WHERE product_key = ?`, p.ProductKey).Scan(&org, &created)
		if errors.Is(err, sql.ErrNoRows) {
			return sqlstore.NotFound("product %q not found", p.ProductKey)
		}
		if err != nil {
			return wrap("update product", err)
		}
		if org != p.OrgID {
			return sqlstore.Invalid("a product cannot move to another org")
		}
		_, err = tx.ExecContext(ctx, `UPDATE products SET product_secret = ?, name = ?, auth_mode = ?,
			dynamic_activation = ?, auto_register = ?, device_limit = ?, offline_timeout_sec = ?, max_cert_days = ?
			WHERE product_key = ?`,
			sealed, p.Name, string(p.AuthMode), sqlstore.Bool01(p.DynamicActivation), sqlstore.Bool01(p.AutoRegister),
			p.DeviceLimit, p.OfflineTimeoutSec, p.MaxCertDays, p.ProductKey)
		if err != nil {
			return wrap("update product", err)
		}
		p.CreatedAt = sqlstore.FromMS(created)
		return nil
	})
}

// DeleteProduct removes a product and its external CAs. It fails with
// ECONFLICT while the product has devices, ENOTFOUND if absent.
func (db *DB) DeleteProduct(ctx context.Context, productKey string) error {
	return db.tx(ctx, func(tx *sql.Tx) error {
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM devices WHERE product_key = ? LIMIT 1`, productKey).Scan(&one)
		if err == nil {
			return sqlstore.Conflict("product %q still has devices", productKey)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return wrap("delete product", err)
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM products WHERE product_key = ?`, productKey)
		if err != nil {
			return wrap("delete product", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return sqlstore.NotFound("product %q not found", productKey)
		}
		return nil
	})
}
