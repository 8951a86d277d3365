package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"time"

	"github.com/iothub/iothub"
)

// Kinds and statuses of the hub's CAs (iothub.Authority).
const (
	KindRoot    = "root"
	KindIssuing = "issuing"
	// StatusActive: the CA signs new certificates (one root, one issuing).
	StatusActive = "active"
	// StatusTrusted: no longer signs, but what it signed is still accepted.
	StatusTrusted = "trusted"
	// StatusRetired: what it signed is refused; it left the bundle.
	StatusRetired = "retired"
)

// generationsFile records every CA generation of the directory.
const generationsFile = "authorities.json"

// PEM block type of the bundle signature (GET /ca-bundle.pem.sig).
const bundleSigType = "IOTHUB BUNDLE SIGNATURE"

// caGen is one CA generation as kept in generationsFile, with its
// certificate and key once loaded. A root made by a root rotation, and
// the issuing CA made with it, also have a cross certificate: their
// subject and key, signed by the root before (CrossBy). The issuing CA's
// is what lets a device holding only that older root validate the hub:
// roots allow one CA below them, so root → cross root → issuing is too long.
type caGen struct {
	ID        string     `json:"id"`
	Kind      string     `json:"kind"`
	Status    string     `json:"status"`
	Parent    string     `json:"parent,omitempty"`  // issuing: its root
	CrossBy   string     `json:"crossBy,omitempty"` // the root that signed the cross certificate
	KeyFile   string     `json:"key"`
	CertFile  string     `json:"cert"`
	CrossFile string     `json:"cross,omitempty"`
	RetiredAt *time.Time `json:"retiredAt,omitempty"`

	cert  *x509.Certificate
	key   crypto.Signer
	cross *x509.Certificate
	// keyBits is the SubjectPublicKeyInfo bit string, the input of an
	// OCSP CertID's issuerKeyHash.
	keyBits []byte
}

// trust is one consistent view of the CA generations, replaced whole on
// every change so the TLS and OCSP paths read it without a lock.
type trust struct {
	gens      []*caGen
	issuing   *caGen // the active issuing CA
	root      *caGen // the active root
	roots     *x509.CertPool
	chainPEM  []byte
	bundlePEM []byte
	bundleSig []byte
	server    []tls.Certificate
}

// keyID names a CA by its subject key identifier (hex), which is also the
// authority key identifier of every certificate it signs.
func keyID(c *x509.Certificate) string {
	if len(c.SubjectKeyId) > 0 {
		return hex.EncodeToString(c.SubjectKeyId)
	}
	h := sha1.Sum(publicKeyBits(c))
	return hex.EncodeToString(h[:])
}

func publicKeyBits(c *x509.Certificate) []byte {
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(c.RawSubjectPublicKeyInfo, &spki); err != nil {
		return nil
	}
	return spki.PublicKey.RightAlign()
}

