package edge

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
)

// NewCSR makes a PEM certificate signing request for the device, signed by
// key (SHA256WithRSA or ECDSAWithSHA256). Its subject names the device:
// CN = deviceKey, O = productKey.
func NewCSR(key crypto.Signer, productKey, deviceKey string) (string, error) {
	var alg x509.SignatureAlgorithm
	switch pub := key.Public().(type) {
	case *rsa.PublicKey:
		if pub.N.BitLen() < 2048 {
			return "", fmt.Errorf("edge: RSA key of %d bits: the hub needs 2048 or more", pub.N.BitLen())
		}
		alg = x509.SHA256WithRSA
	case *ecdsa.PublicKey:
		alg = x509.ECDSAWithSHA256
	default:
		return "", fmt.Errorf("edge: key of type %T cannot make a CSR", pub)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: deviceKey, Organization: []string{productKey}},
		SignatureAlgorithm: alg,
	}, key)
	if err != nil {
		return "", fmt.Errorf("edge: create CSR: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}
