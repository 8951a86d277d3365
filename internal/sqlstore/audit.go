package sqlstore

import (
	"context"
	"strings"

	"github.com/iothub/iothub"
)

// AuditEvents returns an org's newest events first ("" lists every org);
// limit defaults to DefaultPageSize and is capped at MaxPageSize.
func (c *Core) AuditEvents(ctx context.Context, orgID string, limit int) ([]iothub.AuditEvent, error) {
	return c.SearchAudit(ctx, iothub.AuditFilter{OrgID: orgID, Limit: limit})
}

// SearchAudit returns the events f selects, newest first (oldest first
// when f.After is set); f.Limit defaults to DefaultPageSize and is capped
// at MaxPageSize.
func (c *Core) SearchAudit(ctx context.Context, f iothub.AuditFilter) ([]iothub.AuditEvent, error) {
	var where []string
	var args []any
	cond := func(sql string, v any) {
		where = append(where, sql)
		args = append(args, v)
	}
	if f.OrgID != "" {
		cond("org_id = ?", f.OrgID)
	}
	if strings.HasSuffix(f.Kind, ".") {
		where = append(where, "substr(kind, 1, ?) = ?")
		args = append(args, len(f.Kind), f.Kind)
	} else if f.Kind != "" {
		cond("kind = ?", f.Kind)
	}
	if f.ProductKey != "" {
		cond("product_key = ?", f.ProductKey)
	}
	if f.DeviceKey != "" {
		cond("device_key = ?", f.DeviceKey)
	}
	if !f.Since.IsZero() {
		cond("time_ms >= ?", MS(f.Since))
	}
	if !f.Until.IsZero() {
		cond("time_ms < ?", MS(f.Until))
	}
	if f.Before > 0 {
		cond("id < ?", f.Before)
	}
	order := "DESC"
	if f.After > 0 {
		cond("id > ?", f.After)
		order = "ASC"
	}
	q := `SELECT id, time_ms, org_id, kind, product_key, device_key, remote, reason FROM audit_events`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY id " + order + " LIMIT ?"
	args = append(args, ClampLimit(f.Limit, DefaultPageSize, MaxPageSize))
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
