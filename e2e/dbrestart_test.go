package e2e

import (
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/nats/natstest"
	"github.com/iothub/iothub/postgres/pgtest"
	"github.com/iothub/iothub/sign"
)

// dbOutage is how long PostgreSQL stays down under the cluster.
const dbOutage = 8 * time.Second

// TestClusterSurvivesDatabaseRestart halts PostgreSQL under two nodes
// and starts it again: meanwhile logins are refused as "server
// unavailable"; afterwards both nodes log devices in and apply changes
// again without being restarted.
func TestClusterSurvivesDatabaseRestart(t *testing.T) {
	pg := pgtest.Serve(t)
	dbURL, err := pg.CreateDatabase()
	if err != nil {
		t.Fatal(err)
	}
	natsURL := natstest.URL(t)
	a := startNode(t, t.TempDir(), dbURL, natsURL)
	b := startNode(t, joinCluster(t, a.dir), dbURL, natsURL)
	prod := a.newProduct(t, map[string]any{"name": "meter"})
	d := a.newDevice(t, prod, "D-1")
	login := func(n *testHub) *paho.ClientOptions {
		return deviceOptions("tcp://"+n.MQTTAddr(), prod.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic)
	}

	if err := pg.Halt(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	for _, n := range []*testHub{a, b} {
		err := refused(login(n))
		if err == nil {
			t.Fatal("a node logged a device in with its database down")
		}
		if !strings.Contains(strings.ToLower(err.Error()), "unavailable") {
			t.Fatalf("login with the database down refused as %q, want server unavailable", err)
		}
	}
	time.Sleep(time.Until(down.Add(dbOutage)))
	if err := pg.Resume(); err != nil {
		t.Fatal(err)
	}
	up := time.Now()

	// Both nodes log the device in again, and a disable through one
	// closes the session on the other.
	for _, n := range []*testHub{a, b} {
		eventually(t, 30*time.Second, "a login on "+n.MQTTAddr()+" after the database restart", func() bool {
			return refused(login(n)) == nil
		})
	}
	t.Logf("both nodes accept logins %v after the database restart", time.Since(up).Round(time.Millisecond))
	o := login(b)
	lost := make(chan time.Time, 1)
	o.SetConnectionLostHandler(func(paho.Client, error) { lost <- time.Now() })
	connect(t, o)
	a.waitState(t, prod.ProductKey, d.DeviceKey, iothub.StateOnline)
	do(t, a.admin, "POST", "/api/v1/products/"+prod.ProductKey+"/devices/"+d.DeviceKey+"/disable", nil, nil, 200)
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("a disable through node A did not close the session on node B after the database restart")
	}
}
