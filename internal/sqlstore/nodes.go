package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/iothub/iothub"
)

// StartNode takes the lease of node id for instance and marks the devices
// the node left online offline.
func (c *Core) StartNode(ctx context.Context, id, instance string, at time.Time) (int, error) {
	if id == "" || instance == "" {
		return 0, Invalid("a node needs an id and an instance")
	}
	var ended int
	err := c.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, c.q(`INSERT INTO nodes (id, instance, started_ms, heartbeat_ms) VALUES (?, ?, ?, ?)
			ON CONFLICT (id) DO UPDATE SET instance = excluded.instance, started_ms = excluded.started_ms, heartbeat_ms = excluded.heartbeat_ms`),
			id, instance, MS(at), MS(at)); err != nil {
			return c.wrap("start node", err)
		}
		n, err := c.endSessions(ctx, tx, id)
		ended = n
		return err
	})
	return ended, err
}

// RenewNode moves the lease's heartbeat, or takes the lease again when
// another node reaped it.
func (c *Core) RenewNode(ctx context.Context, id, instance string, at time.Time) (bool, error) {
	var lost bool
	err := c.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, c.q(`UPDATE nodes SET heartbeat_ms = ? WHERE id = ? AND instance = ?`), MS(at), id, instance)
		if err != nil {
			return c.wrap("renew node", err)
		}
		if n, _ := res.RowsAffected(); n == 1 {
			return nil
		}
		var other string
		switch err := tx.QueryRowContext(ctx, c.q(`SELECT instance FROM nodes WHERE id = ?`), id).Scan(&other); {
		case err == nil:
			return iothub.Errorf(iothub.ECONFLICT, "node id %q is held by another process (instance %s); give each node its own data directory", id, other)
		case !errors.Is(err, sql.ErrNoRows):
			return c.wrap("renew node", err)
		}
		lost = true
		_, err = tx.ExecContext(ctx, c.q(`INSERT INTO nodes (id, instance, started_ms, heartbeat_ms) VALUES (?, ?, ?, ?)`), id, instance, MS(at), MS(at))
		return c.wrap("renew node", err)
	})
	return lost, err
}

// ExpireNodes removes the leases older than before and ends their
// sessions, and those of devices that name no node.
func (c *Core) ExpireNodes(ctx context.Context, before time.Time) (int, error) {
	var ended int
	err := c.tx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, c.q(`DELETE FROM nodes WHERE heartbeat_ms < ? RETURNING id`), MS(before))
		if err != nil {
			return c.wrap("expire nodes", err)
		}
		ids := []string{""}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return c.wrap("expire nodes", err)
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return c.wrap("expire nodes", err)
		}
		for _, id := range ids {
			n, err := c.endSessions(ctx, tx, id)
			if err != nil {
				return err
			}
			ended += n
		}
		return nil
	})
	return ended, err
}

// StopNode gives up the lease and ends the node's sessions.
func (c *Core) StopNode(ctx context.Context, id, instance string) error {
	return c.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, c.q(`DELETE FROM nodes WHERE id = ? AND instance = ?`), id, instance); err != nil {
			return c.wrap("stop node", err)
		}
		_, err := c.endSessions(ctx, tx, id)
		return err
	})
}

// endSessions marks the node's online devices offline.
func (c *Core) endSessions(ctx context.Context, tx *sql.Tx, node string) (int, error) {
	if c.cfg.ForUpdate != "" {
		// Rows locked in key order, as ApplyDeviceStates locks them: a
		// batch of logins on another node waits instead of deadlocking.
		if _, err := tx.ExecContext(ctx, c.q(`SELECT 1 FROM devices WHERE node_id = ? AND state = 'online'
			ORDER BY product_key, device_key`+c.cfg.ForUpdate), node); err != nil {
			return 0, c.wrap("end sessions", err)
		}
	}
	res, err := tx.ExecContext(ctx, c.q(`UPDATE devices SET state = 'offline' WHERE node_id = ? AND state = 'online'`), node)
	if err != nil {
		return 0, c.wrap("end sessions", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}
