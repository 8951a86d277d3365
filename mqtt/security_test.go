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

// Regression tests of the outside security audit (issue 13), device side.
// Each names its finding.

// register publishes thing.device.register for entries and returns the reply.
func register(t *testing.T, c paho.Client, gwpk, gwdk string, entries ...string) map[string]any {
	t.Helper()
	params := make([]string, len(entries))
	for i, e := range entries {
		pk, dk, _ := strings.Cut(e, "/")
		params[i] = fmt.Sprintf(`{"productKey":%q,"deviceKey":%q}`, pk, dk)
	}
	return ask(t, c, "/sys/"+gwpk+"/"+gwdk+"/thing/device/register",
		`{"id":"r","method":"thing.device.register","params":[`+strings.Join(params, ",")+`]}`)
}

// count returns how many devices product pk has.
func (h *testHub) count(pk string) int {
	h.t.Helper()
	n, err := h.db.CountDevices(context.Background(), pk)
	if err != nil {
		h.t.Fatal(err)
	}
	return n
}

// F1: thing.device.register only from a gateway, only into products of its
// org that accept gateway registration, within the device limit, paced
// per gateway, all or nothing, and a certificate-mode device's secret
// never over plain TCP. A 702 never answers for a product the gateway may
// not register into.
func TestF1RegisterOnlyFromGateway(t *testing.T) {
	h := newTestHub(t, withPKI)
	ctx := context.Background()
	if err := h.db.CreateOrg(ctx, &iothub.Org{ID: "other", Name: "Other"}); err != nil {
		t.Fatal(err)
	}
	plainP := h.product("pkplain", nil)
	gwP := h.product("pkgw", func(p *iothub.Product) { p.NodeType = iothub.NodeGateway })
	open := h.product("pkopen", func(p *iothub.Product) { p.AllowGatewayRegistration = true; p.DeviceLimit = 3 })
	closed := h.product("pkclosed", nil)
	h.product("pkforeign", func(p *iothub.Product) { p.OrgID = "other"; p.AllowGatewayRegistration = true })
	h.product("pkcertreg", func(p *iothub.Product) { p.AuthMode = iothub.AuthCertificate; p.AllowGatewayRegistration = true })
	h.device(closed, "existing")
	h.device(open, "taken")

	// A plain device: 1009, nothing created.
	plain := h.device(plainP, "dev")
	c := h.connect(t, "pkplain", "dev", plain.DeviceSecret)
	if r := register(t, c, "pkplain", "dev", "pkopen/new1"); r["code"] != 1009.0 {
		t.Fatalf("non-gateway register: %v", r)
	}
	if n := h.count("pkopen"); n != 1 {
		t.Fatalf("non-gateway created devices: %d in pkopen", n)
	}

	gw := h.device(gwP, "gw")
	g := h.connect(t, "pkgw", "gw", gw.DeviceSecret)
	for _, tc := range []struct {
		entry string
		code  float64
	}{
		{"pkclosed/new2", 1009},     // product does not accept gateways
		{"pkclosed/existing", 1009}, // nor tells which keys exist in it
		{"pkforeign/new3", 705},     // another org's product is not found
		{"pkcertreg/new4", 1009},    // certificate mode over plain TCP
		{"nosuch/new5", 705},
	} {
		r := register(t, g, "pkgw", "gw", tc.entry)
		if r["code"] != tc.code {
			t.Fatalf("%s: %v, want %v", tc.entry, r, tc.code)
		}
		if strings.Contains(fmt.Sprint(r), "existing") && tc.entry != "pkclosed/existing" {
			t.Fatalf("%s: reply names another key: %v", tc.entry, r)
		}
	}
	for pk, want := range map[string]int{"pkclosed": 1, "pkforeign": 0, "pkcertreg": 0} {
		if n := h.count(pk); n != want {
			t.Fatalf("%s has %d devices, want %d", pk, n, want)
		}
	}

	// All or nothing: a duplicate (702) or the device limit (3) after a
	// good entry leaves the good one uncreated.
	if r := register(t, g, "pkgw", "gw", "pkopen/a1", "pkopen/taken"); r["code"] != 702.0 {
		t.Fatalf("duplicate: %v", r)
	}
	if r := register(t, g, "pkgw", "gw", "pkopen/a1", "pkopen/a2", "pkopen/a3"); r["code"] != 1009.0 {
		t.Fatalf("over the device limit: %v", r)
	}
	if n := h.count("pkopen"); n != 1 {
		t.Fatalf("refused registrations left %d devices in pkopen, want 1", n)
	}
	r := register(t, g, "pkgw", "gw", "pkopen/a1", "pkopen/a2")
	list, _ := r["data"].([]any)
	if r["code"] != 200.0 || len(list) != 2 {
		t.Fatalf("allowed registration: %v", r)
	}
	if got := list[0].(map[string]any); got["deviceSecret"] != h.stored("pkopen", "a1").DeviceSecret {
		t.Fatalf("reply %v does not carry the stored secret", got)
	}

	// Over TLS the certificate-mode product takes the registration.
	cid, user, pass := creds(t, "pkgw", "gw", gw.DeviceSecret, sign.ModeStatic, sign.SHA256)
	gt, err := connectRaw(t, "ssl://"+h.tlsAddr, cid, user, pass, func(o *pahoOptions) { o.SetTLSConfig(h.clientTLS(t, nil)) })
	if err != nil {
		t.Fatal(err)
	}
	if r := register(t, gt, "pkgw", "gw", "pkcertreg/new4"); r["code"] != 200.0 {
		t.Fatalf("certificate-mode registration over TLS: %v", r)
	}

	// Refusals are audited with the gateway's org.
	h.srv.side.Sync()
	events, err := h.db.AuditEvents(ctx, "", 500)
	if err != nil {
		t.Fatal(err)
	}
	refused := 0
	for _, e := range events {
		if e.Kind == "device.register_refused" {
			refused++
			if e.OrgID != iothub.DefaultOrgID {
				t.Fatalf("refusal audited without the org: %+v", e)
			}
		}
	}
	if refused < 6 {
		t.Fatalf("%d refusals audited, want at least 6", refused)
	}
}

