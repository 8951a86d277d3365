package mqtt

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// The PROTOCOL.md vector logs in byte for byte, in each hash.
func TestLoginProtocolVector(t *testing.T) {
	h := newTestHub(t)
	p := h.product("654321", nil)
	d, err := iothub.NewDevice(p, "test", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	d.DeviceSecret = "abcdefg"
	if err := h.db.CreateDevice(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	for m, pass := range map[string]string{
		"sha256": "b99032d49c706f7b27b22ab5cd2dd3c56a31e1bcbbc83ba0a2a6bb3272fbb166",
		"sha1":   "53D00561032C47B8555B768A08FDE176A6F0D267",
		"md5":    "b040b0189975e6704dbb2c217189fa3b",
	} {
		cid := "123456|securemode=2,signmethod=" + m + ",timestamp=1548753362502|"
		c, err := connectRaw(t, "tcp://"+h.addr, cid, "test&654321", pass)
		if err != nil {
			t.Fatalf("%s vector refused: %v", m, err)
		}
		c.Disconnect(0)
		c, err = connectRaw(t, "tcp://"+h.addr, cid, "test&654321", pass[:len(pass)-1]+"0")
		if err == nil {
			c.Disconnect(0)
			t.Fatalf("%s: altered vector password accepted", m)
		}
	}
}

// Every signmethod in both hex cases, and the SDK clientId variants, log in.
func TestLoginSignMethodsAndClientIDs(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkm", nil)
	d := h.device(p, "dev1")
	for _, m := range []sign.Method{sign.SHA256, sign.HMACSHA256, sign.SHA1, sign.HMACSHA1, sign.MD5, sign.HMACMD5} {
		for _, upper := range []bool{false, true} {
			for _, cidPart := range []string{"dev1", "dev1{ip=10.0.0.5,version=enos-mqtt-2.2.16,compress=DEFAULT}", "pkm.dev1"} {
				ts := "1721000000123.4568"
				cid, user, pass, err := sign.Credentials(cidPart, "pkm", "dev1", d.DeviceSecret, 2, m, ts)
				if err != nil {
					t.Fatal(err)
				}
				if upper {
					pass = strings.ToUpper(pass)
				}
				c, err := connectRaw(t, "tcp://"+h.addr, cid, user, pass)
				if err != nil {
					t.Fatalf("%s upper=%v cid=%q: %v", m, upper, cidPart, err)
				}
				c.Disconnect(0)
			}
		}
	}
}

func TestLoginRefusals(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkr", nil)
	d := h.device(p, "good")
	off := h.device(p, "off")
	ctx := context.Background()
	if err := h.db.SetDeviceState(ctx, "pkr", "off", iothub.StateDisabled, time.Now()); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, pk, dk, secret string
		v5                   byte
	}{
		{"wrong sign", "pkr", "good", "not-the-secret", 0x86},
		{"unknown device", "pkr", "ghost", "whatever", 0x86},
		{"unknown product", "nopk", "good", d.DeviceSecret, 0x86},
		{"disabled device", "pkr", "off", off.DeviceSecret, 0x8A},
	}
	for _, c := range cases {
		cid, user, pass := creds(t, c.pk, c.dk, c.secret, 2, sign.SHA256)
		_, err := connectRaw(t, "tcp://"+h.addr, cid, user, pass)
		if !errors.Is(err, packets.ErrorRefusedNotAuthorised) {
			t.Fatalf("%s: MQTT 3.1.1 answer %v, want CONNACK 5", c.name, err)
		}
		if got := connectV5(t, h.addr, nil, cid, user, pass); got != c.v5 {
			t.Fatalf("%s: MQTT 5 reason %#x, want %#x", c.name, got, c.v5)
		}
	}
	// A securemode this hub does not serve, and a malformed username.
	if got := connectV5(t, h.addr, nil, "good|securemode=4,signmethod=sha256,timestamp=1|", "good&pkr", "x"); got != 0x87 {
		t.Fatalf("securemode 4: %#x", got)
	}
	if got := connectV5(t, h.addr, nil, "good|securemode=2,signmethod=sha256,timestamp=1|", "goodpkr", "x"); got != 0x86 {
		t.Fatalf("bad username: %#x", got)
	}
	// The refusals are audited with a reason and never with a secret.
	h.srv.side.Sync()
	events, err := h.db.AuditEvents(ctx, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]bool{}
	for _, e := range events {
		if e.Kind == "login.refused" {
			reasons[e.Reason] = true
		}
		blob, _ := json.Marshal(e)
		if strings.Contains(string(blob), d.DeviceSecret) || strings.Contains(string(blob), off.DeviceSecret) {
			t.Fatalf("audit event carries a secret: %s", blob)
		}
	}
	for _, want := range []string{"bad signature", "unknown device", "unknown product", "723: device disabled"} {
		if !reasons[want] {
			t.Fatalf("no audit refusal %q in %v", want, reasons)
		}
	}
}

// Guessing is throttled per device and source: after a few failures more
// guesses are refused with 0x89, in both protocol versions.
func TestLoginThrottled(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkt", nil)
	h.device(p, "dev")
	for i := 0; i < 5; i++ {
		cid, user, pass := creds(t, "pkt", "dev", "guess", 2, sign.SHA256)
		if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0x86 {
			t.Fatalf("guess %d: %#x", i, got)
		}
	}
	cid, user, pass := creds(t, "pkt", "dev", "guess", 2, sign.SHA256)
	if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0x89 {
		t.Fatalf("after 5 failures: %#x, want 0x89", got)
	}
	if _, err := connectRaw(t, "tcp://"+h.addr, cid, user, pass); !errors.Is(err, packets.ErrorRefusedNotAuthorised) {
		t.Fatalf("3.1.1 while throttled: %v", err)
	}
}

func TestStatesOnlineOfflineDisable(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pks", nil)
	d := h.device(p, "dev")
	if got := h.stored("pks", "dev"); got.State != iothub.StateInactive || got.ActivatedAt != nil {
		t.Fatalf("new device: %s %v", got.State, got.ActivatedAt)
	}
	c := h.connect(t, "pks", "dev", d.DeviceSecret)
	got := h.stored("pks", "dev")
	if got.State != iothub.StateOnline || got.ActivatedAt == nil {
		t.Fatalf("after login: %s activatedAt=%v", got.State, got.ActivatedAt)
	}
	if !h.srv.Online("pks", "dev") {
		t.Fatal("Online false for a live session")
	}
	c.Disconnect(50)
	eventually(t, "offline after disconnect", func() bool { return h.stored("pks", "dev").State == iothub.StateOffline })
	if h.srv.Online("pks", "dev") {
		t.Fatal("Online true after disconnect")
	}
	eventually(t, "lastSeenAt written", func() bool {
		h.srv.flushTouches(context.Background())
		return h.stored("pks", "dev").LastSeenAt != nil
	})

	lost := make(chan time.Time, 1)
	h.connect(t, "pks", "dev", d.DeviceSecret, func(o *pahoOptions) {
		o.SetConnectionLostHandler(func(pahoClient, error) { lost <- time.Now() })
	})
	if err := h.db.SetDeviceState(context.Background(), "pks", "dev", iothub.StateDisabled, time.Now()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	h.bus.Publish(context.Background(), iothub.Event{Kind: iothub.EventDeviceChanged, ProductKey: "pks", DeviceKey: "dev"})
	select {
	case at := <-lost:
		t.Logf("disable closed the session in %v", at.Sub(start))
	case <-time.After(time.Second):
		t.Fatal("disabled device still connected after one second")
	}
	cid, user, pass := creds(t, "pks", "dev", d.DeviceSecret, 2, sign.SHA256)
	if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0x8A {
		t.Fatalf("login of disabled device: %#x", got)
	}
	time.Sleep(100 * time.Millisecond)
	if s := h.stored("pks", "dev").State; s != iothub.StateDisabled {
		t.Fatalf("state after disable and disconnect: %s", s)
	}
}

func TestOneSessionPerDevice(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pko", nil)
	a := h.device(p, "a")
	b := h.device(p, "b")

	lostA := make(chan struct{}, 1)
	c1 := h.connect(t, "pko", "a", a.DeviceSecret, func(o *pahoOptions) {
		o.SetConnectionLostHandler(func(pahoClient, error) { lostA <- struct{}{} })
	})
	// Same device, another clientId: the first session is closed.
	cid, user, pass, err := sign.Credentials("other-cid", "pko", "a", a.DeviceSecret, 2, sign.SHA256, "1")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := connectRaw(t, "tcp://"+h.addr, cid, user, pass)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-lostA:
	case <-time.After(5 * time.Second):
		t.Fatal("first session of the device still open after a second login")
	}
	if c1.IsConnectionOpen() || !c2.IsConnectionOpen() || !h.srv.Online("pko", "a") {
		t.Fatal("wrong session survived")
	}

	// Device b choosing a's exact clientId does not take a's session.
	lostA2 := make(chan struct{}, 1)
	cidA, userA, passA, _ := sign.Credentials("shared", "pko", "a", a.DeviceSecret, 2, sign.SHA256, "2")
	ca, err := connectRaw(t, "tcp://"+h.addr, cidA, userA, passA, func(o *pahoOptions) {
		o.SetConnectionLostHandler(func(pahoClient, error) { lostA2 <- struct{}{} })
	})
	if err != nil {
		t.Fatal(err)
	}
	_, userB, passB, _ := sign.Credentials("shared", "pko", "b", b.DeviceSecret, 2, sign.SHA256, "2")
	if _, err := connectRaw(t, "tcp://"+h.addr, cidA, userB, passB); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lostA2:
		t.Fatal("another device's login with the same clientId closed the session")
	case <-time.After(300 * time.Millisecond):
	}
	if !ca.IsConnectionOpen() || !h.srv.Online("pko", "a") || !h.srv.Online("pko", "b") {
		t.Fatal("both devices should be online")
	}
}

