package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"slices"

	"github.com/iothub/iothub"
)

// AppendEvents stores event posts and trims each device's history to its
// newest HistoryPerDevice events. The batch is checked first: a malformed
// event is EINVALID and nothing is written. Events of devices that do not
// exist (deleted meanwhile) are dropped. Devices are written in key order,
// so that two nodes appending for the same devices wait for each other
// instead of deadlocking.
func (c *Core) AppendEvents(ctx context.Context, events []iothub.DeviceEvent) error {
	type item struct {
		id, body string
		t        int64
	}
	byDevice := map[iothub.DeviceID][]item{}
	for _, e := range events {
		if e.ProductKey == "" || e.DeviceKey == "" {
			return Invalid("event must name its device")
		}
		if err := iothub.ValidateEventID(e.EventID); err != nil {
			return err
		}
		fields, err := iothub.ParseMeasurepoints(e.Events)
		if err != nil {
			return err
		}
		id := iothub.DeviceID{ProductKey: e.ProductKey, DeviceKey: e.DeviceKey}
		byDevice[id] = append(byDevice[id], item{e.EventID, fields.Body, MS(c.truncMS(e.Time))})
	}
	order := make([]iothub.DeviceID, 0, len(byDevice))
	for id := range byDevice {
		order = append(order, id)
	}
	slices.SortFunc(order, func(a, b iothub.DeviceID) int {
		return cmp.Or(cmp.Compare(a.ProductKey, b.ProductKey), cmp.Compare(a.DeviceKey, b.DeviceKey))
	})
	return c.tx(ctx, func(tx *sql.Tx) error {
		for _, id := range order {
			if err := c.cfg.DeviceExists(ctx, tx, id.ProductKey, id.DeviceKey); err != nil {
				if iothub.ErrorCode(err) == iothub.ENOTFOUND {
					continue
				}
				return err
			}
			var seq int64
			if err := tx.QueryRowContext(ctx, c.q(`SELECT COALESCE(MAX(seq), 0) FROM device_events
				WHERE product_key = ? AND device_key = ?`), id.ProductKey, id.DeviceKey).Scan(&seq); err != nil {
				return c.wrap("append events", err)
			}
			for _, it := range byDevice[id] {
				seq++
				if _, err := tx.ExecContext(ctx, c.q(`INSERT INTO device_events (product_key, device_key, seq, event_id, time_ms, events)
					VALUES (?, ?, ?, ?, ?, ?)`), id.ProductKey, id.DeviceKey, seq, it.id, it.t, it.body); err != nil {
					return c.wrap("append events", err)
				}
			}
			if seq > HistoryPerDevice {
				if _, err := tx.ExecContext(ctx, c.q(`DELETE FROM device_events WHERE product_key = ? AND device_key = ? AND seq <= ?`),
					id.ProductKey, id.DeviceKey, seq-HistoryPerDevice); err != nil {
					return c.wrap("append events", err)
				}
			}
		}
		return nil
	})
}

// RecentEvents returns a device's last events, newest first (in arrival
// order); limit defaults to DefaultSampleLimit and is capped at
// HistoryPerDevice.
func (c *Core) RecentEvents(ctx context.Context, productKey, deviceKey string, limit int) ([]iothub.DeviceEvent, error) {
	limit = ClampLimit(limit, DefaultSampleLimit, HistoryPerDevice)
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT event_id, time_ms, events FROM device_events
		WHERE product_key = ? AND device_key = ? ORDER BY seq DESC LIMIT ?`), productKey, deviceKey, limit)
	if err != nil {
		return nil, c.wrap("recent events", err)
	}
	defer rows.Close()
	out := []iothub.DeviceEvent{}
	for rows.Next() {
		e := iothub.DeviceEvent{ProductKey: productKey, DeviceKey: deviceKey}
		var t int64
		var body string
		if err := rows.Scan(&e.EventID, &t, &body); err != nil {
			return nil, c.wrap("recent events", err)
		}
		e.Time, e.Events = FromMS(t), json.RawMessage(body)
		out = append(out, e)
	}
	return out, c.wrap("recent events", rows.Err())
}
