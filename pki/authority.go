// Package pki is the hub's certificate authority and certificate service:
// a root CA and an issuing CA kept as files, device certificates issued
// from CSRs and bound to one device each, revocation with a CRL and an OCSP
// responder, and customer CAs trusted after proof of possession.
package pki

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iothub/iothub"
)

// Key sizes and lifetimes of the CA hierarchy. The root is RSA-3072: it
// gives the long-lived anchor 128-bit strength and is generated in about
// 0.3 s here (RSA-4096 takes up to 1.6 s and its tail is long on a busy
// 2-core machine), while the chain's strength is bounded by the RSA-2048
// issuing CA anyway.
const (
	rootKeyBits    = 3072
	issuingKeyBits = 2048
	serverKeyBits  = 2048

	rootYears    = 20
	issuingYears = 10
	serverDays   = 365
	// serverRenewBefore: server certificates are re-issued at open when
	// they expire sooner than this.
	serverRenewBefore = 30 * 24 * time.Hour
)

// Files in the CA directory.
const (
	rootKeyFile      = "root.key"
	rootCertFile     = "root.pem"
	issuingKeyFile   = "issuing.key"
	issuingCertFile  = "issuing.pem"
	serverRSAKey     = "server-rsa.key"
	serverRSACert    = "server-rsa.pem"
	serverECDSAKey   = "server-ecdsa.key"
	serverECDSACert  = "server-ecdsa.pem"
	crlNumberFile    = "crlnumber"
	pemTypeKey       = "PRIVATE KEY"
	pemTypeCert      = "CERTIFICATE"
	defaultHostnames = "localhost,127.0.0.1,::1"
)

// AuthorityOptions configure OpenAuthority.
type AuthorityOptions struct {
	// Hostnames are the DNS names and IP addresses the hub's TLS server
	// certificates name (default localhost, 127.0.0.1, ::1).
	Hostnames []string
	// PublicURL is the hub's public HTTP base, e.g. https://hub.example:8443.
	// Device certificates point their CRL, CA issuers and OCSP URLs at it;
	// empty leaves those extensions out.
	PublicURL string
	// Shared, when set, is the cluster's copy of the CA directory: the CAs
	// are taken from it at open and after a change on another node
	// (Reload), and every rotation and retirement is written to it.
	Shared iothub.CAFileStore
}

// Authority is the hub's certificate authority: generations of root and
// issuing CAs (one of each active, older ones trusted until retired) and
// the hub's own TLS server certificates, all kept as PEM files in one
// directory. Readers see one consistent snapshot (trust) without a lock.
type Authority struct {
	dir       string
	publicURL string
	names     hostnames
	shared    iothub.CAFileStore // nil: the directory is this node's alone

	mu  sync.Mutex // rotation, retirement, server renewal and reload
	cur atomic.Pointer[trust]

	crlMu     sync.Mutex
	crlNumber *big.Int
}

