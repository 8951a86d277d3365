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
		mp, err := iothub.ParseMeasurepoints(s.Measurepoints)
		if err != nil {
			return nil, nil, err
		}
		id := iothub.DeviceID{ProductKey: s.ProductKey, DeviceKey: s.DeviceKey}
		if _, ok := byDevice[id]; !ok {
			order = append(order, id)
		}
		byDevice[id] = append(byDevice[id], SampleItem{MS(trunc(s.Time)), mp.Body, mp.Points})
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
		clean[name] = buf.String()
	}
	return c.setPairs(ctx, "attributes", productKey, deviceKey, clean)
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
	pairs, err := c.pairs(ctx, "attributes", productKey, deviceKey)
	if err != nil {
		return nil, err
	}
	out := make(map[string]json.RawMessage, len(pairs))
	for name, v := range pairs {
		out[name] = json.RawMessage(v)
	}
	return out, nil
}

// DeleteAttributes removes the named attributes (absent names are
// ignored). ENOTFOUND if the device is absent.
func (c *Core) DeleteAttributes(ctx context.Context, productKey, deviceKey string, names []string) error {
	return c.deletePairs(ctx, "attributes", productKey, deviceKey, names)
}

// SetTags merges tags (name to string value) into a device's tags.
// ENOTFOUND if the device is absent.
func (c *Core) SetTags(ctx context.Context, productKey, deviceKey string, tags map[string]string) error {
	for name := range tags {
		if name == "" {
			return Invalid("tag names must not be empty")
		}
	}
	return c.setPairs(ctx, "device_tags", productKey, deviceKey, tags)
}

// Tags returns a device's tags (empty for an unknown device).
func (c *Core) Tags(ctx context.Context, productKey, deviceKey string) (map[string]string, error) {
	return c.pairs(ctx, "device_tags", productKey, deviceKey)
}

// DeleteTags removes the named tags (absent names are ignored). ENOTFOUND
// if the device is absent.
func (c *Core) DeleteTags(ctx context.Context, productKey, deviceKey string, names []string) error {
	return c.deletePairs(ctx, "device_tags", productKey, deviceKey, names)
}

// setPairs upserts name/value rows of a device in table (attributes or
// device_tags, which share their columns).
func (c *Core) setPairs(ctx context.Context, table, productKey, deviceKey string, pairs map[string]string) error {
	for name, v := range pairs {
		if len(v) > iothub.MaxAttributeBytes || len(name) > iothub.MaxKeyLen {
			return iothub.Errorf(iothub.ETOOLARGE, "%s %.64q: value over %d bytes or name over %d", table, name, iothub.MaxAttributeBytes, iothub.MaxKeyLen)
		}
	}
	if len(pairs) > iothub.MaxAttributesPerDevice {
		return iothub.Errorf(iothub.ETOOLARGE, "a device holds at most %d %s", iothub.MaxAttributesPerDevice, table)
	}
	now := MS(c.cfg.Now())
	return c.tx(ctx, func(tx *sql.Tx) error {
		if err := c.cfg.DeviceExists(ctx, tx, productKey, deviceKey); err != nil {
			return err
		}
		if err := c.checkPairCount(ctx, tx, table, productKey, deviceKey, pairs); err != nil {
			return err
		}
		for name, v := range pairs {
			_, err := tx.ExecContext(ctx, c.q(`INSERT INTO `+table+` (product_key, device_key, name, value, updated_at)
				VALUES (?, ?, ?, ?, ?)
				ON CONFLICT (product_key, device_key, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`),
				productKey, deviceKey, name, v, now)
			if err != nil {
				return c.wrap("set "+table, err)
			}
		}
		return nil
	})
}

// checkPairCount fails with ETOOLARGE if merging names into the device's
// rows of table would pass MaxAttributesPerDevice (F6).
func (c *Core) checkPairCount(ctx context.Context, tx *sql.Tx, table, productKey, deviceKey string, names map[string]string) error {
	rows, err := tx.QueryContext(ctx, c.q(`SELECT name FROM `+table+` WHERE product_key = ? AND device_key = ?`), productKey, deviceKey)
	if err != nil {
		return c.wrap("set "+table, err)
	}
	defer rows.Close()
	n := len(names)
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return c.wrap("set "+table, err)
		}
		if _, dup := names[name]; !dup {
			n++
		}
	}
	if err := rows.Err(); err != nil {
		return c.wrap("set "+table, err)
	}
	if n > iothub.MaxAttributesPerDevice {
		return iothub.Errorf(iothub.ETOOLARGE, "a device holds at most %d %s", iothub.MaxAttributesPerDevice, table)
	}
	return nil
}

// pairs reads a device's name/value rows of table.
func (c *Core) pairs(ctx context.Context, table, productKey, deviceKey string) (map[string]string, error) {
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT name, value FROM `+table+`
		WHERE product_key = ? AND device_key = ?`), productKey, deviceKey)
	if err != nil {
		return nil, c.wrap(table, err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, v string
		if err := rows.Scan(&name, &v); err != nil {
			return nil, c.wrap(table, err)
		}
		out[name] = v
	}
	return out, c.wrap(table, rows.Err())
}

// deletePairs removes a device's named rows of table.
func (c *Core) deletePairs(ctx context.Context, table, productKey, deviceKey string, names []string) error {
	return c.tx(ctx, func(tx *sql.Tx) error {
		if err := c.cfg.DeviceExists(ctx, tx, productKey, deviceKey); err != nil {
			return err
		}
		for _, name := range names {
			if _, err := tx.ExecContext(ctx, c.q(`DELETE FROM `+table+` WHERE product_key = ? AND device_key = ? AND name = ?`),
				productKey, deviceKey, name); err != nil {
				return c.wrap("delete "+table, err)
			}
		}
		return nil
	})
}
