package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"strings"

	"github.com/iothub/iothub"
)

// CreateProduct stores p with its secret sealed. CreatedAt is set to now if
// zero. A taken ProductKey is ECONFLICT, an unknown org ENOTFOUND.
func (c *Core) CreateProduct(ctx context.Context, p *iothub.Product) error {
	if err := CheckProduct(p); err != nil {
		return err
	}
	created := c.truncMS(p.CreatedAt)
	sealed, err := c.cfg.Sealer.Seal(p.ProductSecret, ProductAAD(p.ProductKey))
	if err != nil {
		return c.wrap("seal product secret", err)
	}
	_, err = c.cfg.Write.ExecContext(ctx, c.q(`INSERT INTO products (`+ProductCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)`),
		p.OrgID, p.ProductKey, sealed, p.Name, string(p.AuthMode), Bool01(p.DynamicActivation), Bool01(p.AutoRegister),
		p.DeviceLimit, p.OfflineTimeoutSec, p.MaxCertDays, MS(created),
		string(p.NodeType), Bool01(p.AllowGatewayRegistration), strings.Join(p.SignMethods, ","))
	switch kind, _ := c.cfg.Constraint(err); kind {
	case "unique":
		return Conflict("product %q already exists", p.ProductKey)
	case "foreign":
		return NotFound("org %q not found", p.OrgID)
	}
	if err != nil {
		return c.wrap("create product", err)
	}
	p.CreatedAt = created
	return nil
}

// Products lists an org's products ("" lists all) by ProductKey, secrets in clear.
func (c *Core) Products(ctx context.Context, orgID string) ([]*iothub.Product, error) {
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT `+ProductCols+` FROM products
		WHERE ? = '' OR org_id = ? ORDER BY product_key`), orgID, orgID)
	if err != nil {
		return nil, c.wrap("products", err)
	}
	defer rows.Close()
	out := []*iothub.Product{}
	for rows.Next() {
		p, err := ScanProduct(rows, c.cfg.Sealer, c.cfg.Name)
		if err != nil {
			return nil, c.wrap("products", err)
		}
		out = append(out, p)
	}
	return out, c.wrap("products", rows.Err())
}

// UpdateProduct rewrites a product's mutable fields: name, secret (sealed
// anew: this is how a ProductSecret is rotated), auth mode, activation
// flags, sign methods and limits. OrgID must match the stored one;
// CreatedAt and NodeType are kept (fixed at creation).
func (c *Core) UpdateProduct(ctx context.Context, p *iothub.Product) error {
	if err := CheckProduct(p); err != nil {
		return err
	}
	sealed, err := c.cfg.Sealer.Seal(p.ProductSecret, ProductAAD(p.ProductKey))
	if err != nil {
		return c.wrap("seal product secret", err)
	}
	return c.tx(ctx, func(tx *sql.Tx) error {
		var org, node string
		var created int64
		err := tx.QueryRowContext(ctx, c.q(`SELECT org_id, created_at, node_type FROM products WHERE product_key = ?`+c.cfg.ForUpdate), p.ProductKey).Scan(&org, &created, &node)
		if errors.Is(err, sql.ErrNoRows) {
			return NotFound("product %q not found", p.ProductKey)
		}
		if err != nil {
			return c.wrap("update product", err)
		}
		if org != p.OrgID {
			return Invalid("a product cannot move to another org")
		}
		_, err = tx.ExecContext(ctx, c.q(`UPDATE products SET product_secret = ?, name = ?, auth_mode = ?,
			dynamic_activation = ?, auto_register = ?, device_limit = ?, offline_timeout_sec = ?, max_cert_days = ?,
			allow_gateway_registration = ?, sign_methods = ?
			WHERE product_key = ?`),
			sealed, p.Name, string(p.AuthMode), Bool01(p.DynamicActivation), Bool01(p.AutoRegister),
			p.DeviceLimit, p.OfflineTimeoutSec, p.MaxCertDays,
			Bool01(p.AllowGatewayRegistration), strings.Join(p.SignMethods, ","), p.ProductKey)
		if err != nil {
			return c.wrap("update product", err)
		}
		p.CreatedAt, p.NodeType = FromMS(created), iothub.NodeType(node)
		return nil
	})
}

// DeleteProduct removes a product and its external CAs. It fails with
// ECONFLICT while the product has devices, ENOTFOUND if absent.
func (c *Core) DeleteProduct(ctx context.Context, productKey string) error {
	return c.tx(ctx, func(tx *sql.Tx) error {
		var one int
		err := tx.QueryRowContext(ctx, c.q(`SELECT 1 FROM devices WHERE product_key = ? LIMIT 1`), productKey).Scan(&one)
		if err == nil {
			return Conflict("product %q still has devices", productKey)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return c.wrap("delete product", err)
		}
		res, err := tx.ExecContext(ctx, c.q(`DELETE FROM products WHERE product_key = ?`), productKey)
		if kind, _ := c.cfg.Constraint(err); kind == "foreign" { // a device arrived meanwhile
			return Conflict("product %q still has devices", productKey)
		}
		if err != nil {
			return c.wrap("delete product", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return NotFound("product %q not found", productKey)
		}
		// Its devices are gone, and their upgrade entries with them.
		for _, table := range []string{"ota_jobs", "firmwares", "thing_models"} {
			if _, err := tx.ExecContext(ctx, c.q(`DELETE FROM `+table+` WHERE product_key = ?`), productKey); err != nil {
				return c.wrap("delete product", err)
			}
		}
		return nil
	})
}
