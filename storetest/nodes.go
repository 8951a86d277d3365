package storetest

import (
	"testing"
	"time"

	"github.com/iothub/iothub"
)

// testNodeLeases: a device's session belongs to the node that logged it
// in; a restart, an expired lease or a stop ends exactly that node's
// sessions, and a logout on one node leaves a login on another alone.
func testNodeLeases(t *testing.T, db iothub.Store) {
	mkProduct(t, db, "pk")
	for _, dk := range []string{"a", "b", "c", "d"} {
		mkDevice(t, db, "pk", dk)
	}
	dev := func(dk string) iothub.DeviceID { return iothub.DeviceID{ProductKey: "pk", DeviceKey: dk} }
	state := func(dk string) iothub.DeviceState {
		t.Helper()
		d, err := db.Device(ctx, "pk", dk)
		must(t, err)
		return d.State
	}
	apply := func(changes ...iothub.StateChange) {
		t.Helper()
		res, err := db.ApplyDeviceStates(ctx, changes)
		must(t, err)
		for _, err := range res {
			must(t, err)
		}
	}
	t0 := time.UnixMilli(1_700_000_000_000).UTC()
	must(t, db.SetDeviceState(ctx, "pk", "d", iothub.StateOnline, t0)) // names no node

	_, err := db.StartNode(ctx, "", "i", t0)
	wantCode(t, err, iothub.EINVALID)
	ended, err := db.StartNode(ctx, "n1", "i1", t0)
	must(t, err)
	if ended != 0 {
		t.Fatalf("first start ended %d sessions", ended)
	}
	ended, err = db.StartNode(ctx, "n2", "i1", t0)
	must(t, err)
	if ended != 0 {
		t.Fatalf("first start of n2 ended %d sessions", ended)
	}
	apply(iothub.StateChange{Device: dev("a"), State: iothub.StateOnline, At: t0, Node: "n1"},
		iothub.StateChange{Device: dev("b"), State: iothub.StateOnline, At: t0, Node: "n1"},
		iothub.StateChange{Device: dev("c"), State: iothub.StateOnline, At: t0, Node: "n2"})

	// b moves to n2; n1's late logout of b leaves it online.
	apply(iothub.StateChange{Device: dev("b"), State: iothub.StateOnline, At: t0, Node: "n2"},
		iothub.StateChange{Device: dev("b"), State: iothub.StateOffline, At: t0, Node: "n1"})
	if s := state("b"); s != iothub.StateOnline {
		t.Fatalf("b after n1's late logout: %s", s)
	}

	// n1's write for an earlier login arrives after n2's later one: b stays n2's.
	apply(iothub.StateChange{Device: dev("b"), State: iothub.StateOnline, At: t0.Add(-time.Second), Node: "n1"},
		iothub.StateChange{Device: dev("b"), State: iothub.StateOffline, At: t0, Node: "n1"})
	if s := state("b"); s != iothub.StateOnline {
		t.Fatalf("b after n1's late write of an older login: %s", s)
	}

	// n1 restarts after a crash: a goes offline, b (now on n2) stays.
	ended, err = db.StartNode(ctx, "n1", "i2", t0.Add(time.Second))
	must(t, err)
	if ended != 1 || state("a") != iothub.StateOffline || state("b") != iothub.StateOnline {
		t.Fatalf("restart ended %d; a %s, b %s", ended, state("a"), state("b"))
	}
	_, err = db.RenewNode(ctx, "n1", "i1", t0.Add(2*time.Second))
	wantCode(t, err, iothub.ECONFLICT) // the old instance
	lost, err := db.RenewNode(ctx, "n1", "i2", t0.Add(20*time.Second))
	must(t, err)
	if lost {
		t.Fatal("a held lease reported lost")
	}

	// n2 stops renewing: its lease expires, b and c go offline, and so
	// does d, which names no node; n1's devices stay.
	apply(iothub.StateChange{Device: dev("a"), State: iothub.StateOnline, At: t0, Node: "n1"})
	ended, err = db.ExpireNodes(ctx, t0.Add(10*time.Second))
	must(t, err)
	if ended != 3 {
		t.Fatalf("expiry ended %d sessions, want 3", ended)
	}
	for dk, want := range map[string]iothub.DeviceState{"a": iothub.StateOnline, "b": iothub.StateOffline, "c": iothub.StateOffline, "d": iothub.StateOffline} {
		if s := state(dk); s != want {
			t.Fatalf("%s after expiry: %s, want %s", dk, s, want)
		}
	}
	// n2 was only slow: it finds its lease gone and takes it again.
	lost, err = db.RenewNode(ctx, "n2", "i1", t0.Add(21*time.Second))
	must(t, err)
	if !lost {
		t.Fatal("a reaped lease was not reported lost")
	}
	if lost, err = db.RenewNode(ctx, "n2", "i1", t0.Add(22*time.Second)); err != nil || lost {
		t.Fatalf("renewing the retaken lease: lost %v, %v", lost, err)
	}

	// A stop ends n1's sessions and frees its lease.
	must(t, db.StopNode(ctx, "n1", "i2"))
	if s := state("a"); s != iothub.StateOffline {
		t.Fatalf("a after n1 stopped: %s", s)
	}
	if lost, err = db.RenewNode(ctx, "n1", "i3", t0.Add(23*time.Second)); err != nil || !lost {
		t.Fatalf("lease after stop: lost %v, %v", lost, err)
	}
}
