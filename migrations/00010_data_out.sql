-- Data out (issue 16). Portable SQL for SQLite and PostgreSQL.

-- +goose Up
-- The change log: every committed measurepoint post, event, attribute update
-- and device state change, once, in commit order. Its id is the cursor of
-- the live stream (SSE Last-Event-ID), of application sessions and of each
-- forwarding rule's delivery. Rows older than the retention are trimmed.
CREATE TABLE change_log (
    id          BIGINT PRIMARY KEY,
    org_id      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    product_key TEXT NOT NULL,
    device_key  TEXT NOT NULL,
    time_ms     BIGINT NOT NULL,
    data        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX change_log_created ON change_log (created_at);

-- The last id given to a change. Appenders take it under a row lock, so ids
-- become visible in increasing order and a reader that tails by id skips none.
CREATE TABLE change_seq (
    one  INTEGER PRIMARY KEY,
    last BIGINT NOT NULL
);
INSERT INTO change_seq (one, last) VALUES (1, 0);

-- Forwarding rules: which changes of an org go where. The delivery cursor is
-- the change log id up to which the rule has delivered, so the log itself is
-- the durable outbox; the lease keeps one node delivering a rule at a time.
CREATE TABLE forwarding_rules (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES orgs (id),
    name            TEXT NOT NULL,
    product_key     TEXT NOT NULL,
    kinds           TEXT NOT NULL,
    webhook_url     TEXT NOT NULL,
    webhook_secret  TEXT NOT NULL,
    nats_subject    TEXT NOT NULL,
    cursor          BIGINT NOT NULL,
    delivered       BIGINT NOT NULL DEFAULT 0,
    failures        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    last_error_at   BIGINT NOT NULL DEFAULT 0,
    lease_owner     TEXT NOT NULL DEFAULT '',
    lease_until     BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL
);
CREATE INDEX forwarding_rules_org ON forwarding_rules (org_id);

-- History reads by sample time (GET …/telemetry and …/events with from, to, cursor).
CREATE INDEX telemetry_samples_time ON telemetry_samples (product_key, device_key, time_ms, seq);
CREATE INDEX device_events_time ON device_events (product_key, device_key, time_ms, seq);

-- +goose Down
DROP INDEX device_events_time;
DROP INDEX telemetry_samples_time;
DROP TABLE forwarding_rules;
DROP TABLE change_seq;
DROP TABLE change_log;
