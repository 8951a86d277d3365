package e2e

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// F1: a product's node type is chosen at creation and fixed; gateway
// registration and sign methods are product settings checked at the door;
// the API's device creation and a gateway's registration obey one device
// limit.
func TestF1ProductPolicyThroughAPI(t *testing.T) {
	th := startHub(t, "")
	gw := th.newProduct(t, map[string]any{"name": "gateway", "nodeType": "gateway"})
	plain := th.newProduct(t, map[string]any{})
	if gw.NodeType != iothub.NodeGateway || plain.NodeType != iothub.NodeDevice || plain.AllowGatewayRegistration {
		t.Fatalf("node types: gateway %q, default %q (allow %v)", gw.NodeType, plain.NodeType, plain.AllowGatewayRegistration)
	}
	do(t, th.admin, "POST", "/api/v1/products", map[string]any{"name": "x", "nodeType": "hub"}, nil, 400)
	do(t, th.admin, "PATCH", "/api/v1/products/"+gw.ProductKey, map[string]any{"nodeType": "device"}, nil, 400)
	do(t, th.admin, "PATCH", "/api/v1/products/"+plain.ProductKey, map[string]any{"signMethods": []string{"md4"}}, nil, 400)
	var up iothub.Product
	do(t, th.admin, "PATCH", "/api/v1/products/"+plain.ProductKey,
		map[string]any{"signMethods": []string{"SHA256", "sha256", "hmacsha256"}, "allowGatewayRegistration": true}, &up, 200)
	if !slices.Equal(up.SignMethods, []string{"sha256", "hmacsha256"}) || !up.AllowGatewayRegistration {
		t.Fatalf("after PATCH: %+v", up)
	}

	limited := th.newProduct(t, map[string]any{"deviceLimit": 1, "allowGatewayRegistration": true})
	th.newDevice(t, limited, "first")
	do(t, th.admin, "POST", "/api/v1/products/"+limited.ProductKey+"/devices", map[string]any{"deviceKey": "second"}, nil, 409)

	gd := th.newDevice(t, gw, "gw1")
	c := connect(t, deviceOptions("tcp://"+th.MQTTAddr(), gw.ProductKey, "gw1", gd.DeviceSecret, sign.ModeStatic))
	replies := make(chan []byte, 1)
	topic := "/sys/" + gw.ProductKey + "/gw1/thing/device/register"
	c.Subscribe(topic+"_reply", 0, func(_ paho.Client, m paho.Message) { replies <- m.Payload() }).Wait()
	c.Publish(topic, 1, false, `{"id":"1","method":"thing.device.register","params":[{"productKey":"`+limited.ProductKey+`","deviceKey":"third"}]}`).Wait()
	select {
	case b := <-replies:
		var r struct{ Code int }
		if json.Unmarshal(b, &r) != nil || r.Code != 1009 {
			t.Fatalf("gateway registration past the device limit: %s", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no reply to thing.device.register")
	}
	do(t, th.admin, "GET", "/api/v1/products/"+limited.ProductKey+"/devices/third", nil, nil, 404)
}
