package mqtt

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

type activateMsg struct {
	ID     string       `json:"id"`
	Method string       `json:"method"`
	Params activateInfo `json:"params"`
}

// activate logs in with securemode 3 without subscribing to anything and
// returns the pushed thing.activate.info, after answering it.
func activate(t *testing.T, h *testHub, p *iothub.Product, dk string) activateMsg {
	t.Helper()
	col := newCollector()
	cid, user, pass := creds(t, p.ProductKey, dk, p.ProductSecret, sign.ModeDynamic, sign.SHA256)
	c, err := connectRaw(t, "tcp://"+h.addr, cid, user, pass, col.opt)
	if err != nil {
		t.Fatalf("securemode 3 login of %s: %v", dk, err)
	}
	defer c.Disconnect(0)
	m := col.next(t, 5*time.Second)
	if want := "/ext/session/" + p.ProductKey + "/" + dk + "/thing/activate/info"; m.Topic() != want {
		t.Fatalf("push on %q, want %q", m.Topic(), want)
	}
	var msg activateMsg
	if err := json.Unmarshal(m.Payload(), &msg); err != nil || msg.Method != "thing.activate.info" {
		t.Fatalf("push %s: %v", m.Payload(), err)
	}
	c.Publish(m.Topic()+"_reply", 1, false, `{"id":"`+msg.ID+`","code":200,"message":""}`).Wait()

	// The activation session may do nothing else.
	tok := c.Subscribe("/sys/"+p.ProductKey+"/"+dk+"/#", 0, nil)
	tok.Wait()
	if r := tok.(*paho.SubscribeToken).Result()["/sys/"+p.ProductKey+"/"+dk+"/#"]; r != 0x80 {
		t.Fatalf("activation session subscribed to /sys: %#x", r)
	}
	return msg
}

func TestActivationFlow(t *testing.T) {
	h := newTestHub(t)
	ctx := context.Background()
	p := h.product("pkd", func(p *iothub.Product) { p.DynamicActivation = true })
	h.device(p, "SN0001") // pre-registered serial number

	msg := activate(t, h, p, "SN0001")
	reg := h.stored("pkd", "SN0001")
	if msg.Params.DeviceSecret != reg.DeviceSecret || msg.Params.AssetID != reg.AssetID || msg.Params.DeviceKey != "SN0001" || msg.Params.ProductKey != "pkd" {
		t.Fatalf("pushed %+v, registry has %s/%s", msg.Params, reg.AssetID, reg.DeviceKey)
	}
	if reg.State != iothub.StateInactive {
		t.Fatalf("activation changed state to %s", reg.State)
	}
	// Mode 2 with the received secret works and activates the device.
	c := h.connect(t, "pkd", "SN0001", msg.Params.DeviceSecret)
	c.Disconnect(0)
	if h.stored("pkd", "SN0001").ActivatedAt == nil {
		t.Fatal("activatedAt not set by the first static login")
	}
	// A second activation is refused, the same way as for an unknown device.
	cid, user, pass := creds(t, "pkd", "SN0001", p.ProductSecret, sign.ModeDynamic, sign.SHA256)
	if _, err := connectRaw(t, "tcp://"+h.addr, cid, user, pass); !errors.Is(err, packets.ErrorRefusedNotAuthorised) {
		t.Fatalf("second activation: %v", err)
	}
	codeActivated := connectV5(t, h.addr, nil, cid, user, pass)
	cid, user, pass = creds(t, "pkd", "SN-UNKNOWN", p.ProductSecret, sign.ModeDynamic, sign.SHA256)
	codeUnknown := connectV5(t, h.addr, nil, cid, user, pass)
	if codeActivated != 0x87 || codeUnknown != codeActivated {
		t.Fatalf("activated device refused with %#x, unknown device with %#x: must be equal (0x87)", codeActivated, codeUnknown)
	}
	// A wrong ProductSecret is a bad credential.
	cid, user, pass = creds(t, "pkd", "SN0001", "wrong", sign.ModeDynamic, sign.SHA256)
	if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0x86 {
		t.Fatalf("wrong product secret: %#x", got)
	}

	// A product with the switch off refuses mode 3.
	off := h.product("pkoff", nil)
	h.device(off, "SN1")
	cid, user, pass = creds(t, "pkoff", "SN1", off.ProductSecret, sign.ModeDynamic, sign.SHA256)
	if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0x87 {
		t.Fatalf("activation off: %#x", got)
	}

	// Auto-registration creates the device and pushes its new secret.
	auto := h.product("pkauto", func(p *iothub.Product) { p.DynamicActivation = true; p.AutoRegister = true; p.DeviceLimit = 1 })
	msg = activate(t, h, auto, "SN-NEW")
	created := h.stored("pkauto", "SN-NEW")
	if created.DeviceSecret != msg.Params.DeviceSecret || len(created.DeviceSecret) != iothub.SecretLen {
		t.Fatal("auto-registered secret differs from the pushed one")
	}
	// The limit holds.
	cid, user, pass = creds(t, "pkauto", "SN-NEXT", auto.ProductSecret, sign.ModeDynamic, sign.SHA256)
	if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0x87 {
		t.Fatalf("over the device limit: %#x", got)
	}
	if _, err := h.db.Device(ctx, "pkauto", "SN-NEXT"); iothub.ErrorCode(err) != iothub.ENOTFOUND {
		t.Fatalf("device over the limit was created: %v", err)
	}

	h.srv.side.Sync()
	events, err := h.db.AuditEvents(ctx, "", 200)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range events {
		kinds = append(kinds, e.Kind+":"+e.Reason)
		if strings.Contains(e.Reason, msg.Params.DeviceSecret) || strings.Contains(e.Reason, p.ProductSecret) {
			t.Fatal("audit carries a secret")
		}
	}
	all := strings.Join(kinds, "\n")
	for _, want := range []string{"activation.ok", "770: device already activated", "770: dynamic activation is off", "device.created:by securemode 3 auto-registration"} {
		if !strings.Contains(all, want) {
			t.Fatalf("audit lacks %q:\n%s", want, all)
		}
	}
}

