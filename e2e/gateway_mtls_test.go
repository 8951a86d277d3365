package e2e

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// A gateway of a certificate product logs in over mutual TLS and connects
// two secret-mode sub-devices: the topology is added by the gateway (each
// entry signed with the sub-device's secret) and edited through the API;
// a service call from the API reaches a sub-device through the gateway;
// disabling a sub-device through the API logs it out with a
// combine.disable notice; deleting one from the topology through the API
// logs it out too. The gateway's certificate authenticates the transport,
// each sub-device's signature authenticates the sub-device.
func TestGatewayOverMutualTLSThroughTheAPI(t *testing.T) {
	th := startHub(t, "")
	gwP := th.newProduct(t, map[string]any{"name": "gateways", "authMode": "certificate", "nodeType": "gateway"})
	subP := th.newProduct(t, map[string]any{"name": "meters"})
	gwD := th.newDevice(t, gwP, "GW-1")
	a, b := th.newDevice(t, subP, "M-A"), th.newDevice(t, subP, "M-B")
	c, key, _ := th.enrollCert(t, gwP.ProductKey, "GW-1")
	o := deviceOptions("ssl://"+th.MQTTSAddr(), gwP.ProductKey, gwD.DeviceKey, gwD.DeviceSecret, sign.ModeStatic)
	o.SetTLSConfig(th.tlsTo(t, tlsCert(t, c.Cert, key)))
	gw := connect(t, o)
	ext := "/ext/session/" + gwP.ProductKey + "/GW-1/"
	notices := make(chan paho.Message, 10)
	gw.Subscribe(ext+"combine/disable", 0, func(_ paho.Client, m paho.Message) { notices <- m }).Wait()

	call := func(topic, method string, params any) map[string]any {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"id": "1", "version": "1.0", "method": method, "params": params})
		replies := make(chan map[string]any, 1)
		tok := gw.Subscribe(topic+"_reply", 0, func(_ paho.Client, m paho.Message) {
			var r map[string]any
			json.Unmarshal(m.Payload(), &r)
			replies <- r
		})
		tok.Wait()
		defer func() { gw.Unsubscribe(topic + "_reply").Wait() }()
		gw.Publish(topic, 1, false, body).Wait()
		select {
		case r := <-replies:
			return r
		case <-time.After(5 * time.Second):
			t.Fatalf("no reply on %s", topic)
			return nil
		}
	}
	signed := func(d *iothub.Device) map[string]any {
		ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
		l := sign.Login{ClientID: d.DeviceKey, DeviceKey: d.DeviceKey, ProductKey: d.ProductKey, Timestamp: ts, SignMethod: sign.SHA256}
		sig, _ := sign.Compute(sign.SHA256, l.Pairs(), d.DeviceSecret)
		return map[string]any{"productKey": d.ProductKey, "deviceKey": d.DeviceKey, "clientId": d.DeviceKey, "timestamp": ts, "signMethod": "sha256", "sign": sig}
	}

	// a joins through the gateway's signed request, b through the API.
	if r := call("/sys/"+gwP.ProductKey+"/GW-1/thing/topo/add", "thing.topo.add", []any{signed(a)}); r["code"] != 200.0 {
		t.Fatalf("topo add: %v", r)
	}
	do(t, th.admin, "POST", "/api/v1/products/"+gwP.ProductKey+"/devices/GW-1/subdevices",
		map[string]any{"subDevices": []any{map[string]any{"productKey": subP.ProductKey, "deviceKey": "M-B"}}}, nil, 200)
	var topo struct{ SubDevices []map[string]string }
	do(t, th.admin, "GET", "/api/v1/products/"+gwP.ProductKey+"/devices/GW-1/subdevices", nil, &topo, 200)
	if len(topo.SubDevices) != 2 {
		t.Fatalf("topology through the API: %v", topo)
	}
	for _, d := range []*iothub.Device{a, b} {
		if r := call(ext+"combine/login", "combine.login", signed(d)); r["code"] != 200.0 {
			t.Fatalf("combine.login of %s: %v", d.DeviceKey, r)
		}
		th.waitState(t, subP.ProductKey, d.DeviceKey, iothub.StateOnline)
	}
	if r := call("/sys/"+subP.ProductKey+"/M-A/thing/measurepoint/post", "thing.measurepoint.post", map[string]any{"measurepoints": map[string]any{"kwh": 7}}); r["code"] != 200.0 {
		t.Fatalf("post for M-A: %v", r)
	}

	// A service call through the API, answered by the gateway for M-A.
	gw.Subscribe("/sys/"+subP.ProductKey+"/M-A/thing/service/+", 0, func(c paho.Client, m paho.Message) {
		var req struct{ ID string }
		json.Unmarshal(m.Payload(), &req)
		c.Publish(m.Topic()+"_reply", 0, false, fmt.Sprintf(`{"id":"%s","code":200,"data":{"relay":"off"}}`, req.ID))
	}).Wait()
	var rep iothub.Reply
	do(t, th.admin, "POST", "/api/v1/products/"+subP.ProductKey+"/devices/M-A/services/cut", map[string]any{"params": map[string]any{}, "timeoutMs": 5000}, &rep, 200)
	var out struct{ Relay string }
	if json.Unmarshal(rep.Data, &out); rep.Code != 200 || out.Relay != "off" {
		t.Fatalf("service call reply %+v", rep)
	}

	// Disable M-B through the API: logged out, the gateway is told.
	do(t, th.admin, "POST", "/api/v1/products/"+subP.ProductKey+"/devices/M-B/disable", nil, nil, 200)
	select {
	case m := <-notices:
		if m.Topic() != ext+"combine/disable" {
			t.Fatalf("notice on %s: %s", m.Topic(), m.Payload())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no combine.disable notice")
	}
	do(t, th.admin, "POST", "/api/v1/products/"+subP.ProductKey+"/devices/M-B/services/cut", map[string]any{"params": map[string]any{}, "timeoutMs": 1000}, nil, 409)
	// Removing M-A from the topology through the API logs it out.
	do(t, th.admin, "DELETE", "/api/v1/products/"+gwP.ProductKey+"/devices/GW-1/subdevices/"+subP.ProductKey+"/M-A", nil, nil, 204)
	th.waitState(t, subP.ProductKey, "M-A", iothub.StateOffline)
	do(t, th.admin, "POST", "/api/v1/products/"+subP.ProductKey+"/devices/M-A/services/cut", map[string]any{"params": map[string]any{}, "timeoutMs": 1000}, nil, 409)
	if !gw.IsConnectionOpen() {
		t.Fatal("the gateway lost its connection")
	}
}
