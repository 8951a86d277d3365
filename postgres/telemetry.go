package postgres

import (
	"context"
	"database/sql"
	"errors"
	"slices"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/internal/sqlstore"
)

// Telemetry bounds: posts kept per device, and posts RecentSamples returns
// when the caller gives no limit.
const (
	HistoryPerDevice   = sqlstore.HistoryPerDevice
	DefaultSampleLimit = sqlstore.DefaultSampleLimit
)

// AppendSamples stores posts, updates the latest value of each point (a
// value older than the stored one is kept out) and trims each device's
// history to its newest HistoryPerDevice posts. The batch is checked first:
// a malformed sample is EINVALID and nothing is written. Samples of devices
// that do not exist (deleted meanwhile) are dropped.
func (db *DB) AppendSamples(ctx context.Context, samples []iothub.Sample) error {
	order, byDevice, err := sqlstore.GroupSamples(samples, db.truncMS)
	if err != nil {
		return err
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
					append(sSeq, seq), append(sT, it.T), append(sBody, it.Body)
				for name, v := range it.Points {
					k := pointKey{id, name}
					// One row per point per statement: a later post at the
					// same or a newer time wins, as it would row by row.
					if cur, ok := latest[k]; !ok || it.T >= cur.t {
						latest[k] = pointVal{v, it.T}
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
