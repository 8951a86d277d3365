-- +goose Up
-- A product's thing model (thing.tsltemplate.get; posts are checked
-- against it once set) and the raw payloads of thing/model/up_raw, a
-- bounded history per device.
CREATE TABLE thing_models (
    product_key TEXT PRIMARY KEY,
    model       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE raw_messages (
    product_key TEXT NOT NULL,
    device_key  TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    time_ms     BIGINT NOT NULL,
    payload     BYTEA NOT NULL,
    PRIMARY KEY (product_key, device_key, seq)
);

-- +goose Down
DROP TABLE raw_messages;
DROP TABLE thing_models;
