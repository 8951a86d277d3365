package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/hub"
	"github.com/iothub/iothub/sign"
)

// certDevice is a device of a certificate product with files for the
// mosquitto tools: ca.pem, NAME.pem, NAME.key.
type certDevice struct {
	*iothub.Device
	serial string
}

// enrollWithOpenSSL makes a P-256 key and CSR with openssl and has the hub
// issue the certificate through the API; files land in dir as name.*.
func (th *testHub) enrollWithOpenSSL(t *testing.T, dir string, p *iothub.Product, dk, name string) *certDevice {
	t.Helper()
	d := th.newDevice(t, p, dk)
	csr := makeCSR(t, dir, name, dk, "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
	var c issued
	do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/devices/"+dk+"/certificates", map[string]any{"csr": csr}, &c, 201)
	os.WriteFile(filepath.Join(dir, name+".pem"), []byte(c.Cert), 0o600)
	os.WriteFile(filepath.Join(dir, "ca.pem"), th.ChainPEM(), 0o600)
	return &certDevice{Device: d, serial: c.Serial}
}

// mosquittoArgs is the EnOS login of d as mosquitto flags.
func mosquittoArgs(pk string, d *iothub.Device) []string {
	cid, user, pass, _ := sign.Credentials(d.DeviceKey, pk, d.DeviceKey, d.DeviceSecret, sign.ModeStatic, sign.SHA256, "1700000000000")
	return []string{"-i", cid, "-u", user, "-P", pass, "-V", "mqttv311"}
}

// tlsArgs points mosquitto at the hub's TLS port with cert/key name ("" for none).
func tlsArgs(addr, name string) []string {
	host, port, _ := net.SplitHostPort(addr)
	args := []string{"-h", host, "-p", port, "--cafile", "ca.pem"}
	if name != "" {
		args = append(args, "--cert", name+".pem", "--key", name+".key")
	}
	return args
}

// pub runs mosquitto_pub once in dir and reports whether the hub let it publish.
func pub(t *testing.T, dir, topic string, args ...string) (string, bool) {
	t.Helper()
	cmd := exec.Command(needTool(t, "mosquitto_pub"), append(args, "-d", "-q", "1", "-t", topic, "-m", "{}")...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err == nil && strings.Contains(string(out), "CONNACK (0)")
}

// TestMutualTLSWithMosquitto: for a certificate product, only the device's
// own valid certificate over TLS 1.2+ gets in.
func TestMutualTLSWithMosquitto(t *testing.T) {
	th := startHub(t, "")
	dir := t.TempDir()
	p := th.newProduct(t, map[string]any{"name": "edge", "authMode": "certificate"})
	a := th.enrollWithOpenSSL(t, dir, p, "EDGE-A", "a")
	b := th.enrollWithOpenSSL(t, dir, p, "EDGE-B", "b")
	login := mosquittoArgs(p.ProductKey, a.Device)
	own := "/sys/" + p.ProductKey + "/EDGE-A/thing/event/boot/post"
	if out, ok := pub(t, dir, own, append(tlsArgs(th.MQTTSAddr(), "a"), login...)...); !ok {
		t.Fatalf("own certificate refused:\n%s", out)
	}
	host, port, _ := net.SplitHostPort(th.MQTTAddr())
	for name, args := range map[string][]string{
		"no certificate":   tlsArgs(th.MQTTSAddr(), ""),
		"another device's": tlsArgs(th.MQTTSAddr(), "b"),
		"plain TCP":        {"-h", host, "-p", port},
		"expired":          tlsArgs(th.MQTTSAddr(), "expired"),
		"unverified CA":    tlsArgs(th.MQTTSAddr(), "foreign"),
	} {
		if name == "expired" {
			forgeExpired(t, th, dir, p.ProductKey, "EDGE-A")
		}
		if name == "unverified CA" {
			foreignCA(t, th, dir, p, "EDGE-A")
		}
		if out, ok := pub(t, dir, own, append(args, login...)...); ok {
			t.Errorf("%s: logged in:\n%s", name, out)
		}
	}
	// mosquitto's --tls-version tlsv1.1 only sets a floor (it then
	// negotiates 1.3), so TLS 1.0 and 1.1 are offered with openssl alone,
	// its own security level lowered so the refusal is the hub's.
	for _, v := range []string{"-tls1", "-tls1_1"} {
		out, err := openssl(t, dir, "s_client", "-connect", th.MQTTSAddr(), v, "-cipher", "DEFAULT:@SECLEVEL=0", "-cert", "a.pem", "-key", "a.key")
		if err == nil || !strings.Contains(out, "alert protocol version") {
			t.Errorf("openssl s_client %s was not refused with a protocol version alert: %v\n%s", v, err, out)
		}
	}

	do(t, th.admin, "POST", "/api/v1/certificates/"+b.serial+"/revoke", map[string]any{"reason": "keyCompromise"}, nil, 200)
	if out, ok := pub(t, dir, "/sys/"+p.ProductKey+"/EDGE-B/thing/event/boot/post", append(tlsArgs(th.MQTTSAddr(), "b"), mosquittoArgs(p.ProductKey, b.Device)...)...); ok {
		t.Errorf("revoked certificate logged in:\n%s", out)
	}
	var events struct{ Events []iothub.AuditEvent }
	do(t, th.admin, "GET", "/api/v1/audit?limit=1000", nil, &events, 200)
	reasons := map[string]bool{}
	for _, e := range events.Events {
		if e.Kind == "login.refused" {
			reasons[e.Reason] = true
		}
	}
	if len(reasons) < 3 {
		t.Errorf("audit gives too few distinct refusal reasons: %v", reasons)
	}
}

// TestRevocationClosesLiveSession: a mosquitto_sub session is closed
// within one second of its certificate's revocation.
func TestRevocationClosesLiveSession(t *testing.T) {
	th := startHub(t, "")
	dir := t.TempDir()
	p := th.newProduct(t, map[string]any{"name": "edge", "authMode": "certificate"})
	a := th.enrollWithOpenSSL(t, dir, p, "EDGE-L", "live")
	topic := "/sys/" + p.ProductKey + "/EDGE-L/thing/service/#"
	cmd := exec.Command(needTool(t, "mosquitto_sub"), append(append(tlsArgs(th.MQTTSAddr(), "live"), mosquittoArgs(p.ProductKey, a.Device)...), "-d", "-t", topic)...)
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	// mosquitto_sub block-buffers its output when it is not a terminal, so
	// the session is seen through the API instead.
	th.waitState(t, p.ProductKey, "EDGE-L", iothub.StateOnline)
	exited := make(chan time.Time, 1)
	go func() { cmd.Wait(); exited <- time.Now() }()
	start := time.Now()
	do(t, th.admin, "POST", "/api/v1/certificates/"+a.serial+"/revoke", map[string]any{"reason": "keyCompromise"}, nil, 200)
	// The hub's side of the session ends first; mosquitto_sub then tries
	// to reconnect after its one-second delay, is refused, and exits.
	th.waitState(t, p.ProductKey, "EDGE-L", iothub.StateOffline)
	closed := time.Since(start)
	t.Logf("revocation ended the live session %v after the API call", closed)
	if closed > time.Second {
		t.Fatalf("session ended %v after revocation, want within 1 s", closed)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("mosquitto_sub is still running: it got back in with a revoked certificate")
	}
}

// forgeExpired writes expired.pem/expired.key: a certificate for dk made
// with the hub's own issuing key (read from the data dir) whose validity
// ended yesterday, so only the expiry check can refuse it.
func forgeExpired(t *testing.T, th *testHub, dir, pk, dk string) {
	caCert := readCert(t, filepath.Join(th.dir, "ca", "issuing.pem"))
	caKey := readKey(t, filepath.Join(th.dir, "ca", "issuing.key"))
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("iothub://" + pk + "/" + dk)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: dk},
		URIs:         []*url.URL{u},
		NotBefore:    time.Now().Add(-48 * time.Hour),
		NotAfter:     time.Now().Add(-24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	writeCertAndKey(t, dir, "expired", der, key)
}

// foreignCA writes foreign.pem/.key: a certificate for dk from a CA that
// is registered for the product but never verified.
func foreignCA(t *testing.T, th *testHub, dir string, p *iothub.Product, dk string) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Foreign CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	do(t, th.admin, "POST", "/api/v1/cas", map[string]any{"cert": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})), "productKey": p.ProductKey}, nil, 201)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: dk}, DNSNames: []string{dk}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	writeCertAndKey(t, dir, "foreign", der, key)
}

