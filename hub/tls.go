package hub

import (
	"crypto/ecdsa"
	"crypto/tls"
	"fmt"
)

// Server key preferences for TLS listeners (Config.ServerKey).
const (
	// ServerKeyClient serves the ECDSA certificate to clients whose most
	// preferred signature scheme is ECDSA, and RSA to the others.
	ServerKeyClient = "client"
	// ServerKeyRSA serves RSA-2048 to every client that accepts it.
	ServerKeyRSA = "rsa"
	// ServerKeyECDSA serves P-256 to every client that accepts it.
	ServerKeyECDSA = "ecdsa"
)

// certificateChooser returns a tls.Config.GetCertificate that picks among
// the hub's RSA and ECDSA certificates by policy. A client that cannot use
// the preferred one gets the other; Go's own choice would always be the
// first certificate the client accepts, whatever the client prefers.
// current is asked at every handshake, so certificates renewed or
// re-issued after a CA rotation are served without a restart.
func certificateChooser(current func() []tls.Certificate, policy string) (func(*tls.ClientHelloInfo) (*tls.Certificate, error), error) {
	switch policy {
	case ServerKeyClient, ServerKeyRSA, ServerKeyECDSA:
	default:
		return nil, fmt.Errorf("hub: server key preference %q is not client, rsa or ecdsa", policy)
	}
	if _, _, err := splitByKey(current()); err != nil {
		return nil, err
	}
	return func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		rsaCert, ecCert, err := splitByKey(current())
		if err != nil {
			return nil, err
		}
		first, second := rsaCert, ecCert
		if policy == ServerKeyECDSA || (policy == ServerKeyClient && prefersECDSA(hello.SignatureSchemes)) {
			first, second = ecCert, rsaCert
		}
		if hello.SupportsCertificate(first) != nil && hello.SupportsCertificate(second) == nil {
			return second, nil
		}
		return first, nil
	}, nil
}

// splitByKey returns the RSA and the ECDSA certificate of certs.
func splitByKey(certs []tls.Certificate) (rsaCert, ecCert *tls.Certificate, err error) {
	for i := range certs {
		if _, ok := certs[i].PrivateKey.(*ecdsa.PrivateKey); ok {
			ecCert = &certs[i]
		} else {
			rsaCert = &certs[i]
		}
	}
	if rsaCert == nil || ecCert == nil {
		return nil, nil, fmt.Errorf("hub: need an RSA and an ECDSA server certificate, have %d certificates", len(certs))
	}
	return rsaCert, ecCert, nil
}

// prefersECDSA reports whether an ECDSA scheme comes before any RSA one in
// the client's list, which is in the client's order of preference.
func prefersECDSA(schemes []tls.SignatureScheme) bool {
	for _, s := range schemes {
		switch s {
		case tls.ECDSAWithP256AndSHA256, tls.ECDSAWithP384AndSHA384, tls.ECDSAWithP521AndSHA512:
			return true
		case tls.PKCS1WithSHA256, tls.PKCS1WithSHA384, tls.PKCS1WithSHA512,
			tls.PSSWithSHA256, tls.PSSWithSHA384, tls.PSSWithSHA512, tls.PKCS1WithSHA1:
			return false
		}
	}
	return false
}
