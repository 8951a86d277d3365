package postgres

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"slices"
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
	return sqlstore.ScanDevice(row, db.sealer, "postgres")
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
	// One statement, one round trip: the org comes from the product row,
	// and no row inserted means no such product (or another org's).
	var org string
	err = db.db.QueryRowContext(ctx, `INSERT INTO devices (`+sqlstore.DeviceCols+`)
		SELECT org_id, product_key, $2, $3, $4, $5, $6, $7, $8, $9, $10 FROM products
		WHERE product_key = $1 AND ($11 = '' OR org_id = $11)
		RETURNING org_id`,
		d.ProductKey, d.DeviceKey, asset, d.Name, string(state), sealed, version,
		sqlstore.NullMS(d.LastSeenAt), sqlstore.NullMS(d.ActivatedAt), sqlstore.MS(created), d.OrgID).Scan(&org)
	kind, detail := constraint(err)
	switch {
	case errors.Is(err, sql.ErrNoRows) || kind == "foreign": // foreign: the product went meanwhile
		if d.OrgID != "" {
			if _, perr := db.Product(ctx, d.ProductKey); perr == nil {
				return sqlstore.Invalid("device org %q differs from its product's", d.OrgID)
			}
		}
		return sqlstore.NotFound("product %q not found", d.ProductKey)
	case kind == "unique" && strings.Contains(detail, "asset_id"):
		return sqlstore.Conflict("asset id %q is taken", asset)
	case kind == "unique":
		return sqlstore.Conflict("device %q already exists in product %q", d.DeviceKey, d.ProductKey)
	case err != nil:
		return wrap("create device", err)
	}
	d.OrgID, d.AssetID, d.State, d.SecretVersion, d.CreatedAt = org, asset, state, version, created
	return nil
}

// Device returns the device with its secret in clear, or ENOTFOUND.
func (db *DB) Device(ctx context.Context, productKey, deviceKey string) (*iothub.Device, error) {
	d, err := db.scanDevice(db.db.QueryRowContext(ctx, `SELECT `+sqlstore.DeviceCols+` FROM devices WHERE product_key = $1 AND device_key = $2`,
		productKey, deviceKey))
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
	res, err := db.db.ExecContext(ctx, `UPDATE devices SET state = $1,
		activated_at = CASE WHEN $2 AND activated_at IS NULL THEN $3 ELSE activated_at END,
		last_seen_at = CASE WHEN $2 AND (last_seen_at IS NULL OR last_seen_at < $3) THEN $3 ELSE last_seen_at END
		WHERE product_key = $4 AND device_key = $5 AND (state <> 'disabled' OR $6)`,
		string(s), online, t, productKey, deviceKey, overridesDisabled)
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
	err := db.db.QueryRowContext(ctx, `UPDATE devices
		SET state = CASE WHEN activated_at IS NULL THEN 'inactive' ELSE 'offline' END
		WHERE product_key = $1 AND device_key = $2 AND state = 'disabled' RETURNING state`, productKey, deviceKey).Scan(&state)
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
	// One statement for the whole batch; rows are locked in key order so
	// two nodes touching overlapping batches cannot deadlock.
	ids := make([]iothub.DeviceID, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, compareIDs)
	pks, dks, ts := make([]string, len(ids)), make([]string, len(ids)), make([]int64, len(ids))
	for i, id := range ids {
		pks[i], dks[i], ts[i] = id.ProductKey, id.DeviceKey, sqlstore.MS(db.truncMS(seen[id]))
	}
	_, err := db.db.ExecContext(ctx, `WITH v AS (
			SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) AS v (pk, dk, t)),
		locked AS (
			SELECT d.product_key, d.device_key, v.t FROM devices d JOIN v ON d.product_key = v.pk AND d.device_key = v.dk
			ORDER BY d.product_key, d.device_key FOR UPDATE OF d)
		UPDATE devices SET last_seen_at = locked.t FROM locked
		WHERE devices.product_key = locked.product_key AND devices.device_key = locked.device_key
			AND (devices.last_seen_at IS NULL OR devices.last_seen_at < locked.t)`, pks, dks, ts)
	return wrap("touch devices", err)
}

// compareIDs orders devices by product then device key.
func compareIDs(a, b iothub.DeviceID) int {
	return cmp.Or(strings.Compare(a.ProductKey, b.ProductKey), strings.Compare(a.DeviceKey, b.DeviceKey))
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
	// The changes apply in batch order, but their rows are locked first in
	// key order: two nodes applying overlapping batches (a device moving
	// from one node to another) then wait for each other instead of
	// deadlocking.
	ids := make([]iothub.DeviceID, 0, len(changes))
	for _, c := range changes {
		ids = append(ids, c.Device)
	}
	slices.SortFunc(ids, compareIDs)
	ids = slices.Compact(ids)
	pks, dks := make([]string, len(ids)), make([]string, len(ids))
	for i, id := range ids {
		pks[i], dks[i] = id.ProductKey, id.DeviceKey
	}
	err := db.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `SELECT 1 FROM devices d JOIN unnest($1::text[], $2::text[]) AS v (pk, dk)
				ON d.product_key = v.pk AND d.device_key = v.dk
			ORDER BY d.product_key, d.device_key FOR UPDATE OF d`, pks, dks); err != nil {
			return wrap("apply device states", err)
		}
		for i, c := range changes {
			pk, dk := c.Device.ProductKey, c.Device.DeviceKey
			res[i] = nil
			if c.State == iothub.StateOffline {
				if _, err := tx.ExecContext(ctx, `UPDATE devices SET state = 'offline'
					WHERE product_key = $1 AND device_key = $2 AND state = 'online' AND node_id = $3`, pk, dk, c.Node); err != nil {
					return wrap("apply device states", err)
				}
				continue
			}
			t := sqlstore.MS(db.truncMS(c.At))
			r, err := tx.ExecContext(ctx, `UPDATE devices SET state = 'online', node_id = $4, login_ms = $1,
					activated_at = COALESCE(activated_at, $1),
					last_seen_at = CASE WHEN last_seen_at IS NULL OR last_seen_at < $1 THEN $1 ELSE last_seen_at END
				WHERE product_key = $2 AND device_key = $3 AND state <> 'disabled'
					AND NOT (state = 'online' AND node_id <> $4 AND login_ms > $1)`, t, pk, dk, c.Node)
			if err != nil {
				return wrap("apply device states", err)
			}
			if n, _ := r.RowsAffected(); n > 0 {
				continue
			}
			var state string
			switch err := tx.QueryRowContext(ctx, `SELECT state FROM devices WHERE product_key = $1 AND device_key = $2`, pk, dk).Scan(&state); {
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