// Resetting a device's secret or deleting it closes its live session.
func TestResetAndDeleteCloseSessions(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkx", nil)
	ctx := context.Background()
	for _, dk := range []string{"reset", "gone"} {
		d := h.device(p, dk)
		lost := make(chan struct{}, 1)
		h.connect(t, "pkx", dk, d.DeviceSecret, func(o *pahoOptions) {
			o.SetConnectionLostHandler(func(pahoClient, error) { lost <- struct{}{} })
		})
		if dk == "reset" {
			if _, err := h.db.ResetDevice(ctx, "pkx", dk, iothub.RandomString(iothub.SecretLen)); err != nil {
				t.Fatal(err)
			}
		} else if err := h.db.DeleteDevice(ctx, "pkx", dk); err != nil {
			t.Fatal(err)
		}
		h.bus.Publish(ctx, iothub.Event{Kind: iothub.EventDeviceChanged, ProductKey: "pkx", DeviceKey: dk})
		select {
		case <-lost:
		case <-time.After(time.Second):
			t.Fatalf("%s: session still open one second after the change", dk)
		}
		cid, user, pass := creds(t, "pkx", dk, d.DeviceSecret, 2, sign.SHA256)
		if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0x86 {
			t.Fatalf("%s: old secret answered %#x", dk, got)
		}
	}
	if s := h.stored("pkx", "reset").State; s != iothub.StateInactive {
		t.Fatalf("reset device state %s, want inactive", s)
	}
}
