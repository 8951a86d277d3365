package sqlstore

import (
	"context"
	"database/sql"
	"errors"

	"github.com/iothub/iothub"
)

// CreateFirmware stores f and its content.
func (c *Core) CreateFirmware(ctx context.Context, f *iothub.Firmware, content []byte) error {
	_, err := c.cfg.Write.ExecContext(ctx, c.q(`INSERT INTO firmwares (id, org_id, product_key, version, size, sha256, content, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`), f.ID, f.OrgID, f.ProductKey, f.Version, f.Size, f.SHA256, content, MS(f.CreatedAt))
	if kind, _ := c.cfg.Constraint(err); kind == "unique" {
		return iothub.Errorf(iothub.ECONFLICT, "product %s has firmware version %s already", f.ProductKey, f.Version)
	}
	return c.wrap("create firmware", err)
}

const firmwareColumns = `id, org_id, product_key, version, size, sha256, created_at`

func scanFirmware(row interface{ Scan(...any) error }) (*iothub.Firmware, error) {
	var f iothub.Firmware
	var created int64
	if err := row.Scan(&f.ID, &f.OrgID, &f.ProductKey, &f.Version, &f.Size, &f.SHA256, &created); err != nil {
		return nil, err
	}
	f.CreatedAt = FromMS(created)
	return &f, nil
}

