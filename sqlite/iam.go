package sqlite

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/internal/sqlstore"
)

// CreateOrg stores o; CreatedAt is set to now if zero. A taken id is ECONFLICT.
func (db *DB) CreateOrg(ctx context.Context, o *iothub.Org) error {
	if o.ID == "" {
		return sqlstore.Invalid("org id must not be empty")
	}
	if o.Name == "" {
		return sqlstore.Invalid("org name must not be empty")
	}
	created := db.truncMS(o.CreatedAt)
	_, err := db.write.ExecContext(ctx, `INSERT INTO orgs (id, name, created_at) VALUES (?, ?, ?)`,
		o.ID, o.Name, sqlstore.MS(created))
	if kind, _ := constraint(err); kind == "unique" {
		return sqlstore.Conflict("org %q already exists", o.ID)
	}
	if err != nil {
		return wrap("create org", err)
	}
	o.CreatedAt = created
	return nil
}

// Org returns the org with that id or ENOTFOUND.
func (db *DB) Org(ctx context.Context, id string) (*iothub.Org, error) {
	var o iothub.Org
	var created int64
	err := db.read.QueryRowContext(ctx, `SELECT id, name, created_at FROM orgs WHERE id = ?`, id).
		Scan(&o.ID, &o.Name, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, sqlstore.NotFound("org %q not found", id)
	}
	if err != nil {
		return nil, wrap("org", err)
	}
	o.CreatedAt = sqlstore.FromMS(created)
	return &o, nil
}

// Orgs lists every org, oldest first.
func (db *DB) Orgs(ctx context.Context) ([]*iothub.Org, error) {
	rows, err := db.read.QueryContext(ctx, `SELECT id, name, created_at FROM orgs ORDER BY created_at, id`)
	if err != nil {
		return nil, wrap("orgs", err)
	}
	defer rows.Close()
	out := []*iothub.Org{}
	for rows.Next() {
		var o iothub.Org
		var created int64
		if err := rows.Scan(&o.ID, &o.Name, &created); err != nil {
			return nil, wrap("orgs", err)
		}
		o.CreatedAt = sqlstore.FromMS(created)
		out = append(out, &o)
	}
	return out, wrap("orgs", rows.Err())
}

const apiKeyCols = `id, org_id, name, role, bootstrap, hash, created_at, revoked_at`

func scanAPIKey(row interface{ Scan(...any) error }) (*iothub.APIKey, error) {
	var (
		k         iothub.APIKey
		role, h   string
		bootstrap int
		created   int64
		revoked   sql.NullInt64
	)
	if err := row.Scan(&k.ID, &k.OrgID, &k.Name, &role, &bootstrap, &h, &created, &revoked); err != nil {
		return nil, err
	}
	hash, err := hex.DecodeString(h)
	if err != nil {
		return nil, err
	}
	k.Role = iothub.Role(role)
	k.Bootstrap = bootstrap != 0
	k.Hash = hash
	k.CreatedAt = sqlstore.FromMS(created)
	k.RevokedAt = sqlstore.TimePtr(revoked)
	return &k, nil
}

// CreateAPIKey stores k, which carries only the hash of the key (stored as
// hex). A taken id or hash is ECONFLICT; an unknown org ENOTFOUND.
func (db *DB) CreateAPIKey(ctx context.Context, k *iothub.APIKey) error {
	switch {
	case k.ID == "":
		return sqlstore.Invalid("api key id must not be empty")
	case k.OrgID == "":
		return sqlstore.Invalid("api key needs an orgId")
	case !k.Role.Valid():
		return sqlstore.Invalid("unknown role %q", k.Role)
	case len(k.Hash) < 16:
		return sqlstore.Invalid("api key hash is missing or too short")
	}
	created := db.truncMS(k.CreatedAt)
	_, err := db.write.ExecContext(ctx, `INSERT INTO api_keys (`+apiKeyCols+`) VALUES (?,?,?,?,?,?,?,?)`,
		k.ID, k.OrgID, k.Name, string(k.Role), sqlstore.Bool01(k.Bootstrap), hex.EncodeToString(k.Hash),
		sqlstore.MS(created), sqlstore.NullMS(k.RevokedAt))
	switch kind, _ := constraint(err); kind {
	case "unique":
		return sqlstore.Conflict("api key already exists")
	case "foreign":
		return sqlstore.NotFound("org %q not found", k.OrgID)
	}
	if err != nil {
		return wrap("create api key", err)
	}
	k.CreatedAt = created
	return nil
}

// APIKeyByHash returns the unrevoked key with that hash or ENOTFOUND.
func (db *DB) APIKeyByHash(ctx context.Context, hash []byte) (*iothub.APIKey, error) {
	k, err := scanAPIKey(db.read.QueryRowContext(ctx, `SELECT `+apiKeyCols+` FROM api_keys
		WHERE hash = ? AND revoked_at IS NULL`, hex.EncodeToString(hash)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, sqlstore.NotFound("api key not found")
	}
	return k, wrap("api key", err)
}

// APIKeys lists an org's keys, revoked ones included ("" lists all).
func (db *DB) APIKeys(ctx context.Context, orgID string) ([]*iothub.APIKey, error) {
	rows, err := db.read.QueryContext(ctx, `SELECT `+apiKeyCols+` FROM api_keys
		WHERE ? = '' OR org_id = ? ORDER BY created_at, id`, orgID, orgID)
	if err != nil {
		return nil, wrap("api keys", err)
	}
	defer rows.Close()
	out := []*iothub.APIKey{}
	for rows.Next() {
		k, err := scanAPIKey(rows)
		if err != nil {
			return nil, wrap("api keys", err)
		}
		out = append(out, k)
	}
	return out, wrap("api keys", rows.Err())
}

// RevokeAPIKey revokes key id of org orgID now. A key absent from that org
// is ENOTFOUND; one already revoked ECONFLICT.
func (db *DB) RevokeAPIKey(ctx context.Context, orgID, id string) error {
	return db.tx(ctx, func(tx *sql.Tx) error {
		var revoked sql.NullInt64
		err := tx.QueryRowContext(ctx, `SELECT revoked_at FROM api_keys WHERE id = ? AND org_id = ?`, id, orgID).Scan(&revoked)
		if errors.Is(err, sql.ErrNoRows) {
			return sqlstore.NotFound("api key %q not found", id)
		}
		if err != nil {
			return wrap("revoke api key", err)
		}
		if revoked.Valid {
			return sqlstore.Conflict("api key %q is already revoked", id)
		}
		_, err = tx.ExecContext(ctx, `UPDATE api_keys SET revoked_at = ? WHERE id = ?`, sqlstore.MS(db.now()), id)
		return wrap("revoke api key", err)
	})
}
