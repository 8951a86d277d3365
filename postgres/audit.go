package postgres

import (
	"context"
	"database/sql"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/internal/sqlstore"
)

// Audit records e; a zero Time is set to now. Ids grow by one per event.
func (db *DB) Audit(ctx context.Context, e iothub.AuditEvent) error {
	if e.Kind == "" {
		return sqlstore.Invalid("audit event needs a kind")
	}
	// Ids grow by one across every node: they are allotted under an
	// advisory lock held until commit.
	return db.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1, 0)`, lockAudit); err != nil {
			return wrap("audit", err)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO audit_events (id, time_ms, org_id, kind, product_key, device_key, remote, reason)
			SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, $5, $6, $7 FROM audit_events`,
			sqlstore.MS(db.truncMS(e.Time)), e.OrgID, e.Kind, e.ProductKey, e.DeviceKey, e.Remote, e.Reason)
		return wrap("audit", err)
	})
}

// AuditBatch records events in one transaction, in order, with ids
// allotted under the same lock as Audit.
func (db *DB) AuditBatch(ctx context.Context, events []iothub.AuditEvent) error {
	for _, e := range events {
		if e.Kind == "" {
			return sqlstore.Invalid("audit event needs a kind")
		}
	}
	if len(events) == 0 {
		return nil
	}
	return db.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1, 0)`, lockAudit); err != nil {
			return wrap("audit", err)
		}
		for _, e := range events {
			if _, err := tx.ExecContext(ctx, `INSERT INTO audit_events (id, time_ms, org_id, kind, product_key, device_key, remote, reason)
				SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, $5, $6, $7 FROM audit_events`,
				sqlstore.MS(db.truncMS(e.Time)), e.OrgID, e.Kind, e.ProductKey, e.DeviceKey, e.Remote, e.Reason); err != nil {
				return wrap("audit", err)
			}
		}
		return nil
	})
}
