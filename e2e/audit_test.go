package e2e

// Regression tests of the outside security audit (issue 13), one per
// finding, each named after it in a comment. They redo the audit's
// reproductions against a real hub.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/iothub/iothub"
	"github.com/iothub/iothub/hub"
	"github.com/iothub/iothub/nats/natstest"
	"github.com/iothub/iothub/postgres/pgtest"
	"github.com/iothub/iothub/sign"
	"golang.org/x/crypto/ocsp"
	_ "modernc.org/sqlite"
)

// certStatus reads a certificate's status and reason through the API as c.
func certStatus(t *testing.T, c interface {
	Send(ctx context.Context, method, path string, body, out any) (int, error)
}, serial string) (int, string) {
	t.Helper()
	var v struct{ Status, Reason string }
	code, _ := c.Send(context.Background(), "GET", "/api/v1/certificates/"+serial, nil, &v)
	return code, v.Status + "/" + v.Reason
}

// F3: no API key — not even an admin of org default, not even the
// bootstrap key itself — revokes the bootstrap key; a hub whose bootstrap
// key was revoked (as the audit left it) still starts, with that key back.
func TestAuditF3BootstrapKeyCannotBeRevoked(t *testing.T) {
	dir := t.TempDir()
	th := startHub(t, dir)
	var k struct{ Key string }
	do(t, th.admin, "POST", "/api/v1/orgs/default/apikeys", map[string]any{"name": "ops", "role": "admin"}, &k, 201)
	other := th.as(t, k.Key)
	do(t, other, "DELETE", "/api/v1/orgs/default/apikeys/key_bootstrap", nil, nil, 403)
	do(t, th.admin, "DELETE", "/api/v1/orgs/default/apikeys/key_bootstrap", nil, nil, 403)
	do(t, th.admin, "GET", "/api/v1/products", nil, nil, 200)

	// A database left with a revoked bootstrap key (the audit's state)
	// does not stop the hub from starting, and the key works again.
	adminKey := th.AdminKey()
	th.stop()
	db, err := sql.Open("sqlite", filepath.Join(dir, "iothub.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE api_keys SET revoked_at = 1 WHERE id = 'key_bootstrap'`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	th2 := startHub(t, dir)
	if th2.AdminKey() != adminKey {
		t.Fatal("restart changed the bootstrap key")
	}
	do(t, th2.admin, "GET", "/api/v1/products", nil, nil, 200)

	// Rotated offline: the old key is refused, the new one is in admin.key.
	th2.stop()
	newKey, err := hub.RotateAdminKey(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "admin.key")); strings.TrimSpace(string(b)) != newKey || newKey == adminKey {
		t.Fatal("admin.key does not hold the rotated key")
	}
	th3 := startHub(t, dir)
	do(t, th3.as(t, adminKey), "GET", "/api/v1/products", nil, nil, 401)
	do(t, th3.as(t, newKey), "GET", "/api/v1/products", nil, nil, 200)
}

// enrollCert issues a certificate for dk through the API and returns it
// with its key.
func (th *testHub) enrollCert(t *testing.T, pk, dk string) (issued, *ecdsa.PrivateKey, string) {
	t.Helper()
	key, csr := newKeyAndCSR(t, dk)
	var c issued
	do(t, th.admin, "POST", "/api/v1/products/"+pk+"/devices/"+dk+"/certificates", map[string]any{"csr": csr}, &c, 201)
	return c, key, csr
}

// mtlsLogin tries a mutual-TLS login of d with certificate c and key; nil means it got in.
func (th *testHub) mtlsLogin(t *testing.T, pk string, d *iothub.Device, c issued, key *ecdsa.PrivateKey) error {
	t.Helper()
	o := deviceOptions("ssl://"+th.MQTTSAddr(), pk, d.DeviceKey, d.DeviceSecret, sign.ModeStatic)
	o.SetTLSConfig(th.tlsTo(t, tlsCert(t, c.Cert, key)))
	return refused(o)
}

// F4: deleting or resetting a device revokes its certificates
// (cessationOfOperation: CRL, OCSP, login) and closes its session; a
// device re-created under the same keys — even by another org re-using the
// freed productKey — inherits nothing: the old certificate does not log it
// in, is not listed as its own, cannot be revoked by it, and its key
// cannot be bound to it.
func TestAuditF4CertificatesBelongToTheDeviceIdentity(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "f4", "authMode": "certificate", "productKey": "F4PRODUCT"})
	d := th.newDevice(t, p, "EDGE-1")
	c, key, csr := th.enrollCert(t, p.ProductKey, "EDGE-1")
	o := deviceOptions("ssl://"+th.MQTTSAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic)
	o.SetTLSConfig(th.tlsTo(t, tlsCert(t, c.Cert, key)))
	lost := make(chan struct{})
	o.SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
	connect(t, o)

	do(t, th.admin, "DELETE", "/api/v1/products/"+p.ProductKey+"/devices/EDGE-1", nil, nil, 204)
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("the deleted device's session stayed open")
	}
	if code, st := certStatus(t, th.admin, c.Serial); code != 200 || st != "revoked/cessationOfOperation" {
		t.Fatalf("after delete the certificate is %d %s, want revoked/cessationOfOperation", code, st)
	}
	if !crlHas(t, th, c.Serial) {
		t.Fatal("the deleted device's certificate is not in the CRL")
	}

	// Re-created under the same keys: nothing of the old device.
	d2 := th.newDevice(t, p, "EDGE-1")
	if err := th.mtlsLogin(t, p.ProductKey, d2, c, key); err == nil {
		t.Fatal("the re-created device logged in with its predecessor's certificate")
	}
	var list struct{ Certificates []struct{ Serial string } }
	do(t, th.admin, "GET", "/api/v1/products/"+p.ProductKey+"/devices/EDGE-1/certificates", nil, &list, 200)
	if len(list.Certificates) != 0 {
		t.Fatalf("the re-created device lists %d certificates of its predecessor", len(list.Certificates))
	}
	do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/devices/EDGE-1/certificates", map[string]any{"csr": csr}, nil, 409)
	do(t, th.as(t, ""), "POST", "/device/v1/"+p.ProductKey+"/EDGE-1/certificates/"+c.Serial+"/revoke",
		signedBody(d2.DeviceSecret, p.ProductKey, "EDGE-1", time.Now(), sign.Pair{Key: "serial", Value: c.Serial}), nil, 404)

	// Reset: the certificates issued since are revoked too.
	c2, key2, _ := th.enrollCert(t, p.ProductKey, "EDGE-1")
	if err := th.mtlsLogin(t, p.ProductKey, d2, c2, key2); err != nil {
		t.Fatalf("the new certificate does not log in: %v", err)
	}
	var reset iothub.Device
	do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/devices/EDGE-1/reset", nil, &reset, 200)
	if _, st := certStatus(t, th.admin, c2.Serial); st != "revoked/cessationOfOperation" {
		t.Fatalf("after reset the certificate is %s", st)
	}
	if err := th.mtlsLogin(t, p.ProductKey, &reset, c2, key2); err == nil {
		t.Fatal("the reset device logged in with its old certificate")
	}

	// Another org re-uses the freed productKey: the old certificates are
	// neither visible to it nor usable.
	c3, key3, _ := th.enrollCert(t, p.ProductKey, "EDGE-1")
	do(t, th.admin, "DELETE", "/api/v1/products/"+p.ProductKey+"/devices/EDGE-1", nil, nil, 204)
	do(t, th.admin, "DELETE", "/api/v1/products/"+p.ProductKey, nil, nil, 204)
	do(t, th.admin, "POST", "/api/v1/orgs", map[string]any{"id": "orgb", "name": "B"}, nil, 201)
	var bk struct{ Key string }
	do(t, th.admin, "POST", "/api/v1/orgs/orgb/apikeys", map[string]any{"name": "b", "role": "admin"}, &bk, 201)
	b := th.as(t, bk.Key)
	var pb iothub.Product
	do(t, b, "POST", "/api/v1/products", map[string]any{"name": "b", "authMode": "certificate", "productKey": "F4PRODUCT"}, &pb, 201)
	var db iothub.Device
	do(t, b, "POST", "/api/v1/products/F4PRODUCT/devices", map[string]any{"deviceKey": "EDGE-1"}, &db, 201)
	if err := th.mtlsLogin(t, "F4PRODUCT", &db, c3, key3); err == nil {
		t.Fatal("org B's device logged in with org A's certificate")
	}
	if code, _ := certStatus(t, b, c3.Serial); code != 404 {
		t.Fatalf("org B reads org A's certificate: %d", code)
	}
	do(t, b, "POST", "/api/v1/certificates/"+c3.Serial+"/revoke", map[string]any{"reason": "keyCompromise"}, nil, 404)
}

