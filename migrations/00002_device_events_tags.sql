-- +goose Up
-- Event posts (thing/event/{id}/post), a bounded history per device like
-- telemetry_samples, and device tags (thing/tag/update).
CREATE TABLE device_events (
    product_key TEXT NOT NULL,
    device_key  TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    event_id    TEXT NOT NULL,
    time_ms     BIGINT NOT NULL,
    events      TEXT NOT NULL,
    PRIMARY KEY (product_key, device_key, seq)
);

CREATE TABLE device_tags (
    product_key TEXT NOT NULL,
    device_key  TEXT NOT NULL,
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (product_key, device_key, name)
);

-- +goose Down
DROP TABLE device_tags;
DROP TABLE device_events;
