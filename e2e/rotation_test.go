package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/iothub/iothub/nats/natstest"
	"github.com/iothub/iothub/postgres/pgtest"
	"github.com/iothub/iothub/sign"
	"golang.org/x/crypto/ocsp"
)

type authorityList struct {
	Authorities []struct{ ID, Kind, Subject, Status string }
}

// statuses maps CA id → status as GET /api/v1/authority lists them.
func (th *testHub) statuses(t *testing.T) map[string]string {
	t.Helper()
	var l authorityList
	do(t, th.admin, "GET", "/api/v1/authority", nil, &l, 200)
	m := map[string]string{}
	for _, a := range l.Authorities {
		m[a.ID] = a.Kind + "/" + a.Status
	}
	return m
}

// verifyAgainstBundle runs openssl verify of certPEM against /ca-bundle.pem.
func (th *testHub) verifyAgainstBundle(t *testing.T, dir, certPEM string) error {
	t.Helper()
	bundle := filepath.Join(dir, "bundle.pem")
	leaf := filepath.Join(dir, "leaf.pem")
	if err := os.WriteFile(bundle, th.get(t, "/ca-bundle.pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(leaf, []byte(firstPEM(certPEM)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := openssl(t, dir, "verify", "-CAfile", bundle, leaf)
	return err
}

// serverChain does a TLS handshake with the MQTT listener and returns what the hub presented.
func (th *testHub) serverChain(t *testing.T) []*x509.Certificate {
	t.Helper()
	c, err := tls.Dial("tcp", th.MQTTSAddr(), &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates
}

func akid(c *x509.Certificate) string { return hex.EncodeToString(c.AuthorityKeyId) }

// TestCARotationAndRollover: rotate the issuing CA, then the root, then
// retire the old ones, with a device connected over mutual TLS throughout.
// New handshakes present the re-issued server certificate at once, live
// sessions survive the swaps, certificates of trusted CAs keep logging in,
// a client holding only the first root still validates the hub through
// the cross certificate, each issuing CA has its own CRL, and retiring a
// CA closes the sessions of its certificates and drops it from the bundle.
func TestCARotationAndRollover(t *testing.T) {
	th := startHub(t, "")
	dir := t.TempDir()
	p := th.newProduct(t, map[string]any{"name": "rot", "authMode": "certificate", "productKey": "ROTPRODUCT"})
	d1 := th.newDevice(t, p, "OLD-1")
	c1, key1, _ := th.enrollCert(t, p.ProductKey, "OLD-1")
	// OLD-2 tries fresh logins; OLD-1 keeps one live session (a login of
	// the same device would replace it).
	d1b := th.newDevice(t, p, "OLD-2")
	c1b, key1b, _ := th.enrollCert(t, p.ProductKey, "OLD-2")
	firstRoot := x509.NewCertPool()
	firstRoot.AppendCertsFromPEM(th.ChainPEM())
	st := th.statuses(t)
	if len(st) != 2 {
		t.Fatalf("a new hub lists %v, want one root and one issuing CA", st)
	}
	oldIssuing := akid(parseCert(t, c1.Cert))
	if st[oldIssuing] != "issuing/active" {
		t.Fatalf("device certificate's CA %s is %q", oldIssuing, st[oldIssuing])
	}
	if err := th.verifyAgainstBundle(t, dir, c1.Cert); err != nil {
		t.Fatalf("openssl verify before rotation: %v", err)
	}

	o := deviceOptions("ssl://"+th.MQTTSAddr(), p.ProductKey, d1.DeviceKey, d1.DeviceSecret, sign.ModeStatic)
	o.SetTLSConfig(th.tlsTo(t, tlsCert(t, c1.Cert, key1)))
	lost := make(chan error, 1)
	o.SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	live := connect(t, o)

	// 1. Issuing CA rotation.
	do(t, th.as(t, ""), "POST", "/api/v1/authority/rotate", map[string]any{"root": false}, nil, 401)
	var rot struct{ ID, IssuingID string }
	do(t, th.admin, "POST", "/api/v1/authority/rotate", map[string]any{"root": false}, &rot, 201)
	st = th.statuses(t)
	if st[rot.ID] != "issuing/active" || st[oldIssuing] != "issuing/trusted" {
		t.Fatalf("after rotate: %v", st)
	}
	if got := akid(th.serverChain(t)[0]); got != rot.ID {
		t.Fatalf("new handshake presents a server certificate of CA %s, want the new issuing CA %s", got, rot.ID)
	}
	d2 := th.newDevice(t, p, "NEW-2")
	c2, key2, _ := th.enrollCert(t, p.ProductKey, "NEW-2")
	if akid(parseCert(t, c2.Cert)) != rot.ID {
		t.Fatal("a certificate enrolled after rotation is not from the new issuing CA")
	}
	for _, c := range []string{c1.Cert, c2.Cert} {
		if err := th.verifyAgainstBundle(t, dir, c); err != nil {
			t.Fatalf("openssl verify after issuing rotation: %v", err)
		}
	}
	if err := th.mtlsLogin(t, p.ProductKey, d1b, c1b, key1b); err != nil {
		t.Fatalf("a certificate of the trusted old CA is refused: %v", err)
	}
	if err := th.mtlsLogin(t, p.ProductKey, d2, c2, key2); err != nil {
		t.Fatalf("a certificate of the new CA is refused: %v", err)
	}
	// One CRL per issuing CA, at the URL its certificates name, signed by it.
	for _, c := range []string{c1.Cert, c2.Cert} {
		leaf := parseCert(t, c)
		if len(leaf.CRLDistributionPoints) != 1 {
			t.Fatalf("CRL URLs %v", leaf.CRLDistributionPoints)
		}
		crlPath := "/crl/" + akid(leaf)
		crl, err := x509.ParseRevocationList(th.get(t, crlPath))
		if err != nil {
			t.Fatal(err)
		}
		issuer := parseCert(t, string(th.get(t, "/ca/"+akid(leaf)+".pem")))
		if err := crl.CheckSignatureFrom(issuer); err != nil {
			t.Fatalf("%s is not signed by its CA: %v", crlPath, err)
		}
		der := filepath.Join(dir, "crl.der")
		os.WriteFile(der, th.get(t, crlPath), 0o600)
		mustOpenSSL(t, dir, "crl", "-inform", "DER", "-in", der, "-noout", "-text")
	}

	// OCSP answers for each trusted issuing CA, signed by that CA.
	for _, c := range []string{c1.Cert, c2.Cert} {
		leaf := parseCert(t, c)
		issuer := parseCert(t, string(th.get(t, "/ca/"+akid(leaf)+".pem")))
		if st := ocspStatus(t, th, leaf, issuer); st != ocsp.Good {
			t.Fatalf("OCSP about a certificate of CA %s: status %d, want good", akid(leaf), st)
		}
	}

	// 2. Root rotation: the new root is cross-signed by the first.
	var rootRot struct{ ID, IssuingID string }
	do(t, th.admin, "POST", "/api/v1/authority/rotate", map[string]any{"root": true}, &rootRot, 201)
	st = th.statuses(t)
	if st[rootRot.ID] != "root/active" || st[rootRot.IssuingID] != "issuing/active" || st[rot.ID] != "issuing/trusted" {
		t.Fatalf("after root rotation: %v", st)
	}
	chain := th.serverChain(t)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: firstRoot, Intermediates: inter, DNSName: "localhost"}); err != nil {
		t.Fatalf("a client holding only the first root cannot validate the hub: %v", err)
	}
	checkBundleSignature(t, th, firstRoot)
	if err := th.mtlsLogin(t, p.ProductKey, d2, c2, key2); err != nil {
		t.Fatalf("after root rotation the previous issuing CA's certificate is refused: %v", err)
	}

	select {
	case err := <-lost:
		t.Fatalf("the rotations dropped a live session: %v", err)
	default:
	}

	// 3. Retire the first issuing CA: its device's live session closes.
	do(t, th.admin, "POST", "/api/v1/authority/"+rootRot.ID+"/retire", nil, nil, 409) // active
	do(t, th.admin, "POST", "/api/v1/authority/"+oldIssuing+"/retire", nil, nil, 200)
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("the session of a retired CA's certificate stayed open")
	}
	if live.IsConnectionOpen() {
		t.Fatal("paho still reports the retired CA's session open")
	}
	if err := th.mtlsLogin(t, p.ProductKey, d1b, c1b, key1b); err == nil {
		t.Fatal("a retired CA's certificate still logs in")
	}
	if err := th.verifyAgainstBundle(t, dir, c1.Cert); err == nil {
		t.Fatal("openssl verifies a retired CA's certificate against the bundle")
	}
	if err := th.verifyAgainstBundle(t, dir, c2.Cert); err != nil {
		t.Fatalf("openssl verify of a trusted CA's certificate: %v", err)
	}
	// Retire the first root: the issuing CA under it goes with it.
	var firstRootID string
	for id, s := range th.statuses(t) {
		if s == "root/trusted" {
			firstRootID = id
		}
	}
	var ret struct{ Retired []string }
	do(t, th.admin, "POST", "/api/v1/authority/"+firstRootID+"/retire", nil, &ret, 200)
	if len(ret.Retired) != 2 {
		t.Fatalf("retiring the first root retired %v, want it and the issuing CA under it", ret.Retired)
	}
	if err := th.mtlsLogin(t, p.ProductKey, d2, c2, key2); err == nil {
		t.Fatal("a certificate under the retired root still logs in")
	}
	d3 := th.newDevice(t, p, "NEW-3")
	c3, key3, _ := th.enrollCert(t, p.ProductKey, "NEW-3")
	if err := th.mtlsLogin(t, p.ProductKey, d3, c3, key3); err != nil {
		t.Fatalf("a certificate of the active CA is refused after the retirements: %v", err)
	}
	if err := th.verifyAgainstBundle(t, dir, c3.Cert); err != nil {
		t.Fatalf("openssl verify at the end: %v", err)
	}
	// The cross certificate still takes a client holding only the first root to the hub.
	chain = th.serverChain(t)
	inter = x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: firstRoot, Intermediates: inter, DNSName: "localhost"}); err != nil {
		t.Fatalf("after retirement a client holding only the first root cannot validate the hub: %v", err)
	}
}

