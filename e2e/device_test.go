package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// TestDeviceLifecycleThroughAPI: secret login, telemetry read back through
// the API, a service call to a device that never subscribed, and the
// state machine as the API reports it.
func TestDeviceLifecycleThroughAPI(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "meter"})
	d := th.newDevice(t, p, "SN-100")
	broker := "tcp://" + th.MQTTAddr()

	if s := th.deviceState(t, p.ProductKey, d.DeviceKey); s != iothub.StateInactive {
		t.Fatalf("new device is %s", s)
	}
	// Wrong secret and unknown device are refused alike.
	for _, o := range []*paho.ClientOptions{
		deviceOptions(broker, p.ProductKey, d.DeviceKey, "wrong-secret", sign.ModeStatic),
		deviceOptions(broker, p.ProductKey, "nobody", d.DeviceSecret, sign.ModeStatic),
	} {
		if err := refused(o); err == nil || !strings.Contains(err.Error(), "not Authorized") {
			t.Fatalf("bad login answered %v, want not authorized", err)
		}
	}

	o := deviceOptions(broker, p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic)
	o.SetDefaultPublishHandler(func(c paho.Client, m paho.Message) {
		// The device answers every service call with the params it got.
		var req struct {
			ID     json.RawMessage
			Params json.RawMessage
		}
		json.Unmarshal(m.Payload(), &req)
		reply, _ := json.Marshal(map[string]any{"id": req.ID, "code": 200, "data": map[string]any{"echo": req.Params}, "message": ""})
		c.Publish(m.Topic()+"_reply", 1, false, reply)
	})
	replies := make(chan string, 4)
	c := connect(t, o)
	th.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOnline)
	got, _ := th.admin.Device(context.Background(), p.ProductKey, d.DeviceKey)
	if got.ActivatedAt == nil {
		t.Fatal("activatedAt not set at the first login")
	}

	up := "/sys/" + p.ProductKey + "/" + d.DeviceKey + "/thing/measurepoint/post"
	c.Subscribe(up+"_reply", 1, func(_ paho.Client, m paho.Message) { replies <- string(m.Payload()) }).Wait()
	c.Publish(up, 1, false, `{"id":"7","version":"1.0","method":"thing.measurepoint.post","params":{"measurepoints":{"temp":21.5,"power":{"value":3,"quality":9}},"time":1700000000000}}`).Wait()
	select {
	case r := <-replies:
		if !strings.Contains(r, `"code":200`) || !strings.Contains(r, `"7"`) {
			t.Fatalf("reply %s", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no measurepoint reply")
	}
	var mp struct{ Measurepoints map[string]json.RawMessage }
	deadline := time.Now().Add(5 * time.Second)
	for string(mp.Measurepoints["temp"]) != "21.5" {
		if time.Now().After(deadline) {
			t.Fatalf("measurepoints through the API: %v", mp.Measurepoints)
		}
		time.Sleep(50 * time.Millisecond)
		do(t, th.admin, "GET", "/api/v1/products/"+p.ProductKey+"/devices/"+d.DeviceKey+"/measurepoints", nil, &mp, 200)
	}

	var reply iothub.Reply
	do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/devices/"+d.DeviceKey+"/services/restart",
		map[string]any{"params": map[string]any{"delay": 3}, "timeoutMs": 5000}, &reply, 200)
	var data struct{ Echo struct{ Delay int } }
	if err := json.Unmarshal(reply.Data, &data); err != nil || reply.Code != 200 || data.Echo.Delay != 3 {
		t.Fatalf("service reply code %d data %s (%v)", reply.Code, reply.Data, err)
	}

	c.Disconnect(50)
	th.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOffline)
	do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/devices/"+d.DeviceKey+"/services/restart", map[string]any{}, nil, 409)
}

// TestDisableClosesLiveSession measures disable-to-disconnect and checks
// that logins are refused until the device is enabled again.
func TestDisableClosesLiveSession(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "meter"})
	d := th.newDevice(t, p, "SN-200")
	o := deviceOptions("tcp://"+th.MQTTAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic)
	lost := make(chan time.Time, 1)
	o.SetConnectionLostHandler(func(paho.Client, error) { lost <- time.Now() })
	connect(t, o)
	th.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOnline)

	start := time.Now()
	do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/devices/"+d.DeviceKey+"/disable", nil, nil, 200)
	select {
	case at := <-lost:
		t.Logf("disable closed the live session %v after the API call", at.Sub(start))
		if at.Sub(start) > time.Second {
			t.Fatalf("session closed %v after disable, want within 1 s", at.Sub(start))
		}
	case <-time.After(2 * time.Second):
		t.Fatal("disable did not close the live session")
	}
	if s := th.deviceState(t, p.ProductKey, d.DeviceKey); s != iothub.StateDisabled {
		t.Fatalf("state after disable %s", s)
	}
	o2 := deviceOptions("tcp://"+th.MQTTAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic)
	if err := refused(o2); err == nil {
		t.Fatal("disabled device logged in")
	}
	do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/devices/"+d.DeviceKey+"/enable", nil, nil, 200)
	if s := th.deviceState(t, p.ProductKey, d.DeviceKey); s != iothub.StateOffline {
		t.Fatalf("state after enable %s, want offline", s)
	}
	connect(t, deviceOptions("tcp://"+th.MQTTAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic))
	th.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOnline)
}
