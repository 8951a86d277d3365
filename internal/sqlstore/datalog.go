package sqlstore

import (
	"context"
	"database/sql"
	"strings"
	"time"

	"github.com/iothub/iothub"
)

// DefaultDataLimit is how many changes Changes returns when the filter
// gives no limit; MaxDataLimit caps it.
const (
	DefaultDataLimit = 500
	MaxDataLimit     = 5000
)

// AppendData implements iothub.DataLog. The change_seq row lock
// is held until commit, so a later id never commits before an earlier one.
func (c *Core) AppendData(ctx context.Context, changes []iothub.DataChange) error {
	if len(changes) == 0 {
		return nil
	}
	now := MS(c.cfg.Now())
	return c.tx(ctx, func(tx *sql.Tx) error {
		var last int64
		if err := tx.QueryRowContext(ctx, c.q(`UPDATE change_seq SET last = last + ? WHERE one = 1 RETURNING last`),
			len(changes)).Scan(&last); err != nil {
			return c.wrap("append changes", err)
		}
		st, err := tx.PrepareContext(ctx, c.q(`INSERT INTO change_log (id, org_id, kind, product_key, device_key, time_ms, data, created_at)
			SELECT ?, org_id, ?, ?, ?, ?, ?, ? FROM products WHERE product_key = ?`))
		if err != nil {
			return c.wrap("append changes", err)
		}
		defer st.Close()
		id := last - int64(len(changes))
		for i := range changes {
			id++
			ch := &changes[i]
			if _, err := st.ExecContext(ctx, id, string(ch.Kind), ch.ProductKey, ch.DeviceKey, MS(ch.Time), string(ch.Data), now, ch.ProductKey); err != nil {
				return c.wrap("append changes", err)
			}
			ch.ID = id
		}
		return nil
	})
}

// DataAfter implements iothub.DataLog.
func (c *Core) DataAfter(ctx context.Context, f iothub.DataFilter) ([]iothub.DataChange, error) {
	where := []string{"id > ?"}
	args := []any{f.After}
	for _, col := range []struct{ name, v string }{{"org_id", f.OrgID}, {"product_key", f.ProductKey}, {"device_key", f.DeviceKey}} {
		if col.v != "" {
			where = append(where, col.name+" = ?")
			args = append(args, col.v)
		}
	}
	if len(f.Kinds) > 0 && len(f.Kinds) < len(iothub.DataKinds) {
		where = append(where, "kind IN (?"+strings.Repeat(",?", len(f.Kinds)-1)+")")
		for _, k := range f.Kinds {
			args = append(args, string(k))
		}
	}
	args = append(args, ClampLimit(f.Limit, DefaultDataLimit, MaxDataLimit))
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT id, org_id, kind, product_key, device_key, time_ms, data
		FROM change_log WHERE `+strings.Join(where, " AND ")+` ORDER BY id LIMIT ?`), args...)
	if err != nil {
		return nil, c.wrap("changes", err)
	}
	defer rows.Close()
	out := []iothub.DataChange{}
	for rows.Next() {
		var ch iothub.DataChange
		var kind, data string
		var t int64
		if err := rows.Scan(&ch.ID, &ch.OrgID, &kind, &ch.ProductKey, &ch.DeviceKey, &t, &data); err != nil {
			return nil, c.wrap("changes", err)
		}
		ch.Kind, ch.Time, ch.Data = iothub.DataKind(kind), FromMS(t), []byte(data)
		out = append(out, ch)
	}
	return out, c.wrap("changes", rows.Err())
}

// DataBounds implements iothub.DataLog.
func (c *Core) DataBounds(ctx context.Context) (oldest, newest int64, err error) {
	err = c.cfg.Read.QueryRowContext(ctx, `SELECT COALESCE((SELECT MIN(id) FROM change_log), 0),
		(SELECT last FROM change_seq WHERE one = 1)`).Scan(&oldest, &newest)
	return oldest, newest, c.wrap("change bounds", err)
}

// TrimData implements iothub.DataLog.
func (c *Core) TrimData(ctx context.Context, before time.Time) error {
	_, err := c.cfg.Write.ExecContext(ctx, c.q(`DELETE FROM change_log WHERE created_at < ?`), MS(before))
	return c.wrap("trim changes", err)
}

// ruleAAD binds a sealed webhook secret to its rule.
func ruleAAD(id string) string { return "rule\x00" + id }

const ruleCols = `id, org_id, name, product_key, kinds, webhook_url, webhook_secret, nats_subject,
	cursor, delivered, failures, last_error, last_error_at, created_at`

// CreateRule implements iothub.DataLog.
func (c *Core) CreateRule(ctx context.Context, r *iothub.Rule) error {
	var url, secret, subject string
	if r.Webhook != nil {
		sealed, err := c.cfg.Sealer.Seal(r.Webhook.Secret, ruleAAD(r.ID))
		if err != nil {
			return c.wrap("seal webhook secret", err)
		}
		url, secret = r.Webhook.URL, sealed
	}
	if r.NATS != nil {
		subject = r.NATS.Subject
	}
	kinds := make([]string, len(r.Kinds))
	for i, k := range r.Kinds {
		kinds[i] = string(k)
	}
	created := c.truncMS(r.CreatedAt)
	_, err := c.cfg.Write.ExecContext(ctx, c.q(`INSERT INTO forwarding_rules (id, org_id, name, product_key, kinds,
		webhook_url, webhook_secret, nats_subject, cursor, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, (SELECT last FROM change_seq WHERE one = 1), ?)`),
		r.ID, r.OrgID, r.Name, r.ProductKey, strings.Join(kinds, ","), url, secret, subject, MS(created))
	switch kind, _ := c.cfg.Constraint(err); kind {
	case "unique":
		return Conflict("rule %q already exists", r.ID)
	case "foreign":
		return NotFound("org %q not found", r.OrgID)
	}
	if err != nil {
		return c.wrap("create rule", err)
	}
	r.CreatedAt = created
	return nil
}

// Rule implements iothub.DataLog.
func (c *Core) Rule(ctx context.Context, orgID, id string) (*iothub.Rule, error) {
	rules, err := c.rules(ctx, `(? = '' OR org_id = ?) AND id = ?`, orgID, orgID, id)
	if err != nil {
		return nil, err
	}
	if len(rules) == 0 {
		return nil, NotFound("rule %q not found", id)
	}
	return rules[0], nil
}

// Rules implements iothub.DataLog.
func (c *Core) Rules(ctx context.Context, orgID string) ([]*iothub.Rule, error) {
	return c.rules(ctx, `? = '' OR org_id = ?`, orgID, orgID)
}

func (c *Core) rules(ctx context.Context, where string, args ...any) ([]*iothub.Rule, error) {
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT `+ruleCols+` FROM forwarding_rules WHERE `+where+` ORDER BY created_at, id`), args...)
	if err != nil {
		return nil, c.wrap("rules", err)
	}
	defer rows.Close()
	out := []*iothub.Rule{}
	for rows.Next() {
		var r iothub.Rule
		var kinds, url, secret, subject string
		var created, lastErrAt int64
		if err := rows.Scan(&r.ID, &r.OrgID, &r.Name, &r.ProductKey, &kinds, &url, &secret, &subject,
			&r.Status.Cursor, &r.Status.Delivered, &r.Status.Failures, &r.Status.LastError, &lastErrAt, &created); err != nil {
			return nil, c.wrap("rules", err)
		}
		for _, k := range strings.Split(kinds, ",") {
			r.Kinds = append(r.Kinds, iothub.DataKind(k))
		}
		if url != "" {
			plain, err := c.cfg.Sealer.Open(secret, ruleAAD(r.ID))
			if err != nil {
				return nil, c.wrap("open webhook secret", err)
			}
			r.Webhook = &iothub.Webhook{URL: url, Secret: plain}
		}
		if subject != "" {
			r.NATS = &iothub.NATSTarget{Subject: subject}
		}
		if lastErrAt > 0 {
			t := FromMS(lastErrAt)
			r.Status.LastErrorAt = &t
		}
		r.Status.Failing = r.Status.Failures > 0
		r.CreatedAt = FromMS(created)
		out = append(out, &r)
	}
	return out, c.wrap("rules", rows.Err())
}

