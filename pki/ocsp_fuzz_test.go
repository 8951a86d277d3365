package pki

import (
	"bytes"
	"crypto"
	"testing"

	"golang.org/x/crypto/ocsp"

	"github.com/iothub/iothub"
)

// FuzzOCSP feeds arbitrary bytes to the OCSP responder, as any client can
// POST them to /ocsp: no input panics; a malformed request is EINVALID; any
// other answer is the "unauthorized" response or a response signed by the
// issuing CA about the serial asked for.
func FuzzOCSP(f *testing.F) {
	e := newEnv(f)
	c, err := e.svc.Enroll(ctx, e.p, e.device(f, e.p, "dev1"), goCSR(f, p256Key(f)), 0)
	if err != nil {
		f.Fatal(err)
	}
	revoked, err := e.svc.Enroll(ctx, e.p, e.device(f, e.p, "dev2"), goCSR(f, p256Key(f)), 0)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := e.svc.Revoke(ctx, revoked.Serial, "keyCompromise"); err != nil {
		f.Fatal(err)
	}
	for _, tc := range []struct {
		cert *string
		h    crypto.Hash
	}{{&c.CertPEM, crypto.SHA1}, {&c.CertPEM, crypto.SHA256}, {&revoked.CertPEM, crypto.SHA1}} {
		req, err := ocsp.CreateRequest(parsePEMCert(f, *tc.cert), shared.IssuingCA(), &ocsp.RequestOptions{Hash: tc.h})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(req)
	}
	// About the issuing CA itself, as issued by the root: another issuer.
	other, err := ocsp.CreateRequest(shared.IssuingCA(), shared.Root(), nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(other)
	f.Add([]byte{})
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	svc := e.svc
	f.Fuzz(func(t *testing.T, b []byte) {
		resp, err := svc.OCSP(b)
		if err != nil {
			if iothub.ErrorCode(err) != iothub.EINVALID {
				t.Fatalf("error %v for %x", err, b)
			}
			return
		}
		if bytes.Equal(resp, ocsp.UnauthorizedErrorResponse) {
			return
		}
		req, err := ocsp.ParseRequest(b)
		if err != nil {
			t.Fatalf("answered a request that does not parse: %x", b)
		}
		r, err := ocsp.ParseResponse(resp, shared.IssuingCA())
		if err != nil {
			t.Fatalf("response to %x does not verify: %v", b, err)
		}
		if r.SerialNumber.Cmp(req.SerialNumber) != 0 {
			t.Fatalf("response about serial %v, request about %v", r.SerialNumber, req.SerialNumber)
		}
		switch r.Status {
		case ocsp.Good, ocsp.Revoked, ocsp.Unknown:
		default:
			t.Fatalf("status %d", r.Status)
		}
	})
}
