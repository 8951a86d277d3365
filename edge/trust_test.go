package edge

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

// testCA is a self-signed CA with its key.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, name string) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return testCA{c, key}
}

func (ca testCA) pem() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

// envelope signs bundle with ca's key the way the hub does.
func (ca testCA) envelope(t *testing.T, bundle []byte) []byte {
	d := sha256.Sum256(bundle)
	sig, err := ca.key.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return append(pem.EncodeToMemory(&pem.Block{Type: bundleSigType, Bytes: sig}), ca.pem()...)
}

func (ca testCA) crl(t *testing.T) []byte {
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1),
		ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour)}, ca.cert, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// A bundle signed by a key the agent does not trust, a tampered bundle,
// and a CRL signed by an unknown CA (even one of the same name) are refused.
func TestTrustRefusals(t *testing.T) {
	trusted, stranger := newTestCA(t, "hub root"), newTestCA(t, "hub root")
	roots := x509.NewCertPool()
	roots.AddCert(trusted.cert)
	bundle := append(trusted.pem(), stranger.pem()...)

	if _, err := VerifyBundle(bundle, trusted.envelope(t, bundle), roots); err != nil {
		t.Fatalf("a bundle signed by the trusted root: %v", err)
	}
	if _, err := VerifyBundle(bundle, stranger.envelope(t, bundle), roots); err == nil || !strings.Contains(err.Error(), "not signed") {
		t.Fatalf("a bundle signed by an unknown key: %v", err)
	}
	tampered := append([]byte{}, bundle...)
	tampered[40] ^= 1
	if _, err := VerifyBundle(tampered, trusted.envelope(t, bundle), roots); err == nil {
		t.Fatal("a tampered bundle was accepted")
	}
	if _, err := VerifyBundle(bundle, []byte("no signature"), roots); err == nil {
		t.Fatal("a bundle without a signature was accepted")
	}

	now := time.Now()
	if _, err := VerifyCRL(trusted.crl(t), []*x509.Certificate{trusted.cert}, roots, now); err != nil {
		t.Fatalf("a CRL of the trusted CA: %v", err)
	}
	if _, err := VerifyCRL(stranger.crl(t), []*x509.Certificate{trusted.cert, stranger.cert}, roots, now); err == nil {
		t.Fatal("a CRL signed by an unknown CA was accepted")
	}
	if _, err := VerifyCRL(trusted.crl(t), []*x509.Certificate{trusted.cert}, roots, now.Add(2*time.Hour)); err == nil {
		t.Fatal("a CRL past its nextUpdate was accepted")
	}
}

// A hub server certificate its CA's CRL lists is refused at the handshake.
func TestServerCertificateCheckedAgainstCRL(t *testing.T) {
	ca := newTestCA(t, "issuing")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(0xbeef),
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	a := &Agent{}
	a.trusted.Store(&trustState{})
	cs := tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}
	if err := a.serverRevoked(cs); err != nil {
		t.Fatalf("an unlisted server certificate: %v", err)
	}
	a.trusted.Store(&trustState{revoked: map[string]map[string]bool{hex.EncodeToString(ca.cert.SubjectKeyId): {"beef": true}}})
	if err := a.serverRevoked(cs); err == nil {
		t.Fatal("a revoked server certificate was accepted")
	}
}