// crlHas reports whether the hub's CRL lists serial.
func crlHas(t *testing.T, th *testHub, serial string) bool {
	t.Helper()
	crl, err := x509.ParseRevocationList(th.get(t, "/crl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range crl.RevokedCertificateEntries {
		if fmt.Sprintf("%x", e.SerialNumber) == serial {
			return true
		}
	}
	return false
}

// signedBody is a device-API body signed with secret over pairs plus the
// device keys and timestamp ts.
func signedBody(secret, pk, dk string, ts time.Time, pairs ...sign.Pair) map[string]any {
	tss := strconv.FormatInt(ts.UnixMilli(), 10)
	pairs = append(pairs, sign.Pair{Key: "deviceKey", Value: dk}, sign.Pair{Key: "productKey", Value: pk}, sign.Pair{Key: "timestamp", Value: tss})
	s, err := sign.Compute(sign.SHA256, pairs, secret)
	if err != nil {
		panic(err)
	}
	return map[string]any{"timestamp": tss, "signMethod": "sha256", "sign": s}
}

// F6: a post over the stored-post cap and attributes past their cap are
// refused with a reply code and store nothing; one history read returns
// at most MaxTelemetryReadBytes however large the history is.
func TestAuditF6StorageCaps(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "f6"})
	d := th.newDevice(t, p, "BIG")
	c := connect(t, deviceOptions("tcp://"+th.MQTTAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic))
	base := "/sys/" + p.ProductKey + "/BIG/thing/"
	replies := make(chan int, 4)
	for _, topic := range []string{"measurepoint/post", "attribute/update"} {
		c.Subscribe(base+topic+"_reply", 1, func(_ paho.Client, m paho.Message) {
			var r struct{ Code int }
			json.Unmarshal(m.Payload(), &r)
			replies <- r.Code
		}).Wait()
	}
	reply := func() int {
		select {
		case code := <-replies:
			return code
		case <-time.After(5 * time.Second):
			t.Fatal("no reply")
			return 0
		}
	}
	big := strings.Repeat("x", iothub.MaxSampleBytes)
	c.Publish(base+"measurepoint/post", 1, false, `{"id":"1","method":"thing.measurepoint.post","params":{"measurepoints":{"blob":"`+big+`"}}}`).Wait()
	if code := reply(); code != 1008 {
		t.Fatalf("an oversized post answered %d, want 1008", code)
	}
	attrs := map[string]int{}
	for i := range iothub.MaxAttributesPerDevice + 1 {
		attrs[fmt.Sprintf("a%d", i)] = i
	}
	msg, _ := json.Marshal(map[string]any{"id": "2", "method": "thing.attribute.update", "params": map[string]any{"attributes": attrs}})
	c.Publish(base+"attribute/update", 1, false, msg).Wait()
	if code := reply(); code != 1008 {
		t.Fatalf("too many attributes answered %d, want 1008", code)
	}
	var got struct{ Attributes map[string]any }
	do(t, th.admin, "GET", "/api/v1/products/"+p.ProductKey+"/devices/BIG/attributes", nil, &got, 200)
	if len(got.Attributes) != 0 {
		t.Fatalf("a refused update stored %d attributes", len(got.Attributes))
	}

	// A history as large as a device could store before the cap: one read
	// returns no more than the read cap.
	blob := strings.Repeat("y", 60<<10)
	var samples []iothub.Sample
	for i := range 100 {
		samples = append(samples, iothub.Sample{ProductKey: p.ProductKey, DeviceKey: "BIG", Time: time.Now(),
			Measurepoints: json.RawMessage(fmt.Sprintf(`{"i":%d,"blob":%q}`, i, blob))})
	}
	if err := th.Store().AppendSamples(context.Background(), samples); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(authed(t, th, "GET", "/api/v1/products/"+p.ProductKey+"/devices/BIG/telemetry?limit=1000"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var tel struct{ Samples []json.RawMessage }
	if err := json.Unmarshal(body, &tel); err != nil {
		t.Fatal(err)
	}
	if len(tel.Samples) == 0 || len(tel.Samples) >= 100 || len(body) > iothub.MaxTelemetryReadBytes+(1<<20) {
		t.Fatalf("a history read returned %d posts in %d bytes (cap %d)", len(tel.Samples), len(body), iothub.MaxTelemetryReadBytes)
	}
}

// authed is a request to the management listener with the bootstrap key.
func authed(t *testing.T, th *testHub, method, path string) *http.Request {
	req, err := http.NewRequest(method, th.HTTPURL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+th.AdminKey())
	return req
}

// externalCA makes a CA, registers and verifies it for p, and returns a
// function issuing its leaves for a device key.
func externalCA(t *testing.T, th *testHub, p *iothub.Product) (id string, leaf func(dk string, serial int64) (issued, *ecdsa.PrivateKey)) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "OEM CA " + p.ProductKey}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	var ca struct{ ID, VerificationCode string }
	do(t, th.admin, "POST", "/api/v1/cas", map[string]any{"cert": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})), "productKey": p.ProductKey}, &ca, 201)
	issue := func(cn string, serial int64) (issued, *ecdsa.PrivateKey) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		return issued{Serial: fmt.Sprintf("%x", serial), Cert: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}, key
	}
	proof, _ := issue(ca.VerificationCode, 99)
	do(t, th.admin, "POST", "/api/v1/cas/"+ca.ID+"/verify", map[string]any{"cert": proof.Cert}, nil, 200)
	return ca.ID, issue
}

