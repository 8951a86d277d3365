package edge

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// FileTrustBundle holds the last trust bundle the agent accepted; once
// present it replaces the pinned CA file.
const FileTrustBundle = "trust-bundle.pem"

// DefaultTrustRefresh is how often the agent refreshes the trust bundle
// and CRLs when Config.TrustRefresh is zero.
const DefaultTrustRefresh = time.Hour

// bundleSigType is the PEM type of the hub's bundle signature.
const bundleSigType = "IOTHUB BUNDLE SIGNATURE"

// trustUpdateTopic is the hub's notice (under the device's /sys/ prefix)
// that its CAs changed.
const trustUpdateTopic = "thing/trust/update"

// maxTrustBody caps what the agent reads for a bundle, signature or CRL.
const maxTrustBody = 1 << 20

// VerifyBundle accepts bundle (PEM certificates) only if envelope (the
// hub's GET /ca-bundle.pem.sig: a signature block then candidate signer
// certificates) holds a signature over it by a certificate that chains to
// roots. It returns the bundle as a pool.
func VerifyBundle(bundle, envelope []byte, roots *x509.CertPool) (*x509.CertPool, error) {
	sigBlock, rest := pem.Decode(envelope)
	if sigBlock == nil || sigBlock.Type != bundleSigType {
		return nil, errors.New("edge: the bundle signature is not a " + bundleSigType + " PEM block")
	}
	signed := false
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil || !c.IsCA {
			continue
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			continue
		}
		if c.CheckSignature(signatureAlgorithm(c), bundle, sigBlock.Bytes) == nil {
			signed = true
			break
		}
	}
	if !signed {
		return nil, errors.New("edge: the bundle is not signed by a CA the agent trusts")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) {
		return nil, errors.New("edge: the bundle holds no certificate")
	}
	return pool, nil
}

// signatureAlgorithm is the SHA-256 scheme of c's key type.
func signatureAlgorithm(c *x509.Certificate) x509.SignatureAlgorithm {
	if c.PublicKeyAlgorithm == x509.ECDSA {
		return x509.ECDSAWithSHA256
	}
	return x509.SHA256WithRSA
}

// VerifyCRL parses a DER CRL and accepts it only if one of cas (each
// chaining to roots) signed it and it is not past its nextUpdate.
func VerifyCRL(der []byte, cas []*x509.Certificate, roots *x509.CertPool, now time.Time) (*x509.RevocationList, error) {
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("edge: CRL: %w", err)
	}
	if !crl.NextUpdate.IsZero() && now.After(crl.NextUpdate) {
		return nil, errors.New("edge: the CRL is past its nextUpdate")
	}
	for _, ca := range cas {
		if !bytes.Equal(ca.RawSubject, crl.RawIssuer) || crl.CheckSignatureFrom(ca) != nil {
			continue
		}
		if _, err := ca.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
			return crl, nil
		}
	}
	return nil, errors.New("edge: the CRL is not signed by a CA the agent trusts")
}

// trustState is what the agent trusts now: the roots (pinned file, then
// the last accepted bundle), the CAs of the bundle and the serials their
// CRLs revoke, by CA key id.
type trustState struct {
	roots   *x509.CertPool
	pem     []byte
	cas     []*x509.Certificate
	revoked map[string]map[string]bool
}

// trust returns the current trust state.
func (a *Agent) trust() *trustState { return a.trusted.Load() }

// serverRevoked is tls.Config.VerifyConnection: the hub's server
// certificate must not be listed by its CA's CRL.
func (a *Agent) serverRevoked(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	leaf := cs.PeerCertificates[0]
	if a.trust().revoked[hex.EncodeToString(leaf.AuthorityKeyId)][strings.ToLower(leaf.SerialNumber.Text(16))] {
		return fmt.Errorf("edge: the hub's certificate %x is revoked", leaf.SerialNumber)
	}
	return nil
}

// refreshTrust fetches the hub's trust bundle, its signature and the CRL
// of each CA in it, accepts them only if signed by a CA the agent trusts
// now, stores the bundle atomically and makes it current. If the device
// certificate was issued by a CA other than the active one, it asks for a
// renewal. On any refusal the current trust stays.
func (a *Agent) refreshTrust(ctx context.Context) error {
	cur := a.trust()
	hc := NewHTTPClient(cur.roots)
	bundle, err := a.fetch(ctx, hc, "/ca-bundle.pem")
	if err != nil {
		return err
	}
	env, err := a.fetch(ctx, hc, "/ca-bundle.pem.sig")
	if err != nil {
		return err
	}
	pool, err := VerifyBundle(bundle, env, cur.roots)
	if err != nil {
		return err
	}
	next := &trustState{roots: pool, pem: bundle, revoked: map[string]map[string]bool{}}
	for rest := bundle; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil && c.IsCA {
			next.cas = append(next.cas, c)
		}
	}
	now := time.Now()
	for _, ca := range next.cas {
		if bytes.Equal(ca.RawIssuer, ca.RawSubject) {
			continue // roots sign no leaves, so they have no CRL here
		}
		id := hex.EncodeToString(ca.SubjectKeyId)
		der, err := a.fetch(ctx, hc, "/crl/"+id)
		if err != nil {
			continue // a cross certificate has none; the others are retried next time
		}
		crl, err := VerifyCRL(der, next.cas, pool, now)
		if err != nil {
			return err
		}
		set := map[string]bool{}
		for _, e := range crl.RevokedCertificateEntries {
			set[strings.ToLower(e.SerialNumber.Text(16))] = true
		}
		next.revoked[id] = set
	}
	if !bytes.Equal(bundle, cur.pem) {
		if err := a.state.Write(FileTrustBundle, string(bundle)); err != nil {
			return err
		}
		a.log.Info("trust bundle updated", "cas", len(next.cas))
	}
	a.trusted.Store(next)
	a.renewIfIssuerInactive(ctx, hc)
	return nil
}

// renewIfIssuerInactive asks for a renewal when the device certificate's
// CA is not the hub's active issuing CA (the first of GET /ca.pem).
func (a *Agent) renewIfIssuerInactive(ctx context.Context, hc *http.Client) {
	if a.cfg.Auth != AuthCertificate {
		return
	}
	cert, err := a.state.Certificate()
	if err != nil || cert == nil {
		return
	}
	chain, err := a.fetch(ctx, hc, "/ca.pem")
	if err != nil {
		return
	}
	b, _ := pem.Decode(chain)
	if b == nil {
		return
	}
	active, err := x509.ParseCertificate(b.Bytes)
	if err != nil || bytes.Equal(active.SubjectKeyId, cert.AuthorityKeyId) {
		return
	}
	a.log.Info("certificate issued by a CA that is no longer active; renewing")
	select {
	case a.renewNow <- struct{}{}:
	default:
	}
}

// fetch GETs path of the hub's API.
func (a *Agent) fetch(ctx context.Context, hc *http.Client, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(a.cfg.API, "/")+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTrustBody))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &HubError{Status: resp.StatusCode, Message: path}
	}
	return body, nil
}

// trustLoop refreshes the trust every TrustRefresh and on the hub's notice.
func (a *Agent) trustLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.TrustRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.trustNow:
		}
		a.refreshTrustLogged(ctx)
	}
}

// refreshTrustLogged refreshes the trust; a failure or refusal is logged
// and the current trust kept.
func (a *Agent) refreshTrustLogged(ctx context.Context) {
	if err := a.refreshTrust(ctx); err != nil && ctx.Err() == nil {
		a.log.Warn("trust refresh refused or failed; keeping the current trust", "err", err)
	}
}
