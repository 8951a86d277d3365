package iothub

import (
	"context"
	"encoding/json"
	"strings"
	"time"
)

// DataKind names what a DataChange records.
type DataKind string

// Kinds of change that applications receive.
const (
	DataMeasurepoints DataKind = "measurepoints" // a measurepoint post
	DataEvents        DataKind = "events"        // an event post
	DataAttributes    DataKind = "attributes"    // an attribute update
	DataStates        DataKind = "states"        // a device state change
)

// DataKinds is every kind, in documentation order.
var DataKinds = []DataKind{DataMeasurepoints, DataEvents, DataAttributes, DataStates}

// ParseDataKinds reads a comma-separated list of kinds ("" or none is
// every kind); an unknown kind is EINVALID.
func ParseDataKinds(list []string) ([]DataKind, error) {
	var out []DataKind
	seen := map[DataKind]bool{}
	for _, item := range list {
		for _, k := range strings.Split(item, ",") {
			k = strings.TrimSpace(k)
			if k == "" {
				continue
			}
			kind := DataKind(k)
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
		return DataKinds, nil
	}
	return out, nil
}

// Valid reports whether k is a known kind.
func (k DataKind) Valid() bool {
	for _, known := range DataKinds {
		if k == known {
			return true
		}
	}
	return false
}

// DataChange is one committed fact of a device that applications may receive:
// Data is the JSON every consumer gets, {"productKey","deviceKey","time",…}.
// ID is its place in the change log (the cursor), given when it is appended.
type DataChange struct {
	ID         int64
	OrgID      string
	Kind       DataKind
	ProductKey string
	DeviceKey  string
	Time       time.Time
	Data       json.RawMessage
}

// DataFilter selects changes after a cursor. Empty fields select all.
type DataFilter struct {
	After      int64
	OrgID      string
	ProductKey string
	DeviceKey  string
	Kinds      []DataKind
	Limit      int
}

// DataLog is the change log and the forwarding rules that read it.
type DataLog interface {
	// AppendData gives each change the next ids and stores them in one
	// transaction; a change's OrgID is its product's. Ids become visible in
	// increasing order. Changes of unknown products are dropped.
	AppendData(ctx context.Context, changes []DataChange) error
	// DataAfter returns up to f.Limit changes with an id above f.After that
	// match f, in id order.
	DataAfter(ctx context.Context, f DataFilter) ([]DataChange, error)
	// DataBounds returns the oldest id still kept and the newest given
	// (0, 0 for an empty log).
	DataBounds(ctx context.Context) (oldest, newest int64, err error)
	// TrimData deletes changes appended before t.
	TrimData(ctx context.Context, before time.Time) error

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
	ID         string      `json:"id"`
	OrgID      string      `json:"orgId"`
	Name       string      `json:"name"`
	ProductKey string      `json:"productKey,omitempty"`
	Kinds      []DataKind  `json:"kinds"`
	Webhook    *Webhook    `json:"webhook,omitempty"`
	NATS       *NATSTarget `json:"nats,omitempty"`
	CreatedAt  time.Time   `json:"createdAt"`
	Status     RuleStatus  `json:"status"`
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
