package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/iothub/iothub"
)

// TestParseCSRAccepts: the accepted shapes, including RSA-PSS signatures
// and surrounding whitespace.
func TestParseCSRAccepts(t *testing.T) {
	k := rsaKey(t, 0)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "x"}, SignatureAlgorithm: x509.SHA384WithRSAPSS,
	}, k)
	if err != nil {
		t.Fatal(err)
	}
	pss := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	for name, text := range map[string]string{
		"rsa":        goCSR(t, k),
		"rsa-pss":    pss,
		"p256":       goCSR(t, p256Key(t)),
		"whitespace": "\n\n  " + goCSR(t, p256Key(t)) + "\r\n\n",
	} {
		if _, err := ParseCSR(text); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	// P-384 made by Go, refused with a clear message.
	k384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ParseCSR(goCSR(t, k384))
	wantCode(t, err, iothub.EINVALID)
	if !strings.Contains(iothub.ErrorMessage(err), "P-384") {
		t.Fatalf("message %q", iothub.ErrorMessage(err))
	}
	// Encrypted-style PEM headers are refused.
	block, _ := pem.Decode([]byte(goCSR(t, p256Key(t))))
	block.Headers = map[string]string{"Proc-Type": "4,ENCRYPTED"}
	_, err = ParseCSR(string(pem.EncodeToMemory(block)))
	wantCode(t, err, iothub.EINVALID)
}

// FuzzParseCSR: no input panics, and whatever is accepted meets the policy.
func FuzzParseCSR(f *testing.F) {
	f.Add(goCSR(f, p256Key(f)))
	f.Add(goCSR(f, rsaKey(f, 0)))
	f.Add("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n")
	f.Add("garbage")
	f.Add("")
	f.Fuzz(func(t *testing.T, text string) {
		csr, err := ParseCSR(text)
		if err != nil {
			if iothub.ErrorCode(err) != iothub.EINVALID {
				t.Fatalf("error code %q: %v", iothub.ErrorCode(err), err)
			}
			return
		}
		if len(text) > MaxPEMSize {
			t.Fatal("accepted an oversize input")
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a bad signature: %v", err)
		}
		switch k := csr.PublicKey.(type) {
		case *rsa.PublicKey:
			if k.N.BitLen() < 2048 {
				t.Fatalf("accepted RSA-%d", k.N.BitLen())
			}
		case *ecdsa.PublicKey:
			if k.Curve != elliptic.P256() {
				t.Fatalf("accepted %s", k.Curve.Params().Name)
			}
		default:
			t.Fatalf("accepted a %T key", k)
		}
	})
}
