package sqlstore

import (
	"context"
	"database/sql"
	"time"
)

// UseRequest records digest until expires; ECONFLICT if it is recorded and
// not yet expired. Expired digests are purged on the way.
func (c *Core) UseRequest(ctx context.Context, digest string, expires time.Time) error {
	if digest == "" {
		return Invalid("request digest must not be empty")
	}
	now := MS(c.cfg.Now())
	return c.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, c.q(`DELETE FROM used_requests WHERE expires_at <= ?`), now); err != nil {
			return c.wrap("use request", err)
		}
		_, err := tx.ExecContext(ctx, c.q(`INSERT INTO used_requests (digest, expires_at) VALUES (?, ?)`), digest, MS(expires))
		if kind, _ := c.cfg.Constraint(err); kind == "unique" {
			return Conflict("this signed request was already used")
		}
		return c.wrap("use request", err)
	})
}
