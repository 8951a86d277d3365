package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"time"

	"github.com/iothub/iothub"
)

// HistoryPerDevice is how many posts AppendSamples keeps per device; older
// ones are trimmed as new ones arrive.
const HistoryPerDevice = 1000

// DefaultSampleLimit is how many posts RecentSamples returns when the
// caller gives no limit.
const DefaultSampleLimit = 100

// ParsePoints decodes a measurepoint post, a JSON object of name to value,
// and returns it and each value in compact form.
func ParsePoints(raw json.RawMessage) (string, map[string]string, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return "", nil, Invalid("measurepoints must be a JSON object")
	}
	var buf bytes.Buffer
	points := make(map[string]string, len(m))
	for name, v := range m {
		if name == "" {
			return "", nil, Invalid("measurepoint names must not be empty")
		}
		buf.Reset()
		_ = json.Compact(&buf, v) // valid: Unmarshal accepted it
		points[name] = buf.String()
	}
	buf.Reset()
	_ = json.Compact(&buf, raw)
	return buf.String(), points, nil
}

// SampleItem is one checked post of a batch: its time in milliseconds, its
// compact body and each point's compact value.
type SampleItem struct {
	T      int64
	Body   string
	Points map[string]string
}

// GroupSamples checks a batch and groups its posts by device, devices in
// order of first appearance; times are cut by trunc. A malformed sample is
// EINVALID.
func GroupSamples(samples []iothub.Sample, trunc func(time.Time) time.Time) ([]iothub.DeviceID, map[iothub.DeviceID][]SampleItem, error) {
	byDevice := map[iothub.DeviceID][]SampleItem{}
	var order []iothub.DeviceID
	for _, s := range samples {
		if s.ProductKey == "" || s.DeviceKey == "" {
			return nil, nil, Invalid("sample must name its device")
		}
		body, points, err := ParsePoints(s.Measurepoints)
		if err != nil {
			return nil, nil, err
		}
		id := iothub.DeviceID{ProductKey: s.ProductKey, DeviceKey: s.DeviceKey}
		if _, ok := byDevice[id]; !ok {
			order = append(order, id)
		}
		byDevice[id] = append(byDevice[id], SampleItem{MS(trunc(s.Time)), body, points})
	}
	return order, byDevice, nil
}

// LatestPoints returns the latest value of each of a device's points by
// name (empty for an unknown device).
func (c *Core) LatestPoints(ctx context.Context, productKey, deviceKey string) ([]iothub.Point, error) {
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT name, value, time_ms FROM telemetry_points
		WHERE product_key = ? AND device_key = ? ORDER BY name`), productKey, deviceKey)
	if err != nil {
		return nil, c.wrap("latest points", err)
	}
	defer rows.Close()
	out := []iothub.Point{}
	for rows.Next() {
		var p iothub.Point
		var v string
		var t int64
		if err := rows.Scan(&p.Name, &v, &t); err != nil {
			return nil, c.wrap("latest points", err)
		}
		p.Value, p.Time = json.RawMessage(v), FromMS(t)
		out = append(out, p)
	}
	return out, c.wrap("latest points", rows.Err())
}

// RecentSamples returns a device's last posts, newest first (in arrival
// order); limit defaults to DefaultSampleLimit and is capped at
// HistoryPerDevice.
func (c *Core) RecentSamples(ctx context.Context, productKey, deviceKey string, limit int) ([]iothub.Sample, error) {
	limit = ClampLimit(limit, DefaultSampleLimit, HistoryPerDevice)
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT time_ms, measurepoints FROM telemetry_samples
		WHERE product_key = ? AND device_key = ? ORDER BY seq DESC LIMIT ?`), productKey, deviceKey, limit)
	if err != nil {
		return nil, c.wrap("recent samples", err)
	}
	defer rows.Close()
	out := []iothub.Sample{}
	total := 0
	for rows.Next() {
		var t int64
		var m string
		if err := rows.Scan(&t, &m); err != nil {
			return nil, c.wrap("recent samples", err)
		}
		if total += len(m); total > iothub.MaxTelemetryReadBytes && len(out) > 0 {
			break // F6: one read holds a bounded amount
		}
		out = append(out, iothub.Sample{ProductKey: productKey, DeviceKey: deviceKey, Time: FromMS(t), Measurepoints: json.RawMessage(m)})
	}
	return out, c.wrap("recent samples", rows.Err())
}

