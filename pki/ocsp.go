package pki

import (
	"bytes"
	"context"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/iothub/iothub"
)

// OCSP answers a DER OCSP request about a certificate of the issuing CA
// with a response signed by the issuing CA: revoked (from memory, or the
// store for a revoked certificate that has expired), good for a
// certificate the hub issued, unknown otherwise. A request about another
// issuer gets the "unauthorized" response; a malformed one is EINVALID.
func (s *Service) OCSP(request []byte) ([]byte, error) {
	req, err := ocsp.ParseRequest(request)
	if err != nil {
		return nil, iothub.Errorf(iothub.EINVALID, "malformed OCSP request")
	}
	if !s.a.isIssuer(req) {
		return ocsp.UnauthorizedErrorResponse, nil
	}
	now := s.now()
	tmpl := ocsp.Response{
		SerialNumber: req.SerialNumber,
		ThisUpdate:   now.Add(-time.Minute),
		NextUpdate:   now.Add(OCSPValidity),
		IssuerHash:   req.HashAlgorithm,
	}
	serial := serialHex(req.SerialNumber)
	e, revoked := (*s.revoked.Load())[serial]
	switch {
	case revoked:
		tmpl.Status, tmpl.RevokedAt, tmpl.RevocationReason = ocsp.Revoked, e.at, e.reason
	case req.SerialNumber.Sign() <= 0:
		tmpl.Status = ocsp.Unknown
	default:
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := s.store.Certificate(ctx, serial)
		cancel()
		switch {
		case iothub.ErrorCode(err) == iothub.ENOTFOUND:
			tmpl.Status = ocsp.Unknown
		case err != nil:
			return nil, err
		case c.RevokedAt != nil:
			tmpl.Status, tmpl.RevokedAt, tmpl.RevocationReason = ocsp.Revoked, *c.RevokedAt, reasonCodes[c.Reason]
		default:
			tmpl.Status = ocsp.Good
		}
	}
	return ocsp.CreateResponse(s.a.issuing, s.a.issuing, tmpl, s.a.issuingKey)
}

// isIssuer reports whether an OCSP request's CertID names the issuing CA.
func (a *Authority) isIssuer(req *ocsp.Request) bool {
	if !req.HashAlgorithm.Available() {
		return false
	}
	h := req.HashAlgorithm.New()
	h.Write(a.issuing.RawSubject)
	if !bytes.Equal(h.Sum(nil), req.IssuerNameHash) {
		return false
	}
	h.Reset()
	h.Write(a.issuingKeyBits)
	return bytes.Equal(h.Sum(nil), req.IssuerKeyHash)
}
