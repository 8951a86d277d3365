-- Closing the outside security audit (issue 13). Portable SQL for SQLite and PostgreSQL.

-- +goose Up
-- F4: a certificate belongs to a device's identity (its assetId), not to its
-- key strings, so a re-created device or a re-used productKey inherits nothing.
-- A certificate goes to the device now under its keys only if that device
-- existed, in the same org, when the certificate was issued; the others
-- belonged to a deleted predecessor and are revoked (cessationOfOperation,
-- dated at their issue: no later time is known portably).
ALTER TABLE certificates ADD COLUMN asset_id TEXT NOT NULL DEFAULT '';
UPDATE certificates SET asset_id = COALESCE((SELECT d.asset_id FROM devices d
    WHERE d.product_key = certificates.product_key AND d.device_key = certificates.device_key
      AND d.org_id = certificates.org_id AND d.created_at <= certificates.created_at), '');
UPDATE certificates SET revoked_at = created_at, reason = 'cessationOfOperation'
    WHERE asset_id = '' AND revoked_at IS NULL;
CREATE INDEX certificates_asset ON certificates (asset_id);

-- F8: the certificates a renewal supersedes, revoked once the new one logs in
-- or at due_at, whichever comes first; kept here so a restart or another node
-- still does it.
CREATE TABLE cert_supersessions (
    new_serial TEXT NOT NULL,
    old_serial TEXT NOT NULL,
    due_at     BIGINT NOT NULL,
    PRIMARY KEY (new_serial, old_serial)
);

-- F9: signed device requests already used, until their window ends.
CREATE TABLE used_requests (
    digest     TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX used_requests_expiry ON used_requests (expires_at);

-- F7: leaves of an external CA revoked by the product's admin, by issuer and serial.
CREATE TABLE external_revocations (
    ca_id          TEXT NOT NULL REFERENCES external_cas (id) ON DELETE CASCADE,
    product_key    TEXT NOT NULL,
    issuer_sha256  TEXT NOT NULL,
    serial         TEXT NOT NULL,
    reason         TEXT NOT NULL,
    revoked_at     BIGINT NOT NULL,
    PRIMARY KEY (ca_id, serial)
);
CREATE INDEX external_revocations_product ON external_revocations (product_key);

-- +goose Down
DROP TABLE external_revocations;
DROP TABLE used_requests;
DROP TABLE cert_supersessions;
DROP INDEX certificates_asset;
ALTER TABLE certificates DROP COLUMN asset_id;