// loadGenerations reads generationsFile, or starts it with the first root
// and issuing CA (a directory from before rotation existed).
func (a *Authority) loadGenerations(root, issuing *caGen) ([]*caGen, error) {
	b, err := os.ReadFile(a.path(generationsFile))
	if errors.Is(err, fs.ErrNotExist) {
		gens := []*caGen{root, issuing}
		return gens, a.saveGenerations(gens)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	var gens []*caGen
	if err := json.Unmarshal(b, &gens); err != nil {
		return nil, fmt.Errorf("pki: %s: %w", a.path(generationsFile), err)
	}
	for _, g := range gens {
		if g.KeyFile == rootKeyFile {
			g.key, g.cert = root.key, root.cert
		} else if g.KeyFile == issuingKeyFile {
			g.key, g.cert = issuing.key, issuing.cert
		} else if g.key, g.cert, err = a.loadPair(g.KeyFile, g.CertFile); err != nil {
			return nil, err
		}
		if keyID(g.cert) != g.ID {
			return nil, fmt.Errorf("pki: %s does not hold CA %s", a.path(g.CertFile), g.ID)
		}
		if g.CrossFile != "" {
			if g.cross, err = a.readCert(g.CrossFile); err != nil {
				return nil, err
			}
		}
	}
	return gens, nil
}

func (a *Authority) saveGenerations(gens []*caGen) error {
	b, err := json.MarshalIndent(gens, "", "  ")
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return writeFileAtomic(a.path(generationsFile), append(b, '\n'), 0o600)
}

func (a *Authority) readCert(file string) (*x509.Certificate, error) {
	b, err := os.ReadFile(a.path(file))
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != pemTypeCert {
		return nil, fmt.Errorf("pki: %s holds no PEM certificate", a.path(file))
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: parse %s: %w", a.path(file), err)
	}
	return c, nil
}

// build checks gens and derives a snapshot from them: pools, the active
// chain, the signed bundle and server certificates of the active issuing
// CA (re-issued when renew is set or they are not current).
func (a *Authority) build(gens []*caGen, now time.Time, renew bool) (*trust, error) {
	t := &trust{gens: gens, roots: x509.NewCertPool()}
	byID := map[string]*caGen{}
	for _, g := range gens {
		byID[g.ID] = g
		g.keyBits = publicKeyBits(g.cert)
		if g.Status == StatusActive {
			switch g.Kind {
			case KindRoot:
				t.root = g
			case KindIssuing:
				t.issuing = g
			}
		}
	}
	if t.root == nil || t.issuing == nil || t.issuing.Parent != t.root.ID {
		return nil, fmt.Errorf("pki: %s names no active root and issuing CA under it", a.path(generationsFile))
	}
	var bundle bytes.Buffer
	for _, g := range gens {
		if g.Status == StatusRetired {
			continue
		}
		if g.Kind == KindRoot {
			t.roots.AddCert(g.cert)
		}
		bundle.Write(pemCert(g.cert.Raw))
		if p := byID[g.CrossBy]; g.cross != nil && p != nil && p.Status != StatusRetired {
			bundle.Write(pemCert(g.cross.Raw))
		}
	}
	t.bundlePEM = bundle.Bytes()
	sig, err := signBundle(t.root, t.bundlePEM)
	if err != nil {
		return nil, err
	}
	t.bundleSig = sig
	t.chainPEM = append(pemCert(t.issuing.cert.Raw), pemCert(t.root.cert.Raw)...)
	// Devices that hold only an older root reach it through the cross certificate.
	chain := [][]byte{t.issuing.cert.Raw}
	if t.issuing.cross != nil {
		chain = append(chain, t.issuing.cross.Raw)
	}
	for _, s := range []struct {
		key, cert string
		gen       func() (crypto.Signer, error)
	}{
		{serverRSAKey, serverRSACert, func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, serverKeyBits) }},
		{serverECDSAKey, serverECDSACert, func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }},
	} {
		if renew {
			os.Remove(a.path(s.cert))
		}
		tc, err := a.loadOrIssueServer(t.issuing, chain, s.key, s.cert, s.gen, a.names, now)
		if err != nil {
			return nil, err
		}
		t.server = append(t.server, tc)
	}
	return t, nil
}

// signBundle signs bundle with root's key (PKCS #1 v1.5, SHA-256) and
// returns the detached signature as PEM followed by root's certificate and
// its cross certificate: an edge that trusts root, or the root that
// cross-signed it, can check it from any channel.
func signBundle(root *caGen, bundle []byte) ([]byte, error) {
	digest := sha256.Sum256(bundle)
	sig, err := root.key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("pki: sign bundle: %w", err)
	}
	out := pem.EncodeToMemory(&pem.Block{Type: bundleSigType, Headers: map[string]string{"Algorithm": x509.SHA256WithRSA.String()}, Bytes: sig})
	out = append(out, pemCert(root.cert.Raw)...)
	if root.cross != nil {
		out = append(out, pemCert(root.cross.Raw)...)
	}
	return out, nil
}

// BundlePEM is every CA a device should trust now: the roots and issuing
// CAs not retired, and the cross certificates between them.
func (a *Authority) BundlePEM() []byte { return bytes.Clone(a.cur.Load().bundlePEM) }

// BundleSignature is the detached signature of BundlePEM (see signBundle).
func (a *Authority) BundleSignature() []byte { return bytes.Clone(a.cur.Load().bundleSig) }

// Authorities lists the hub's CAs, oldest first.
func (a *Authority) Authorities() []iothub.Authority {
	t := a.cur.Load()
	out := make([]iothub.Authority, 0, len(t.gens))
	for _, g := range t.gens {
		out = append(out, iothub.Authority{ID: g.ID, Kind: g.Kind, Subject: g.cert.Subject.String(),
			NotBefore: g.cert.NotBefore, NotAfter: g.cert.NotAfter, Status: g.Status})
	}
	return out
}

