package iothub

import (
	"context"
	"encoding/json"
	"strings"
	"time"
)

// ChangeKind names what a Change records.
type ChangeKind string

// Kinds of change that applications receive.
const (
	ChangeMeasurepoints ChangeKind = "measurepoints" // a measurepoint post
	ChangeEvents        ChangeKind = "events"        // an event post
	ChangeAttributes    ChangeKind = "attributes"    // an attribute update
	ChangeStates        ChangeKind = "states"        // a device state change
)

// ChangeKinds is every kind, in documentation order.
var ChangeKinds = []ChangeKind{ChangeMeasurepoints, ChangeEvents, ChangeAttributes, ChangeStates}

// ParseChangeKinds reads a comma-separated list of kinds ("" or none is
// every kind); an unknown kind is EINVALID.
func ParseChangeKinds(list []string) ([]ChangeKind, error) {
	var out []ChangeKind
	seen := map[ChangeKind]bool{}
	for _, item := range list {
		for _, k := range strings.Split(item, ",") {
			k = strings.TrimSpace(k)
			if k == "" {
				continue
			}
			kind := ChangeKind(k)
			if !kind.Valid() {
				return nil, Errorf(EINVALID, "unknown kind %q: kinds are measurepoints, events, attributes, states", k)
			}
			if !seen[kind] {
				seen[kind] = true
				out = append(out, kind)
			}
		}
	}
	if len(out) == 0 {
		return ChangeKinds, nil
	}
	return out, nil
}

// Valid reports whether k is a known kind.
func (k ChangeKind) Valid() bool {
	for _, known := range ChangeKinds {
		if k == known {
			return true
		}
	}
	return false
}

// Change is one committed fact of a device that applications may receive:
// Data is the JSON every consumer gets, {"productKey","deviceKey","time",…}.
// ID is its place in the change log (the cursor), given when it is appended.
type Change struct {
	ID         int64
	OrgID      string
	Kind       ChangeKind
	ProductKey string
	DeviceKey  string
	Time       time.Time
	Data       json.RawMessage
}

// ChangeFilter selects changes after a cursor. Empty fields select all.
type ChangeFilter struct {
	After      int64
	OrgID      string
	ProductKey string
	DeviceKey  string
	Kinds      []ChangeKind
	Limit      int
}

// Matches reports whether c passes f (After and Limit aside).
func (f ChangeFilter) Matches(c Change) bool {
	if (f.OrgID != "" && c.OrgID != f.OrgID) || (f.ProductKey != "" && c.ProductKey != f.ProductKey) ||
		(f.DeviceKey != "" && c.DeviceKey != f.DeviceKey) {
		return false
	}
	if len(f.Kinds) == 0 {
		return true
	}
	for _, k := range f.Kinds {
		if k == c.Kind {
			return true
		}
	}
	return false
}

// ChangeStore is the change log and the forwarding rules that read it.
type ChangeStore interface {
	// AppendChanges gives each change the next ids and stores them in one
	// transaction; a change's OrgID is its product's. Ids become visible in
	// increasing order. Changes of unknown products are dropped.
	AppendChanges(ctx context.Context, changes []Change) error
	// Changes returns up to f.Limit changes with an id above f.After that
	// match f, in id order.
	Changes(ctx context.Context, f ChangeFilter) ([]Change, error)
	// ChangeBounds returns the oldest id still kept and the newest given
	// (0, 0 for an empty log).
	ChangeBounds(ctx context.Context) (oldest, newest int64, err error)
	// TrimChanges deletes changes appended before t.
	TrimChanges(ctx context.Context, before time.Time) error

	// CreateRule stores r, its webhook secret sealed, its cursor at the
	// newest change. An unknown org is ENOTFOUND.
	CreateRule(ctx context.Context, r *Rule) error
	// Rule returns one rule of orgID ("" any org) with its secret in clear, or ENOTFOUND.
	Rule(ctx context.Context, orgID, id string) (*Rule, error)
	// Rules lists an org's rules ("" lists all).
	Rules(ctx context.Context, orgID string) ([]*Rule, error)
	DeleteRule(ctx context.Context, orgID, id string) error
	// LeaseRule makes owner the rule's deliverer until until, if no other
	// owner holds an unexpired lease; it reports whether owner holds it.
	LeaseRule(ctx context.Context, id, owner string, now, until time.Time) (bool, error)
	// RuleDelivered moves the rule's cursor to cursor and counts n deliveries.
	RuleDelivered(ctx context.Context, id string, cursor int64, n int) error
	// RuleFailed records a failed delivery attempt.
	RuleFailed(ctx context.Context, id, msg string, at time.Time) error
}

// Rule forwards an org's changes to a webhook or a NATS subject.
type Rule struct {
	ID         string       `json:"id"`
	OrgID      string       `json:"orgId"`
	Name       string       `json:"name"`
	ProductKey string       `json:"productKey,omitempty"`
	Kinds      []ChangeKind `json:"kinds"`
	Webhook    *Webhook     `json:"webhook,omitempty"`
	NATS       *NATSTarget  `json:"nats,omitempty"`
	CreatedAt  time.Time    `json:"createdAt"`
	Status     RuleStatus   `json:"status"`
}

// Webhook is an HTTP(S) endpoint; each delivery is signed with Secret.
type Webhook struct {
	URL    string `json:"url"`
	Secret string `json:"secret,omitempty"`
}

// NATSTarget is a NATS subject deliveries are published on.
type NATSTarget struct {
	Subject string `json:"subject"`
}

// RuleStatus is how a rule's deliveries are going.
type RuleStatus struct {
	Cursor      int64      `json:"cursor"`
	Delivered   int64      `json:"delivered"`
	Failures    int64      `json:"failures"`
	Failing     bool       `json:"failing"`
	LastError   string     `json:"lastError,omitempty"`
	LastErrorAt *time.Time `json:"lastErrorAt,omitempty"`
}
