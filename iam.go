package iothub

import (
	"context"
	"time"
)

// DefaultOrgID is the organisation created on first start. Products made by
// the bootstrap key without an orgId land here.
const DefaultOrgID = "default"

// Org is a tenant. Every product, device, certificate and API key belongs to
// exactly one org, and an org's API key never sees another org's rows.
type Org struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"createdAt"`
}

// Role is what an API key may do inside its org.
type Role string

// Roles, from most to least privileged.
const (
	RoleAdmin    Role = "admin"    // everything in its org, including API keys
	RoleOperator Role = "operator" // devices, certificates, commands
	RoleViewer   Role = "viewer"   // read only
)

// Valid reports whether r is one of the known roles.
func (r Role) Valid() bool { return r == RoleAdmin || r == RoleOperator || r == RoleViewer }

// Allows reports whether a key with role r may act with role need.
func (r Role) Allows(need Role) bool { return roleRank(r) >= roleRank(need) }

func roleRank(r Role) int {
	switch r {
	case RoleAdmin:
		return 3
	case RoleOperator:
		return 2
	case RoleViewer:
		return 1
	}
	return 0
}

// APIKey is a management credential. Only the SHA-256 hash of the key is
// stored; the key itself is shown once at creation.
type APIKey struct {
	ID        string     `json:"id"`
	OrgID     string     `json:"orgId"`
	Name      string     `json:"name"`
	Role      Role       `json:"role"`
	Bootstrap bool       `json:"bootstrap,omitempty"` // acts in every org
	Hash      []byte     `json:"-"`
	CreatedAt time.Time  `json:"createdAt"`
	RevokedAt *time.Time `json:"revokedAt,omitempty"`
}

// Principal is the authenticated caller of a management request.
type Principal struct {
	KeyID     string
	OrgID     string
	Role      Role
	Bootstrap bool
}

// CanSee reports whether p may read or change rows of org.
func (p Principal) CanSee(org string) bool { return p.Bootstrap || p.OrgID == org }

// OrgStore persists organisations.
type OrgStore interface {
	CreateOrg(ctx context.Context, o *Org) error
	Org(ctx context.Context, id string) (*Org, error)
	Orgs(ctx context.Context) ([]*Org, error)
}

// APIKeyStore persists API keys by hash.
type APIKeyStore interface {
	CreateAPIKey(ctx context.Context, k *APIKey) error
	// APIKeyByHash returns the unrevoked key with that hash or ENOTFOUND.
	APIKeyByHash(ctx context.Context, hash []byte) (*APIKey, error)
	APIKeys(ctx context.Context, orgID string) ([]*APIKey, error)
	// RevokeAPIKey revokes a key; the bootstrap key is EFORBIDDEN.
	RevokeAPIKey(ctx context.Context, orgID, id string) error
	// BootstrapKey returns the bootstrap key, revoked or not, or ENOTFOUND.
	BootstrapKey(ctx context.Context) (*APIKey, error)
	// SetBootstrapKey makes the key with hash the (unrevoked) bootstrap key.
	SetBootstrapKey(ctx context.Context, hash []byte) error
}
