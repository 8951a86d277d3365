package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/internal/sqlstore"
)

// HistoryPerDevice is how many posts AppendSamples keeps per device; older
// ones are trimmed as new ones arrive.
const HistoryPerDevice = 1000

// DefaultSampleLimit is how many posts RecentSamples returns when the
// caller gives no limit.
const DefaultSampleLimit = 100

// parsePoints decodes a measurepoint post, a JSON object of name to value,
// and returns it and each value in compact form.
func parsePoints(raw json.RawMessage) (string, map[string]string, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return "", nil, sqlstore.Invalid("measurepoints must be a JSON object")
	}
	var buf bytes.Buffer
	points := make(map[string]string, len(m))
	for name, v := range m {
		if name == "" {
			return "", nil, sqlstore.Invalid("measurepoint names must not be empty")
		}
		buf.Reset()
		_ = json.Compact(&buf, v) // valid: Unmarshal accepted it
		points[name] = buf.String()
	}
	buf.Reset()
	_ = json.Compact(&buf, raw)
	return buf.String(), points, nil
}

// AppendSamples stores posts, updates the latest value of each point (a
// value older than the stored one is kept out) and trims each device's
// history to its newest HistoryPerDevice posts. The batch is checked first:
// a malformed sample is EINVALID and nothing is written. Samples of devices
// that do not exist (deleted meanwhile) are dropped.
func (db *DB) AppendSamples(ctx context.Context, samples []iothub.Sample) error {
	type item struct {
		t      int64
		body   string
		points map[string]string
	}
	byDevice := map[iothub.DeviceID][]item{}
	var order []iothub.DeviceID
	for _, s := range samples {
		if s.ProductKey == "" || s.DeviceKey == "" {
			return sqlstore.Invalid("sample must name its device")
		}
		body, points, err := parsePoints(s.Measurepoints)
		if err != nil {
			return err
		}
		id := iothub.DeviceID{ProductKey: s.ProductKey, DeviceKey: s.DeviceKey}
		if _, ok := byDevice[id]; !ok {
			order = append(order, id)
		}
		byDevice[id] = append(byDevice[id], item{sqlstore.MS(db.truncMS(s.Time)), body, points})
	}
	if len(order) == 0 {
		return nil
	}
	return db.tx(ctx, func(tx *sql.Tx) error {
		lastSeq := tx.StmtContext(ctx, db.stLastSeq)
		insert := tx.StmtContext(ctx, db.stInsertSample)
		trim := tx.StmtContext(ctx, db.stTrimSamples)
		upsert := tx.StmtContext(ctx, db.stUpsertPoint)
		for _, id := range order {
			var exists bool
			var seq int64
			if err := lastSeq.QueryRowContext(ctx, id.ProductKey, id.DeviceKey).Scan(&exists, &seq); err != nil {
				return wrap("append samples", err)
			}
			if !exists {
				continue
			}
			for _, it := range byDevice[id] {
				seq++
				if _, err := insert.ExecContext(ctx, id.ProductKey, id.DeviceKey, seq, it.t, it.body); err != nil {
					return wrap("append samples", err)
				}
				for name, v := range it.points {
					if _, err := upsert.ExecContext(ctx, id.ProductKey, id.DeviceKey, name, v, it.t); err != nil {
						return wrap("append samples", err)
					}
				}
			}
			if seq > HistoryPerDevice {
				if _, err := trim.ExecContext(ctx, id.ProductKey, id.DeviceKey, seq-HistoryPerDevice); err != nil {
					return wrap("append samples", err)
				}
			}
		}
		return nil
	})
}

// LatestPoints returns the latest value of each of a device's points by
// name (empty for an unknown device).
func (db *DB) LatestPoints(ctx context.Context, productKey, deviceKey string) ([]iothub.Point, error) {
	rows, err := db.read.QueryContext(ctx, `SELECT name, value, time_ms FROM telemetry_points
		WHERE product_key = ? AND device_key = ? ORDER BY name`, productKey, deviceKey)
	if err != nil {
		return nil, wrap("latest points", err)
	}
	defer rows.Close()
	out := []iothub.Point{}
	for rows.Next() {
		var p iothub.Point
		var v string
		var t int64
		if err := rows.Scan(&p.Name, &v, &t); err != nil {
			return nil, wrap("latest points", err)
		}
		p.Value, p.Time = json.RawMessage(v), sqlstore.FromMS(t)
		out = append(out, p)
	}
	return out, wrap("latest points", rows.Err())
}

