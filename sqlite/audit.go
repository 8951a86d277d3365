package sqlite

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
	_, err := db.stAudit.ExecContext(ctx, sqlstore.MS(db.truncMS(e.Time)), e.OrgID, e.Kind, e.ProductKey, e.DeviceKey, e.Remote, e.Reason)
	return wrap("audit", err)
}

// AuditBatch records events in one transaction, in order.
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
		st := tx.StmtContext(ctx, db.stAudit)
		for _, e := range events {
			if _, err := st.ExecContext(ctx, sqlstore.MS(db.truncMS(e.Time)), e.OrgID, e.Kind, e.ProductKey, e.DeviceKey, e.Remote, e.Reason); err != nil {
				return wrap("audit", err)
			}
		}
		return nil
	})
}
