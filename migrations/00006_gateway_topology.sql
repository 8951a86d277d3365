-- +goose Up
-- The topology of gateways: which sub-devices a gateway connects to the
-- hub (thing.topo.add). A sub-device belongs to one gateway at a time.
CREATE TABLE gateway_topology (
    product_key    TEXT NOT NULL,
    device_key     TEXT NOT NULL,
    gw_product_key TEXT NOT NULL,
    gw_device_key  TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (product_key, device_key)
);
CREATE INDEX gateway_topology_gateway ON gateway_topology (gw_product_key, gw_device_key);

-- +goose Down
DROP TABLE gateway_topology;