// OpenAuthority opens the CA kept in dir, creating it on first use: a root
// CA, an issuing CA and two TLS server certificates (RSA-2048 and ECDSA
// P-256) for opts.Hostnames, issued from CSRs through the same path as
// device certificates. A later open reuses the keys and re-issues the
// server certificates only when the hostnames changed or they near expiry.
// Key files with group or other permission bits are refused.
func OpenAuthority(dir string, opts AuthorityOptions) (*Authority, error) {
	pub, err := normalizePublicURL(opts.PublicURL)
	if err != nil {
		return nil, err
	}
	hosts := opts.Hostnames
	if len(hosts) == 0 {
		hosts = strings.Split(defaultHostnames, ",")
	}
	names, err := parseHostnames(hosts)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: create CA dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: restrict CA dir: %w", err)
	}
	a := &Authority{dir: dir, publicURL: pub, names: names, shared: opts.Shared}
	if err := a.pull(); err != nil {
		return nil, err
	}
	now := time.Now()

	rootKey, root, err := a.loadOrCreateRoot(now)
	if err != nil {
		return nil, err
	}
	issuingKey, issuing, err := a.loadOrCreateIssuing(rootKey, root, now)
	if err != nil {
		return nil, err
	}
	if a.crlNumber, err = a.readCRLNumber(); err != nil {
		return nil, err
	}
	gens, err := a.loadGenerations(&caGen{ID: keyID(root), Kind: KindRoot, Status: StatusActive, KeyFile: rootKeyFile, CertFile: rootCertFile, cert: root, key: rootKey},
		&caGen{ID: keyID(issuing), Kind: KindIssuing, Status: StatusActive, Parent: keyID(root), KeyFile: issuingKeyFile, CertFile: issuingCertFile, cert: issuing, key: issuingKey})
	if err != nil {
		return nil, err
	}
	t, err := a.build(gens, now, false)
	if err != nil {
		return nil, err
	}
	if err := a.push(sharedNames(gens)...); err != nil {
		return nil, err
	}
	a.cur.Store(t)
	return a, nil
}

// ServerCertificates returns the hub's current TLS server certificates,
// RSA first, each with its chain (leaf, active issuing CA, and the cross
// certificate of the active root when it has one).
func (a *Authority) ServerCertificates() []tls.Certificate { return slices.Clone(a.cur.Load().server) }

// ChainPEM is the active chain: the active issuing CA then its root, PEM.
func (a *Authority) ChainPEM() []byte { return bytes.Clone(a.cur.Load().chainPEM) }

// IssuingCA is the active CA: it signs new device and server certificates.
func (a *Authority) IssuingCA() *x509.Certificate { return a.cur.Load().issuing.cert }

// Root is the active self-signed root CA.
func (a *Authority) Root() *x509.Certificate { return a.cur.Load().root.cert }

// Roots returns a pool of every root CA not retired, for verifying hub-issued chains.
func (a *Authority) Roots() *x509.CertPool { return a.cur.Load().roots.Clone() }

// PublicURL is the public HTTP base device certificates point at ("" if none).
func (a *Authority) PublicURL() string { return a.publicURL }

// profile is what an issued certificate says beyond the CSR's public key.
type profile struct {
	subject   pkix.Name
	dnsNames  []string
	ips       []net.IP
	uris      []*url.URL
	extUsage  []x509.ExtKeyUsage
	notBefore time.Time
	notAfter  time.Time
	// withURLs adds the CRL distribution point and AIA URLs.
	withURLs bool
}

