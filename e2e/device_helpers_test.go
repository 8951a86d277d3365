package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"strconv"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// newProduct creates a product with the bootstrap key.
func (th *testHub) newProduct(t testing.TB, settings map[string]any) *iothub.Product {
	t.Helper()
	if settings["name"] == nil {
		settings["name"] = "test product"
	}
	var p iothub.Product
	do(t, th.admin, "POST", "/api/v1/products", settings, &p, 201)
	return &p
}

// newDevice registers deviceKey under p.
func (th *testHub) newDevice(t testing.TB, p *iothub.Product, deviceKey string) *iothub.Device {
	t.Helper()
	var d iothub.Device
	do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/devices", map[string]any{"deviceKey": deviceKey}, &d, 201)
	return &d
}

// deviceState reads a device's state through the API.
func (th *testHub) deviceState(t testing.TB, pk, dk string) iothub.DeviceState {
	t.Helper()
	d, err := th.admin.Device(context.Background(), pk, dk)
	if err != nil {
		t.Fatal(err)
	}
	return d.State
}

// waitState polls the API until the device is in want or 5 s pass.
func (th *testHub) waitState(t testing.TB, pk, dk string, want iothub.DeviceState) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := th.deviceState(t, pk, dk)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("device %s/%s is %s, want %s", pk, dk, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// deviceOptions returns paho options for an EnOS login of (pk, dk) with
// secret in mode, over broker ("tcp://…" or "ssl://…").
func deviceOptions(broker, pk, dk, secret string, mode int) *paho.ClientOptions {
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
	cid, user, pass, err := sign.Credentials(dk, pk, dk, secret, mode, sign.SHA256, ts)
	if err != nil {
		panic(err)
	}
	o := paho.NewClientOptions().AddBroker(broker).SetClientID(cid).SetUsername(user).SetPassword(pass)
	o.SetProtocolVersion(4)
	o.SetAutoReconnect(false)
	o.SetConnectRetry(false)
	o.SetConnectTimeout(5 * time.Second)
	o.SetCleanSession(true)
	return o
}

// tlsTo returns a TLS config trusting only the hub's chain, with an
// optional client certificate.
func (th *testHub) tlsTo(t testing.TB, cert *tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(th.ChainPEM()) {
		t.Fatal("no chain")
	}
	c := &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

// connect logs a device in and fails the test if the hub refuses it.
func connect(t testing.TB, o *paho.ClientOptions) paho.Client {
	t.Helper()
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

// refused tries to log in and returns the error; nil means it got in.
func refused(o *paho.ClientOptions) error {
	c := paho.NewClient(o)
	tok := c.Connect()
	tok.WaitTimeout(10 * time.Second)
	if tok.Error() == nil {
		c.Disconnect(50)
	}
	return tok.Error()
}