// checkBundleSignature checks /ca-bundle.pem.sig: a signature over the
// bundle by a root that chains (through the cross certificate) to roots.
func checkBundleSignature(t *testing.T, th *testHub, roots *x509.CertPool) {
	t.Helper()
	bundle, env := th.get(t, "/ca-bundle.pem"), th.get(t, "/ca-bundle.pem.sig")
	sigBlock, rest := pem.Decode(env)
	if sigBlock == nil || sigBlock.Type != "IOTHUB BUNDLE SIGNATURE" {
		t.Fatalf("signature envelope starts with %v", sigBlock)
	}
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		certs = append(certs, parseCert(t, string(pem.EncodeToMemory(b))))
	}
	// The signer is any certificate of the envelope (the root, or its cross
	// certificate) that the client's roots vouch for: all carry the same key.
	var signer *x509.Certificate
	for _, c := range certs {
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
			signer = c
		}
	}
	if signer == nil {
		t.Fatal("no signer of the bundle chains to the client's roots")
	}
	if err := signer.CheckSignature(x509.SHA256WithRSA, bundle, sigBlock.Bytes); err != nil {
		t.Fatalf("bundle signature: %v", err)
	}
	tampered := append([]byte{}, bundle...)
	tampered[len(tampered)/2] ^= 1
	if signer.CheckSignature(x509.SHA256WithRSA, tampered, sigBlock.Bytes) == nil {
		t.Fatal("a changed bundle passes the signature")
	}
}

