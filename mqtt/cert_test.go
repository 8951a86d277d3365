package mqtt

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// devCert is a device key and certificate in PEM.
type devCert struct {
	keyPEM, certPEM []byte
	serial          string
	notAfter        time.Time
}

func (c devCert) tls(t testing.TB) tls.Certificate {
	t.Helper()
	pair, err := tls.X509KeyPair(c.certPEM, c.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// enroll makes a P-256 key and has the hub's CA certify it for d.
func (h *testHub) enroll(p *iothub.Product, d *iothub.Device) devCert {
	h.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		h.t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: d.DeviceKey}}, key)
	if err != nil {
		h.t.Fatal(err)
	}
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	c, err := h.certs.Enroll(context.Background(), p, d, string(csr), 30)
	if err != nil {
		h.t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	return devCert{keyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), certPEM: []byte(c.CertPEM), serial: c.Serial, notAfter: c.NotAfter}
}

// selfSigned makes a certificate for cn from a CA the hub never verified.
func selfSigned(t testing.TB, cn string) devCert {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rogue CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn}, DNSNames: []string{cn},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	return devCert{keyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// clientTLS trusts the hub chain and presents cert (none if nil).
func (h *testHub) clientTLS(t testing.TB, cert *devCert) *tls.Config {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(h.certs.ChainPEM()) {
		t.Fatal("bad chain PEM")
	}
	c := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	if cert != nil {
		c.Certificates = []tls.Certificate{cert.tls(t)}
	}
	return c
}

func certProduct(h *testHub) (*iothub.Product, *iothub.Device, *iothub.Device) {
	p := h.product("pkcert", func(p *iothub.Product) { p.AuthMode = iothub.AuthCertificate })
	return p, h.device(p, "dev1"), h.device(p, "dev2")
}

func TestCertificateProductLogin(t *testing.T) {
	h := newTestHub(t, withPKI)
	p, d1, d2 := certProduct(h)
	c1 := h.enroll(p, d1)
	c2 := h.enroll(p, d2)
	cid, user, pass := creds(t, "pkcert", "dev1", d1.DeviceSecret, sign.ModeStatic, sign.SHA256)

	// The device's own certificate plus its signature logs in.
	c, err := connectRaw(t, "ssl://"+h.tlsAddr, cid, user, pass, func(o *pahoOptions) { o.SetTLSConfig(h.clientTLS(t, &c1)) })
	if err != nil {
		t.Fatalf("own certificate refused: %v", err)
	}
	c.Disconnect(0)

	refused := map[string]*tls.Config{
		"no certificate":        h.clientTLS(t, nil),
		"another device's":      h.clientTLS(t, &c2),
		"from an unverified CA": h.clientTLS(t, ptr(selfSigned(t, "dev1"))),
	}
	for name, tc := range refused {
		if _, err := connectRaw(t, "ssl://"+h.tlsAddr, cid, user, pass, func(o *pahoOptions) { o.SetTLSConfig(tc) }); !errors.Is(err, packets.ErrorRefusedNotAuthorised) {
			t.Fatalf("%s: %v, want CONNACK 5", name, err)
		}
		if got := connectV5(t, h.tlsAddr, tc, cid, user, pass); got != 0x87 {
			t.Fatalf("%s: MQTT 5 %#x, want 0x87", name, got)
		}
	}
	// Plain TCP, even with the right secret.
	if _, err := connectRaw(t, "tcp://"+h.addr, cid, user, pass); !errors.Is(err, packets.ErrorRefusedNotAuthorised) {
		t.Fatalf("plain TCP: %v", err)
	}
	if got := connectV5(t, h.addr, nil, cid, user, pass); got != 0x87 {
		t.Fatalf("plain TCP MQTT 5: %#x", got)
	}
	// The right certificate with a wrong signature still fails.
	_, _, bad := creds(t, "pkcert", "dev1", "wrong", sign.ModeStatic, sign.SHA256)
	if got := connectV5(t, h.tlsAddr, h.clientTLS(t, &c1), cid, user, bad); got != 0x86 {
		t.Fatalf("certificate with a wrong signature: %#x", got)
	}
	// TLS 1.1 is refused at the handshake.
	old := h.clientTLS(t, &c1)
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	if conn, err := tls.Dial("tcp", h.tlsAddr, old); err == nil {
		conn.Close()
		t.Fatal("TLS 1.1 handshake succeeded")
	}
	eventually(t, "handshake failure counted", func() bool {
		return value(h.srv.met.handshakeFailures.WithLabelValues("protocol_version")) == 1
	})
	// An expired certificate: the same hub seen from a clock past NotAfter.
	late := h.cfg
	late.Now = func() time.Time { return c1.notAfter.Add(time.Hour) }
	_, _, lateTLS := h.start(late)
	if got := connectV5(t, lateTLS, h.clientTLS(t, &c1), cid, user, pass); got != 0x87 {
		t.Fatalf("expired certificate: %#x", got)
	}

	h.srv.side.Sync()
	events, _ := h.db.AuditEvents(context.Background(), "", 100)
	var reasons []string
	for _, e := range events {
		reasons = append(reasons, e.Reason)
	}
	all := strings.Join(reasons, "\n")
	for _, want := range []string{"746: no client certificate", "746: certificate product must log in over TLS", "746: certificate refused", "certificate " + c1.serial} {
		if !strings.Contains(all, want) {
			t.Fatalf("audit lacks %q:\n%s", want, all)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestCertificateRevocationAndExpiryCloseSessions(t *testing.T) {
	h := newTestHub(t, withPKI)
	p, d1, _ := certProduct(h)
	c1 := h.enroll(p, d1)
	cid, user, pass := creds(t, "pkcert", "dev1", d1.DeviceSecret, sign.ModeStatic, sign.SHA256)

	lost := make(chan time.Time, 1)
	_, err := connectRaw(t, "ssl://"+h.tlsAddr, cid, user, pass, func(o *pahoOptions) {
		o.SetTLSConfig(h.clientTLS(t, &c1))
		o.SetConnectionLostHandler(func(paho.Client, error) { lost <- time.Now() })
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := h.certs.Revoke(context.Background(), c1.serial, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-lost:
		t.Logf("revocation closed the session in %v", at.Sub(start))
	case <-time.After(time.Second):
		t.Fatal("session with a revoked certificate still open after one second")
	}
	if got := connectV5(t, h.tlsAddr, h.clientTLS(t, &c1), cid, user, pass); got != 0x87 {
		t.Fatalf("revoked certificate: %#x", got)
	}
	if n := value(h.srv.met.revokeLatency); n != 1 {
		t.Fatalf("revocation latency histogram holds %v samples, want 1", n)
	}

	// A session ends when its certificate's NotAfter passes: a hub whose
	// clock is 300 ms before NotAfter closes it 300 ms later.
	c2 := h.enroll(p, d1)
	soon := h.cfg
	soon.Now = func() time.Time { return c2.notAfter.Add(-300 * time.Millisecond) }
	_, _, soonTLS := h.start(soon)
	lost2 := make(chan struct{}, 1)
	if _, err := connectRaw(t, "ssl://"+soonTLS, cid, user, pass, func(o *pahoOptions) {
		o.SetTLSConfig(h.clientTLS(t, &c2))
		o.SetConnectionLostHandler(func(paho.Client, error) { lost2 <- struct{}{} })
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost2:
	case <-time.After(5 * time.Second):
		t.Fatal("session outlived its certificate")
	}
}

// writeFile writes a test file with mode 0600.
func writeFile(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