// trustedIssuer returns the issuing CA, not retired, that signed leaf.
func (t *trust) trustedIssuer(leaf *x509.Certificate) *caGen {
	for _, g := range t.gens {
		if g.Kind != KindIssuing || g.Status == StatusRetired || !bytes.Equal(leaf.RawIssuer, g.cert.RawSubject) {
			continue
		}
		if len(leaf.AuthorityKeyId) == 0 || hex.EncodeToString(leaf.AuthorityKeyId) == g.ID {
			return g
		}
	}
	return nil
}

// issuingCAs returns the issuing CAs not retired.
func (t *trust) issuingCAs() []*caGen {
	var out []*caGen
	for _, g := range t.gens {
		if g.Kind == KindIssuing && g.Status != StatusRetired {
			out = append(out, g)
		}
	}
	return out
}

// gen returns the CA with id.
func (t *trust) gen(id string) *caGen {
	for _, g := range t.gens {
		if g.ID == id {
			return g
		}
	}
	return nil
}

// commit records gens (replacing prev) with the new CA files in the
// directory and the cluster's store; if the store refuses, the directory
// keeps prev.
func (a *Authority) commit(prev, gens []*caGen, files ...string) error {
	if err := a.saveGenerations(gens); err != nil {
		return err
	}
	if err := a.push(append(files, generationsFile)...); err != nil {
		if rerr := a.saveGenerations(prev); rerr != nil {
			return errors.Join(err, rerr)
		}
		return err
	}
	return nil
}

// clone copies the generations so a change never touches a published snapshot.
func (t *trust) clone() []*caGen {
	out := make([]*caGen, len(t.gens))
	for i, g := range t.gens {
		c := *g
		out[i] = &c
	}
	return out
}

// Rotate makes a new issuing CA active under the active root, or with
// root a new root (cross-signed by the active one) and an issuing CA
// under it. The CAs they replace become trusted. Server certificates are
// re-issued from the new issuing CA. It returns the new CA's id (the root
// with root set) and the new issuing CA's id.
func (a *Authority) Rotate(root bool) (newID, issuingID string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	t := a.cur.Load()
	gens := t.clone()
	parent := t.root
	var files []string
	if root {
		k, c, err := newRoot(now)
		if err != nil {
			return "", "", err
		}
		cross, err := crossSign(c, t.root, now)
		if err != nil {
			return "", "", err
		}
		id := keyID(c)
		g := &caGen{ID: id, Kind: KindRoot, Status: StatusActive, CrossBy: t.root.ID,
			KeyFile: "root-" + id + ".key", CertFile: "root-" + id + ".pem", CrossFile: "cross-" + id + ".pem", cert: c, key: k, cross: cross}
		if err := a.savePair(g.KeyFile, g.CertFile, k, c.Raw); err != nil {
			return "", "", err
		}
		if err := writeFileAtomic(a.path(g.CrossFile), pemCert(cross.Raw), 0o644); err != nil {
			return "", "", err
		}
		files = append(files, g.KeyFile, g.CertFile, g.CrossFile)
		for _, o := range gens {
			if o.ID == t.root.ID {
				o.Status = StatusTrusted
			}
		}
		gens = append(gens, g)
		parent = g
		newID = id
	}
	k, c, err := newIssuing(parent.key, parent.cert, now)
	if err != nil {
		return "", "", err
	}
	issuingID = keyID(c)
	g := &caGen{ID: issuingID, Kind: KindIssuing, Status: StatusActive, Parent: parent.ID,
		KeyFile: "issuing-" + issuingID + ".key", CertFile: "issuing-" + issuingID + ".pem", cert: c, key: k}
	if err := a.savePair(g.KeyFile, g.CertFile, k, c.Raw); err != nil {
		return "", "", err
	}
	files = append(files, g.KeyFile, g.CertFile)
	if root {
		if g.cross, err = crossSign(c, t.root, now); err != nil {
			return "", "", err
		}
		g.CrossBy, g.CrossFile = t.root.ID, "cross-"+issuingID+".pem"
		if err := writeFileAtomic(a.path(g.CrossFile), pemCert(g.cross.Raw), 0o644); err != nil {
			return "", "", err
		}
		files = append(files, g.CrossFile)
	}
	for _, o := range gens {
		if o.ID == t.issuing.ID {
			o.Status = StatusTrusted
		}
	}
	gens = append(gens, g)
	if newID == "" {
		newID = issuingID
	}
	nt, err := a.build(gens, now, true)
	if err == nil {
		err = a.commit(t.gens, gens, files...)
	}
	if err != nil {
		for _, f := range files {
			os.Remove(a.path(f))
		}
		return "", "", err
	}
	a.cur.Store(nt)
	return newID, issuingID, nil
}