func parseCert(t *testing.T, text string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(text))
	if b == nil {
		t.Fatalf("no PEM in %q", text)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ocspStatus asks the hub's OCSP responder about leaf of issuer and checks
// the response is signed by issuer.
func ocspStatus(t *testing.T, th *testHub, leaf, issuer *x509.Certificate) int {
	t.Helper()
	req, err := ocsp.CreateRequest(leaf, issuer, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(th.HTTPURL()+"/ocsp", "application/ocsp-request", bytes.NewReader(req))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	der, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ocsp.ParseResponseForCert(der, leaf, issuer)
	if err != nil {
		t.Fatalf("OCSP response: %v", err)
	}
	return r.Status
}

// TestClusterCARotation: two nodes sharing PostgreSQL and NATS. A rotation
// made through node A reaches node B by itself (it issues from the new CA
// and presents a server certificate of it on new handshakes), and
// retiring the old issuing CA through node A closes the live session of
// its certificate on node B.
func TestClusterCARotation(t *testing.T) {
	dbURL := pgtest.Standalone(t)
	natsURL := natstest.URL(t)
	a := startNode(t, t.TempDir(), dbURL, natsURL)
	b := startNode(t, joinCluster(t, a.dir), dbURL, natsURL)
	p := a.newProduct(t, map[string]any{"name": "rot", "authMode": "certificate", "productKey": "CLUSTERROT"})
	d := a.newDevice(t, p, "ON-B")
	c, key, _ := a.enrollCert(t, p.ProductKey, "ON-B")
	o := deviceOptions("ssl://"+b.MQTTSAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic)
	o.SetTLSConfig(b.tlsTo(t, tlsCert(t, c.Cert, key)))
	lost := make(chan error, 1)
	o.SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	connect(t, o)
	oldIssuing := akid(parseCert(t, c.Cert))

	var rot struct{ ID string }
	do(t, a.admin, "POST", "/api/v1/authority/rotate", map[string]any{"root": false}, &rot, 201)
	eventually(t, 5*time.Second, "node B to present a server certificate of the new CA", func() bool {
		return akid(b.serverChain(t)[0]) == rot.ID
	})
	if st := b.statuses(t); st[rot.ID] != "issuing/active" || st[oldIssuing] != "issuing/trusted" {
		t.Fatalf("node B lists %v", st)
	}
	b.newDevice(t, p, "NEW-B")
	cb, _, _ := b.enrollCert(t, p.ProductKey, "NEW-B")
	if akid(parseCert(t, cb.Cert)) != rot.ID {
		t.Fatal("node B issued from the old CA after the rotation")
	}
	select {
	case err := <-lost:
		t.Fatalf("the rotation dropped the live session on node B: %v", err)
	default:
	}

	do(t, a.admin, "POST", "/api/v1/authority/"+oldIssuing+"/retire", nil, nil, 200)
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("node B kept the session of a retired CA's certificate")
	}
	if err := b.mtlsLogin(t, p.ProductKey, d, c, key); err == nil {
		t.Fatal("node B let a retired CA's certificate log in")
	}
}
