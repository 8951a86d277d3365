package sqlstore

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"

	"github.com/iothub/iothub"
)

// CreateOrg stores o; CreatedAt is set to now if zero. A taken id is ECONFLICT.
func (c *Core) CreateOrg(ctx context.Context, o *iothub.Org) error {
	if o.ID == "" {
		return Invalid("org id must not be empty")
	}
	if o.Name == "" {
		return Invalid("org name must not be empty")
	}
	created := c.truncMS(o.CreatedAt)
	_, err := c.cfg.Write.ExecContext(ctx, c.q(`INSERT INTO orgs (id, name, created_at) VALUES (?, ?, ?)`),
		o.ID, o.Name, MS(created))
	if kind, _ := c.cfg.Constraint(err); kind == "unique" {
		return Conflict("org %q already exists", o.ID)
	}
	if err != nil {
		return c.wrap("create org", err)
	}
	o.CreatedAt = created
	return nil
}

// Org returns the org with that id or ENOTFOUND.
func (c *Core) Org(ctx context.Context, id string) (*iothub.Org, error) {
	var o iothub.Org
	var created int64
	err := c.cfg.Read.QueryRowContext(ctx, c.q(`SELECT id, name, created_at FROM orgs WHERE id = ?`), id).
		Scan(&o.ID, &o.Name, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, NotFound("org %q not found", id)
	}
	if err != nil {
		return nil, c.wrap("org", err)
	}
	o.CreatedAt = FromMS(created)
	return &o, nil
}

