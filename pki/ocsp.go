package pki

import (
	"bytes"
	"context"
	"crypto"
	"sync"
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
	ca := s.a.cur.Load().issuerOf(req)
	if ca == nil {
		return ocsp.UnauthorizedErrorResponse, nil
	}
	now := s.now()
	serial := serialHex(req.SerialNumber)
	if der := s.ocspCache.get(serial, req.HashAlgorithm, ca.ID, now); der != nil {
		return der, nil
	}
	tmpl := ocsp.Response{
		SerialNumber: req.SerialNumber,
		ThisUpdate:   now.Add(-time.Minute),
		NextUpdate:   now.Add(OCSPValidity),
		IssuerHash:   req.HashAlgorithm,
	}
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
		case issuerID(c.CertPEM) != ca.ID:
			tmpl.Status = ocsp.Unknown // issued by another of the hub's CAs
		case c.RevokedAt != nil:
			tmpl.Status, tmpl.RevokedAt, tmpl.RevocationReason = ocsp.Revoked, *c.RevokedAt, reasonCodes[c.Reason]
		default:
			tmpl.Status = ocsp.Good
		}
	}
	der, err := ocsp.CreateResponse(ca.cert, ca.cert, tmpl, ca.key)
	if err == nil && tmpl.Status != ocsp.Unknown {
		s.ocspCache.put(serial, req.HashAlgorithm, ca.ID, der, tmpl.NextUpdate)
		if tmpl.Status == ocsp.Good && s.IsRevoked(serial) {
			s.ocspCache.drop(serial) // revoked while this answer was signed
		}
	}
	return der, err
}

// maxOCSPCached caps the OCSP cache; when full it starts over.
const maxOCSPCached = 50000

// ocspCache keeps signed OCSP responses per serial (and CertID hash) until
// their nextUpdate, so a flood of requests about the same certificates
// costs no signatures (F10). A revocation drops the serial's entries.
type ocspCache struct {
	mu sync.Mutex
	m  map[string]map[crypto.Hash]cachedOCSP
}

type cachedOCSP struct {
	ca         string // id of the issuing CA the response is about
	der        []byte
	nextUpdate time.Time
}

func (c *ocspCache) get(serial string, h crypto.Hash, ca string, now time.Time) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[serial][h]
	if !ok || e.ca != ca || !now.Before(e.nextUpdate) {
		return nil
	}
	return e.der
}

func (c *ocspCache) put(serial string, h crypto.Hash, ca string, der []byte, nextUpdate time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxOCSPCached {
		c.m = map[string]map[crypto.Hash]cachedOCSP{}
	}
	if c.m[serial] == nil {
		c.m[serial] = map[crypto.Hash]cachedOCSP{}
	}
	c.m[serial][h] = cachedOCSP{ca, der, nextUpdate}
}

// drop forgets the responses about serial.
func (c *ocspCache) drop(serial string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, serial)
}

// issuerOf returns the issuing CA, not retired, an OCSP request's CertID
// names, or nil.
func (t *trust) issuerOf(req *ocsp.Request) *caGen {
	if !req.HashAlgorithm.Available() {
		return nil
	}
	for _, ca := range t.issuingCAs() {
		h := req.HashAlgorithm.New()
		h.Write(ca.cert.RawSubject)
		if !bytes.Equal(h.Sum(nil), req.IssuerNameHash) {
			continue
		}
		h.Reset()
		h.Write(ca.keyBits)
		if bytes.Equal(h.Sum(nil), req.IssuerKeyHash) {
			return ca
		}
	}
	return nil
}
