package iothub

import (
	"context"
	"time"
)

// NodeStore keeps the leases of the hub nodes sharing a store. A node
// holds a lease under a stable ID (kept across restarts) and a fresh
// instance token per start, and renews it while it runs; the devices it
// marks online carry its ID (StateChange.Node), so a node that died is
// known to own nothing once its lease is gone.
type NodeStore interface {
	// StartNode takes the lease of node id for a new instance and ends
	// the sessions the node held before (a crash leaves them online): its
	// online devices go offline. It returns how many did.
	StartNode(ctx context.Context, id, instance string, at time.Time) (int, error)
	// RenewNode moves the lease's heartbeat to at. It fails with ECONFLICT
	// when another instance took the ID (two processes with one identity).
	// When the lease was gone (expired and reaped by another node) it
	// takes it again and reports lost: the node's devices were marked
	// offline meanwhile and it must mark its live sessions online again.
	RenewNode(ctx context.Context, id, instance string, at time.Time) (lost bool, err error)
	// ExpireNodes removes the leases whose heartbeat is older than before
	// and marks offline the online devices they held, and those that name
	// no node. It returns how many devices went offline.
	ExpireNodes(ctx context.Context, before time.Time) (int, error)
	// StopNode gives up the instance's lease and marks the node's online
	// devices offline.
	StopNode(ctx context.Context, id, instance string) error
}