// issue signs a certificate for the public key of an already checked CSR.
// Device and server certificates both go through it.
func (a *Authority) issue(ca *caGen, csr *x509.CertificateRequest, p profile) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := csr.PublicKey.(*rsa.PublicKey); ok {
		usage |= x509.KeyUsageKeyEncipherment
	}
	notAfter := p.notAfter
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               p.subject,
		NotBefore:             p.notBefore,
		NotAfter:              notAfter,
		KeyUsage:              usage,
		ExtKeyUsage:           p.extUsage,
		BasicConstraintsValid: true,
		DNSNames:              p.dnsNames,
		IPAddresses:           p.ips,
		URIs:                  p.uris,
	}
	if p.withURLs && a.publicURL != "" {
		tmpl.CRLDistributionPoints = []string{a.publicURL + "/crl/" + ca.ID}
		tmpl.IssuingCertificateURL = []string{a.publicURL + "/ca/" + ca.ID + ".pem"}
		tmpl.OCSPServer = []string{a.publicURL + "/ocsp"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, csr.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("pki: sign certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// deviceURI is the SAN URI naming device dk of product pk.
func deviceURI(pk, dk string) *url.URL {
	return &url.URL{Scheme: "iothub", Host: pk, Path: "/" + dk}
}

// issueDevice issues a client certificate for device dk of product pk.
func (a *Authority) issueDevice(csr *x509.CertificateRequest, pk, dk string, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	return a.issue(a.cur.Load().issuing, csr, profile{
		subject:   pkix.Name{CommonName: dk, Organization: []string{pk}},
		uris:      []*url.URL{deviceURI(pk, dk)},
		extUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		notBefore: notBefore,
		notAfter:  notAfter,
		withURLs:  true,
	})
}

func (a *Authority) loadOrCreateRoot(now time.Time) (crypto.Signer, *x509.Certificate, error) {
	key, cert, err := a.loadPair(rootKeyFile, rootCertFile)
	if err == nil {
		if !cert.IsCA || cert.CheckSignatureFrom(cert) != nil {
			return nil, nil, fmt.Errorf("pki: %s is not a self-signed CA certificate", a.path(rootCertFile))
		}
		return key, cert, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, err
	}
	if _, err := os.Stat(a.path(issuingCertFile)); err == nil {
		return nil, nil, fmt.Errorf("pki: %s exists without a root CA; restore %s and %s or move the CA files away",
			a.path(issuingCertFile), rootKeyFile, rootCertFile)
	}
	k, cert, err := newRoot(now)
	if err != nil {
		return nil, nil, err
	}
	if err := a.savePair(rootKeyFile, rootCertFile, k, cert.Raw); err != nil {
		return nil, nil, err
	}
	return k, cert, nil
}

// newRoot generates a self-signed root CA.
func newRoot(now time.Time) (crypto.Signer, *x509.Certificate, error) {
	k, err := rsa.GenerateKey(rand.Reader, rootKeyBits)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: generate root key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "iothub Root CA " + shortID(), Organization: []string{"iothub"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(rootYears, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: sign root CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return k, cert, nil
}

func (a *Authority) loadOrCreateIssuing(rootKey crypto.Signer, root *x509.Certificate, now time.Time) (crypto.Signer, *x509.Certificate, error) {
	key, cert, err := a.loadPair(issuingKeyFile, issuingCertFile)
	if err == nil {
		if !cert.IsCA || cert.CheckSignatureFrom(root) != nil {
			return nil, nil, fmt.Errorf("pki: %s is not a CA certificate signed by %s", a.path(issuingCertFile), rootCertFile)
		}
		return key, cert, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, err
	}
	k, cert, err := newIssuing(rootKey, root, now)
	if err != nil {
		return nil, nil, err
	}
	return k, cert, a.savePair(issuingKeyFile, issuingCertFile, k, cert.Raw)
}

// newIssuing generates an issuing CA signed by root.
func newIssuing(rootKey crypto.Signer, root *x509.Certificate, now time.Time) (crypto.Signer, *x509.Certificate, error) {
	k, err := rsa.GenerateKey(rand.Reader, issuingKeyBits)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: generate issuing key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	notAfter := now.AddDate(issuingYears, 0, 0)
	if notAfter.After(root.NotAfter) {
		notAfter = root.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "iothub Issuing CA " + shortID(), Organization: []string{"iothub"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, &k.PublicKey, rootKey)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: sign issuing CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return k, cert, nil
}

// loadOrIssueServer returns the server certificate kept in keyFile and
// certFile, issuing a new one from a fresh key and CSR when it is missing,
// names other hosts, is not signed by the issuing CA or nears expiry.
func (a *Authority) loadOrIssueServer(ca *caGen, chain [][]byte, keyFile, certFile string, gen func() (crypto.Signer, error), names hostnames, now time.Time) (tls.Certificate, error) {
	key, cert, err := a.loadPair(keyFile, certFile)
	switch {
	case err == nil:
		if cert.CheckSignatureFrom(ca.cert) == nil && names.equal(cert) && cert.NotAfter.Sub(now) > serverRenewBefore {
			return tlsCert(key, cert, chain), nil
		}
	case !errors.Is(err, fs.ErrNotExist):
		return tls.Certificate{}, err
	}
	key, err = gen()
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: generate server key: %w", err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: names.first},
	}, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: server CSR: %w", err)
	}
	csr, err := ParseCSR(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})))
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err = a.issue(ca, csr, profile{
		subject:   pkix.Name{CommonName: names.first, Organization: []string{"iothub"}},
		dnsNames:  names.dns,
		ips:       names.ips,
		extUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		notBefore: now.Add(-time.Minute),
		notAfter:  now.AddDate(0, 0, serverDays),
	})
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := a.savePair(keyFile, certFile, key, cert.Raw); err != nil {
		return tls.Certificate{}, err
	}
	return tlsCert(key, cert, chain), nil
}

// tlsCert is leaf and key with chain (the CA certificates above leaf) for a TLS listener.
func tlsCert(key crypto.Signer, leaf *x509.Certificate, chain [][]byte) tls.Certificate {
	return tls.Certificate{
		Certificate: append([][]byte{leaf.Raw}, chain...),
		PrivateKey:  key,
		Leaf:        leaf,
	}
}

func (a *Authority) path(name string) string { return filepath.Join(a.dir, name) }

// loadPair reads a private key and its certificate. It returns an error
// wrapping fs.ErrNotExist when the certificate file is absent (a key
// without its certificate is a creation that did not finish).
func (a *Authority) loadPair(keyFile, certFile string) (crypto.Signer, *x509.Certificate, error) {
	certPEM, err := os.ReadFile(a.path(certFile))
	if err != nil {
		return nil, nil, fmt.Errorf("pki: read %s: %w", certFile, err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != pemTypeCert {
		return nil, nil, fmt.Errorf("pki: %s holds no PEM certificate", a.path(certFile))
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: parse %s: %w", a.path(certFile), err)
	}
	kp := a.path(keyFile)
	fi, err := os.Lstat(kp)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("pki: %s exists without its key %s", a.path(certFile), kp)
		}
		return nil, nil, fmt.Errorf("pki: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("pki: key %s is not a regular file", kp)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, nil, fmt.Errorf("pki: key %s is accessible by group or others (mode %04o); chmod 600 it", kp, fi.Mode().Perm())
	}
	keyPEM, err := os.ReadFile(kp)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != pemTypeKey {
		return nil, nil, fmt.Errorf("pki: %s holds no PKCS#8 PEM private key", kp)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: parse %s: %w", kp, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("pki: %s holds an unsupported key", kp)
	}
	if pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("pki: %s does not match %s", kp, a.path(certFile))
	}
	return signer, cert, nil
}

// savePair writes the key (mode 0600) before the certificate, each
// atomically, so a crash never leaves a certificate without its key.
func (a *Authority) savePair(keyFile, certFile string, key crypto.Signer, certDER []byte) error {
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("pki: encode key: %w", err)
	}
	if err := writeFileAtomic(a.path(keyFile), pem.EncodeToMemory(&pem.Block{Type: pemTypeKey, Bytes: kd}), 0o600); err != nil {
		return err
	}
	return writeFileAtomic(a.path(certFile), pemCert(certDER), 0o644)
}

