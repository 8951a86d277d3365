package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/iothub/iothub"
)

// historyPage reads one page of a device's rows of table in (time_ms, seq)
// order: scan reads time_ms, seq and cols of each row and returns its
// size. It returns "" when the page is the last, else a non-empty marker
// (the caller's cursor is the last row's "time_ms.seq").
func (c *Core) historyPage(ctx context.Context, table, cols, pk, dk string, q iothub.HistoryQuery, scan func(rows *sql.Rows) (int, error)) (string, error) {
	where := []string{"product_key = ?", "device_key = ?"}
	args := []any{pk, dk}
	if !q.From.IsZero() {
		where, args = append(where, "time_ms >= ?"), append(args, MS(q.From))
	}
	if !q.To.IsZero() {
		where, args = append(where, "time_ms < ?"), append(args, MS(q.To))
	}
	if q.Cursor != "" {
		var ct, cs int64
		if _, err := fmt.Sscanf(q.Cursor, "%d.%d", &ct, &cs); err != nil || fmt.Sprintf("%d.%d", ct, cs) != q.Cursor {
			return "", Invalid("cursor %.32q is not a page cursor", q.Cursor)
		}
		where, args = append(where, "(time_ms > ? OR (time_ms = ? AND seq > ?))"), append(args, ct, ct, cs)
	}
	limit := ClampLimit(q.Limit, DefaultSampleLimit, HistoryPerDevice)
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT time_ms, seq, `+cols+` FROM `+table+`
		WHERE `+strings.Join(where, " AND ")+` ORDER BY time_ms, seq LIMIT ?`), append(args, limit+1)...)
	if err != nil {
		return "", c.wrap("history", err)
	}
	defer rows.Close()
	n, total := 0, 0
	var next string
	for rows.Next() {
		if n == limit {
			next = "more" // the extra row: there is a next page
			break
		}
		size, err := scan(rows)
		if err != nil {
			return "", c.wrap("history", err)
		}
		n++
		if total += size; total > iothub.MaxTelemetryReadBytes {
			next = "more" // F6: one read holds a bounded amount
			break
		}
	}
	return next, c.wrap("history", rows.Err())
}

// SampleHistory implements iothub.TelemetryStore.
func (c *Core) SampleHistory(ctx context.Context, pk, dk string, q iothub.HistoryQuery) ([]iothub.Sample, string, error) {
	out := []iothub.Sample{}
	var last string
	next, err := c.historyPage(ctx, "telemetry_samples", "measurepoints", pk, dk, q, func(rows *sql.Rows) (int, error) {
		var t, seq int64
		var m string
		if err := rows.Scan(&t, &seq, &m); err != nil {
			return 0, err
		}
		out = append(out, iothub.Sample{ProductKey: pk, DeviceKey: dk, Time: FromMS(t), Measurepoints: json.RawMessage(m)})
		last = fmt.Sprintf("%d.%d", t, seq)
		return len(m), nil
	})
	if next != "" {
		next = last
	}
	return out, next, err
}

// EventHistory implements iothub.TelemetryStore.
func (c *Core) EventHistory(ctx context.Context, pk, dk string, q iothub.HistoryQuery) ([]iothub.DeviceEvent, string, error) {
	out := []iothub.DeviceEvent{}
	var last string
	next, err := c.historyPage(ctx, "device_events", "event_id, events", pk, dk, q, func(rows *sql.Rows) (int, error) {
		var t, seq int64
		e := iothub.DeviceEvent{ProductKey: pk, DeviceKey: dk}
		var body string
		if err := rows.Scan(&t, &seq, &e.EventID, &body); err != nil {
			return 0, err
		}
		e.Time, e.Events = FromMS(t), json.RawMessage(body)
		out = append(out, e)
		last = fmt.Sprintf("%d.%d", t, seq)
		return len(body), nil
	})
	if next != "" {
		next = last
	}
	return out, next, err
}
