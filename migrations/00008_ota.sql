-- +goose Up
-- Firmware files and upgrade jobs (OTA). The file lives in the database,
-- which every node of a cluster shares; its SHA-256 is checked before
-- each download.
CREATE TABLE firmwares (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL,
    product_key TEXT NOT NULL,
    version     TEXT NOT NULL,
    size        BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    content     BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (product_key, version)
);

CREATE TABLE ota_jobs (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL,
    product_key TEXT NOT NULL,
    firmware_id TEXT NOT NULL REFERENCES firmwares (id),
    created_at  BIGINT NOT NULL
);

CREATE TABLE ota_job_devices (
    job_id      TEXT NOT NULL REFERENCES ota_jobs (id),
    product_key TEXT NOT NULL,
    device_key  TEXT NOT NULL,
    status      TEXT NOT NULL,
    step        INTEGER NOT NULL,
    descr       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (job_id, product_key, device_key)
);
CREATE INDEX ota_job_devices_device ON ota_job_devices (product_key, device_key, status);

-- +goose Down
DROP TABLE ota_job_devices;
DROP TABLE ota_jobs;
DROP TABLE firmwares;
