package pki

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/iothub/iothub"
)

// TestAuthorizeClientRefusals: each reason a client certificate is refused
// is told apart.
func TestAuthorizeClientRefusals(t *testing.T) {
	e := newEnv(t)
	other := e.product(t, "prodB")
	d := e.device(t, e.p, "dev1")
	now := time.Now()
	c, err := e.svc.Enroll(ctx, e.p, d, goCSR(t, p256Key(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf := parsePEMCert(t, c.CertPEM)
	if serial, err := e.svc.AuthorizeClient(e.p, "dev1", []*x509.Certificate{leaf}, now); err != nil || serial != c.Serial {
		t.Fatalf("good certificate: %q, %v", serial, err)
	}

	_, err = e.svc.AuthorizeClient(e.p, "dev1", nil, now)
	wantRefusal(t, err, "no client certificate")
	_, err = e.svc.AuthorizeClient(e.p, "dev2", []*x509.Certificate{leaf}, now)
	wantRefusal(t, err, "certificate names another device")
	_, err = e.svc.AuthorizeClient(other, "dev1", []*x509.Certificate{leaf}, now)
	wantRefusal(t, err, "certificate names another device")
	_, err = e.svc.AuthorizeClient(e.p, "dev1", []*x509.Certificate{leaf}, leaf.NotAfter.Add(time.Second))
	wantRefusal(t, err, "certificate expired")
	_, err = e.svc.AuthorizeClient(e.p, "dev1", []*x509.Certificate{leaf}, leaf.NotBefore.Add(-time.Second))
	wantRefusal(t, err, "certificate not yet valid")

	// Issued by the CA with a validity that is over.
	csr, err := ParseCSR(goCSR(t, p256Key(t)))
	if err != nil {
		t.Fatal(err)
	}
	expired, err := shared.issueDevice(csr, e.p.ProductKey, "dev1", now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.AuthorizeClient(e.p, "dev1", []*x509.Certificate{expired}, now)
	wantRefusal(t, err, "certificate expired")

	// A foreign CA's certificate naming the device the hub's way.
	foreignCA, foreignKey := selfSignedCA(t, "Foreign CA")
	tmpl := &x509.Certificate{
		SerialNumber: leaf.SerialNumber,
		Subject:      pkix.Name{CommonName: "dev1", Organization: []string{e.p.ProductKey}},
		NotBefore:    now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		URIs:        leaf.URIs,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
	}
	foreign := mustCert(t, tmpl, foreignCA, csr.PublicKey, foreignKey)
	_, err = e.svc.AuthorizeClient(e.p, "dev1", []*x509.Certificate{foreign}, now)
	wantRefusal(t, err, "unknown issuer")
	// A forgery claiming the hub's issuing CA as issuer.
	fakeIssuer := *foreignCA
	fakeIssuer.RawSubject = shared.IssuingCA().RawSubject
	fakeIssuer.Subject = shared.IssuingCA().Subject
	forged := mustCert(t, tmpl, &fakeIssuer, csr.PublicKey, foreignKey)
	_, err = e.svc.AuthorizeClient(e.p, "dev1", []*x509.Certificate{forged, &fakeIssuer}, now)
	wantRefusal(t, err, "unknown issuer")

	// The hub's own server certificate is not a client certificate.
	_, err = e.svc.AuthorizeClient(e.p, "dev1", []*x509.Certificate{shared.ServerCertificates()[1].Leaf}, now)
	wantRefusal(t, err, "certificate not valid for client authentication")

	if _, err := e.svc.Revoke(ctx, c.Serial, "unspecified"); err != nil {
		t.Fatal(err)
	}
	serial, err := e.svc.AuthorizeClient(e.p, "dev1", []*x509.Certificate{leaf}, now)
	wantRefusal(t, err, "certificate revoked")
	if serial != c.Serial {
		t.Fatalf("refusal names serial %q, want %q", serial, c.Serial)
	}
	wantCode(t, err, iothub.EUNAUTHORIZED)
}

func selfSignedCA(t *testing.T, cn string) (*x509.Certificate, any) {
	t.Helper()
	k := p256Key(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign,
	}
	return mustCert(t, tmpl, tmpl, k.Public(), k), k
}

func mustCert(t *testing.T, tmpl, parent *x509.Certificate, pub, priv any) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
