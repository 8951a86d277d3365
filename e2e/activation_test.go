package e2e

import (
	"encoding/json"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// activateWithMosquitto logs in with securemode 3 using mosquitto_sub
// subscribed to /ext/session/{pk}/{dk}/# and returns the pushed message,
// or the tool's output and false when no message came.
func activateWithMosquitto(t *testing.T, th *testHub, pk, dk, productSecret string) (string, bool) {
	t.Helper()
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
	cid, user, pass, _ := sign.Credentials(dk, pk, dk, productSecret, sign.ModeDynamic, sign.SHA256, ts)
	host, port, _ := net.SplitHostPort(th.MQTTAddr())
	out, err := exec.Command(needTool(t, "mosquitto_sub"), "-h", host, "-p", port, "-V", "mqttv311", "-i", cid, "-u", user, "-P", pass,
		"-t", "/ext/session/"+pk+"/"+dk+"/#", "-C", "1", "-W", "5").CombinedOutput()
	return string(out), err == nil && strings.Contains(string(out), "thing.activate.info")
}

func TestDynamicActivationWithMosquitto(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "edge", "dynamicActivation": true})
	d := th.newDevice(t, p, "SN-0001") // pre-registered by serial number

	msg, ok := activateWithMosquitto(t, th, p.ProductKey, d.DeviceKey, p.ProductSecret)
	if !ok {
		t.Fatalf("securemode 3 delivered nothing:\n%s", msg)
	}
	var info struct {
		ID     string
		Method string
		Params struct{ AssetID, ProductKey, DeviceKey, DeviceSecret string }
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(msg)), &info); err != nil {
		t.Fatalf("activation payload %q: %v", msg, err)
	}
	if info.Params.DeviceSecret != d.DeviceSecret || info.Params.AssetID != d.AssetID || info.Params.DeviceKey != d.DeviceKey {
		t.Fatalf("activation pushed %+v, registry holds %+v", info.Params, d)
	}
	if s := th.deviceState(t, p.ProductKey, d.DeviceKey); s != iothub.StateInactive {
		t.Fatalf("activation alone moved the device to %s", s)
	}

	// Mode 2 with the pushed secret logs in and activates the device.
	c := connect(t, deviceOptions("tcp://"+th.MQTTAddr(), p.ProductKey, d.DeviceKey, info.Params.DeviceSecret, sign.ModeStatic))
	th.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOnline)
	c.Disconnect(50)

	// One-shot: a second mode 3 is refused once the device is in service.
	if out, ok := activateWithMosquitto(t, th, p.ProductKey, d.DeviceKey, p.ProductSecret); ok || !strings.Contains(out, "not authorised") {
		t.Fatalf("second activation was not refused:\n%s", out)
	}
	// An unknown device and a wrong secret are refused the same way.
	for _, tc := range [][2]string{{"SN-UNKNOWN", p.ProductSecret}, {d.DeviceKey, "wrong"}} {
		if out, ok := activateWithMosquitto(t, th, p.ProductKey, tc[0], tc[1]); ok || !strings.Contains(out, "not authorised") {
			t.Fatalf("activation of %s was not refused alike:\n%s", tc[0], out)
		}
	}

	// Reset through the API: a new secret, and activation is open again.
	var reset iothub.Device
	do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/devices/"+d.DeviceKey+"/reset", nil, &reset, 200)
	if reset.DeviceSecret == "" || reset.DeviceSecret == d.DeviceSecret || reset.State != iothub.StateInactive {
		t.Fatalf("reset answered %+v", reset)
	}
	if msg, ok := activateWithMosquitto(t, th, p.ProductKey, d.DeviceKey, p.ProductSecret); !ok || !strings.Contains(msg, reset.DeviceSecret) {
		t.Fatalf("activation after reset:\n%s", msg)
	}

	// Rotation: the old ProductSecret stops working.
	var rotated iothub.Product
	do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/rotate-secret", nil, &rotated, 200)
	if out, ok := activateWithMosquitto(t, th, p.ProductKey, d.DeviceKey, p.ProductSecret); ok || !strings.Contains(out, "not authorised") {
		t.Fatalf("old product secret still activates:\n%s", out)
	}
	if _, ok := activateWithMosquitto(t, th, p.ProductKey, d.DeviceKey, rotated.ProductSecret); !ok {
		t.Fatal("new product secret does not activate")
	}
}

func TestActivationSwitchAndAutoRegistration(t *testing.T) {
	th := startHub(t, "")
	off := th.newProduct(t, map[string]any{"name": "static only"})
	d := th.newDevice(t, off, "SN-1")
	if out, ok := activateWithMosquitto(t, th, off.ProductKey, d.DeviceKey, off.ProductSecret); ok || !strings.Contains(out, "not authorised") {
		t.Fatalf("mode 3 on a product with dynamic activation off:\n%s", out)
	}

	auto := th.newProduct(t, map[string]any{"name": "auto", "dynamicActivation": true, "autoRegister": true, "deviceLimit": 1})
	msg, ok := activateWithMosquitto(t, th, auto.ProductKey, "SN-NEW-1", auto.ProductSecret)
	if !ok {
		t.Fatalf("auto-registration pushed nothing:\n%s", msg)
	}
	got, err := th.admin.Device(t.Context(), auto.ProductKey, "SN-NEW-1")
	if err != nil || got.State != iothub.StateInactive {
		t.Fatalf("auto-registered device: %+v %v", got, err)
	}
	stored, _ := th.Store().Device(t.Context(), auto.ProductKey, "SN-NEW-1")
	if !strings.Contains(msg, stored.DeviceSecret) {
		t.Fatal("pushed secret is not the stored one")
	}
	// The product's device limit is 1.
	if out, ok := activateWithMosquitto(t, th, auto.ProductKey, "SN-NEW-2", auto.ProductSecret); ok || !strings.Contains(out, "not authorised") {
		t.Fatalf("auto-registration beyond the device limit:\n%s", out)
	}
}

// TestActivationWithoutSubscribing drives the whole dynamic flow with a
// paho client that never subscribes before the push.
func TestActivationWithoutSubscribing(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "edge", "dynamicActivation": true})
	d := th.newDevice(t, p, "SN-77")
	secrets := make(chan string, 1)
	o := deviceOptions("tcp://"+th.MQTTAddr(), p.ProductKey, d.DeviceKey, p.ProductSecret, sign.ModeDynamic)
	o.SetDefaultPublishHandler(func(c paho.Client, m paho.Message) {
		var info struct {
			ID     string
			Params struct{ DeviceSecret string }
		}
		json.Unmarshal(m.Payload(), &info)
		c.Publish(m.Topic()+"_reply", 0, false, `{"id":"`+info.ID+`","code":200,"message":""}`)
		secrets <- info.Params.DeviceSecret
	})
	c := connect(t, o)
	var secret string
	select {
	case secret = <-secrets:
	case <-time.After(5 * time.Second):
		t.Fatal("no activation push")
	}
	c.Disconnect(50)
	connect(t, deviceOptions("tcp://"+th.MQTTAddr(), p.ProductKey, d.DeviceKey, secret, sign.ModeStatic))
	th.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOnline)
}
