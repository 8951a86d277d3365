package pki

import (
	"crypto/x509"
	"errors"
	"time"

	"github.com/iothub/iothub"
)

var clientAuth = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}

// AuthorizeClient decides from memory whether the client chain peer (leaf
// first) may log in device deviceKey of p at now. A hub-issued leaf must
// chain to the issuing CA, be unrevoked and carry exactly the SAN URI
// iothub://{productKey}/{deviceKey}; a leaf of a verified external CA of p
// must name the device in its CN or a DNS or URI SAN. Either must be within
// its validity and allow client authentication. It returns the leaf's
// serial in lower-case hex, also with a refusal (for the audit log); the
// refusal is EUNAUTHORIZED with the reason as its message.
func (s *Service) AuthorizeClient(p *iothub.Product, deviceKey string, peer []*x509.Certificate, now time.Time) (string, error) {
	if len(peer) == 0 || peer[0] == nil {
		return "", refuse("no client certificate")
	}
	leaf := peer[0]
	serial := serialHex(leaf.SerialNumber)
	if p == nil {
		return serial, refuse("unknown product")
	}
	if now.Before(leaf.NotBefore) {
		return serial, refuse("certificate not yet valid")
	}
	if now.After(leaf.NotAfter) {
		return serial, refuse("certificate expired")
	}

	var chainErr error
	if ca := s.a.cur.Load().trustedIssuer(leaf); ca != nil {
		// The issuing CA was checked against its root when it was made:
		// one signature check stands for x509's chain building here.
		chainErr = checkIssued(ca.cert, leaf, now)
		if chainErr == nil {
			if s.IsRevoked(serial) {
				return serial, refuse("certificate revoked")
			}
			want := deviceURI(p.ProductKey, deviceKey).String()
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
				return serial, refuse("certificate names another device")
			}
			return serial, nil
		}
	}

	s.mu.RLock()
	pool := s.external[p.ProductKey]
	revoked := s.extRevoked[p.ProductKey]
	s.mu.RUnlock()
	if pool != nil {
		var inter *x509.CertPool
		if len(peer) > 1 {
			inter = x509.NewCertPool()
			for _, c := range peer[1:] {
				if c != nil {
					inter.AddCert(c)
				}
			}
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now, KeyUsages: clientAuth})
		if err == nil {
			if _, ok := revoked[externalLeafKey(leaf)]; ok {
				return serial, refuse("certificate revoked")
			}
			if !namesDevice(leaf, deviceKey) {
				return serial, refuse("certificate names another device")
			}
			return serial, nil
		}
		if chainErr == nil {
			chainErr = err
		}
	}
	return serial, refuse(chainFailure(chainErr))
}

// checkIssued checks that issuing CA ca signed leaf, that both are valid
// at now and that leaf allows client authentication. Errors have the types
// x509.Certificate.Verify would return.
func checkIssued(ca, leaf *x509.Certificate, now time.Time) error {
	if err := leaf.CheckSignatureFrom(ca); err != nil {
		return x509.UnknownAuthorityError{Cert: leaf}
	}
	if now.Before(ca.NotBefore) || now.After(ca.NotAfter) {
		return x509.CertificateInvalidError{Cert: ca, Reason: x509.Expired}
	}
	if len(leaf.UnhandledCriticalExtensions) > 0 {
		return x509.CertificateInvalidError{Cert: leaf, Reason: x509.NotAuthorizedToSign, Detail: "unhandled critical extension"}
	}
	for _, u := range leaf.ExtKeyUsage {
		if u == x509.ExtKeyUsageClientAuth || u == x509.ExtKeyUsageAny {
			return nil
		}
	}
	if len(leaf.ExtKeyUsage) == 0 && len(leaf.UnknownExtKeyUsage) == 0 {
		return nil
	}
	return x509.CertificateInvalidError{Cert: leaf, Reason: x509.IncompatibleUsage}
}

// namesDevice reports whether an external CA's leaf names deviceKey in its
// subject CN or a DNS or URI SAN.
func namesDevice(leaf *x509.Certificate, deviceKey string) bool {
	if deviceKey == "" {
		return false
	}
	if leaf.Subject.CommonName == deviceKey {
		return true
	}
	for _, n := range leaf.DNSNames {
		if n == deviceKey {
			return true
		}
	}
	for _, u := range leaf.URIs {
		if u.String() == deviceKey {
			return true
		}
	}
	return false
}

// chainFailure names why a chain did not verify.
func chainFailure(err error) string {
	var ci x509.CertificateInvalidError
	if errors.As(err, &ci) {
		switch ci.Reason {
		case x509.IncompatibleUsage:
			return "certificate not valid for client authentication"
		case x509.Expired:
			return "issuer certificate expired"
		default:
			return "certificate chain invalid"
		}
	}
	return "unknown issuer"
}

func refuse(reason string) error { return iothub.Errorf(iothub.EUNAUTHORIZED, "%s", reason) }
