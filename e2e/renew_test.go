package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
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