// readCRLNumber returns the last CRL number issued, 0 if none.
func (a *Authority) readCRLNumber() (*big.Int, error) {
	b, err := os.ReadFile(a.path(crlNumberFile))
	if errors.Is(err, fs.ErrNotExist) {
		return new(big.Int), nil
	}
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	n, ok := new(big.Int).SetString(strings.TrimSpace(string(b)), 10)
	if !ok || n.Sign() < 0 {
		return nil, fmt.Errorf("pki: %s does not hold a CRL number", a.path(crlNumberFile))
	}
	return n, nil
}

// signCRL signs a CRL of issuing CA ca listing entries. Its number is one
// more than the last, written to disk before signing so that a number is
// never used twice, even across restarts.
func (a *Authority) signCRL(ca *caGen, entries []x509.RevocationListEntry, thisUpdate, nextUpdate time.Time) ([]byte, error) {
	a.crlMu.Lock()
	defer a.crlMu.Unlock()
	n := new(big.Int).Add(a.crlNumber, big.NewInt(1))
	if err := writeFileAtomic(a.path(crlNumberFile), []byte(n.String()+"\n"), 0o600); err != nil {
		return nil, err
	}
	a.crlNumber = n
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    n,
		ThisUpdate:                thisUpdate,
		NextUpdate:                nextUpdate,
		RevokedCertificateEntries: entries,
	}, ca.cert, ca.key)
	if err != nil {
		return nil, fmt.Errorf("pki: sign CRL: %w", err)
	}
	return der, nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	tmp := f.Name()
	err = f.Chmod(mode)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	return nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemTypeCert, Bytes: der})
}

