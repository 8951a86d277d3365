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

// AuditEvents returns an org's newest events first ("" lists every org);
// limit defaults to DefaultPageSize and is capped at MaxPageSize.
func (db *DB) AuditEvents(ctx context.Context, orgID string, limit int) ([]iothub.AuditEvent, error) {
	limit = sqlstore.ClampLimit(limit, DefaultPageSize, MaxPageSize)
	const cols = `SELECT id, time_ms, org_id, kind, product_key, device_key, remote, reason FROM audit_events`
	q, args := cols+` ORDER BY id DESC LIMIT $1`, []any{limit}
	if orgID != "" {
		q, args = cols+` WHERE org_id = $1 ORDER BY id DESC LIMIT $2`, []any{orgID, limit}
	}
	rows, err := db.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, wrap("audit events", err)
	}
	defer rows.Close()
	out := []iothub.AuditEvent{}
	for rows.Next() {
		var e iothub.AuditEvent
		var t int64
		if err := rows.Scan(&e.ID, &t, &e.OrgID, &e.Kind, &e.ProductKey, &e.DeviceKey, &e.Remote, &e.Reason); err != nil {
			return nil, wrap("audit events", err)
		}
		e.Time = sqlstore.FromMS(t)
		out = append(out, e)
	}
	return out, wrap("audit events", rows.Err())
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