// Orgs lists every org, oldest first.
func (c *Core) Orgs(ctx context.Context) ([]*iothub.Org, error) {
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT id, name, created_at FROM orgs ORDER BY created_at, id`))
	if err != nil {
		return nil, c.wrap("orgs", err)
	}
	defer rows.Close()
	out := []*iothub.Org{}
	for rows.Next() {
		var o iothub.Org
		var created int64
		if err := rows.Scan(&o.ID, &o.Name, &created); err != nil {
			return nil, c.wrap("orgs", err)
		}
		o.CreatedAt = FromMS(created)
		out = append(out, &o)
	}
	return out, c.wrap("orgs", rows.Err())
}

// APIKeyCols lists api_keys columns in the order ScanAPIKey reads them.
const APIKeyCols = `id, org_id, name, role, bootstrap, hash, created_at, revoked_at`

// ScanAPIKey reads an APIKeyCols row.
func ScanAPIKey(row Scanner) (*iothub.APIKey, error) {
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
	k.CreatedAt = FromMS(created)
	k.RevokedAt = TimePtr(revoked)
	return &k, nil
}

// CreateAPIKey stores k, which carries only the hash of the key (stored as
// hex). A taken id or hash is ECONFLICT; an unknown org ENOTFOUND.
func (c *Core) CreateAPIKey(ctx context.Context, k *iothub.APIKey) error {
	switch {
	case k.ID == "":
		return Invalid("api key id must not be empty")
	case k.OrgID == "":
		return Invalid("api key needs an orgId")
	case !k.Role.Valid():
		return Invalid("unknown role %q", k.Role)
	case len(k.Hash) < 16:
		return Invalid("api key hash is missing or too short")
	}
	created := c.truncMS(k.CreatedAt)
	_, err := c.cfg.Write.ExecContext(ctx, c.q(`INSERT INTO api_keys (`+APIKeyCols+`) VALUES (?,?,?,?,?,?,?,?)`),
		k.ID, k.OrgID, k.Name, string(k.Role), Bool01(k.Bootstrap), hex.EncodeToString(k.Hash),
		MS(created), NullMS(k.RevokedAt))
	switch kind, _ := c.cfg.Constraint(err); kind {
	case "unique":
		return Conflict("api key already exists")
	case "foreign":
		return NotFound("org %q not found", k.OrgID)
	}
	if err != nil {
		return c.wrap("create api key", err)
	}
	k.CreatedAt = created
	return nil
}

// APIKeyByHash returns the unrevoked key with that hash or ENOTFOUND.
func (c *Core) APIKeyByHash(ctx context.Context, hash []byte) (*iothub.APIKey, error) {
	k, err := ScanAPIKey(c.cfg.Read.QueryRowContext(ctx, c.q(`SELECT `+APIKeyCols+` FROM api_keys
		WHERE hash = ? AND revoked_at IS NULL`), hex.EncodeToString(hash)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, NotFound("api key not found")
	}
	return k, c.wrap("api key", err)
}

// APIKeys lists an org's keys, revoked ones included ("" lists all).
func (c *Core) APIKeys(ctx context.Context, orgID string) ([]*iothub.APIKey, error) {
	rows, err := c.cfg.Read.QueryContext(ctx, c.q(`SELECT `+APIKeyCols+` FROM api_keys
		WHERE ? = '' OR org_id = ? ORDER BY created_at, id`), orgID, orgID)
	if err != nil {
		return nil, c.wrap("api keys", err)
	}
	defer rows.Close()
	out := []*iothub.APIKey{}
	for rows.Next() {
		k, err := ScanAPIKey(rows)
		if err != nil {
			return nil, c.wrap("api keys", err)
		}
		out = append(out, k)
	}
	return out, c.wrap("api keys", rows.Err())
}

// RevokeAPIKey revokes key id of org orgID now. A key absent from that org
// is ENOTFOUND; one already revoked ECONFLICT; the bootstrap key EFORBIDDEN
// (it is rotated offline, never revoked).
func (c *Core) RevokeAPIKey(ctx context.Context, orgID, id string) error {
	return c.tx(ctx, func(tx *sql.Tx) error {
		var revoked sql.NullInt64
		var bootstrap int
		err := tx.QueryRowContext(ctx, c.q(`SELECT revoked_at, bootstrap FROM api_keys WHERE id = ? AND org_id = ?`+c.cfg.ForUpdate), id, orgID).Scan(&revoked, &bootstrap)
		if errors.Is(err, sql.ErrNoRows) {
			return NotFound("api key %q not found", id)
		}
		if err != nil {
			return c.wrap("revoke api key", err)
		}
		if bootstrap != 0 {
			return iothub.Errorf(iothub.EFORBIDDEN, "the bootstrap key cannot be revoked; rotate it offline with: iothub admin-key rotate --data-dir DIR")
		}
		if revoked.Valid {
			return Conflict("api key %q is already revoked", id)
		}
		_, err = tx.ExecContext(ctx, c.q(`UPDATE api_keys SET revoked_at = ? WHERE id = ?`), MS(c.cfg.Now()), id)
		return c.wrap("revoke api key", err)
	})
}

// BootstrapKeyID is the id of the bootstrap key's row.
const BootstrapKeyID = "key_bootstrap"

// SetBootstrapKey makes hash the bootstrap key: the row is created, or
// its hash replaced and any revocation lifted. Other keys are untouched.
func (c *Core) SetBootstrapKey(ctx context.Context, hash []byte) error {
	if len(hash) < 16 {
		return Invalid("api key hash is missing or too short")
	}
	now := MS(c.cfg.Now())
	return c.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, c.q(`UPDATE api_keys SET hash = ?, revoked_at = NULL, created_at = ? WHERE id = ?`),
			hex.EncodeToString(hash), now, BootstrapKeyID)
		if kind, _ := c.cfg.Constraint(err); kind == "unique" {
			return Conflict("that key is already in use")
		}
		if err != nil {
			return c.wrap("set bootstrap key", err)
		}
		if n, _ := res.RowsAffected(); n > 0 {
			return nil
		}
		_, err = tx.ExecContext(ctx, c.q(`INSERT INTO api_keys (`+APIKeyCols+`) VALUES (?,?,?,?,?,?,?,?)`),
			BootstrapKeyID, iothub.DefaultOrgID, "bootstrap", string(iothub.RoleAdmin), 1, hex.EncodeToString(hash), now, nil)
		if kind, _ := c.cfg.Constraint(err); kind == "unique" {
			return Conflict("that key is already in use")
		}
		return c.wrap("set bootstrap key", err)
	})
}

// BootstrapKey returns the bootstrap key's row, revoked or not, or ENOTFOUND.
func (c *Core) BootstrapKey(ctx context.Context) (*iothub.APIKey, error) {
	k, err := ScanAPIKey(c.cfg.Read.QueryRowContext(ctx, c.q(`SELECT `+APIKeyCols+` FROM api_keys
		WHERE bootstrap = 1 ORDER BY created_at DESC LIMIT 1`)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, NotFound("no bootstrap key")
	}
	return k, c.wrap("bootstrap key", err)
}
