package sqlstore

import (
	"context"
	"database/sql"
	"errors"

	"github.com/iothub/iothub"
)

// AddSubDevices puts subs in gw's topology. A sub-device already in gw's
// topology stays (the call is idempotent); one in another gateway's is
// ECONFLICT and nothing is written. Every device must exist (ENOTFOUND).
func (c *Core) AddSubDevices(ctx context.Context, gw iothub.DeviceID, subs []iothub.DeviceID) error {
	now := MS(c.cfg.Now())
	return c.tx(ctx, func(tx *sql.Tx) error {
		if err := c.cfg.DeviceExists(ctx, tx, gw.ProductKey, gw.DeviceKey); err != nil {
			return err
		}
		for _, sub := range subs {
			if sub == gw {
				return Invalid("a gateway cannot be its own sub-device")
			}
			if err := c.cfg.DeviceExists(ctx, tx, sub.ProductKey, sub.DeviceKey); err != nil {
				return err
			}
			var owner iothub.DeviceID
			err := tx.QueryRowContext(ctx, c.q(`SELECT gw_product_key, gw_device_key FROM gateway_topology
				WHERE product_key = ? AND device_key = ?`), sub.ProductKey, sub.DeviceKey).Scan(&owner.ProductKey, &owner.DeviceKey)
			switch {
			case errors.Is(err, sql.ErrNoRows):
			case err != nil:
				return c.wrap("add sub-devices", err)
			case owner == gw:
				continue
			default:
				return iothub.Errorf(iothub.ECONFLICT, "device %s/%s belongs to another gateway", sub.ProductKey, sub.DeviceKey)
			}
			if _, err := tx.ExecContext(ctx, c.q(`INSERT INTO gateway_topology (product_key, device_key, gw_product_key, gw_device_key, created_at)
				VALUES (?, ?, ?, ?, ?)`), sub.ProductKey, sub.DeviceKey, gw.ProductKey, gw.DeviceKey, now); err != nil {
				return c.wrap("add sub-devices", err)
			}
		}
		return nil
	})
}

// SubDevices lists gw's sub-devices in key order (empty for an unknown
// gateway).
func (c *Core) SubDevices(ctx context.Context, gw iothub.DeviceID) ([]iothub.DeviceID, error) {
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT product_key, device_key FROM gateway_topology
		WHERE gw_product_key = ? AND gw_device_key = ? ORDER BY product_key, device_key`), gw.ProductKey, gw.DeviceKey)
	if err != nil {
		return nil, c.wrap("sub-devices", err)
	}
	defer rows.Close()
	out := []iothub.DeviceID{}
	for rows.Next() {
		var id iothub.DeviceID
		if err := rows.Scan(&id.ProductKey, &id.DeviceKey); err != nil {
			return nil, c.wrap("sub-devices", err)
		}
		out = append(out, id)
	}
	return out, c.wrap("sub-devices", rows.Err())
}

// GatewayOf returns the gateway whose topology holds sub, or ENOTFOUND.
func (c *Core) GatewayOf(ctx context.Context, sub iothub.DeviceID) (iothub.DeviceID, error) {
	var gw iothub.DeviceID
	err := c.cfg.Read.QueryRowContext(ctx, c.q(`SELECT gw_product_key, gw_device_key FROM gateway_topology
		WHERE product_key = ? AND device_key = ?`), sub.ProductKey, sub.DeviceKey).Scan(&gw.ProductKey, &gw.DeviceKey)
	if errors.Is(err, sql.ErrNoRows) {
		return gw, NotFound("device %s/%s is in no gateway's topology", sub.ProductKey, sub.DeviceKey)
	}
	return gw, c.wrap("gateway of", err)
}

// RemoveSubDevices takes subs out of gw's topology; devices that are not
// in it are ignored.
func (c *Core) RemoveSubDevices(ctx context.Context, gw iothub.DeviceID, subs []iothub.DeviceID) error {
	return c.tx(ctx, func(tx *sql.Tx) error {
		for _, sub := range subs {
			if _, err := tx.ExecContext(ctx, c.q(`DELETE FROM gateway_topology
				WHERE product_key = ? AND device_key = ? AND gw_product_key = ? AND gw_device_key = ?`),
				sub.ProductKey, sub.DeviceKey, gw.ProductKey, gw.DeviceKey); err != nil {
				return c.wrap("remove sub-devices", err)
			}
		}
		return nil
	})
}
