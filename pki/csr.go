package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"

	"github.com/iothub/iothub"
)

// MaxPEMSize caps a CSR or certificate PEM text accepted from a caller.
const MaxPEMSize = 64 << 10

// Key sizes accepted in a CSR.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// ParseCSR parses and checks a PEM certificate signing request: exactly one
// CERTIFICATE REQUEST block of at most MaxPEMSize bytes, a valid
// self-signature, and an RSA key of at least 2048 bits signed with SHA-256
// or better, or an ECDSA P-256 key. Anything else is an EINVALID error
// saying what is wrong.
func ParseCSR(pemText string) (*x509.CertificateRequest, error) {
	if len(pemText) > MaxPEMSize {
		return nil, iothub.Errorf(iothub.EINVALID, "CSR is larger than %d bytes", MaxPEMSize)
	}
	der, err := onePEMBlock([]byte(pemText), "CERTIFICATE REQUEST", "CSR")
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, iothub.Errorf(iothub.EINVALID, "CSR is not a valid PKCS#10 request")
	}
	switch k := csr.PublicKey.(type) {
	case *rsa.PublicKey:
		bits := k.N.BitLen()
		if bits < minRSABits {
			return nil, iothub.Errorf(iothub.EINVALID, "CSR has an RSA-%d key; RSA keys must have at least %d bits", bits, minRSABits)
		}
		if bits > maxRSABits {
			return nil, iothub.Errorf(iothub.EINVALID, "CSR has an RSA-%d key; RSA keys may have at most %d bits", bits, maxRSABits)
		}
		switch csr.SignatureAlgorithm {
		case x509.SHA256WithRSA, x509.SHA384WithRSA, x509.SHA512WithRSA,
			x509.SHA256WithRSAPSS, x509.SHA384WithRSAPSS, x509.SHA512WithRSAPSS:
		default:
			return nil, iothub.Errorf(iothub.EINVALID, "CSR is signed with %v; RSA CSRs must be signed with SHA-256 or better", csr.SignatureAlgorithm)
		}
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, iothub.Errorf(iothub.EINVALID, "CSR has an ECDSA %s key; only P-256 is accepted", k.Curve.Params().Name)
		}
		switch csr.SignatureAlgorithm {
		case x509.ECDSAWithSHA256, x509.ECDSAWithSHA384, x509.ECDSAWithSHA512:
		default:
			return nil, iothub.Errorf(iothub.EINVALID, "CSR is signed with %v; ECDSA CSRs must be signed with SHA-256 or better", csr.SignatureAlgorithm)
		}
	default:
		return nil, iothub.Errorf(iothub.EINVALID, "CSR has an unsupported key type (%v); use RSA-2048 or more, or ECDSA P-256", csr.PublicKeyAlgorithm)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, iothub.Errorf(iothub.EINVALID, "CSR signature does not verify")
	}
	return csr, nil
}

// onePEMBlock returns the DER of the only PEM block in text, which must be
// of type typ, carry no headers and be surrounded by whitespace only.
func onePEMBlock(text []byte, typ, what string) ([]byte, error) {
	text = bytes.TrimSpace(text)
	block, rest := pem.Decode(text)
	if block == nil {
		return nil, iothub.Errorf(iothub.EINVALID, "%s is not PEM: expected one %q block", what, typ)
	}
	if block.Type != typ {
		return nil, iothub.Errorf(iothub.EINVALID, "%s PEM block is %q; expected %q", what, block.Type, typ)
	}
	if !bytes.HasPrefix(text, []byte("-----BEGIN ")) {
		return nil, iothub.Errorf(iothub.EINVALID, "%s has text before its PEM block", what)
	}
	if len(block.Headers) != 0 {
		return nil, iothub.Errorf(iothub.EINVALID, "%s PEM block has headers (encrypted or annotated); send a plain block", what)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		if next, _ := pem.Decode(rest); next != nil {
			return nil, iothub.Errorf(iothub.EINVALID, "%s has more than one PEM block; send exactly one", what)
		}
		return nil, iothub.Errorf(iothub.EINVALID, "%s has text after its PEM block", what)
	}
	return block.Bytes, nil
}
