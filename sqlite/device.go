package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/internal/sqlstore"
)

// Page sizes of the Devices and AuditEvents listings: the default when the
// caller gives none, and the cap.
const (
	DefaultPageSize = sqlstore.DefaultPageSize
	MaxPageSize     = sqlstore.MaxPageSize
)

func (db *DB) scanDevice(row sqlstore.Scanner) (*iothub.Device, error) {
	return sqlstore.ScanDevice(row, db.sealer, "sqlite")
}

// CreateDevice stores d with its secret sealed. Empty fields are filled
// and written back: OrgID from the product, AssetID with a random id, State
// with inactive, SecretVersion with 1, CreatedAt with now. A taken
// DeviceKey or AssetID is ECONFLICT; an unknown product ENOTFOUND.
func (db *DB) CreateDevice(ctx context.Context, d *iothub.Device) error {
	if err := iothub.ValidateKey("productKey", d.ProductKey); err != nil {
		return err
	}
	if err := iothub.ValidateKey("deviceKey", d.DeviceKey); err != nil {
		return err
	}
	if d.DeviceSecret == "" {
		return sqlstore.Invalid("device secret must not be empty")
	}
	state := d.State
	if state == "" {
		state = iothub.StateInactive
	}
	if !state.Valid() {
		return sqlstore.Invalid("unknown device state %q", d.State)
	}
	if d.SecretVersion < 0 {
		return sqlstore.Invalid("secret version must not be negative")
	}
	version := max(d.SecretVersion, 1)
	asset := d.AssetID
	if asset == "" {
		asset = iothub.RandomString(iothub.ProductKeyLen)
	}
	created := db.truncMS(d.CreatedAt)
	sealed, err := db.sealer.Seal(d.DeviceSecret, sqlstore.DeviceAAD(d.ProductKey, d.DeviceKey))
	if err != nil {
		return wrap("seal device secret", err)
	}
	var org string
	err = db.tx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT org_id FROM products WHERE product_key = ?`, d.ProductKey).Scan(&org)
		if errors.Is(err, sql.ErrNoRows) {
			return sqlstore.NotFound("product %q not found", d.ProductKey)
		}
		if err != nil {
			return wrap("create device", err)
		}
		if d.OrgID != "" && d.OrgID != org {
			return sqlstore.Invalid("device org %q differs from its product's", d.OrgID)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO devices (`+sqlstore.DeviceCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?)`,
			org, d.ProductKey, d.DeviceKey, asset, d.Name, string(state), sealed, version,
			sqlstore.NullMS(d.LastSeenAt), sqlstore.NullMS(d.ActivatedAt), sqlstore.MS(created))
		if kind, detail := constraint(err); kind == "unique" {
			if strings.Contains(detail, "asset_id") {
				return sqlstore.Conflict("asset id %q is taken", asset)
			}
			return sqlstore.Conflict("device %q already exists in product %q", d.DeviceKey, d.ProductKey)
		}
		return wrap("create device", err)
	})
	if err != nil {
		return err
	}
	d.OrgID, d.AssetID, d.State, d.SecretVersion, d.CreatedAt = org, asset, state, version, created
	return nil
}

// Device returns the device with its secret in clear, or ENOTFOUND.
func (db *DB) Device(ctx context.Context, productKey, deviceKey string) (*iothub.Device, error) {
	d, err := db.scanDevice(db.stDevice.QueryRowContext(ctx, productKey, deviceKey))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, sqlstore.NotFound("device %q not found in product %q", deviceKey, productKey)
	}
	return d, wrap("device", err)
}

// SetDeviceState records a state change at time at. Going online sets
// activatedAt the first time and moves lastSeenAt forward to at.
func (db *DB) SetDeviceState(ctx context.Context, productKey, deviceKey string, s iothub.DeviceState, at time.Time) error {
	if !s.Valid() {
		return sqlstore.Invalid("unknown device state %q", s)
	}
	t := sqlstore.MS(db.truncMS(at))
	online := s == iothub.StateOnline
	overridesDisabled := s == iothub.StateDisabled || s == iothub.StateInactive
	res, err := db.stSetState.ExecContext(ctx, string(s), online, t, online, t, t, productKey, deviceKey, overridesDisabled)
	if err != nil {
		return wrap("set device state", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		if _, err := db.Device(ctx, productKey, deviceKey); err != nil {
			return err
		}
		return iothub.Errorf(iothub.ECONFLICT, "device %q is disabled", deviceKey)
	}
	return nil
}

// EnableDevice moves a disabled device to offline, or to inactive if it
// never logged in.
func (db *DB) EnableDevice(ctx context.Context, productKey, deviceKey string) (iothub.DeviceState, error) {
	var state string
	err := db.write.QueryRowContext(ctx, `UPDATE devices
		SET state = CASE WHEN activated_at IS NULL THEN 'inactive' ELSE 'offline' END
		WHERE product_key = ? AND device_key = ? AND state = 'disabled' RETURNING state`, productKey, deviceKey).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) {
		if _, err := db.Device(ctx, productKey, deviceKey); err != nil {
			return "", err
		}
		return "", iothub.Errorf(iothub.ECONFLICT, "device %q is not disabled", deviceKey)
	}
	if err != nil {
		return "", wrap("enable device", err)
	}
	return iothub.DeviceState(state), nil
}

// TouchDevices moves lastSeenAt forward for many devices in one
// transaction. Devices that no longer exist are skipped.
func (db *DB) TouchDevices(ctx context.Context, seen map[iothub.DeviceID]time.Time) error {
	if len(seen) == 0 {
		return nil
	}
	return db.tx(ctx, func(tx *sql.Tx) error {
		st := tx.StmtContext(ctx, db.stTouch)
		for id, at := range seen {
			t := sqlstore.MS(db.truncMS(at))
			if _, err := st.ExecContext(ctx, t, id.ProductKey, id.DeviceKey, t); err != nil {
				return wrap("touch devices", err)
			}
		}
		return nil
	})
}

// ApplyDeviceStates records login and logout transitions in one
// transaction, in order: online as SetDeviceState does, offline only over
// online.
func (db *DB) ApplyDeviceStates(ctx context.Context, changes []iothub.StateChange) ([]error, error) {
	for _, c := range changes {
		if c.State != iothub.StateOnline && c.State != iothub.StateOffline {
			return nil, sqlstore.Invalid("state change to %q: only online and offline", c.State)
		}
	}
	res := make([]error, len(changes))
	if len(changes) == 0 {
		return res, nil
	}
	err := db.tx(ctx, func(tx *sql.Tx) error {
		online := tx.StmtContext(ctx, db.stOnline)
		stateOf := tx.StmtContext(ctx, db.stStateOf)
		for i, c := range changes {
			pk, dk := c.Device.ProductKey, c.Device.DeviceKey
			res[i] = nil
			if c.State == iothub.StateOffline {
				if _, err := tx.ExecContext(ctx, `UPDATE devices SET state = 'offline'
					WHERE product_key = ? AND device_key = ? AND state = 'online' AND node_id = ?`, pk, dk, c.Node); err != nil {
					return wrap("apply device states", err)
				}
				continue
			}
			t := sqlstore.MS(db.truncMS(c.At))
			r, err := online.ExecContext(ctx, c.Node, t, pk, dk)
			if err != nil {
				return wrap("apply device states", err)
			}
			if n, _ := r.RowsAffected(); n > 0 {
				continue
			}
			var state string
			switch err := stateOf.QueryRowContext(ctx, pk, dk).Scan(&state); {
			case errors.Is(err, sql.ErrNoRows):
				res[i] = sqlstore.NotFound("device %q not found in product %q", dk, pk)
			case err != nil:
				return wrap("apply device states", err)
			case state == string(iothub.StateDisabled):
				res[i] = iothub.Errorf(iothub.ECONFLICT, "device %q is disabled", dk)
			} // else a newer login on another node holds it: a no-op
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}
