package sqlite

import (
	"context"
	"database/sql"
	"errors"

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
				if _, err := insert.ExecContext(ctx, id.ProductKey, id.DeviceKey, seq, it.T, it.Body); err != nil {
					return wrap("append samples", err)
				}
				for name, v := range it.Points {
					if _, err := upsert.ExecContext(ctx, id.ProductKey, id.DeviceKey, name, v, it.T); err != nil {
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
