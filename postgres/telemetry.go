package postgres

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"slices"

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
	// Five statements per batch, whatever its size: lock the devices (in
	// key order, so concurrent batches from other nodes cannot deadlock),
	// read their newest seq, insert the posts, upsert the latest points,
	// trim the history. The newest seq is read in its own statement, after
	// the locks are held: under READ COMMITTED a statement sees the data
	// as of its start, so one that waited for a lock would see a stale seq.
	slices.SortFunc(order, compareIDs)
	pks, dks := make([]string, len(order)), make([]string, len(order))
	for i, id := range order {
		pks[i], dks[i] = id.ProductKey, id.DeviceKey
	}
	return db.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `SELECT 1 FROM devices d JOIN unnest($1::text[], $2::text[]) AS v (pk, dk)
				ON d.product_key = v.pk AND d.device_key = v.dk
			ORDER BY d.product_key, d.device_key FOR UPDATE OF d`, pks, dks); err != nil {
			return wrap("append samples", err)
		}
		rows, err := tx.QueryContext(ctx, `SELECT d.product_key, d.device_key,
				COALESCE((SELECT s.seq FROM telemetry_samples s
					WHERE s.product_key = d.product_key AND s.device_key = d.device_key
					ORDER BY s.seq DESC LIMIT 1), 0)
			FROM devices d JOIN unnest($1::text[], $2::text[]) AS v (pk, dk)
				ON d.product_key = v.pk AND d.device_key = v.dk`, pks, dks)
		if err != nil {
			return wrap("append samples", err)
		}
		lastSeq := make(map[iothub.DeviceID]int64, len(order))
		for rows.Next() {
			var id iothub.DeviceID
			var seq int64
			if err := rows.Scan(&id.ProductKey, &id.DeviceKey, &seq); err != nil {
				rows.Close()
				return wrap("append samples", err)
			}
			lastSeq[id] = seq
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return wrap("append samples", err)
		}
		type pointKey struct {
			id   iothub.DeviceID
			name string
		}
		type pointVal struct {
			v string
			t int64
		}
		var (
			sPK, sDK, sBody []string
			sSeq, sT        []int64
			tPK, tDK        []string
			tSeq            []int64
			latest          = map[pointKey]pointVal{}
		)
		for _, id := range order {
			seq, ok := lastSeq[id]
			if !ok {
				continue // the device is gone
			}
			for _, it := range byDevice[id] {
				seq++
				sPK, sDK, sSeq, sT, sBody = append(sPK, id.ProductKey), append(sDK, id.DeviceKey),
					append(sSeq, seq), append(sT, it.t), append(sBody, it.body)
				for name, v := range it.points {
					k := pointKey{id, name}
					// One row per point per statement: a later post at the
					// same or a newer time wins, as it would row by row.
					if cur, ok := latest[k]; !ok || it.t >= cur.t {
						latest[k] = pointVal{v, it.t}
					}
				}
			}
			if seq > HistoryPerDevice {
				tPK, tDK, tSeq = append(tPK, id.ProductKey), append(tDK, id.DeviceKey), append(tSeq, seq-HistoryPerDevice)
			}
		}
		if len(sPK) == 0 {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO telemetry_samples (product_key, device_key, seq, time_ms, measurepoints)
			SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[])`,
			sPK, sDK, sSeq, sT, sBody); err != nil {
			return wrap("append samples", err)
		}
		if len(latest) > 0 {
			n := len(latest)
			pPK, pDK, pName, pV, pT := make([]string, 0, n), make([]string, 0, n), make([]string, 0, n), make([]string, 0, n), make([]int64, 0, n)
			for k, v := range latest {
				pPK, pDK, pName, pV, pT = append(pPK, k.id.ProductKey), append(pDK, k.id.DeviceKey), append(pName, k.name), append(pV, v.v), append(pT, v.t)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO telemetry_points (product_key, device_key, name, value, time_ms)
				SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
				ON CONFLICT (product_key, device_key, name) DO UPDATE SET value = excluded.value, time_ms = excluded.time_ms
				WHERE excluded.time_ms >= telemetry_points.time_ms`, pPK, pDK, pName, pV, pT); err != nil {
				return wrap("append samples", err)
			}
		}
		if len(tPK) > 0 {
			if _, err := tx.ExecContext(ctx, `DELETE FROM telemetry_samples s
				USING unnest($1::text[], $2::text[], $3::bigint[]) AS v (pk, dk, upto)
				WHERE s.product_key = v.pk AND s.device_key = v.dk AND s.seq <= v.upto`, tPK, tDK, tSeq); err != nil {
				return wrap("append samples", err)
			}
		}
		return nil
	})
}

// LatestPoints returns the latest value of each of a device's points by
// name (empty for an unknown device).
func (db *DB) LatestPoints(ctx context.Context, productKey, deviceKey string) ([]iothub.Point, error) {
	rows, err := db.db.QueryContext(ctx, `SELECT name, value, time_ms FROM telemetry_points
		WHERE product_key = $1 AND device_key = $2 ORDER BY name`, productKey, deviceKey)
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
	rows, err := db.db.QueryContext(ctx, `SELECT time_ms, measurepoints FROM telemetry_samples
		WHERE product_key = $1 AND device_key = $2 ORDER BY seq DESC LIMIT $3`, productKey, deviceKey, limit)
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
	err := tx.QueryRowContext(ctx, `SELECT 1 FROM devices WHERE product_key = $1 AND device_key = $2 FOR UPDATE`,
		productKey, deviceKey).Scan(&one)
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
				VALUES ($1, $2, $3, $4, $5)
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
	rows, err := db.db.QueryContext(ctx, `SELECT name, value FROM attributes
		WHERE product_key = $1 AND device_key = $2`, productKey, deviceKey)
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
			if _, err := tx.ExecContext(ctx, `DELETE FROM attributes WHERE product_key = $1 AND device_key = $2 AND name = $3`,
				productKey, deviceKey, name); err != nil {
				return wrap("delete attributes", err)
			}
		}
		return nil
	})
}