// SetAttributes merges attrs into a device's attributes; every value must
// be JSON. ENOTFOUND if the device is absent.
func (c *Core) SetAttributes(ctx context.Context, productKey, deviceKey string, attrs map[string]json.RawMessage) error {
	clean := make(map[string]string, len(attrs))
	var buf bytes.Buffer
	for name, v := range attrs {
		if name == "" {
			return Invalid("attribute names must not be empty")
		}
		buf.Reset()
		if err := json.Compact(&buf, v); err != nil {
			return Invalid("attribute %q is not valid JSON", name)
		}
		if buf.Len() > iothub.MaxAttributeBytes || len(name) > iothub.MaxKeyLen {
			return iothub.Errorf(iothub.ETOOLARGE, "attribute %.64q is over %d bytes (or its name over %d)", name, iothub.MaxAttributeBytes, iothub.MaxKeyLen)
		}
		clean[name] = buf.String()
	}
	if len(clean) > iothub.MaxAttributesPerDevice {
		return iothub.Errorf(iothub.ETOOLARGE, "a device holds at most %d attributes", iothub.MaxAttributesPerDevice)
	}
	now := MS(c.cfg.Now())
	return c.tx(ctx, func(tx *sql.Tx) error {
		if err := c.cfg.DeviceExists(ctx, tx, productKey, deviceKey); err != nil {
			return err
		}
		if err := c.checkAttributeCount(ctx, tx, productKey, deviceKey, clean); err != nil {
			return err
		}
		for name, v := range clean {
			_, err := tx.ExecContext(ctx, c.q(`INSERT INTO attributes (product_key, device_key, name, value, updated_at)
				VALUES (?, ?, ?, ?, ?)
				ON CONFLICT (product_key, device_key, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`),
				productKey, deviceKey, name, v, now)
			if err != nil {
				return c.wrap("set attributes", err)
			}
		}
		return nil
	})
}

// checkAttributeCount fails with ETOOLARGE if merging names into the
// device's attributes would pass MaxAttributesPerDevice.
func (c *Core) checkAttributeCount(ctx context.Context, tx *sql.Tx, productKey, deviceKey string, names map[string]string) error {
	rows, err := tx.QueryContext(ctx, c.q(`SELECT name FROM attributes WHERE product_key = ? AND device_key = ?`), productKey, deviceKey)
	if err != nil {
		return c.wrap("set attributes", err)
	}
	defer rows.Close()
	n := len(names)
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return c.wrap("set attributes", err)
		}
		if _, dup := names[name]; !dup {
			n++
		}
	}
	if err := rows.Err(); err != nil {
		return c.wrap("set attributes", err)
	}
	if n > iothub.MaxAttributesPerDevice {
		return iothub.Errorf(iothub.ETOOLARGE, "a device holds at most %d attributes", iothub.MaxAttributesPerDevice)
	}
	return nil
}

// Attributes returns a device's attributes (empty for an unknown device).
func (c *Core) Attributes(ctx context.Context, productKey, deviceKey string) (map[string]json.RawMessage, error) {
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT name, value FROM attributes
		WHERE product_key = ? AND device_key = ?`), productKey, deviceKey)
	if err != nil {
		return nil, c.wrap("attributes", err)
	}
	defer rows.Close()
	out := map[string]json.RawMessage{}
	for rows.Next() {
		var name, v string
		if err := rows.Scan(&name, &v); err != nil {
			return nil, c.wrap("attributes", err)
		}
		out[name] = json.RawMessage(v)
	}
	return out, c.wrap("attributes", rows.Err())
}

// DeleteAttributes removes the named attributes (absent names are
// ignored). ENOTFOUND if the device is absent.
func (c *Core) DeleteAttributes(ctx context.Context, productKey, deviceKey string, names []string) error {
	return c.tx(ctx, func(tx *sql.Tx) error {
		if err := c.cfg.DeviceExists(ctx, tx, productKey, deviceKey); err != nil {
			return err
		}
		for _, name := range names {
			if _, err := tx.ExecContext(ctx, c.q(`DELETE FROM attributes WHERE product_key = ? AND device_key = ? AND name = ?`),
				productKey, deviceKey, name); err != nil {
				return c.wrap("delete attributes", err)
			}
		}
		return nil
	})
}
