package postgres

import (
	"context"
	"database/sql"
	"errors"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/internal/sqlstore"
)

func (db *DB) scanProduct(row sqlstore.Scanner) (*iothub.Product, error) {
	return sqlstore.ScanProduct(row, db.sealer, "postgres")
}

// Product returns the product with its secret in clear, or ENOTFOUND.
func (db *DB) Product(ctx context.Context, productKey string) (*iothub.Product, error) {
	p, err := db.scanProduct(db.db.QueryRowContext(ctx, `SELECT `+sqlstore.ProductCols+` FROM products WHERE product_key = $1`, productKey))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, sqlstore.NotFound("product %q not found", productKey)
	}
	return p, wrap("product", err)
}