// RecentSamples returns a device's last posts, newest first (in arrival
// order); limit defaults to DefaultSampleLimit and is capped at
// HistoryPerDevice.
func (db *DB) RecentSamples(ctx context.Context, productKey, deviceKey string, limit int) ([]iothub.Sample, error) {
	limit = sqlstore.ClampLimit(limit, DefaultSampleLimit, HistoryPerDevice)
	rows, err := db.read.QueryContext(ctx, `SELECT time_ms, measurepoints FROM telemetry_samples
		WHERE product_key = ? AND device_key = ? ORDER BY seq DESC LIMIT ?`, productKey, deviceKey, limit)
	if err != nil {
		return nil, wrap("recent samples", err)
	}
	defer rows.Close()
	out := []iothub.Sample{}
	for rows.Next() {
		var t int64
		var m string
		if err := rows.Scan(&t, &m); err != nil {
			return nil, wrap("recent samples", err)
		}
		out = append(out, iothub.Sample{ProductKey: productKey, DeviceKey: deviceKey, Time: sqlstore.FromMS(t), Measurepoints: json.RawMessage(m)})
	}
	return out, wrap("recent samples", rows.Err())
}

// deviceExists fails with ENOTFOUND if the device is absent; tx is a write
// transaction.
func (db *DB) deviceExists(ctx context.Context, tx *sql.Tx, productKey, deviceKey string) error {
	var one int
	err := tx.StmtContext(ctx, db.stDeviceExists).QueryRowContext(ctx, productKey, deviceKey).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return sqlstore.NotFound("device %q not found in product %q", deviceKey, productKey)
	}
	return wrap("device exists", err)
}

// SetAttributes merges attrs into a device's attributes; every value must
// be JSON. ENOTFOUND if the device is absent.
func (db *DB) SetAttributes(ctx context.Context, productKey, deviceKey string, attrs map[string]json.RawMessage) error {
	clean := make(map[string]string, len(attrs))
	var buf bytes.Buffer
	for name, v := range attrs {
		if name == "" {
			return sqlstore.Invalid("attribute names must not be empty")
		}
		buf.Reset()
		if err := json.Compact(&buf, v); err != nil {
			return sqlstore.Invalid("attribute %q is not valid JSON", name)
		}
		clean[name] = buf.String()
	}
	now := sqlstore.MS(db.now())
	return db.tx(ctx, func(tx *sql.Tx) error {
		if err := db.deviceExists(ctx, tx, productKey, deviceKey); err != nil {
			return err
		}
		for name, v := range clean {
			_, err := tx.ExecContext(ctx, `INSERT INTO attributes (product_key, device_key, name, value, updated_at)
				VALUES (?, ?, ?, ?, ?)
				ON CONFLICT (product_key, device_key, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
				productKey, deviceKey, name, v, now)
			if err != nil {
				return wrap("set attributes", err)
			}
		}
		return nil
	})
}

// Attributes returns a device's attributes (empty for an unknown device).
func (db *DB) Attributes(ctx context.Context, productKey, deviceKey string) (map[string]json.RawMessage, error) {
	rows, err := db.read.QueryContext(ctx, `SELECT name, value FROM attributes
		WHERE product_key = ? AND device_key = ?`, productKey, deviceKey)
	if err != nil {
		return nil, wrap("attributes", err)
	}
	defer rows.Close()
	out := map[string]json.RawMessage{}
	for rows.Next() {
		var name, v string
		if err := rows.Scan(&name, &v); err != nil {
			return nil, wrap("attributes", err)
		}
		out[name] = json.RawMessage(v)
	}
	return out, wrap("attributes", rows.Err())
}

// DeleteAttributes removes the named attributes (absent names are
// ignored). ENOTFOUND if the device is absent.
func (db *DB) DeleteAttributes(ctx context.Context, productKey, deviceKey string, names []string) error {
	return db.tx(ctx, func(tx *sql.Tx) error {
		if err := db.deviceExists(ctx, tx, productKey, deviceKey); err != nil {
			return err
		}
		for _, name := range names {
			if _, err := tx.ExecContext(ctx, `DELETE FROM attributes WHERE product_key = ? AND device_key = ? AND name = ?`,
				productKey, deviceKey, name); err != nil {
				return wrap("delete attributes", err)
			}
		}
		return nil
	})
}
