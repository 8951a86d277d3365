package sqlstore

import (
	"context"
	"database/sql"
	"errors"

	"github.com/iothub/iothub"
)

// Devices lists a product's devices in DeviceKey order, secrets in clear.
// f.State filters by state; f.Cursor is the last DeviceKey of the previous
// page; f.Limit defaults to DefaultPageSize and is capped at
// MaxPageSize. An unknown product yields an empty list.
func (c *Core) Devices(ctx context.Context, productKey string, f iothub.DeviceFilter) ([]*iothub.Device, error) {
	if f.State != "" && !f.State.Valid() {
		return nil, Invalid("unknown device state %q", f.State)
	}
	limit := ClampLimit(f.Limit, DefaultPageSize, MaxPageSize)
	var (
		rows *sql.Rows
		err  error
	)
	if f.State == "" {
		rows, err = c.cfg.Read.QueryContext(ctx, c.q(`SELECT `+DeviceCols+` FROM devices
			WHERE product_key = ? AND device_key > ? ORDER BY device_key LIMIT ?`), productKey, f.Cursor, limit)
	} else {
		rows, err = c.cfg.Read.QueryContext(ctx, c.q(`SELECT `+DeviceCols+` FROM devices
			WHERE product_key = ? AND state = ? AND device_key > ? ORDER BY device_key LIMIT ?`),
			productKey, string(f.State), f.Cursor, limit)
	}
	if err != nil {
		return nil, c.wrap("devices", err)
	}
	defer rows.Close()
	out := make([]*iothub.Device, 0, min(limit, 64))
	for rows.Next() {
		d, err := ScanDevice(rows, c.cfg.Sealer, c.cfg.Name)
		if err != nil {
			return nil, c.wrap("devices", err)
		}
		out = append(out, d)
	}
	return out, c.wrap("devices", rows.Err())
}

// CountDevices counts a product's devices.
func (c *Core) CountDevices(ctx context.Context, productKey string) (int, error) {
	var n int
	err := c.cfg.Read.QueryRowContext(ctx, c.q(`SELECT COUNT(*) FROM devices WHERE product_key = ?`), productKey).Scan(&n)
	return n, c.wrap("count devices", err)
}

// ResetDevice replaces the secret, bumps SecretVersion, sets the device
// inactive, clears activatedAt and returns the device.
func (c *Core) ResetDevice(ctx context.Context, productKey, deviceKey, newSecret string) (*iothub.Device, error) {
	if newSecret == "" {
		return nil, Invalid("device secret must not be empty")
	}
	sealed, err := c.cfg.Sealer.Seal(newSecret, DeviceAAD(productKey, deviceKey))
	if err != nil {
		return nil, c.wrap("seal device secret", err)
	}
	var d *iothub.Device
	err = c.tx(ctx, func(tx *sql.Tx) error {
		var err error
		d, err = ScanDevice(tx.QueryRowContext(ctx, c.q(`UPDATE devices
			SET device_secret = ?, secret_version = secret_version + 1, state = ?, activated_at = NULL
			WHERE product_key = ? AND device_key = ? RETURNING `)+DeviceCols,
			sealed, string(iothub.StateInactive), productKey, deviceKey), c.cfg.Sealer, c.cfg.Name)
		if errors.Is(err, sql.ErrNoRows) {
			return NotFound("device %q not found in product %q", deviceKey, productKey)
		}
		return c.wrap("reset device", err)
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// DeleteDevice removes a device with its telemetry and attributes. Its
// certificates stay, for audit and the CRL.
func (c *Core) DeleteDevice(ctx context.Context, productKey, deviceKey string) error {
	return c.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, c.q(`DELETE FROM devices WHERE product_key = ? AND device_key = ?`), productKey, deviceKey)
		if err != nil {
			return c.wrap("delete device", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return NotFound("device %q not found in product %q", deviceKey, productKey)
		}
		for _, table := range []string{"telemetry_samples", "telemetry_points", "attributes", "device_events", "device_tags", "ota_job_devices", "raw_messages"} {
			if _, err := tx.ExecContext(ctx, c.q(`DELETE FROM `+table+` WHERE product_key = ? AND device_key = ?`),
				productKey, deviceKey); err != nil {
				return c.wrap("delete device", err)
			}
		}
		// Out of the topology, whether it was a sub-device or a gateway.
		if _, err := tx.ExecContext(ctx, c.q(`DELETE FROM gateway_topology
			WHERE (product_key = ? AND device_key = ?) OR (gw_product_key = ? AND gw_device_key = ?)`),
			productKey, deviceKey, productKey, deviceKey); err != nil {
			return c.wrap("delete device", err)
		}
		return nil
	})
}
