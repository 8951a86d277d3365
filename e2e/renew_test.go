package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/iothub/iothub/client"
	"github.com/iothub/iothub/sign"
)

// newKeyAndCSR makes a P-256 key and a PEM CSR for cn.
func newKeyAndCSR(t *testing.T, cn string) (*ecdsa.PrivateKey, string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// tlsCert pairs a PEM certificate with its key.
func tlsCert(t *testing.T, certPEM string, key *ecdsa.PrivateKey) *tls.Certificate {
	blk, _ := pem.Decode([]byte(certPEM))
	if blk == nil {
		t.Fatalf("no certificate in %q", certPEM)
	}
	return &tls.Certificate{Certificate: [][]byte{blk.Bytes}, PrivateKey: key}
}

// TestCertificateRenewalOverMQTT: a device logged in with its certificate
// renews it on thing/certificate/renew; the new one logs in, and then the
// old one is revoked as superseded.
func TestCertificateRenewalOverMQTT(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "edge", "authMode": "certificate"})
	d := th.newDevice(t, p, "EDGE-R")
	key, csr := newKeyAndCSR(t, "EDGE-R")
	var first issued
	do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/devices/EDGE-R/certificates", map[string]any{"csr": csr}, &first, 201)

	broker := "ssl://" + th.MQTTSAddr()
	o := deviceOptions(broker, p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic)
	o.SetTLSConfig(th.tlsTo(t, tlsCert(t, first.Cert, key)))
	c := connect(t, o)
	replies := make(chan []byte, 1)
	topic := "/sys/" + p.ProductKey + "/EDGE-R/thing/certificate/renew"
	c.Subscribe(topic+"_reply", 1, func(_ paho.Client, m paho.Message) { replies <- m.Payload() }).Wait()

	// A garbage CSR is refused with a reply code, and nothing is issued.
	c.Publish(topic, 1, false, `{"id":"1","version":"1.0","method":"thing.certificate.renew","params":{"csr":"not a csr"}}`).Wait()
	var bad struct{ Code int }
	select {
	case b := <-replies:
		json.Unmarshal(b, &bad)
	case <-time.After(5 * time.Second):
		t.Fatal("no reply to a bad renewal")
	}
	if bad.Code != 1220 {
		t.Fatalf("bad CSR answered code %d, want 1220", bad.Code)
	}

	newKey, newCSR := newKeyAndCSR(t, "EDGE-R")
	req, _ := json.Marshal(map[string]any{"id": "2", "version": "1.0", "method": "thing.certificate.renew", "params": map[string]string{"csr": newCSR}})
	c.Publish(topic, 1, false, req).Wait()
	var rep struct {
		ID   string
		Code int
		Data struct {
			Serial, Cert, CAChain string
			NotAfter              time.Time
		}
	}
	select {
	case b := <-replies:
		json.Unmarshal(b, &rep)
	case <-time.After(5 * time.Second):
		t.Fatal("no renewal reply")
	}
	if rep.Code != 200 || rep.ID != "2" || rep.Data.Serial == "" || rep.Data.Serial == first.Serial || !strings.Contains(rep.Data.CAChain, "BEGIN CERTIFICATE") {
		t.Fatalf("renewal reply %+v", rep)
	}
	c.Disconnect(50)

	o2 := deviceOptions(broker, p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic)
	o2.SetTLSConfig(th.tlsTo(t, tlsCert(t, rep.Data.Cert, newKey)))
	connect(t, o2)

	var list struct {
		Certificates []struct{ Serial, Status, Reason string }
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		do(t, th.admin, "GET", "/api/v1/products/"+p.ProductKey+"/devices/EDGE-R/certificates", nil, &list, 200)
		status := map[string]string{}
		for _, c := range list.Certificates {
			status[c.Serial] = c.Status + "/" + c.Reason
		}
		if status[first.Serial] == "revoked/superseded" && status[rep.Data.Serial] == "valid/" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the new certificate logged in: %v", status)
		}
		time.Sleep(50 * time.Millisecond)
	}
	o3 := deviceOptions(broker, p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic)
	o3.SetTLSConfig(th.tlsTo(t, tlsCert(t, first.Cert, key)))
	if err := refused(o3); err == nil {
		t.Fatal("the superseded certificate still logs in")
	}
}

// TestHTTPSEnrollmentChecksClientCertificate: over HTTPS, a device may
// present its certificate; the hub then holds it to the same rules as a
// mutual-TLS login. Another device's certificate or a revoked one is refused.
func TestHTTPSEnrollmentChecksClientCertificate(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "edge", "authMode": "certificate"})
	a := th.newDevice(t, p, "EDGE-H1")
	th.newDevice(t, p, "EDGE-H2")
	certFor := func(dk string) (*tls.Certificate, string) {
		key, csr := newKeyAndCSR(t, dk)
		var c issued
		do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/devices/"+dk+"/certificates", map[string]any{"csr": csr}, &c, 201)
		return tlsCert(t, c.Cert, key), c.Serial
	}
	own, ownSerial := certFor("EDGE-H1")
	other, _ := certFor("EDGE-H2")
	enroll := func(cert *tls.Certificate) int {
		_, csr := newKeyAndCSR(t, "EDGE-H1")
		ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
		h := sha256.Sum256([]byte(csr))
		s, _ := sign.Compute(sign.SHA256, []sign.Pair{{Key: "csrSha256", Value: hex.EncodeToString(h[:])}, {Key: "deviceKey", Value: "EDGE-H1"}, {Key: "productKey", Value: p.ProductKey}, {Key: "timestamp", Value: ts}}, a.DeviceSecret)
		c, err := client.New(th.HTTPSURL(), "", nil)
		if err != nil {
			t.Fatal(err)
		}
		c.HTTP.Transport = &http.Transport{TLSClientConfig: th.tlsTo(t, cert)}
		code, _ := c.Send(t.Context(), "POST", "/device/v1/"+p.ProductKey+"/EDGE-H1/certificates", map[string]any{"csr": csr, "timestamp": ts, "sign": s}, nil)
		return code
	}
	if code := enroll(own); code != 201 {
		t.Fatalf("own certificate: %d, want 201", code)
	}
	if code := enroll(other); code != 401 {
		t.Fatalf("another device's certificate: %d, want 401", code)
	}
	do(t, th.admin, "POST", "/api/v1/certificates/"+ownSerial+"/revoke", map[string]any{"reason": "keyCompromise"}, nil, 200)
	if code := enroll(own); code != 401 {
		t.Fatalf("revoked certificate: %d, want 401", code)
	}
	if code := enroll(nil); code != 201 {
		t.Fatalf("no certificate (the secret signature alone): %d, want 201", code)
	}
}
