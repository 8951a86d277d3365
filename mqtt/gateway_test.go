package mqtt

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// signedSub is a sub-device entry signed with its secret, in the shape an
// SDK sends for thing.topo.add and combine.login (Node.js dialect: sign in
// upper case; C dialect: the key spelled signmethod).
func signedSub(t testing.TB, d *iothub.Device, cid, method string, upper bool) map[string]any {
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
	l := sign.Login{ClientID: cid, DeviceKey: d.DeviceKey, ProductKey: d.ProductKey, Timestamp: ts, SignMethod: sign.Method(method)}
	sig, err := sign.Compute(l.SignMethod, l.Pairs(), d.DeviceSecret)
	if err != nil {
		t.Fatal(err)
	}
	if upper {
		sig = fmt.Sprintf("%X", mustHex(sig))
	}
	return map[string]any{"productKey": d.ProductKey, "deviceKey": d.DeviceKey, "clientId": cid, "timestamp": ts, "signMethod": method, "sign": sig}
}

func mustHex(s string) []byte {
	b := make([]byte, len(s)/2)
	fmt.Sscanf(s, "%x", &b)
	return b
}

func req(method string, params any) string {
	b, _ := json.Marshal(map[string]any{"id": "1", "version": "1.0", "method": method, "params": params})
	return string(b)
}