// F1: registrations are paced per gateway: a full request, then about ten
// devices a second.
func TestF1RegisterRateLimited(t *testing.T) {
	h := newTestHub(t)
	gwP := h.product("pkgw", func(p *iothub.Product) { p.NodeType = iothub.NodeGateway })
	h.product("pkopen", func(p *iothub.Product) { p.AllowGatewayRegistration = true })
	gw := h.device(gwP, "gw")
	g := h.connect(t, "pkgw", "gw", gw.DeviceSecret)
	batch := func(from, n int) []string {
		var out []string
		for i := from; i < from+n; i++ {
			out = append(out, "pkopen/d"+strconv.Itoa(i))
		}
		return out
	}
	if r := register(t, g, "pkgw", "gw", batch(0, maxRegisterBatch)...); r["code"] != 200.0 {
		t.Fatalf("first full batch: %v", r["code"])
	}
	if r := register(t, g, "pkgw", "gw", batch(1000, 50)...); r["code"] != 429.0 {
		t.Fatalf("second batch at once: %v", r)
	}
	if n := h.count("pkopen"); n != maxRegisterBatch {
		t.Fatalf("%d devices after a throttled batch, want %d", n, maxRegisterBatch)
	}
	// Another gateway has its own pace.
	gw2 := h.device(gwP, "gw2")
	g2 := h.connect(t, "pkgw", "gw2", gw2.DeviceSecret)
	if r := register(t, g2, "pkgw", "gw2", batch(2000, 10)...); r["code"] != 200.0 {
		t.Fatalf("another gateway: %v", r)
	}
}