func writeCertAndKey(t *testing.T, dir, name string, der []byte, key *ecdsa.PrivateKey) {
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	os.WriteFile(filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600)
}

func readCert(t *testing.T, path string) *x509.Certificate {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readKey(t *testing.T, path string) any {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestOpenSSLClientGetsECDSA: OpenSSL clients list ECDSA first, so by
// default they get the hub's P-256 certificate; both chain to /ca.pem.
func TestOpenSSLClientGetsECDSA(t *testing.T) {
	th := startHub(t, "")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "ca.pem"), th.ChainPEM(), 0o600)
	for _, tc := range []struct{ sigalgs, want string }{
		{"", "Peer signature type: ECDSA"},
		{"RSA-PSS+SHA256:ECDSA+SHA256", "Peer signature type: RSA-PSS"},
	} {
		args := []string{"s_client", "-connect", th.MQTTSAddr(), "-CAfile", "ca.pem", "-verify_return_error", "-servername", "localhost"}
		if tc.sigalgs != "" {
			args = append(args, "-sigalgs", tc.sigalgs)
		}
		out, _ := openssl(t, dir, args...)
		if !strings.Contains(out, tc.want) || !strings.Contains(out, "Verify return code: 0 (ok)") {
			t.Errorf("sigalgs %q: want %q and a verified chain:\n%s", tc.sigalgs, tc.want, out)
		}
	}
}