// DeleteRule implements iothub.DataLog.
func (c *Core) DeleteRule(ctx context.Context, orgID, id string) error {
	res, err := c.cfg.Write.ExecContext(ctx, c.q(`DELETE FROM forwarding_rules WHERE (? = '' OR org_id = ?) AND id = ?`), orgID, orgID, id)
	if err != nil {
		return c.wrap("delete rule", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return NotFound("rule %q not found", id)
	}
	return nil
}

// LeaseRule implements iothub.DataLog.
func (c *Core) LeaseRule(ctx context.Context, id, owner string, now, until time.Time) (bool, error) {
	res, err := c.cfg.Write.ExecContext(ctx, c.q(`UPDATE forwarding_rules SET lease_owner = ?, lease_until = ?
		WHERE id = ? AND (lease_owner = ? OR lease_until < ?)`), owner, MS(until), id, owner, MS(now))
	if err != nil {
		return false, c.wrap("lease rule", err)
	}
	n, err := res.RowsAffected()
	return n == 1, c.wrap("lease rule", err)
}

// RuleDelivered implements iothub.DataLog.
func (c *Core) RuleDelivered(ctx context.Context, id string, cursor int64, n int) error {
	_, err := c.cfg.Write.ExecContext(ctx, c.q(`UPDATE forwarding_rules SET cursor = ?, delivered = delivered + ?, failures = 0
		WHERE id = ? AND cursor < ?`), cursor, n, id, cursor)
	return c.wrap("rule delivered", err)
}

// RuleFailed implements iothub.DataLog.
func (c *Core) RuleFailed(ctx context.Context, id, msg string, at time.Time) error {
	_, err := c.cfg.Write.ExecContext(ctx, c.q(`UPDATE forwarding_rules SET failures = failures + 1, last_error = ?, last_error_at = ?
		WHERE id = ?`), msg, MS(at), id)
	return c.wrap("rule failed", err)
}