func TestGatewayRegistersSubDevices(t *testing.T) {
	h := newTestHub(t)
	gwp := h.product("pkgw", func(p *iothub.Product) { p.NodeType = iothub.NodeGateway })
	sub := h.product("pksub", func(p *iothub.Product) { p.AllowGatewayRegistration = true })
	gw := h.device(gwp, "gw")
	c := h.connect(t, "pkgw", "gw", gw.DeviceSecret)
	r := ask(t, c, "/sys/pkgw/gw/thing/device/register",
		`{"id":"r1","method":"thing.device.register","params":[{"productKey":"pksub","deviceKey":"child1","deviceName":{"defaultValue":"c"}}]}`)
	list, _ := r["data"].([]any)
	if r["code"] != 200.0 || len(list) != 1 {
		t.Fatalf("register reply %v", r)
	}
	got := list[0].(map[string]any)
	d := h.stored(sub.ProductKey, "child1")
	if got["deviceSecret"] != d.DeviceSecret || got["assetId"] != d.AssetID {
		t.Fatalf("reply %v does not match the registry", got)
	}
	r = ask(t, c, "/sys/pkgw/gw/thing/device/register",
		`{"id":"r2","method":"thing.device.register","params":[{"productKey":"pksub","deviceKey":"child1"}]}`)
	if r["code"] != 702.0 {
		t.Fatalf("duplicate register: %v", r)
	}
	// What a gateway registers joins its topology.
	if gw, err := h.db.GatewayOf(context.Background(), iothub.DeviceID{ProductKey: "pksub", DeviceKey: "child1"}); err != nil || gw.DeviceKey != "gw" {
		t.Fatalf("registered device's gateway: %v %v", gw, err)
	}
}

// Activation attempts are throttled per source address, valid or not.
func TestActivationThrottled(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkat", func(p *iothub.Product) { p.DynamicActivation = true })
	var codes []byte
	for i := 0; i < 12; i++ {
		cid, user, pass := creds(t, "pkat", "SN-X", "wrong", sign.ModeDynamic, sign.SHA256)
		codes = append(codes, connectV5(t, h.addr, nil, cid, user, pass))
	}
	if codes[0] != 0x86 || codes[len(codes)-1] != 0x89 {
		t.Fatalf("codes % x: want 0x86 first, 0x89 once throttled", codes)
	}
	h.device(p, "SN-OK")
	cid, user, pass := creds(t, "pkat", "SN-OK", p.ProductSecret, sign.ModeDynamic, sign.SHA256)
	if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0x89 {
		t.Fatalf("valid activation while throttled: %#x", got)
	}
}