// Firmware returns a product's firmware without its content.
func (c *Core) Firmware(ctx context.Context, productKey, id string) (*iothub.Firmware, error) {
	f, err := scanFirmware(c.cfg.Read.QueryRowContext(ctx, c.q(`SELECT `+firmwareColumns+` FROM firmwares
		WHERE product_key = ? AND id = ?`), productKey, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, NotFound("firmware %s not found", id)
	}
	return f, c.wrap("firmware", err)
}

// Firmwares lists a product's firmware, oldest first.
func (c *Core) Firmwares(ctx context.Context, productKey string) ([]*iothub.Firmware, error) {
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT `+firmwareColumns+` FROM firmwares
		WHERE product_key = ? ORDER BY created_at, id`), productKey)
	if err != nil {
		return nil, c.wrap("firmwares", err)
	}
	defer rows.Close()
	out := []*iothub.Firmware{}
	for rows.Next() {
		f, err := scanFirmware(rows)
		if err != nil {
			return nil, c.wrap("firmwares", err)
		}
		out = append(out, f)
	}
	return out, c.wrap("firmwares", rows.Err())
}

// FirmwareContent returns a firmware file.
func (c *Core) FirmwareContent(ctx context.Context, productKey, id string) ([]byte, error) {
	var content []byte
	err := c.cfg.Read.QueryRowContext(ctx, c.q(`SELECT content FROM firmwares WHERE product_key = ? AND id = ?`), productKey, id).Scan(&content)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, NotFound("firmware %s not found", id)
	}
	return content, c.wrap("firmware content", err)
}

// CreateOTAJob stores j and its devices, superseding their unfinished
// entries in earlier jobs.
func (c *Core) CreateOTAJob(ctx context.Context, j *iothub.OTAJob) error {
	now := MS(j.CreatedAt)
	return c.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, c.q(`INSERT INTO ota_jobs (id, org_id, product_key, firmware_id, created_at)
			VALUES (?, ?, ?, ?, ?)`), j.ID, j.OrgID, j.ProductKey, j.FirmwareID, now); err != nil {
			return c.wrap("create ota job", err)
		}
		for _, d := range j.Devices {
			if err := c.cfg.DeviceExists(ctx, tx, j.ProductKey, d.DeviceKey); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, c.q(`UPDATE ota_job_devices SET status = ?, updated_at = ?
				WHERE product_key = ? AND device_key = ? AND status IN (?, ?, ?)`),
				iothub.OTASuperseded, now, j.ProductKey, d.DeviceKey, iothub.OTAPending, iothub.OTANotified, iothub.OTAUpgrading); err != nil {
				return c.wrap("create ota job", err)
			}
			if _, err := tx.ExecContext(ctx, c.q(`INSERT INTO ota_job_devices (job_id, product_key, device_key, status, step, descr, updated_at)
				VALUES (?, ?, ?, ?, 0, '', ?)`), j.ID, j.ProductKey, d.DeviceKey, iothub.OTAPending, now); err != nil {
				if kind, _ := c.cfg.Constraint(err); kind == "unique" {
					return Invalid("device %s is listed twice", d.DeviceKey)
				}
				return c.wrap("create ota job", err)
			}
		}
		return nil
	})
}

// otaJob reads a job's row; devices are filled by the caller.
func (c *Core) otaJob(ctx context.Context, where string, args ...any) (*iothub.OTAJob, error) {
	var j iothub.OTAJob
	var created int64
	err := c.cfg.Read.QueryRowContext(ctx, c.q(`SELECT j.id, j.org_id, j.product_key, j.firmware_id, f.version, j.created_at
		FROM ota_jobs j JOIN firmwares f ON f.id = j.firmware_id WHERE `+where), args...).
		Scan(&j.ID, &j.OrgID, &j.ProductKey, &j.FirmwareID, &j.Version, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, NotFound("upgrade job not found")
	}
	if err != nil {
		return nil, c.wrap("ota job", err)
	}
	j.CreatedAt = FromMS(created)
	return &j, nil
}

// otaDevices reads a job's device entries, in key order.
func (c *Core) otaDevices(ctx context.Context, jobID string, deviceKey *string) ([]iothub.OTADevice, error) {
	query, args := `SELECT device_key, status, step, descr, updated_at FROM ota_job_devices WHERE job_id = ?`, []any{jobID}
	if deviceKey != nil {
		query += ` AND device_key = ?`
		args = append(args, *deviceKey)
	}
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(query+` ORDER BY device_key`), args...)
	if err != nil {
		return nil, c.wrap("ota job devices", err)
	}
	defer rows.Close()
	out := []iothub.OTADevice{}
	for rows.Next() {
		var d iothub.OTADevice
		var updated int64
		if err := rows.Scan(&d.DeviceKey, &d.Status, &d.Step, &d.Desc, &updated); err != nil {
			return nil, c.wrap("ota job devices", err)
		}
		d.UpdatedAt = FromMS(updated)
		out = append(out, d)
	}
	return out, c.wrap("ota job devices", rows.Err())
}

// OTAJob returns a product's job with every device's state.
func (c *Core) OTAJob(ctx context.Context, productKey, id string) (*iothub.OTAJob, error) {
	j, err := c.otaJob(ctx, `j.product_key = ? AND j.id = ?`, productKey, id)
	if err != nil {
		return nil, err
	}
	j.Devices, err = c.otaDevices(ctx, j.ID, nil)
	return j, err
}

// PendingOTA returns the device's unfinished job.
func (c *Core) PendingOTA(ctx context.Context, dev iothub.DeviceID) (*iothub.OTAJob, error) {
	j, err := c.otaJob(ctx, `j.id = (SELECT job_id FROM ota_job_devices WHERE product_key = ? AND device_key = ? AND status IN (?, ?, ?)
		ORDER BY updated_at DESC LIMIT 1)`, dev.ProductKey, dev.DeviceKey, iothub.OTAPending, iothub.OTANotified, iothub.OTAUpgrading)
	if err != nil {
		return nil, err
	}
	j.Devices, err = c.otaDevices(ctx, j.ID, &dev.DeviceKey)
	return j, err
}

// UpdateOTADevice records a device's new state in an unfinished entry
// (notified replaces only pending).
func (c *Core) UpdateOTADevice(ctx context.Context, jobID string, dev iothub.DeviceID, d iothub.OTADevice) error {
	from := []any{iothub.OTAPending, iothub.OTANotified, iothub.OTAUpgrading}
	if d.Status == iothub.OTANotified {
		from = []any{iothub.OTAPending, iothub.OTAPending, iothub.OTAPending}
	}
	res, err := c.cfg.Write.ExecContext(ctx, c.q(`UPDATE ota_job_devices SET status = ?, step = ?, descr = ?, updated_at = ?
		WHERE job_id = ? AND product_key = ? AND device_key = ? AND status IN (?, ?, ?)`),
		append([]any{d.Status, d.Step, d.Desc, MS(d.UpdatedAt), jobID, dev.ProductKey, dev.DeviceKey}, from...)...)
	if err != nil {
		return c.wrap("update ota device", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return c.wrap("update ota device", err)
	} else if n == 0 {
		return NotFound("device %s/%s has no unfinished entry in job %s", dev.ProductKey, dev.DeviceKey, jobID)
	}
	return nil
}