// F7: a leaf of a verified external CA can be revoked by serial; the CA
// can be removed, and its leaves stop logging in at once; deleting the
// product drops its CAs from memory, so another org re-using the
// productKey does not log devices in with the first org's leaves.
func TestAuditF7ExternalCAsCanBeRemovedAndTheirLeavesRevoked(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "f7", "authMode": "certificate", "productKey": "F7PRODUCT"})
	d := th.newDevice(t, p, "OEM-1")
	id, leaf := externalCA(t, th, p)
	l1, k1 := leaf("OEM-1", 1001)
	l2, k2 := leaf("OEM-1", 1002)
	if err := th.mtlsLogin(t, p.ProductKey, d, l1, k1); err != nil {
		t.Fatalf("a leaf of the verified CA does not log in: %v", err)
	}
	do(t, th.admin, "POST", "/api/v1/cas/"+id+"/revocations", map[string]any{"serial": l1.Serial, "reason": "keyCompromise"}, nil, 200)
	if err := th.mtlsLogin(t, p.ProductKey, d, l1, k1); err == nil {
		t.Fatal("a revoked external leaf logged in")
	}
	if err := th.mtlsLogin(t, p.ProductKey, d, l2, k2); err != nil {
		t.Fatalf("another leaf of the CA no longer logs in: %v", err)
	}
	do(t, th.admin, "DELETE", "/api/v1/cas/"+id, nil, nil, 204)
	do(t, th.admin, "GET", "/api/v1/cas/"+id, nil, nil, 404)
	if err := th.mtlsLogin(t, p.ProductKey, d, l2, k2); err == nil {
		t.Fatal("a leaf of a removed CA logged in")
	}

	// Deleting the product forgets its CAs, in memory too.
	_, leaf2 := externalCA(t, th, p)
	l3, k3 := leaf2("OEM-1", 1003)
	if err := th.mtlsLogin(t, p.ProductKey, d, l3, k3); err != nil {
		t.Fatalf("a leaf of the second CA does not log in: %v", err)
	}
	do(t, th.admin, "DELETE", "/api/v1/products/"+p.ProductKey+"/devices/OEM-1", nil, nil, 204)
	do(t, th.admin, "DELETE", "/api/v1/products/"+p.ProductKey, nil, nil, 204)
	do(t, th.admin, "POST", "/api/v1/orgs", map[string]any{"id": "orgb", "name": "B"}, nil, 201)
	do(t, th.admin, "POST", "/api/v1/products", map[string]any{"name": "b", "authMode": "certificate", "productKey": "F7PRODUCT", "orgId": "orgb"}, nil, 201)
	var db iothub.Device
	do(t, th.admin, "POST", "/api/v1/products/F7PRODUCT/devices", map[string]any{"deviceKey": "OEM-1"}, &db, 201)
	deadline := time.Now().Add(5 * time.Second)
	for th.mtlsLogin(t, "F7PRODUCT", &db, l3, k3) == nil {
		if time.Now().After(deadline) {
			t.Fatal("org B's device logs in with a leaf of org A's CA after the product was deleted")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// F9: a captured signed enrollment replays never: the same body a second
// time is refused and issues nothing; a retry signed afresh with the same
// CSR answers the certificate already issued, so replays cannot fill the
// device's certificate cap.
func TestAuditF9SignedRequestUsableOnce(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "f9", "authMode": "certificate"})
	d := th.newDevice(t, p, "EDGE-9")
	_, csr := newKeyAndCSR(t, "EDGE-9")
	h := sha256.Sum256([]byte(csr))
	body := func(ts time.Time) map[string]any {
		b := signedBody(d.DeviceSecret, p.ProductKey, "EDGE-9", ts, sign.Pair{Key: "csrSha256", Value: hex.EncodeToString(h[:])})
		b["csr"] = csr
		return b
	}
	anon := th.as(t, "")
	path := "/device/v1/" + p.ProductKey + "/EDGE-9/certificates"
	captured := body(time.Now())
	var first issued
	do(t, anon, "POST", path, captured, &first, 201)
	for range 3 {
		do(t, anon, "POST", path, captured, nil, 401)
	}
	var retry issued
	do(t, anon, "POST", path, body(time.Now().Add(time.Millisecond)), &retry, 201)
	if retry.Serial != first.Serial {
		t.Fatalf("a retry of the same CSR issued %s, want the same certificate %s", retry.Serial, first.Serial)
	}
	var list struct{ Certificates []struct{ Serial string } }
	do(t, th.admin, "GET", "/api/v1/products/"+p.ProductKey+"/devices/EDGE-9/certificates", nil, &list, 200)
	if len(list.Certificates) != 1 {
		t.Fatalf("the device holds %d certificates after replays, want 1", len(list.Certificates))
	}
}

