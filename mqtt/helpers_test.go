package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/inmem"
	"github.com/iothub/iothub/pki"
	"github.com/iothub/iothub/sign"
	"github.com/iothub/iothub/sqlite"
	"github.com/iothub/iothub/sqlite/sqlitetest"
)

// testHub is a real hub: a SQLite file, the in-process bus and the MQTT
// server on 127.0.0.1 with a kernel-chosen port.
type testHub struct {
	t       testing.TB
	dir     string
	db      *sqlite.DB
	bus     *inmem.Bus
	srv     *Server
	addr    string
	tlsAddr string
	cfg     Config
	auth    *pki.Authority
	certs   *pki.Service
}

type hubOption func(*testHub, *Config)

// withMaxPayload sets Config.MaxPayload.
func withMaxPayload(n int) hubOption { return func(_ *testHub, c *Config) { c.MaxPayload = n } }

// withPKI gives the hub a real CA in its data dir, the certificate
// service and a TLS listener with the hub's server certificates.
func withPKI(h *testHub, c *Config) {
	auth, err := pki.OpenAuthority(filepath.Join(h.dir, "ca"), pki.AuthorityOptions{Hostnames: []string{"127.0.0.1", "localhost"}})
	if err != nil {
		h.t.Fatal(err)
	}
	svc, err := pki.NewService(auth, h.db, h.bus, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { svc.Close() })
	h.auth, h.certs = auth, svc
	c.Certs = svc
	c.TLS = &tls.Config{Certificates: auth.ServerCertificates()}
}

func newTestHub(t testing.TB, opts ...hubOption) *testHub {
	t.Helper()
	dir := t.TempDir()
	db := sqlitetest.Open(t, dir)
	h := &testHub{t: t, dir: dir, db: db, bus: inmem.NewBus()}
	h.cfg = Config{Store: db, Bus: h.bus}
	for _, o := range opts {
		o(h, &h.cfg)
	}
	h.srv, h.addr, h.tlsAddr = h.start(h.cfg)
	return h
}

// start runs a Server with cfg on 127.0.0.1 and returns its addresses.
func (h *testHub) start(cfg Config) (*Server, string, string) {
	h.t.Helper()
	srv, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	a, err := srv.ListenTCP("127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	var tlsAddr string
	if cfg.TLS != nil {
		ta, err := srv.ListenTLS("127.0.0.1:0")
		if err != nil {
			h.t.Fatal(err)
		}
		tlsAddr = ta.String()
	}
	if err := srv.Serve(); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { srv.Close() })
	return srv, a.String(), tlsAddr
}

func (h *testHub) product(pk string, mut func(*iothub.Product)) *iothub.Product {
	h.t.Helper()
	p := &iothub.Product{OrgID: iothub.DefaultOrgID, ProductKey: pk, ProductSecret: "ps-" + pk + "-0123456789abcdef",
		Name: pk, AuthMode: iothub.AuthSecret}
	if mut != nil {
		mut(p)
	}
	if err := h.db.CreateProduct(context.Background(), p); err != nil {
		h.t.Fatal(err)
	}
	return p
}

func (h *testHub) device(p *iothub.Product, dk string) *iothub.Device {
	h.t.Helper()
	d, err := iothub.NewDevice(p, dk, "", time.Now())
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.db.CreateDevice(context.Background(), d); err != nil {
		h.t.Fatal(err)
	}
	return d
}

// stored reads a device from the store once the login side effects queued
// so far are written.
func (h *testHub) stored(pk, dk string) *iothub.Device {
	h.t.Helper()
	h.srv.side.Sync()
	d, err := h.db.Device(context.Background(), pk, dk)
	if err != nil {
		h.t.Fatal(err)
	}
	return d
}

// eventually polls cond for up to 5 s (storage is asynchronous; this is
// not a speed assertion).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// creds returns EnOS credentials for a device with its deviceKey as cid.
func creds(t testing.TB, pk, dk, secret string, mode int, m sign.Method) (string, string, string) {
	t.Helper()
	cid, user, pass, err := sign.Credentials(dk, pk, dk, secret, mode, m, strconv.FormatInt(time.Now().UnixMilli(), 10))
	if err != nil {
		t.Fatal(err)
	}
	return cid, user, pass
}

type clientOpt func(*paho.ClientOptions)

// connect logs in with paho (MQTT 3.1.1) and returns the client and the
// CONNECT error.
func connectRaw(t testing.TB, broker, cid, user, pass string, opts ...clientOpt) (paho.Client, error) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(broker).SetClientID(cid).SetUsername(user).SetPassword(pass).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).SetKeepAlive(30 * time.Second).SetCleanSession(true)
	for _, f := range opts {
		f(o)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return c, errors.New("connect timed out")
	}
	if tok.Error() == nil {
		t.Cleanup(func() { c.Disconnect(0) })
	}
	return c, tok.Error()
}

func (h *testHub) connect(t testing.TB, pk, dk, secret string, opts ...clientOpt) paho.Client {
	t.Helper()
	cid, user, pass := creds(t, pk, dk, secret, sign.ModeStatic, sign.SHA256)
	c, err := connectRaw(t, "tcp://"+h.addr, cid, user, pass, opts...)
	if err != nil {
		t.Fatalf("login of %s/%s: %v", pk, dk, err)
	}
	return c
}

// connectV5 sends an MQTT 5 CONNECT over addr (TLS when tc is set) and
// returns the CONNACK reason code.
func connectV5(t testing.TB, addr string, tc *tls.Config, cid, user, pass string) byte {
	t.Helper()
	c, code := dialV5(t, addr, tc, cid, user, pass)
	c.Close()
	return code
}

// dialV5 is connectV5 that also returns the open connection, for the
// caller to close.
func dialV5(t testing.TB, addr string, tc *tls.Config, cid, user, pass string) (net.Conn, byte) {
	return dialV5From(t, "", addr, tc, cid, user, pass)
}

// dialV5From is dialV5 from a chosen local IP ("" lets the kernel choose),
// so that tests can log in from several source addresses (127.0.0.0/8).
func dialV5From(t testing.TB, local, addr string, tc *tls.Config, cid, user, pass string) (net.Conn, byte) {
	t.Helper()
	d := &net.Dialer{}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	var c net.Conn
	var err error
	if tc != nil {
		c, err = tls.DialWithDialer(d, "tcp", addr, tc)
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(rawEncode(t, connectPacket(5, cid, user, pass, 30))); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatalf("reading CONNACK: %v", err)
	}
	if hdr[0] != 0x20 || hdr[1] < 2 || hdr[1] > 127 {
		t.Fatalf("not a CONNACK: % x", hdr)
	}
	body := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, body); err != nil {
		t.Fatal(err)
	}
	return c, body[1]
}

// collector gathers messages a paho client receives, subscribed or not.
type collector struct{ ch chan paho.Message }

func newCollector() *collector { return &collector{ch: make(chan paho.Message, 64)} }

func (c *collector) handler(_ paho.Client, m paho.Message) { c.ch <- m }

func (c *collector) opt(o *paho.ClientOptions) { o.SetDefaultPublishHandler(c.handler) }

func (c *collector) next(t testing.TB, within time.Duration) paho.Message {
	t.Helper()
	select {
	case m := <-c.ch:
		return m
	case <-time.After(within):
		t.Fatal("no message arrived")
		return nil
	}
}

type (
	pahoOptions = paho.ClientOptions
	pahoClient  = paho.Client
	pahoMessage = paho.Message
)