// F2: dynamic activation of a certificate-mode product is refused on plain
// TCP (the push would carry the DeviceSecret in clear) and served over TLS.
func TestF2CertificateActivationOnlyOverTLS(t *testing.T) {
	h := newTestHub(t, withPKI)
	p := h.product("pkcact", func(p *iothub.Product) {
		p.AuthMode = iothub.AuthCertificate
		p.DynamicActivation = true
		p.AutoRegister = true
	})
	h.device(p, "SN1")
	cid, user, pass := creds(t, "pkcact", "SN1", p.ProductSecret, sign.ModeDynamic, sign.SHA256)
	conn, code := dialV5(t, h.addr, nil, cid, user, pass)
	defer conn.Close()
	if code != 0x87 {
		t.Fatalf("activation over plain TCP: %#x, want 0x87", code)
	}
	_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _ := conn.Read(make([]byte, 256)); n > 0 {
		t.Fatal("the hub wrote more than the refusal on plain TCP")
	}
	// Auto-registration over plain TCP creates nothing either.
	cid, user, pass = creds(t, "pkcact", "SN-NEW", p.ProductSecret, sign.ModeDynamic, sign.SHA256)
	if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0x87 {
		t.Fatalf("auto-registration over plain TCP: %#x", got)
	}
	if n := h.count("pkcact"); n != 1 {
		t.Fatalf("plain TCP activation created devices: %d", n)
	}
	// Over TLS (server authentication only) it is served.
	cid, user, pass = creds(t, "pkcact", "SN1", p.ProductSecret, sign.ModeDynamic, sign.SHA256)
	if got := connectV5(t, h.tlsAddr, h.clientTLS(t, nil), cid, user, pass); got != 0 {
		t.Fatalf("activation over TLS: %#x", got)
	}
}

// F5: failed logins never lock out the holder of the right secret: the
// signature is checked first and failures are throttled per device and
// source.
func TestF5GuessesDoNotLockOutTheDevice(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkf5", nil)
	d := h.device(p, "dev")
	const attacker, owner = "127.0.0.2", "127.0.0.1"
	login := func(from, secret string) byte {
		cid, user, pass := creds(t, "pkf5", "dev", secret, sign.ModeStatic, sign.SHA256)
		c, code := dialV5From(t, from, h.addr, nil, cid, user, pass)
		c.Close()
		return code
	}
	for i := 0; i < 8; i++ {
		login(attacker, "guess")
	}
	if got := login(attacker, "guess"); got != 0x89 {
		t.Fatalf("attacker's guess after 8 failures: %#x, want 0x89", got)
	}
	if got := login(owner, d.DeviceSecret); got != 0 {
		t.Fatalf("right secret from the device's own address: %#x, want 0 (locked out)", got)
	}
	if got := login(attacker, d.DeviceSecret); got != 0 {
		t.Fatalf("right secret from the guessing address: %#x, want 0", got)
	}
	if got := login(owner, "typo"); got != 0x86 {
		t.Fatalf("one bad login from another source: %#x, want 0x86 (per-source bucket)", got)
	}
	// An unknown device is throttled the same way, with the same answers.
	for i := 0; i < 8; i++ {
		cid, user, pass := creds(t, "pkf5", "ghost", "guess", sign.ModeStatic, sign.SHA256)
		c, _ := dialV5From(t, "127.0.0.3", h.addr, nil, cid, user, pass)
		c.Close()
	}
	cid, user, pass := creds(t, "pkf5", "ghost", "guess", sign.ModeStatic, sign.SHA256)
	if c, got := dialV5From(t, "127.0.0.3", h.addr, nil, cid, user, pass); got != 0x89 {
		t.Fatalf("unknown device after 8 failures: %#x", got)
	} else {
		c.Close()
	}
}

// F11: a session holds at most maxSubscriptions filters; past the cap the
// SUBACK fails each new filter, while re-subscribing a held one succeeds.
func TestF11SubscriptionCap(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkf11", nil)
	d := h.device(p, "dev")
	c := h.connect(t, "pkf11", "dev", d.DeviceSecret)
	filters := map[string]byte{}
	for i := 0; i < maxSubscriptions; i++ {
		filters[fmt.Sprintf("/sys/pkf11/dev/t/%d", i)] = 0
	}
	subscribe := func(f map[string]byte) map[string]byte {
		tok := c.SubscribeMultiple(f, nil)
		if !tok.WaitTimeout(5 * time.Second) {
			t.Fatal("no SUBACK")
		}
		return tok.(*paho.SubscribeToken).Result()
	}
	for f, code := range subscribe(filters) {
		if code != 0 {
			t.Fatalf("filter %s within the cap: %#x", f, code)
		}
	}
	got := subscribe(map[string]byte{"/sys/pkf11/dev/t/over": 0, "/sys/pkf11/dev/t/7": 1})
	if got["/sys/pkf11/dev/t/over"] != 0x80 {
		t.Fatalf("filter past the cap: %#x, want 0x80", got["/sys/pkf11/dev/t/over"])
	}
	if got["/sys/pkf11/dev/t/7"] != 1 {
		t.Fatalf("re-subscribing a held filter: %#x", got["/sys/pkf11/dev/t/7"])
	}
	if n := h.srv.deviceSession(iothub.DeviceID{ProductKey: "pkf11", DeviceKey: "dev"}).cl.subscriptions(); n != maxSubscriptions {
		t.Fatalf("session holds %d filters, want %d", n, maxSubscriptions)
	}
}

