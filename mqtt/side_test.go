package mqtt

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// A login that read the device (from the cache) before a disable landed is
// accepted, but its batched online write fails and the session is closed
// with 0x8A: the disable stays, and the audit log says the login was refused.
func TestLoginRacingDisableIsClosed(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkr", nil)
	d := h.device(p, "dev")
	h.connect(t, "pkr", "dev", d.DeviceSecret).Disconnect(50) // now cached
	eventually(t, "offline", func() bool { return h.stored("pkr", "dev").State == iothub.StateOffline })

	// The disable is in the store, its bus event not yet heard.
	ctx := context.Background()
	if err := h.db.SetDeviceState(ctx, "pkr", "dev", iothub.StateDisabled, time.Now()); err != nil {
		t.Fatal(err)
	}
	cid, user, pass := creds(t, "pkr", "dev", d.DeviceSecret, sign.ModeStatic, sign.SHA256)
	c, code := dialV5(t, h.addr, nil, cid, user, pass)
	defer c.Close()
	if code != 0 {
		t.Fatalf("CONNACK %#x: the cached device should have let the login through to the online write", code)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatalf("session not closed with a DISCONNECT: %v", err)
	}
	body := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, body); err != nil {
		t.Fatal(err)
	}
	if hdr[0] != 0xE0 || len(body) == 0 || body[0] != 0x8A {
		t.Fatalf("got packet % x % x, want DISCONNECT 0x8A", hdr, body)
	}
	eventually(t, "session forgotten", func() bool { return !h.srv.Online("pkr", "dev") })
	if s := h.stored("pkr", "dev").State; s != iothub.StateDisabled {
		t.Fatalf("state %s after the racing login, want disabled", s)
	}
	events, err := h.db.AuditEvents(ctx, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if events[0].Kind != "login.refused" || events[0].Reason != "723: device disabled" || events[0].DeviceKey != "dev" {
		t.Fatalf("newest audit event %+v, want the refused login", events[0])
	}
}

// len reports the number of cached products and devices.
func (c *registryCache) len() (products, devices int) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.products), len(c.devices)
}

// Unknown devices are not cached: a device created right after a refused
// login logs in at once. A cached device is dropped by its bus event.
func TestLoginCacheMissesAndInvalidation(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkc", nil)
	d, err := iothub.NewDevice(p, "late", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cid, user, pass := creds(t, "pkc", "late", d.DeviceSecret, sign.ModeStatic, sign.SHA256)
	if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0x86 {
		t.Fatalf("unknown device: %#x", got)
	}
	if err := h.db.CreateDevice(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0 {
		t.Fatalf("device created after a refused login: %#x", got)
	}
	if _, n := h.srv.reg.len(); n != 1 {
		t.Fatalf("%d devices cached, want 1", n)
	}

	// A secret reset announced on the bus drops the entry: the new secret
	// works at once, the old one no longer.
	nd, err := h.db.ResetDevice(context.Background(), "pkc", "late", iothub.RandomString(iothub.SecretLen))
	if err != nil {
		t.Fatal(err)
	}
	h.bus.Publish(context.Background(), iothub.Event{Kind: iothub.EventDeviceChanged, ProductKey: "pkc", DeviceKey: "late"})
	if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0x86 {
		t.Fatalf("old secret after reset: %#x", got)
	}
	cid, user, pass = creds(t, "pkc", "late", nd.DeviceSecret, sign.ModeStatic, sign.SHA256)
	if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0 {
		t.Fatalf("new secret after reset: %#x", got)
	}

	// A product switched to certificates, announced on the bus, refuses
	// secret logins at once.
	p.AuthMode = iothub.AuthCertificate
	if err := h.db.UpdateProduct(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	h.bus.Publish(context.Background(), iothub.Event{Kind: iothub.EventProductChanged, ProductKey: "pkc"})
	if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0x87 {
		t.Fatalf("secret login to a certificate product: %#x", got)
	}
}

// Close writes the queued states and audit rows: a device that logged in
// and was disconnected by the shutdown is stored offline, every login is
// in the audit log.
func TestCloseFlushesSideEffects(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkf", nil)
	const n = 20
	devs := make([]*iothub.Device, n)
	for i := range devs {
		devs[i] = h.device(p, "d"+string(rune('a'+i)))
		h.connect(t, "pkf", devs[i].DeviceKey, devs[i].DeviceSecret)
	}
	if err := h.srv.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		got, err := h.db.Device(context.Background(), "pkf", d.DeviceKey)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != iothub.StateOffline || got.ActivatedAt == nil {
			t.Fatalf("%s after Close: %s activatedAt=%v, want offline and activated", d.DeviceKey, got.State, got.ActivatedAt)
		}
	}
	events, err := h.db.AuditEvents(context.Background(), "", 100)
	if err != nil {
		t.Fatal(err)
	}
	ok := 0
	for _, e := range events {
		if e.Kind == "login.ok" && e.ProductKey == "pkf" {
			ok++
		}
	}
	if ok != n {
		t.Fatalf("%d login.ok audit rows after Close, want %d", ok, n)
	}
}
