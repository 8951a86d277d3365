-- +goose Up
-- The hub's CA directory as the nodes of a cluster share it: CA
-- certificates, their keys (sealed with the data key) and the record of
-- CA generations. A node writes what it rotated or retired here and the
-- others copy it into their own directory.
CREATE TABLE ca_files (
    name       TEXT PRIMARY KEY,
    content    TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- +goose Down
DROP TABLE ca_files;