// --tls-legacy-suites lets a device stack without ECDHE (the EnOS C SDK's
// mbedtls) complete a TLS 1.2 handshake on MQTT over TLS, and only there;
// by default such a client is refused.
func TestLegacySuitesAreOptInAndMQTTSOnly(t *testing.T) {
	handshake := func(th *testHub, addr, cipher string) string {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "ca.pem"), th.ChainPEM(), 0o600)
		out, _ := openssl(t, dir, "s_client", "-connect", addr, "-tls1_2", "-cipher", cipher,
			"-CAfile", "ca.pem", "-verify_return_error", "-servername", "localhost")
		return out
	}
	const rsaKex = "AES128-GCM-SHA256:AES128-SHA256:AES128-SHA"
	plain := startHub(t, "")
	if out := handshake(plain, plain.MQTTSAddr(), rsaKex); !strings.Contains(out, "Cipher is (NONE)") {
		t.Fatalf("a default hub accepted RSA key exchange:\n%s", out)
	}
	legacy := startHubWith(t, "", hub.Config{TLSLegacySuites: true})
	for _, cipher := range []string{"AES128-GCM-SHA256", "AES128-SHA256", "AES128-SHA"} {
		out := handshake(legacy, legacy.MQTTSAddr(), cipher)
		if !strings.Contains(out, ", Cipher is "+cipher) || !strings.Contains(out, "Protocol  : TLSv1.2") || !strings.Contains(out, "Verify return code: 0 (ok)") {
			t.Fatalf("--tls-legacy-suites: %s refused on MQTT over TLS:\n%s", cipher, out)
		}
	}
	if m := string(legacy.get(t, "/metrics")); !strings.Contains(m, "iothub_mqtt_tls_legacy_handshakes_total 3") {
		t.Fatal("the three legacy handshakes are not counted in iothub_mqtt_tls_legacy_handshakes_total")
	}
	if out := handshake(legacy, strings.TrimPrefix(legacy.HTTPSURL(), "https://"), rsaKex); !strings.Contains(out, "Cipher is (NONE)") {
		t.Fatalf("--tls-legacy-suites reached the HTTPS listener:\n%s", out)
	}
	// A modern client still gets ECDHE.
	if out := handshake(legacy, legacy.MQTTSAddr(), "ECDHE-ECDSA-AES128-GCM-SHA256:"+rsaKex); !strings.Contains(out, "Cipher is ECDHE-") {
		t.Fatalf("a client offering ECDHE was given a legacy suite:\n%s", out)
	}
}