// I1: with --login-max-skew a login signed with a stale or unreadable
// timestamp is refused; without it any timestamp is accepted, as in EnOS.
func TestI1LoginFreshness(t *testing.T) {
	h := newTestHub(t, func(_ *testHub, c *Config) { c.LoginMaxSkew = 5 * time.Minute })
	p := h.product("pki1", nil)
	d := h.device(p, "dev")
	now := time.Now()
	for ts, want := range map[string]byte{
		strconv.FormatInt(now.UnixMilli(), 10):                          0,
		strconv.FormatInt(now.Add(-time.Minute).UnixMilli(), 10) + ".5": 0,
		strconv.FormatInt(now.Add(-time.Hour).UnixMilli(), 10):          0x87,
		strconv.FormatInt(now.Add(time.Hour).UnixMilli(), 10):           0x87,
		"1548753362502": 0x87, // the C SDK's fixed timestamp
		"not-a-time":    0x87,
		"1e400":         0x87,
	} {
		cid, user, pass, err := sign.Credentials("dev", "pki1", "dev", d.DeviceSecret, sign.ModeStatic, sign.SHA256, ts)
		if err != nil {
			t.Fatal(err)
		}
		if got := connectV5(t, h.addr, nil, cid, user, pass); got != want {
			t.Fatalf("timestamp %s: %#x, want %#x", ts, got, want)
		}
	}
	h.srv.side.Sync()
	events, _ := h.db.AuditEvents(context.Background(), "", 100)
	stale := 0
	for _, e := range events {
		if strings.Contains(e.Reason, "freshness window") {
			stale++
			if e.OrgID != iothub.DefaultOrgID {
				t.Fatalf("stale login audited without its org: %+v", e)
			}
		}
	}
	if stale != 5 {
		t.Fatalf("%d stale logins audited, want 5", stale)
	}
	// Off by default.
	off := newTestHub(t)
	op := off.product("pki1", nil)
	od := off.device(op, "dev")
	cid, user, pass, _ := sign.Credentials("dev", "pki1", "dev", od.DeviceSecret, sign.ModeStatic, sign.SHA256, "1548753362502")
	if got := connectV5(t, off.addr, nil, cid, user, pass); got != 0 {
		t.Fatalf("fixed timestamp without a window: %#x", got)
	}
}

// I1: a product can turn sign methods off (MD5, SHA-1); the others still
// log in, and activation follows the same list.
func TestI1ProductSignMethods(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pksm", func(p *iothub.Product) {
		p.SignMethods = []string{"sha256", "hmacsha256"}
		p.DynamicActivation = true
	})
	d := h.device(p, "dev")
	h.device(p, "fresh")
	for m, want := range map[sign.Method]byte{
		sign.SHA256: 0, sign.HMACSHA256: 0, sign.MD5: 0x87, sign.HMACMD5: 0x87, sign.SHA1: 0x87, sign.HMACSHA1: 0x87,
	} {
		cid, user, pass := creds(t, "pksm", "dev", d.DeviceSecret, sign.ModeStatic, m)
		if got := connectV5(t, h.addr, nil, cid, user, pass); got != want {
			t.Fatalf("%s: %#x, want %#x", m, got, want)
		}
	}
	cid, user, pass := creds(t, "pksm", "fresh", p.ProductSecret, sign.ModeDynamic, sign.MD5)
	if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0x87 {
		t.Fatalf("md5 activation: %#x", got)
	}
	// A product without a list takes every method.
	all := h.product("pkall", nil)
	ad := h.device(all, "dev")
	cid, user, pass = creds(t, "pkall", "dev", ad.DeviceSecret, sign.ModeStatic, sign.MD5)
	if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0 {
		t.Fatalf("md5 without a list: %#x", got)
	}
	h.srv.side.Sync()
	events, _ := h.db.AuditEvents(context.Background(), "", 100)
	blob, _ := json.Marshal(events)
	if !strings.Contains(string(blob), "sign method md5 not allowed") {
		t.Fatal("refused sign method not audited")
	}
}
