package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"time"

	"github.com/iothub/iothub"
)

// SetThingModel replaces a product's model; nil removes it.
func (c *Core) SetThingModel(ctx context.Context, productKey string, model json.RawMessage, at time.Time) error {
	return c.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, c.q(`DELETE FROM thing_models WHERE product_key = ?`), productKey); err != nil {
			return c.wrap("set thing model", err)
		}
		if model == nil {
			return nil
		}
		_, err := tx.ExecContext(ctx, c.q(`INSERT INTO thing_models (product_key, model, updated_at) VALUES (?, ?, ?)`),
			productKey, string(model), MS(at))
		return c.wrap("set thing model", err)
	})
}

// ThingModel returns a product's model, or ENOTFOUND.
func (c *Core) ThingModel(ctx context.Context, productKey string) (json.RawMessage, error) {
	var model string
	err := c.cfg.Read.QueryRowContext(ctx, c.q(`SELECT model FROM thing_models WHERE product_key = ?`), productKey).Scan(&model)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, NotFound("product %q has no thing model", productKey)
	}
	return json.RawMessage(model), c.wrap("thing model", err)
}

// AppendRaw stores an up_raw payload and trims the device's history.
func (c *Core) AppendRaw(ctx context.Context, dev iothub.DeviceID, payload []byte, at time.Time) error {
	if len(payload) > iothub.MaxRawBytes {
		return iothub.Errorf(iothub.ETOOLARGE, "raw payload over %d bytes", iothub.MaxRawBytes)
	}
	return c.tx(ctx, func(tx *sql.Tx) error {
		// Locks the device's row, so appends of one device take turns.
		if err := c.cfg.DeviceExists(ctx, tx, dev.ProductKey, dev.DeviceKey); err != nil {
			return err
		}
		var seq int64
		if err := tx.QueryRowContext(ctx, c.q(`SELECT COALESCE(MAX(seq), 0) FROM raw_messages
			WHERE product_key = ? AND device_key = ?`), dev.ProductKey, dev.DeviceKey).Scan(&seq); err != nil {
			return c.wrap("append raw", err)
		}
		seq++
		if _, err := tx.ExecContext(ctx, c.q(`INSERT INTO raw_messages (product_key, device_key, seq, time_ms, payload)
			VALUES (?, ?, ?, ?, ?)`), dev.ProductKey, dev.DeviceKey, seq, MS(at), payload); err != nil {
			return c.wrap("append raw", err)
		}
		_, err := tx.ExecContext(ctx, c.q(`DELETE FROM raw_messages WHERE product_key = ? AND device_key = ? AND seq <= ?`),
			dev.ProductKey, dev.DeviceKey, seq-iothub.RawPerDevice)
		return c.wrap("append raw", err)
	})
}

// RecentRaw returns up to limit payloads, newest first.
func (c *Core) RecentRaw(ctx context.Context, dev iothub.DeviceID, limit int) ([]iothub.RawMessage, error) {
	if limit <= 0 || limit > iothub.RawPerDevice {
		limit = iothub.RawPerDevice
	}
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT time_ms, payload FROM raw_messages
		WHERE product_key = ? AND device_key = ? ORDER BY seq DESC LIMIT ?`), dev.ProductKey, dev.DeviceKey, limit)
	if err != nil {
		return nil, c.wrap("recent raw", err)
	}
	defer rows.Close()
	out := []iothub.RawMessage{}
	for rows.Next() {
		var m iothub.RawMessage
		var ms int64
		if err := rows.Scan(&ms, &m.Payload); err != nil {
			return nil, c.wrap("recent raw", err)
		}
		m.Time = FromMS(ms)
		out = append(out, m)
	}
	return out, c.wrap("recent raw", rows.Err())
}
