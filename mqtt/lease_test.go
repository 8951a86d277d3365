package mqtt

import (
	"context"
	"testing"
	"time"

	"github.com/iothub/iothub"
)

// TestLeaseLostWhileAlive: another node reaped this node's lease (it was
// cut off from the store too long) and marked its devices offline; at its
// next renewal the node takes the lease again and marks its live sessions
// online.
func TestLeaseLostWhileAlive(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pk", nil)
	d := h.device(p, "dev")
	h.connect(t, p.ProductKey, d.DeviceKey, d.DeviceSecret)
	if s := h.stored(p.ProductKey, d.DeviceKey).State; s != iothub.StateOnline {
		t.Fatalf("state after login: %s", s)
	}
	ended, err := h.db.ExpireNodes(context.Background(), time.Now().Add(time.Hour))
	if err != nil || ended != 1 {
		t.Fatalf("reaping the live node ended %d sessions, %v", ended, err)
	}
	if s := h.stored(p.ProductKey, d.DeviceKey).State; s != iothub.StateOffline {
		t.Fatalf("state after the reap: %s", s)
	}
	deadline := time.Now().Add(2*leaseRenew + 5*time.Second)
	for h.stored(p.ProductKey, d.DeviceKey).State != iothub.StateOnline {
		if time.Now().After(deadline) {
			t.Fatal("the node did not mark its live session online again after taking its lease back")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
