package sqlstore

import (
	"context"
	"encoding/json"
	"time"

	"github.com/iothub/iothub"
)

// appendTries bounds the retries of AppendChange when another writer took
// the next ID first.
const appendTries = 20

// AppendChange records e in the change log. Its ID is MAX(id)+1, taken in
// the insert itself: two writers racing for one ID meet at the primary key,
// the loser retries with the next, so an ID is never visible before a
// smaller one.
func (c *Core) AppendChange(ctx context.Context, e iothub.Event, at time.Time) (int64, error) {
	e.Change = 0
	data, err := json.Marshal(e)
	if err != nil {
		return 0, c.wrap("append change", err)
	}
	q := c.q(`INSERT INTO changes (id, time_ms, event)
		SELECT COALESCE(MAX(id), 0) + 1, ?, ? FROM changes RETURNING id`)
	for try := 0; ; try++ {
		var id int64
		err := c.cfg.Write.QueryRowContext(ctx, q, MS(at), string(data)).Scan(&id)
		if err == nil {
			return id, nil
		}
		if kind, _ := c.cfg.Constraint(err); kind != "unique" || try == appendTries {
			return 0, c.wrap("append change", err)
		}
	}
}

// ChangesAfter returns up to limit entries with an ID above after, oldest
// first. An entry that no longer decodes is returned with an empty event.
func (c *Core) ChangesAfter(ctx context.Context, after int64, limit int) ([]iothub.Change, error) {
	limit = ClampLimit(limit, DefaultPageSize, MaxPageSize)
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT id, time_ms, event FROM changes WHERE id > ? ORDER BY id LIMIT ?`), after, limit)
	if err != nil {
		return nil, c.wrap("changes", err)
	}
	defer rows.Close()
	var out []iothub.Change
	for rows.Next() {
		var ch iothub.Change
		var t int64
		var data string
		if err := rows.Scan(&ch.ID, &t, &data); err != nil {
			return nil, c.wrap("changes", err)
		}
		ch.Time = FromMS(t)
		if json.Unmarshal([]byte(data), &ch.Event) == nil {
			ch.Event.Change = ch.ID
		}
		out = append(out, ch)
	}
	return out, c.wrap("changes", rows.Err())
}

// LastChange returns the newest ID, 0 for an empty log.
func (c *Core) LastChange(ctx context.Context) (int64, error) {
	var id int64
	err := c.cfg.Read.QueryRowContext(ctx, `SELECT COALESCE(MAX(id), 0) FROM changes`).Scan(&id)
	return id, c.wrap("last change", err)
}

// PruneChanges deletes entries older than before but never the newest, so
// the next ID keeps growing.
func (c *Core) PruneChanges(ctx context.Context, before time.Time) error {
	_, err := c.cfg.Write.ExecContext(ctx, c.q(`DELETE FROM changes
		WHERE time_ms < ? AND id < (SELECT MAX(id) FROM changes)`), MS(before))
	return c.wrap("prune changes", err)
}