// maxSerial bounds serial numbers to 128 bits.
var maxSerial = new(big.Int).Lsh(big.NewInt(1), 128)

// randomSerial returns a random positive serial of at most 128 bits.
func randomSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, maxSerial)
		if err != nil {
			return nil, fmt.Errorf("pki: serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// serialHex formats a serial the way the hub names certificates: lower-case
// hex without separators or leading zeros.
func serialHex(n *big.Int) string { return n.Text(16) }

// shortID names a CA generation so two hubs' CAs never share a subject.
func shortID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// spkiHash is the hex SHA-256 of a DER SubjectPublicKeyInfo: the key a
// certificate is bound by.
func spkiHash(spki []byte) string {
	h := sha256.Sum256(spki)
	return hex.EncodeToString(h[:])
}

func normalizePublicURL(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("pki: public URL %q must be an absolute http(s) URL without query or credentials", s)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// hostnames are the names a server certificate carries, sorted.
type hostnames struct {
	first string
	dns   []string
	ips   []net.IP
}

func parseHostnames(in []string) (hostnames, error) {
	var h hostnames
	for _, s := range in {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if h.first == "" {
			h.first = s
		}
		if ip := net.ParseIP(s); ip != nil {
			if !slices.ContainsFunc(h.ips, ip.Equal) {
				h.ips = append(h.ips, ip)
			}
			continue
		}
		s = strings.ToLower(s)
		if !validDNSName(s) {
			return hostnames{}, fmt.Errorf("pki: hostname %q is neither a DNS name nor an IP address", s)
		}
		if !slices.Contains(h.dns, s) {
			h.dns = append(h.dns, s)
		}
	}
	if h.first == "" {
		return hostnames{}, errors.New("pki: no hostnames for the server certificate")
	}
	slices.Sort(h.dns)
	slices.SortFunc(h.ips, func(x, y net.IP) int { return bytes.Compare(x.To16(), y.To16()) })
	return h, nil
}

// equal reports whether c names exactly these hosts.
func (h hostnames) equal(c *x509.Certificate) bool {
	dns := slices.Sorted(slices.Values(c.DNSNames))
	if !slices.Equal(dns, h.dns) || len(c.IPAddresses) != len(h.ips) {
		return false
	}
	for _, ip := range c.IPAddresses {
		if !slices.ContainsFunc(h.ips, ip.Equal) {
			return false
		}
	}
	return true
}

func validDNSName(s string) bool {
	if len(s) > 253 {
		return false
	}
	labels := strings.Split(strings.TrimPrefix(s, "*."), ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// reasonCodes maps RFC 5280 CRLReason names to their codes. removeFromCRL
// (8) is left out: it only makes sense in delta CRLs.
var reasonCodes = map[string]int{
	"unspecified":          0,
	"keyCompromise":        1,
	"cACompromise":         2,
	"affiliationChanged":   3,
	"superseded":           4,
	"cessationOfOperation": 5,
	"certificateHold":      6,
	"privilegeWithdrawn":   9,
	"aACompromise":         10,
}