// F10: POST /ocsp is rate-limited per source address.
func TestAuditF10OCSPRateLimited(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "f10", "authMode": "certificate"})
	th.newDevice(t, p, "EDGE-10")
	c, _, _ := th.enrollCert(t, p.ProductKey, "EDGE-10")
	req := ocspRequest(t, th, c)
	limited := 0
	for range 300 {
		resp, err := http.Post(th.HTTPURL()+"/ocsp", "application/ocsp-request", bytes.NewReader(req))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited == 0 {
		t.Fatal("300 OCSP requests from one address were all answered")
	}
}

// F13: a refused device-API request on a device of org acme is in acme's
// audit log.
func TestAuditF13RefusedDeviceRequestCarriesOrg(t *testing.T) {
	th := startHub(t, "")
	do(t, th.admin, "POST", "/api/v1/orgs", map[string]any{"id": "acme", "name": "Acme"}, nil, 201)
	var k struct{ Key string }
	do(t, th.admin, "POST", "/api/v1/orgs/acme/apikeys", map[string]any{"name": "a", "role": "admin"}, &k, 201)
	acme := th.as(t, k.Key)
	var p iothub.Product
	do(t, acme, "POST", "/api/v1/products", map[string]any{"name": "f13", "authMode": "certificate"}, &p, 201)
	do(t, acme, "POST", "/api/v1/products/"+p.ProductKey+"/devices", map[string]any{"deviceKey": "EDGE-13"}, nil, 201)
	_, csr := newKeyAndCSR(t, "EDGE-13")
	b := signedBody("wrong-secret", p.ProductKey, "EDGE-13", time.Now())
	b["csr"] = csr
	do(t, th.as(t, ""), "POST", "/device/v1/"+p.ProductKey+"/EDGE-13/certificates", b, nil, 401)
	var events struct{ Events []iothub.AuditEvent }
	do(t, acme, "GET", "/api/v1/audit", nil, &events, 200)
	for _, e := range events.Events {
		if e.Kind == "device_api.refused" && e.DeviceKey == "EDGE-13" && e.OrgID == "acme" {
			return
		}
	}
	t.Fatalf("acme's audit log lacks the refused request: %+v", events.Events)
}

