-- Cluster truth. Portable SQL: it runs unchanged on SQLite and PostgreSQL.

-- +goose Up
-- changes logs every change live sessions must feel (revocations, disables,
-- deletes, secret resets, product and CA changes) so that a node which
-- missed the bus event applies it from here. id is given by the writer as
-- MAX(id)+1 under the primary key, so ids become visible in id order and
-- a reader's watermark never skips a row still being written.
CREATE TABLE changes (
    id      BIGINT PRIMARY KEY,
    time_ms BIGINT NOT NULL,
    event   TEXT NOT NULL
);

-- nodes holds each hub node's lease: a node renews heartbeat_ms while it
-- runs; once the lease is older than the expiry, the others end its sessions.
CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,
    instance     TEXT NOT NULL,
    started_ms   BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL
);

-- node_id names the node holding an online device's session and login_ms
-- when that session began: a login's online write that arrives after a
-- newer login on another node does not take the device back.
ALTER TABLE devices ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN login_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX devices_node ON devices (node_id, state);

-- +goose Down
DROP INDEX devices_node;
ALTER TABLE devices DROP COLUMN login_ms;
ALTER TABLE devices DROP COLUMN node_id;
DROP TABLE nodes;
DROP TABLE changes;
