-- Gateways and login policy per product (issue 13, F1 and I1). Portable SQL for SQLite and PostgreSQL.

-- +goose Up
-- node_type: 'device' or 'gateway'; only a gateway's device may register
-- devices (thing.device.register), and only into products that allow it.
ALTER TABLE products ADD COLUMN node_type TEXT NOT NULL DEFAULT 'device';
ALTER TABLE products ADD COLUMN allow_gateway_registration INTEGER NOT NULL DEFAULT 0;
-- sign_methods: comma-separated login sign methods accepted; '' accepts all.
ALTER TABLE products ADD COLUMN sign_methods TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE products DROP COLUMN sign_methods;
ALTER TABLE products DROP COLUMN allow_gateway_registration;
ALTER TABLE products DROP COLUMN node_type;
