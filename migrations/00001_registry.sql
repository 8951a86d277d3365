-- Registry schema. Portable SQL: it runs unchanged on SQLite and PostgreSQL.
-- Times are BIGINT unix milliseconds; booleans are INTEGER 0/1; hashes are hex TEXT.
-- Secrets (product_secret, device_secret) hold sealed text, never clear text.

-- +goose Up
CREATE TABLE orgs (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    org_id     TEXT NOT NULL REFERENCES orgs (id),
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    bootstrap  INTEGER NOT NULL DEFAULT 0,
    hash       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_keys_org ON api_keys (org_id);

CREATE TABLE products (
    product_key         TEXT PRIMARY KEY,
    org_id              TEXT NOT NULL REFERENCES orgs (id),
    product_secret      TEXT NOT NULL,
    name                TEXT NOT NULL,
    auth_mode           TEXT NOT NULL,
    dynamic_activation  INTEGER NOT NULL DEFAULT 0,
    auto_register       INTEGER NOT NULL DEFAULT 0,
    device_limit        INTEGER NOT NULL DEFAULT 0,
    offline_timeout_sec INTEGER NOT NULL DEFAULT 0,
    max_cert_days       INTEGER NOT NULL DEFAULT 0,
    created_at          BIGINT NOT NULL
);
CREATE INDEX products_org ON products (org_id);

CREATE TABLE devices (
    product_key    TEXT NOT NULL REFERENCES products (product_key),
    device_key     TEXT NOT NULL,
    org_id         TEXT NOT NULL,
    asset_id       TEXT NOT NULL UNIQUE,
    name           TEXT NOT NULL DEFAULT '',
    state          TEXT NOT NULL,
    device_secret  TEXT NOT NULL,
    secret_version INTEGER NOT NULL DEFAULT 1,
    last_seen_at   BIGINT,
    activated_at   BIGINT,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (product_key, device_key)
);
CREATE INDEX devices_state ON devices (product_key, state, device_key);

-- Certificates outlive their device (audit, CRL), so no foreign key to devices.
CREATE TABLE certificates (
    serial            TEXT PRIMARY KEY,
    org_id            TEXT NOT NULL,
    product_key       TEXT NOT NULL,
    device_key        TEXT NOT NULL,
    public_key_sha256 TEXT NOT NULL,
    cert_pem          TEXT NOT NULL,
    not_before        BIGINT NOT NULL,
    not_after         BIGINT NOT NULL,
    revoked_at        BIGINT,
    reason            TEXT NOT NULL DEFAULT '',
    created_at        BIGINT NOT NULL
);
CREATE INDEX certificates_public_key ON certificates (public_key_sha256);
CREATE INDEX certificates_device ON certificates (product_key, device_key);
CREATE INDEX certificates_revoked ON certificates (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE external_cas (
    id                TEXT PRIMARY KEY,
    org_id            TEXT NOT NULL,
    product_key       TEXT NOT NULL REFERENCES products (product_key) ON DELETE CASCADE,
    cert_pem          TEXT NOT NULL,
    fingerprint       TEXT NOT NULL,
    verification_code TEXT NOT NULL DEFAULT '',
    verified          INTEGER NOT NULL DEFAULT 0,
    verified_at       BIGINT,
    created_at        BIGINT NOT NULL,
    UNIQUE (product_key, fingerprint)
);

-- Bounded history: seq counts a device's posts; rows with seq <= newest-1000 are trimmed.
CREATE TABLE telemetry_samples (
    product_key   TEXT NOT NULL,
    device_key    TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    time_ms       BIGINT NOT NULL,
    measurepoints TEXT NOT NULL,
    PRIMARY KEY (product_key, device_key, seq)
);

CREATE TABLE telemetry_points (
    product_key TEXT NOT NULL,
    device_key  TEXT NOT NULL,
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    time_ms     BIGINT NOT NULL,
    PRIMARY KEY (product_key, device_key, name)
);

CREATE TABLE attributes (
    product_key TEXT NOT NULL,
    device_key  TEXT NOT NULL,
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (product_key, device_key, name)
);

CREATE TABLE audit_events (
    id          BIGINT PRIMARY KEY,
    time_ms     BIGINT NOT NULL,
    org_id      TEXT NOT NULL DEFAULT '',
    kind        TEXT NOT NULL,
    product_key TEXT NOT NULL DEFAULT '',
    device_key  TEXT NOT NULL DEFAULT '',
    remote      TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_org ON audit_events (org_id, id);

-- +goose Down
DROP TABLE audit_events;
DROP TABLE attributes;
DROP TABLE telemetry_points;
DROP TABLE telemetry_samples;
DROP TABLE external_cas;
DROP TABLE certificates;
DROP TABLE devices;
DROP TABLE products;
DROP TABLE api_keys;
DROP TABLE orgs;
