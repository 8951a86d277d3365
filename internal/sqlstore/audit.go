package sqlstore

import (
	"context"

	"github.com/iothub/iothub"
)

// AuditEvents returns an org's newest events first ("" lists every org);
// limit defaults to DefaultPageSize and is capped at MaxPageSize.
func (c *Core) AuditEvents(ctx context.Context, orgID string, limit int) ([]iothub.AuditEvent, error) {
	limit = ClampLimit(limit, DefaultPageSize, MaxPageSize)
	const cols = `SELECT id, time_ms, org_id, kind, product_key, device_key, remote, reason FROM audit_events`
	q, args := cols+` ORDER BY id DESC LIMIT ?`, []any{limit}
	if orgID != "" {
		q, args = cols+` WHERE org_id = ? ORDER BY id DESC LIMIT ?`, []any{orgID, limit}
	}
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(q), args...)
	if err != nil {
		return nil, c.wrap("audit events", err)
	}
	defer rows.Close()
	out := []iothub.AuditEvent{}
	for rows.Next() {
		var e iothub.AuditEvent
		var t int64
		if err := rows.Scan(&e.ID, &t, &e.OrgID, &e.Kind, &e.ProductKey, &e.DeviceKey, &e.Remote, &e.Reason); err != nil {
			return nil, c.wrap("audit events", err)
		}
		e.Time = FromMS(t)
		out = append(out, e)
	}
	return out, c.wrap("audit events", rows.Err())
}