// crossSign certifies next's subject, key and constraints with prev's
// key, so a device that trusts only prev can validate chains through next.
func crossSign(next *x509.Certificate, prev *caGen, now time.Time) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	notAfter := next.NotAfter
	if notAfter.After(prev.cert.NotAfter) {
		notAfter = prev.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               next.Subject,
		SubjectKeyId:          next.SubjectKeyId,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              notAfter,
		KeyUsage:              next.KeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            next.MaxPathLen,
		MaxPathLenZero:        next.MaxPathLenZero,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, prev.cert, next.PublicKey, prev.key)
	if err != nil {
		return nil, fmt.Errorf("pki: cross-sign root: %w", err)
	}
	return x509.ParseCertificate(der)
}

// Retire stops trusting CA id: what it signed is refused and it leaves
// the bundle. Retiring a root retires the issuing CAs under it. The
// active CAs cannot be retired: rotate first. It returns the ids retired.
func (a *Authority) Retire(id string) ([]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.cur.Load()
	g := t.gen(id)
	switch {
	case g == nil:
		return nil, iothub.Errorf(iothub.ENOTFOUND, "no CA %s", id)
	case g.Status == StatusRetired:
		return nil, iothub.Errorf(iothub.ECONFLICT, "CA %s is already retired", id)
	case g.Status == StatusActive:
		return nil, iothub.Errorf(iothub.ECONFLICT, "CA %s is active; rotate before retiring it", id)
	}
	now := time.Now()
	gens := t.clone()
	var retired []string
	for _, o := range gens {
		if o.Status != StatusRetired && (o.ID == id || (g.Kind == KindRoot && o.Kind == KindIssuing && o.Parent == id)) {
			if o.Status == StatusActive {
				return nil, iothub.Errorf(iothub.ECONFLICT, "CA %s issues under %s; rotate the root before retiring it", o.ID, id)
			}
			o.Status, o.RetiredAt = StatusRetired, &now
			retired = append(retired, o.ID)
		}
	}
	nt, err := a.build(gens, now, false)
	if err != nil {
		return nil, err
	}
	if err := a.commit(t.gens, gens); err != nil {
		return nil, err
	}
	a.cur.Store(nt)
	return retired, nil
}

// RenewServerIfDue re-issues the server certificates when one expires
// within serverRenewBefore and reports whether it did.
func (a *Authority) RenewServerIfDue(now time.Time) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.cur.Load()
	if !slices.ContainsFunc(t.server, func(c tls.Certificate) bool { return c.Leaf.NotAfter.Sub(now) <= serverRenewBefore }) {
		return false, nil
	}
	nt, err := a.build(t.clone(), now, true)
	if err != nil {
		return false, err
	}
	a.cur.Store(nt)
	return true, nil
}

// Reload re-reads the generations from the directory, after another node
// sharing it rotated or retired a CA, and reports whether they changed.
func (a *Authority) Reload() (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.cur.Load()
	if err := a.pull(); err != nil {
		return false, err
	}
	b, err := os.ReadFile(a.path(generationsFile))
	if err != nil {
		return false, fmt.Errorf("pki: %w", err)
	}
	cur, err := json.MarshalIndent(t.gens, "", "  ")
	if err != nil {
		return false, err
	}
	if bytes.Equal(bytes.TrimSpace(b), cur) {
		return false, nil
	}
	first := func(kind, file string) *caGen {
		for _, g := range t.gens {
			if g.KeyFile == file {
				return g
			}
		}
		return &caGen{Kind: kind}
	}
	gens, err := a.loadGenerations(first(KindRoot, rootKeyFile), first(KindIssuing, issuingKeyFile))
	if err != nil {
		return false, err
	}
	nt, err := a.build(gens, time.Now(), false)
	if err != nil {
		return false, err
	}
	a.cur.Store(nt)
	return true, nil
}

// issuerID returns the authority key identifier (hex) of the certificate
// in certPEM, "" when it cannot tell.
func issuerID(certPEM string) string {
	block, _ := pem.Decode([]byte(certPEM))
	if block == nil {
		return ""
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return ""
	}
	return hex.EncodeToString(c.AuthorityKeyId)
}