// A gateway adds two sub-devices to its topology, logs them in (one
// alone, one in a batch), posts for them, answers a service call for one,
// sees one disabled (logged out, combine.disable notice) and logs the
// other out.
func TestGatewayAndSubDevices(t *testing.T) {
	h := newTestHub(t)
	gwP := h.product("pkgw", func(p *iothub.Product) { p.NodeType = iothub.NodeGateway })
	subP := h.product("pksub", nil)
	gwD := h.device(gwP, "gw")
	a, b := h.device(subP, "a"), h.device(subP, "b")
	notices := newCollector()
	var gw paho.Client
	gw = h.connect(t, "pkgw", "gw", gwD.DeviceSecret, notices.opt)
	sys, ext := "/sys/pkgw/gw/", "/ext/session/pkgw/gw/"

	// Topology: signed entries; a wrong signature adds nothing.
	bad := signedSub(t, b, "pksub.b.1", "sha256", false)
	bad["sign"] = "00"
	if r := ask(t, gw, sys+"thing/topo/add", req("thing.topo.add", []any{signedSub(t, a, "x", "sha256", true), bad})); r["code"] != 742.0 {
		t.Fatalf("topo add with a wrong signature: %v", r)
	}
	cEntry := signedSub(t, b, "pksub.b", "hmacSha256", false)
	cEntry["signmethod"] = cEntry["signMethod"]
	delete(cEntry, "signMethod")
	if r := ask(t, gw, sys+"thing/topo/add", req("thing.topo.add", []any{signedSub(t, a, "pksubapksub", "sha256", true), cEntry})); r["code"] != 200.0 {
		t.Fatalf("topo add: %v", r)
	}
	r := ask(t, gw, sys+"thing/topo/get", req("thing.topo.get", nil))
	if list, _ := r["data"].([]any); r["code"] != 200.0 || len(list) != 2 {
		t.Fatalf("topo get: %v", r)
	}

	// Login of a alone, then b in a batch.
	if r := ask(t, gw, ext+"combine/login", req("combine.login", signedSub(t, a, "a", "sha256", true))); r["code"] != 200.0 ||
		r["data"].(map[string]any)["deviceKey"] != "a" || r["data"].(map[string]any)["assetId"] == "" {
		t.Fatalf("combine.login: %v", r)
	}
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
	l := sign.Login{ClientID: "login.batch", DeviceKey: "b", ProductKey: "pksub", Timestamp: ts, SignMethod: sign.SHA256}
	sig, _ := sign.Compute(sign.SHA256, l.Pairs(), b.DeviceSecret)
	batch := map[string]any{"clientId": "login.batch", "timestamp": ts, "signMethod": "sha256",
		"subDevices": []any{map[string]any{"productKey": "pksub", "deviceKey": "b", "sign": sig, "secureMode": "2"}}}
	if r := ask(t, gw, ext+"combine/login/batch", req("combine.login.batch", batch)); r["code"] != 200.0 ||
		len(r["data"].(map[string]any)["loginedSubDevices"].([]any)) != 1 {
		t.Fatalf("combine.login.batch: %v", r)
	}
	for _, dk := range []string{"a", "b"} {
		eventually(t, dk+" online", func() bool { return h.stored("pksub", dk).State == iothub.StateOnline })
	}

	// Posts on a sub-device's own topic and in the gateway's batch.
	if r := ask(t, gw, "/sys/pksub/a/thing/measurepoint/post", req("thing.measurepoint.post", map[string]any{"measurepoints": map[string]any{"t": 1}})); r["code"] != 200.0 {
		t.Fatalf("post for a: %v", r)
	}
	entries := []any{
		map[string]any{"productKey": "pkgw", "deviceKey": "gw", "measurepoints": map[string]any{"g": 1}},
		map[string]any{"productKey": "pksub", "deviceKey": "b", "measurepoints": map[string]any{"t": 2}},
	}
	if r := ask(t, gw, sys+"thing/measurepoint/post/batch", req("thing.measurepoint.post.batch", entries)); r["code"] != 200.0 {
		t.Fatalf("batch for gw and b: %v", r)
	}
	for _, dk := range []string{"a", "b"} {
		if pts, _ := h.db.LatestPoints(context.Background(), "pksub", dk); len(pts) != 1 {
			t.Fatalf("%s has points %v", dk, pts)
		}
	}

	// A service call to a reaches the gateway on a's topic; the gateway answers for a.
	if tok := gw.Subscribe("/sys/pksub/a/thing/service/+", 0, func(c paho.Client, m paho.Message) {
		var req struct{ ID string }
		json.Unmarshal(m.Payload(), &req)
		c.Publish(m.Topic()+"_reply", 0, false, fmt.Sprintf(`{"id":"%s","code":200,"data":{"by":"gateway"}}`, req.ID))
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("gateway subscribing to a's topics: %v", tok.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if rep, err := h.srv.Call(ctx, "pksub", "a", "thing/service/reboot", "thing.service.reboot", nil); err != nil || string(rep.Data) != `{"by":"gateway"}` {
		t.Fatalf("service call to a sub-device: %v %+v", err, rep)
	}

	// Disable b: logged out, the gateway is told, its topics are closed to the gateway.
	if err := h.db.SetDeviceState(context.Background(), "pksub", "b", iothub.StateDisabled, time.Now()); err != nil {
		t.Fatal(err)
	}
	h.bus.Publish(context.Background(), iothub.Event{Kind: iothub.EventDeviceChanged, ProductKey: "pksub", DeviceKey: "b"})
	m := notices.next(t, 5*time.Second)
	var notice struct {
		Method string
		Params deviceRef
	}
	json.Unmarshal(m.Payload(), &notice)
	if m.Topic() != ext+"combine/disable" || notice.Method != "combine.disable" || notice.Params.DeviceKey != "b" {
		t.Fatalf("notice %s %s", m.Topic(), m.Payload())
	}
	if r := ask(t, gw, sys+"thing/measurepoint/post/batch", req("thing.measurepoint.post.batch", entries[1:])); r["code"] != 1009.0 {
		t.Fatalf("batch entry of a logged-out sub-device: %v", r)
	}
	if r := ask(t, gw, ext+"combine/login", req("combine.login", signedSub(t, b, "b", "sha256", false))); r["code"] != 723.0 {
		t.Fatalf("login of a disabled sub-device: %v", r)
	}
	if h.stored("pksub", "b").State != iothub.StateDisabled {
		t.Fatal("the disabled sub-device's state was overwritten")
	}

	// Logout of a: offline, its topics closed; the gateway stays connected.
	if r := ask(t, gw, ext+"combine/logout", req("combine.logout", map[string]any{"productKey": "pksub", "deviceKey": "a"})); r["code"] != 200.0 {
		t.Fatalf("combine.logout: %v", r)
	}
	eventually(t, "a offline", func() bool { return h.stored("pksub", "a").State == iothub.StateOffline })
	if h.srv.Online("pksub", "a") || !gw.IsConnectionOpen() {
		t.Fatal("a still online, or the gateway lost its connection")
	}
	if tok := gw.Subscribe("/sys/pksub/a/thing/service/x", 0, nil); tok.WaitTimeout(5*time.Second) && tok.(*paho.SubscribeToken).Result()["/sys/pksub/a/thing/service/x"] != 0x80 {
		t.Fatal("the gateway may still subscribe to a logged-out sub-device's topics")
	}
}

// Only a gateway manages sub-devices, and only those of its topology and
// of its org.
func TestGatewayRefusals(t *testing.T) {
	h := newTestHub(t)
	if err := h.db.CreateOrg(context.Background(), &iothub.Org{ID: "org-b", Name: "B"}); err != nil {
		t.Fatal(err)
	}
	gwP := h.product("pkgw", func(p *iothub.Product) { p.NodeType = iothub.NodeGateway })
	plainP := h.product("pkplain", nil)
	other := h.product("pkother", func(p *iothub.Product) { p.OrgID = "org-b" })
	gwD, plain := h.device(gwP, "gw"), h.device(plainP, "dev")
	outsider, stranger := h.device(plainP, "outsider"), h.device(other, "x")
	gw := h.connect(t, "pkgw", "gw", gwD.DeviceSecret)
	dev := h.connect(t, "pkplain", "dev", plain.DeviceSecret)

	if r := ask(t, dev, "/sys/pkplain/dev/thing/topo/add", req("thing.topo.add", []any{signedSub(t, outsider, "c", "sha256", false)})); r["code"] != 1009.0 {
		t.Fatalf("topo add from a plain device: %v", r)
	}
	if r := ask(t, gw, "/sys/pkgw/gw/thing/topo/add", req("thing.topo.add", []any{signedSub(t, stranger, "c", "sha256", false)})); r["code"] != 705.0 {
		t.Fatalf("topo add of another org's device: %v", r)
	}
	if r := ask(t, gw, "/ext/session/pkgw/gw/combine/login", req("combine.login", signedSub(t, outsider, "c", "sha256", false))); r["code"] != 1009.0 {
		t.Fatalf("login of a device outside the topology: %v", r)
	}
	many := make([]any, maxGatewayEntries+1)
	for i := range many {
		many[i] = signedSub(t, outsider, "c", "sha256", false)
	}
	if r := ask(t, gw, "/sys/pkgw/gw/thing/topo/add", req("thing.topo.add", many)); r["code"] != 1220.0 {
		t.Fatalf("topo add of %d entries: %v", len(many), r)
	}
	if subs, _ := h.db.SubDevices(context.Background(), iothub.DeviceID{ProductKey: "pkgw", DeviceKey: "gw"}); len(subs) != 0 {
		t.Fatalf("refused requests changed the topology: %v", subs)
	}
	if tok := gw.Subscribe("/sys/pkplain/outsider/#", 0, nil); tok.WaitTimeout(5*time.Second) && tok.(*paho.SubscribeToken).Result()["/sys/pkplain/outsider/#"] != 0x80 {
		t.Fatal("a gateway may subscribe to a device it has not logged in")
	}
}

// Wrong sub-device signatures are counted like failed logins: past the
// buckets the gateway is told 429 and disconnected; the right signature
// still works after it reconnects.
func TestGatewayGuessingSubDeviceSecretsIsThrottled(t *testing.T) {
	h := newTestHub(t)
	gwP := h.product("pkgw", func(p *iothub.Product) { p.NodeType = iothub.NodeGateway })
	subP := h.product("pksub", nil)
	gwD, a := h.device(gwP, "gw"), h.device(subP, "a")
	gw := h.connect(t, "pkgw", "gw", gwD.DeviceSecret)
	var codes []float64
	for range 30 {
		if !gw.IsConnectionOpen() {
			break
		}
		bad := signedSub(t, a, "a", "sha256", false)
		bad["sign"] = strings.Repeat("0", 64)
		codes = append(codes, ask(t, gw, "/sys/pkgw/gw/thing/topo/add", req("thing.topo.add", []any{bad}))["code"].(float64))
	}
	if codes[0] != 742 || codes[len(codes)-1] != 429 {
		t.Fatalf("codes %v: want 742 first, then 429", codes)
	}
	eventually(t, "gateway disconnected", func() bool { return !gw.IsConnectionOpen() })
	gw = h.connect(t, "pkgw", "gw", gwD.DeviceSecret)
	if r := ask(t, gw, "/sys/pkgw/gw/thing/topo/add", req("thing.topo.add", []any{signedSub(t, a, "a", "sha256", false)})); r["code"] != 200.0 {
		t.Fatalf("the right signature after the throttle: %v", r)
	}
}

// Batch flags: allowOfflineSubDevice stores entries of topology members
// that are not logged in; skipInvalidMeasurepoints skips bad entries
// instead of refusing the batch.
func TestGatewayBatchFlags(t *testing.T) {
	h := newTestHub(t)
	gwP := h.product("pkgw", func(p *iothub.Product) { p.NodeType = iothub.NodeGateway })
	subP := h.product("pksub", nil)
	gwD, a := h.device(gwP, "gw"), h.device(subP, "a")
	h.device(subP, "stranger")
	gw := h.connect(t, "pkgw", "gw", gwD.DeviceSecret)
	if r := ask(t, gw, "/sys/pkgw/gw/thing/topo/add", req("thing.topo.add", []any{signedSub(t, a, "a", "sha256", false)})); r["code"] != 200.0 {
		t.Fatalf("topo add: %v", r)
	}
	batch := func(flags string, entries ...string) map[string]any {
		return ask(t, gw, "/sys/pkgw/gw/thing/measurepoint/post/batch",
			`{"id":"1","version":"1.0","method":"thing.measurepoint.post.batch"`+flags+`,"params":[`+strings.Join(entries, ",")+`]}`)
	}
	offline := `{"productKey":"pksub","deviceKey":"a","measurepoints":{"t":1}}`
	if r := batch("", offline); r["code"] != 1009.0 {
		t.Fatalf("entry of an offline sub-device without the flag: %v", r)
	}
	if r := batch(`,"allowOfflineSubDevice":true`, offline); r["code"] != 200.0 {
		t.Fatalf("entry of an offline sub-device with the flag: %v", r)
	}
	if r := batch(`,"allowOfflineSubDevice":true`, `{"productKey":"pksub","deviceKey":"stranger","measurepoints":{"t":1}}`); r["code"] != 1009.0 {
		t.Fatalf("entry of a device outside the topology with the flag: %v", r)
	}
	bad := `{"productKey":"pkgw","deviceKey":"gw","measurepoints":{"":1}}`
	good := `{"productKey":"pkgw","deviceKey":"gw","measurepoints":{"g":2}}`
	if r := batch("", good, bad); r["code"] != 1220.0 {
		t.Fatalf("a bad entry without skipInvalidMeasurepoints: %v", r)
	}
	if r := batch(`,"skipInvalidMeasurepoints":true`, good, bad); r["code"] != 200.0 || r["data"].(map[string]any)["skipped"] != 1.0 {
		t.Fatalf("a bad entry with skipInvalidMeasurepoints: %v", r)
	}
	if pts, _ := h.db.LatestPoints(context.Background(), "pksub", "a"); len(pts) != 1 {
		t.Fatalf("offline sub-device's points %v", pts)
	}
	if pts, _ := h.db.LatestPoints(context.Background(), "pkgw", "gw"); len(pts) != 1 || pts[0].Name != "g" {
		t.Fatalf("gateway's points %v: want only the valid entry of the skipping batch", pts)
	}
}