// I2: /metrics is served on the management listener only.
func TestAuditI2MetricsOnlyOnManagementListener(t *testing.T) {
	th := startHub(t, "")
	resp, err := th.trustingClient(t).Get(th.HTTPSURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /metrics on the public listener: %d, want 404", resp.StatusCode)
	}
	if !bytes.Contains(th.get(t, "/metrics"), []byte("go_goroutines")) {
		t.Fatal("the management listener lost /metrics")
	}
}

// ocspRequest is a DER OCSP request about the hub-issued certificate c.
func ocspRequest(t *testing.T, th *testHub, c issued) []byte {
	t.Helper()
	leafBlk, _ := pem.Decode([]byte(c.Cert))
	issBlk, _ := pem.Decode(th.ChainPEM())
	if leafBlk == nil || issBlk == nil {
		t.Fatal("no certificate to ask about")
	}
	leaf, err := x509.ParseCertificate(leafBlk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := x509.ParseCertificate(issBlk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	req, err := ocsp.CreateRequest(leaf, iss, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// F7, F8, F9 across nodes sharing one PostgreSQL database and one NATS
// server: a CA removed through node A stops its leaves on node B; a
// renewal made on node A supersedes the old certificate once the new one
// logs in on node B; a signed request used on node A is refused on node B.
func TestAuditClusterF7F8F9(t *testing.T) {
	dbURL := pgtest.Standalone(t)
	natsURL := natstest.URL(t)
	a := startNode(t, t.TempDir(), dbURL, natsURL)
	b := startNode(t, joinCluster(t, a.dir), dbURL, natsURL)
	p := a.newProduct(t, map[string]any{"name": "cluster", "authMode": "certificate"})
	eventually := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatal(what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// F9: one use, whichever node sees it.
	d9 := a.newDevice(t, p, "EDGE-9")
	_, csr := newKeyAndCSR(t, "EDGE-9")
	h := sha256.Sum256([]byte(csr))
	body := signedBody(d9.DeviceSecret, p.ProductKey, "EDGE-9", time.Now(), sign.Pair{Key: "csrSha256", Value: hex.EncodeToString(h[:])})
	body["csr"] = csr
	path := "/device/v1/" + p.ProductKey + "/EDGE-9/certificates"
	do(t, a.as(t, ""), "POST", path, body, nil, 201)
	do(t, b.as(t, ""), "POST", path, body, nil, 401)

	// F7: removal on A holds on B.
	d7 := a.newDevice(t, p, "OEM-1")
	id, leaf := externalCA(t, a, p)
	l, k := leaf("OEM-1", 7001)
	eventually("a leaf of the CA verified on node A does not log in on node B", func() bool { return b.mtlsLogin(t, p.ProductKey, d7, l, k) == nil })
	do(t, a.admin, "DELETE", "/api/v1/cas/"+id, nil, nil, 204)
	eventually("a leaf of the CA removed on node A still logs in on node B", func() bool { return b.mtlsLogin(t, p.ProductKey, d7, l, k) != nil })

	// F8: renewed on A, used on B.
	d8 := a.newDevice(t, p, "EDGE-8")
	first, key, _ := a.enrollCert(t, p.ProductKey, "EDGE-8")
	o := deviceOptions("ssl://"+a.MQTTSAddr(), p.ProductKey, d8.DeviceKey, d8.DeviceSecret, sign.ModeStatic)
	o.SetTLSConfig(a.tlsTo(t, tlsCert(t, first.Cert, key)))
	c := connect(t, o)
	replies := make(chan []byte, 1)
	topic := "/sys/" + p.ProductKey + "/EDGE-8/thing/certificate/renew"
	c.Subscribe(topic+"_reply", 1, func(_ paho.Client, m paho.Message) { replies <- m.Payload() }).Wait()
	newKey, newCSR := newKeyAndCSR(t, "EDGE-8")
	req, _ := json.Marshal(map[string]any{"id": "1", "version": "1.0", "method": "thing.certificate.renew", "params": map[string]string{"csr": newCSR}})
	c.Publish(topic, 1, false, req).Wait()
	var rep struct {
		Code int
		Data struct{ Serial, Cert string }
	}
	select {
	case m := <-replies:
		json.Unmarshal(m, &rep)
	case <-time.After(5 * time.Second):
		t.Fatal("no renewal reply")
	}
	if rep.Code != 200 {
		t.Fatalf("renewal answered %d", rep.Code)
	}
	c.Disconnect(50)
	renewed := issued{Serial: rep.Data.Serial, Cert: rep.Data.Cert}
	eventually("the renewed certificate does not log in on node B", func() bool { return b.mtlsLogin(t, p.ProductKey, d8, renewed, newKey) == nil })
	eventually("the certificate renewed away on node A stays valid after its successor logged in on node B", func() bool {
		_, st := certStatus(t, b.admin, first.Serial)
		return st == "revoked/superseded"
	})
}
