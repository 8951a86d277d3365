package pki

import (
	"bytes"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/inmem"
)

var serialRE = regexp.MustCompile(`^[1-9a-f][0-9a-f]*$`)

// ocspServer serves svc.OCSP at /ocsp on 127.0.0.1.
func ocspServer(t *testing.T, svc *Service) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ocsp" || r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		resp, err := svc.OCSP(body)
		if err != nil {
			http.Error(w, iothub.ErrorMessage(err), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/ocsp-response")
		w.Write(resp)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/ocsp"
}

// TestEnrollOpenSSL is the seeds' issuance and revocation story checked
// with the openssl CLI: an openssl-made CSR becomes a certificate openssl
// verifies against the chain; after revocation openssl's CRL check and
// OCSP query both report it revoked.
func TestEnrollOpenSSL(t *testing.T) {
	for _, kt := range []string{"rsa2048", "p256"} {
		t.Run(kt, func(t *testing.T) {
			e := newEnv(t)
			dir := t.TempDir()
			d := e.device(t, e.p, "dev-"+kt)
			csr := opensslCSR(t, dir, "dev", kt, "ignored-name")

			c, err := e.svc.Enroll(ctx, e.p, d, csr, 30)
			if err != nil {
				t.Fatal(err)
			}
			leaf := parsePEMCert(t, c.CertPEM)
			checkDeviceCert(t, leaf, c, e.p.ProductKey, d.DeviceKey, kt == "rsa2048")
			if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 30*24*time.Hour+time.Minute {
				t.Fatalf("validity %v, want 30 days and a minute", got)
			}
			stored := e.deviceCerts(t, e.p, d.DeviceKey)
			if len(stored) != 1 || stored[0].Serial != c.Serial || stored[0].Status(time.Now()) != "valid" {
				t.Fatalf("store holds %+v", stored)
			}

			writeFile(t, dir, "cert.pem", []byte(c.CertPEM))
			writeFile(t, dir, "chain.pem", e.svc.ChainPEM())
			writeFile(t, dir, "issuing.pem", pemCert(shared.IssuingCA().Raw))
			writeCRL := func() {
				writeFile(t, dir, "crl.pem", pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: e.svc.CRL()}))
			}
			writeCRL()
			if out := mustOpenSSL(t, dir, "verify", "-CAfile", "chain.pem", "-purpose", "sslclient", "cert.pem"); !strings.Contains(out, "cert.pem: OK") {
				t.Fatalf("openssl verify: %s", out)
			}
			if out := mustOpenSSL(t, dir, "verify", "-crl_check", "-CRLfile", "crl.pem", "-CAfile", "chain.pem", "cert.pem"); !strings.Contains(out, "cert.pem: OK") {
				t.Fatalf("openssl verify with the CRL before revocation: %s", out)
			}
			url := ocspServer(t, e.svc)
			ocspArgs := []string{"ocsp", "-issuer", "issuing.pem", "-cert", "cert.pem", "-url", url, "-CAfile", "chain.pem"}
			out := mustOpenSSL(t, dir, ocspArgs...)
			if !strings.Contains(out, "Response verify OK") || !strings.Contains(out, "cert.pem: good") {
				t.Fatalf("openssl ocsp before revocation: %s", out)
			}
			if serial, err := e.svc.AuthorizeClient(e.p, d.DeviceKey, []*x509.Certificate{leaf}, time.Now()); err != nil || serial != c.Serial {
				t.Fatalf("AuthorizeClient before revocation: %q, %v", serial, err)
			}

			rc, err := e.svc.Revoke(ctx, c.Serial, "keyCompromise")
			if err != nil {
				t.Fatal(err)
			}
			if rc.RevokedAt == nil || rc.Reason != "keyCompromise" {
				t.Fatalf("revoked certificate %+v", rc)
			}
			ev := e.nextEvent(t)
			if ev.Kind != iothub.EventCertRevoked || ev.Serial != c.Serial || ev.ProductKey != e.p.ProductKey || ev.DeviceKey != d.DeviceKey {
				t.Fatalf("event %+v", ev)
			}
			writeCRL()
			out, err = openssl(t, dir, "verify", "-crl_check", "-CRLfile", "crl.pem", "-CAfile", "chain.pem", "cert.pem")
			if err == nil || !strings.Contains(out, "certificate revoked") {
				t.Fatalf("openssl verify after revocation: err %v, %s", err, out)
			}
			out = mustOpenSSL(t, dir, ocspArgs...)
			if !strings.Contains(out, "Response verify OK") || !strings.Contains(out, "cert.pem: revoked") || !strings.Contains(out, "Reason: keyCompromise") {
				t.Fatalf("openssl ocsp after revocation: %s", out)
			}
			_, err = e.svc.AuthorizeClient(e.p, d.DeviceKey, []*x509.Certificate{leaf}, time.Now())
			wantRefusal(t, err, "certificate revoked")
		})
	}
}

// checkDeviceCert checks what every device certificate must say.
func checkDeviceCert(t *testing.T, leaf *x509.Certificate, c *iothub.Certificate, pk, dk string, isRSA bool) {
	t.Helper()
	if !serialRE.MatchString(c.Serial) || c.Serial != leaf.SerialNumber.Text(16) {
		t.Fatalf("serial %q for certificate serial %x", c.Serial, leaf.SerialNumber)
	}
	if leaf.SerialNumber.BitLen() > 128 || leaf.SerialNumber.Sign() <= 0 {
		t.Fatalf("serial %x is not a positive 128-bit number", leaf.SerialNumber)
	}
	if leaf.Subject.CommonName != dk || len(leaf.Subject.Organization) != 1 || leaf.Subject.Organization[0] != pk {
		t.Fatalf("subject %v", leaf.Subject)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "iothub://"+pk+"/"+dk {
		t.Fatalf("URIs %v", leaf.URIs)
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || leaf.IsCA {
		t.Fatalf("EKU %v, CA %v", leaf.ExtKeyUsage, leaf.IsCA)
	}
	wantKU := x509.KeyUsageDigitalSignature
	if isRSA {
		wantKU |= x509.KeyUsageKeyEncipherment
	}
	if leaf.KeyUsage != wantKU {
		t.Fatalf("key usage %v, want %v", leaf.KeyUsage, wantKU)
	}
	id := hex.EncodeToString(leaf.AuthorityKeyId)
	if !equalStrings(leaf.CRLDistributionPoints, testURL+"/crl/"+id) || !equalStrings(leaf.IssuingCertificateURL, testURL+"/ca/"+id+".pem") || !equalStrings(leaf.OCSPServer, testURL+"/ocsp") {
		t.Fatalf("URLs: CRL %v, AIA %v, OCSP %v", leaf.CRLDistributionPoints, leaf.IssuingCertificateURL, leaf.OCSPServer)
	}
	if d := time.Since(leaf.NotBefore); d < time.Minute-5*time.Second || d > time.Minute+time.Minute {
		t.Fatalf("notBefore %v is not about a minute ago", leaf.NotBefore)
	}
	h := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	if c.PublicKeySHA256 != hex.EncodeToString(h[:]) || c.ProductKey != pk || c.DeviceKey != dk || c.OrgID != iothub.DefaultOrgID {
		t.Fatalf("record %+v", c)
	}
	if err := leaf.CheckSignatureFrom(shared.IssuingCA()); err != nil {
		t.Fatal(err)
	}
}

func equalStrings(got []string, want ...string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// TestEnrollRefusesBadCSRs: every bad CSR is EINVALID with a clear message
// and leaves nothing in the store.
func TestEnrollRefusesBadCSRs(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	d := e.device(t, e.p, "dev1")
	good := goCSR(t, rsaKey(t, 0))
	block, _ := pem.Decode([]byte(good))
	broken := bytes.Clone(block.Bytes)
	broken[len(broken)-1] ^= 0x01 // last byte of the signature
	brokenPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: broken}))
	tampered := bytes.Clone(block.Bytes)
	tampered[40] ^= 0x01 // inside the signed request info
	tamperedPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered}))

	cases := []struct {
		name, csr, msg string
	}{
		{"rsa1024", opensslCSR(t, dir, "r1024", "rsa1024", "x"), "RSA-1024 key; RSA keys must have at least 2048 bits"},
		{"p384", opensslCSR(t, dir, "p384", "p384", "x"), "only P-256 is accepted"},
		{"ed25519", opensslCSR(t, dir, "ed", "ed25519", "x"), "unsupported key type"},
		{"rsa-sha1", opensslCSR(t, dir, "sha1", "rsa2048", "x", "-sha1"), "must be signed with SHA-256 or better"},
		{"broken signature", brokenPEM, "signature does not verify"},
		{"tampered request", tamperedPEM, ""},
		{"garbage", "hello, I am not a CSR", "not PEM"},
		{"garbage base64", "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n", "not PEM"},
		{"garbage DER", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte("junk")})), "not a valid PKCS#10"},
		{"two blocks", good + good, "more than one PEM block"},
		{"text before", "hello\n" + good, "text before"},
		{"text after", good + "trailing", "text after"},
		{"certificate", string(pemCert(shared.IssuingCA().Raw)), `"CERTIFICATE"; expected "CERTIFICATE REQUEST"`},
		{"oversize", good + strings.Repeat(" ", MaxPEMSize), "larger than 65536 bytes"},
		{"empty", "", "not PEM"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.svc.Enroll(ctx, e.p, d, tc.csr, 0)
			wantCode(t, err, iothub.EINVALID)
			if !strings.Contains(iothub.ErrorMessage(err), tc.msg) {
				t.Fatalf("message %q does not say %q", iothub.ErrorMessage(err), tc.msg)
			}
		})
	}
	if cs := e.deviceCerts(t, e.p, d.DeviceKey); len(cs) != 0 {
		t.Fatalf("store holds %d certificates after refusals", len(cs))
	}
	h := sha256.Sum256(block.Bytes) // any key hash: nothing at all was bound
	_, err := e.db.CertificateByPublicKey(ctx, hex.EncodeToString(h[:]))
	wantCode(t, err, iothub.ENOTFOUND)
	if _, err := e.svc.Enroll(ctx, e.p, d, good, 0); err != nil {
		t.Fatalf("the good CSR after the refusals: %v", err)
	}
}

// TestEnrollValidity: validDays is capped by the product's maximum, 0 means
// the maximum, negative is refused.
func TestEnrollValidity(t *testing.T) {
	e := newEnv(t)
	p := e.product(t, "capped")
	p.MaxCertDays = 10
	d := e.device(t, p, "dev1")
	c, err := e.svc.Enroll(ctx, p, d, goCSR(t, p256Key(t)), 400)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.NotAfter.Sub(c.NotBefore); got != 10*24*time.Hour+time.Minute {
		t.Fatalf("validity %v, want the product's 10 days", got)
	}
	c, err = e.svc.Enroll(ctx, e.p, e.device(t, e.p, "dev2"), goCSR(t, p256Key(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.NotAfter.Sub(c.NotBefore); got != iothub.DefaultMaxCertDays*24*time.Hour+time.Minute {
		t.Fatalf("validity %v, want the default maximum", got)
	}
	_, err = e.svc.Enroll(ctx, e.p, e.device(t, e.p, "dev3"), goCSR(t, p256Key(t)), -1)
	wantCode(t, err, iothub.EINVALID)
	_, err = e.svc.Enroll(ctx, e.p, e.device(t, p, "other"), goCSR(t, p256Key(t)), 0)
	wantCode(t, err, iothub.EINVALID) // device of another product
}

// TestBinding: a key binds to one device; a device holds at most
// MaxValidPerDevice valid certificates.
func TestBinding(t *testing.T) {
	e := newEnv(t)
	d1, d2 := e.device(t, e.p, "dev1"), e.device(t, e.p, "dev2")
	csr := goCSR(t, rsaKey(t, 1))
	c1, err := e.svc.Enroll(ctx, e.p, d1, csr, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Enroll(ctx, e.p, d2, csr, 0)
	wantCode(t, err, iothub.ECONFLICT)
	if !strings.Contains(iothub.ErrorMessage(err), "bound to another device") {
		t.Fatalf("message %q", iothub.ErrorMessage(err))
	}
	if cs := e.deviceCerts(t, e.p, "dev2"); len(cs) != 0 {
		t.Fatalf("dev2 got %d certificates", len(cs))
	}
	// F9: the same device enrolling the same key again (a retry) gets the
	// certificate it already holds, and the cap is not spent on it.
	again, err := e.svc.Enroll(ctx, e.p, d1, csr, 0)
	if err != nil {
		t.Fatal(err)
	}
	if again.Serial != c1.Serial {
		t.Fatalf("a retried enrollment issued %s, want the same certificate %s", again.Serial, c1.Serial)
	}
	if cs := e.deviceCerts(t, e.p, "dev1"); len(cs) != 1 {
		t.Fatalf("after a retry dev1 holds %d certificates, want 1", len(cs))
	}
	for range 2 {
		if _, err := e.svc.Enroll(ctx, e.p, d1, goCSR(t, p256Key(t)), 0); err != nil {
			t.Fatal(err)
		}
	}
	_, err = e.svc.Enroll(ctx, e.p, d1, goCSR(t, p256Key(t)), 0)
	wantCode(t, err, iothub.ECONFLICT)
	if _, err := e.svc.Revoke(ctx, c1.Serial, "cessationOfOperation"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Enroll(ctx, e.p, d1, goCSR(t, p256Key(t)), 0); err != nil {
		t.Fatalf("after a revocation the device is under the cap again: %v", err)
	}
	// A key revoked as compromised is not taken again.
	k := p256Key(t)
	c, err := e.svc.Enroll(ctx, e.p, d2, goCSR(t, k), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Revoke(ctx, c.Serial, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Enroll(ctx, e.p, d2, goCSR(t, k), 0)
	wantCode(t, err, iothub.ECONFLICT)
}

// TestRenew: the certificates a renewal supersedes are revoked when the new
// one is used, or after the grace period, but not if the new one was
// revoked first.
func TestRenew(t *testing.T) {
	e := newEnv(t)
	d := e.device(t, e.p, "dev1")
	a, b := e.enrollAndRenew(t, d)
	if e.svc.IsRevoked(a.Serial) {
		t.Fatal("old certificate revoked before the new one was used")
	}
	e.svc.NoteUsed(ctx, a.Serial) // using the old one supersedes nothing
	if e.svc.IsRevoked(a.Serial) || e.svc.IsRevoked(b.Serial) {
		t.Fatal("NoteUsed of the old certificate revoked something")
	}
	e.svc.NoteUsed(ctx, b.Serial)
	if !e.svc.IsRevoked(a.Serial) || e.svc.IsRevoked(b.Serial) {
		t.Fatalf("after NoteUsed(new): old revoked %v, new revoked %v", e.svc.IsRevoked(a.Serial), e.svc.IsRevoked(b.Serial))
	}
	old, err := e.svc.Certificate(ctx, a.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if old.Reason != "superseded" || old.RevokedAt == nil {
		t.Fatalf("old certificate %+v", old)
	}
	if ev := e.nextEvent(t); ev.Kind != iothub.EventCertRenewed || ev.Serial != b.Serial {
		t.Fatalf("event %+v, want the renewal announced", ev)
	}
	if ev := e.nextEvent(t); ev.Serial != a.Serial || ev.Reason != "superseded" {
		t.Fatalf("event %+v", ev)
	}

	// Grace period: never used, still superseded a day later.
	d2 := e.device(t, e.p, "dev2")
	c, err := e.svc.Enroll(ctx, e.p, d2, goCSR(t, p256Key(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Renew(ctx, e.p, d2, goCSR(t, p256Key(t))); err != nil {
		t.Fatal(err)
	}
	e.svc.tick(time.Now().Add(RenewGrace / 2))
	if e.svc.IsRevoked(c.Serial) {
		t.Fatal("superseded before the grace period ended")
	}
	e.svc.tick(time.Now().Add(RenewGrace + time.Minute))
	if !e.svc.IsRevoked(c.Serial) {
		t.Fatal("not superseded after the grace period")
	}

	// A successor revoked before use supersedes nothing.
	d3 := e.device(t, e.p, "dev3")
	f, err := e.svc.Enroll(ctx, e.p, d3, goCSR(t, p256Key(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	g, err := e.svc.Renew(ctx, e.p, d3, goCSR(t, p256Key(t)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Revoke(ctx, g.Serial, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	e.svc.tick(time.Now().Add(RenewGrace + time.Minute))
	if e.svc.IsRevoked(f.Serial) {
		t.Fatal("the old certificate was superseded by a revoked successor")
	}
}

// TestRevoke: reasons, errors, the CRL's content and numbering, and a new
// service loading the revocations from the store.
func TestRevoke(t *testing.T) {
	e := newEnv(t)
	d := e.device(t, e.p, "dev1")
	c, err := e.svc.Enroll(ctx, e.p, d, goCSR(t, p256Key(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	crl0 := parseCRL(t, e.svc.CRL())
	if len(crl0.RevokedCertificateEntries) != 0 {
		t.Fatalf("fresh CRL lists %d entries", len(crl0.RevokedCertificateEntries))
	}
	for _, reason := range []string{"", "compromised", "removeFromCRL", "KeyCompromise"} {
		_, err := e.svc.Revoke(ctx, c.Serial, reason)
		wantCode(t, err, iothub.EINVALID)
	}
	_, err = e.svc.Revoke(ctx, "0123456789abcdef", "keyCompromise")
	wantCode(t, err, iothub.ENOTFOUND)
	_, err = e.svc.Revoke(ctx, "not-hex", "keyCompromise")
	wantCode(t, err, iothub.EINVALID)
	if e.svc.IsRevoked(c.Serial) {
		t.Fatal("revoked by a refused request")
	}

	if _, err := e.svc.Revoke(ctx, strings.ToUpper(c.Serial), "privilegeWithdrawn"); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Revoke(ctx, c.Serial, "keyCompromise")
	wantCode(t, err, iothub.ECONFLICT)

	crl1 := parseCRL(t, e.svc.CRL())
	if crl1.Number.Cmp(crl0.Number) <= 0 {
		t.Fatalf("CRL number %v after %v", crl1.Number, crl0.Number)
	}
	if len(crl1.RevokedCertificateEntries) != 1 {
		t.Fatalf("CRL lists %d entries", len(crl1.RevokedCertificateEntries))
	}
	entry := crl1.RevokedCertificateEntries[0]
	if entry.SerialNumber.Text(16) != c.Serial || entry.ReasonCode != 9 {
		t.Fatalf("CRL entry %x reason %d", entry.SerialNumber, entry.ReasonCode)
	}
	if got := crl1.NextUpdate.Sub(crl1.ThisUpdate); got != CRLValidity {
		t.Fatalf("CRL spans %v", got)
	}

	// A second service (a restart) knows the revocation and signs a newer CRL.
	s2 := e.service(t)
	if !s2.IsRevoked(c.Serial) {
		t.Fatal("restarted service forgot the revocation")
	}
	crl2 := parseCRL(t, s2.CRL())
	if crl2.Number.Cmp(crl1.Number) <= 0 || len(crl2.RevokedCertificateEntries) != 1 {
		t.Fatalf("restarted CRL number %v (after %v), %d entries", crl2.Number, crl1.Number, len(crl2.RevokedCertificateEntries))
	}
	// The periodic loop re-signs only when half the CRL's life is gone.
	s2.tick(time.Now())
	if n := parseCRL(t, s2.CRL()).Number; n.Cmp(crl2.Number) != 0 {
		t.Fatalf("CRL re-signed early: %v", n)
	}
	s2.now = func() time.Time { return time.Now().Add(CRLValidity/2 + time.Minute) }
	s2.tick(s2.now())
	if n := parseCRL(t, s2.CRL()).Number; n.Cmp(crl2.Number) <= 0 {
		t.Fatalf("CRL not re-signed after half its life: %v", n)
	}
}

// TestRevocationFromAnotherNode: a revocation event on the bus for a
// serial this service did not revoke itself is loaded from the store.
func TestRevocationFromAnotherNode(t *testing.T) {
	e := newEnv(t)
	c, err := e.svc.Enroll(ctx, e.p, e.device(t, e.p, "dev1"), goCSR(t, p256Key(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	// Another node writes the revocation and announces it.
	if err := e.db.RevokeCertificate(ctx, c.Serial, "keyCompromise", time.Now()); err != nil {
		t.Fatal(err)
	}
	e.bus.Publish(ctx, iothub.Event{Kind: iothub.EventCertRevoked, Serial: c.Serial})
	// Refused from the moment the announcement is heard, before the store
	// read confirms it: a reconnect in between must not get in.
	if !e.svc.IsRevoked(c.Serial) {
		t.Fatal("an announced revocation is not refused at once")
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(parseCRL(t, e.svc.CRL()).RevokedCertificateEntries) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("CRL was not re-signed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAnnouncementWithoutRevocation: an announcement the store does not
// confirm stops counting once the store has answered.
func TestAnnouncementWithoutRevocation(t *testing.T) {
	e := newEnv(t)
	c, err := e.svc.Enroll(ctx, e.p, e.device(t, e.p, "dev1"), goCSR(t, p256Key(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	e.bus.Publish(ctx, iothub.Event{Kind: iothub.EventCertRevoked, Serial: c.Serial})
	deadline := time.Now().Add(5 * time.Second)
	for e.svc.IsRevoked(c.Serial) {
		if time.Now().After(deadline) {
			t.Fatal("an unconfirmed announcement still refuses the certificate")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(parseCRL(t, e.svc.CRL()).RevokedCertificateEntries); n != 0 {
		t.Fatalf("CRL lists %d entries after an unconfirmed announcement", n)
	}
}

func parseCRL(t *testing.T, der []byte) *x509.RevocationList {
	t.Helper()
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(shared.IssuingCA()); err != nil {
		t.Fatal(err)
	}
	return crl
}

// TestOCSP: unknown serials, foreign issuers and malformed requests.
func TestOCSP(t *testing.T) {
	e := newEnv(t)
	c, err := e.svc.Enroll(ctx, e.p, e.device(t, e.p, "dev1"), goCSR(t, p256Key(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf := parsePEMCert(t, c.CertPEM)
	issuing := shared.IssuingCA()
	ask := func(cert, issuer *x509.Certificate) ([]byte, error) {
		req, err := ocsp.CreateRequest(cert, issuer, nil)
		if err != nil {
			t.Fatal(err)
		}
		return e.svc.OCSP(req)
	}
	raw, err := ask(leaf, issuing)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ocsp.ParseResponseForCert(raw, leaf, issuing)
	if err != nil || resp.Status != ocsp.Good {
		t.Fatalf("status %v, %v", resp, err)
	}
	// A serial the hub never issued.
	fake := *leaf
	fake.SerialNumber = new(big.Int).Rsh(leaf.SerialNumber, 1)
	raw, err = ask(&fake, issuing)
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := ocsp.ParseResponse(raw, issuing); err != nil || resp.Status != ocsp.Unknown {
		t.Fatalf("unknown serial: %+v, %v", resp, err)
	}
	// A certificate of another issuer: the root answers for nothing here.
	raw, err = ask(issuing, shared.Root())
	if err != nil {
		t.Fatal(err)
	}
	_, err = ocsp.ParseResponse(raw, nil)
	if re, ok := err.(ocsp.ResponseError); !ok || re.Status != ocsp.Unauthorized {
		t.Fatalf("foreign issuer: %v", err)
	}
	_, err = e.svc.OCSP([]byte("not an OCSP request"))
	wantCode(t, err, iothub.EINVALID)
}

// TestCertificateLookup: serials are found in either case, refused when not hex.
func TestCertificateLookup(t *testing.T) {
	e := newEnv(t)
	c, err := e.svc.Enroll(ctx, e.p, e.device(t, e.p, "dev1"), goCSR(t, rsaKey(t, 2)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := parsePEMCert(t, c.CertPEM).PublicKey.(*rsa.PublicKey); !ok {
		t.Fatal("not an RSA certificate")
	}
	got, err := e.svc.Certificate(ctx, strings.ToUpper(c.Serial))
	if err != nil || got.Serial != c.Serial {
		t.Fatalf("%v, %v", got, err)
	}
	_, err = e.svc.Certificate(ctx, "zz")
	wantCode(t, err, iothub.EINVALID)
	_, err = e.svc.Certificate(ctx, "-1")
	wantCode(t, err, iothub.EINVALID)
	_, err = e.svc.Certificate(ctx, "abc")
	wantCode(t, err, iothub.ENOTFOUND)
}

// F8: a renewal's pending supersession is stored: a service started
// afterwards on the same store (a restart, or another node) revokes the
// old certificate once the new one logs in there.
func TestAuditF8SupersessionSurvivesRestart(t *testing.T) {
	e := newEnv(t)
	d := e.device(t, e.p, "dev1")
	a, b := e.enrollAndRenew(t, d)
	e.svc.Close()
	restarted := e.service(t)
	restarted.NoteUsed(ctx, b.Serial)
	if !restarted.IsRevoked(a.Serial) {
		t.Fatal("after a restart the renewed-away certificate stays valid once the new one is used")
	}
	old, err := restarted.Certificate(ctx, a.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if old.Reason != "superseded" {
		t.Fatalf("old certificate revoked as %q, want superseded", old.Reason)
	}
	// Done: nothing is left to supersede.
	rows, err := e.db.Supersessions(ctx, "")
	if err != nil || len(rows) != 0 {
		t.Fatalf("supersessions left: %v %v", rows, err)
	}
}

// F10: OCSP answers are cached per serial until their nextUpdate (no new
// signature meanwhile) and re-signed at once when the certificate is revoked.
func TestAuditF10OCSPCachedUntilNextUpdate(t *testing.T) {
	e := newEnv(t)
	c, err := e.svc.Enroll(ctx, e.p, e.device(t, e.p, "dev1"), goCSR(t, p256Key(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf := parsePEMCert(t, c.CertPEM)
	issuing := shared.IssuingCA()
	req, err := ocsp.CreateRequest(leaf, issuing, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	clock := t0
	e.svc.now = func() time.Time { return clock }
	ask := func() ([]byte, *ocsp.Response) {
		raw, err := e.svc.OCSP(req)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := ocsp.ParseResponseForCert(raw, leaf, issuing)
		if err != nil {
			t.Fatal(err)
		}
		return raw, resp
	}
	first, r1 := ask()
	clock = t0.Add(OCSPValidity / 2)
	if again, _ := ask(); !bytes.Equal(again, first) {
		t.Fatal("a second request before nextUpdate was signed anew")
	}
	clock = r1.NextUpdate.Add(time.Second)
	if _, r := ask(); !r.ThisUpdate.After(r1.ThisUpdate) {
		t.Fatal("past nextUpdate the cached answer was served")
	}
	if _, err := e.svc.Revoke(ctx, c.Serial, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	if _, r := ask(); r.Status != ocsp.Revoked {
		t.Fatalf("after revocation OCSP says %d, want revoked", r.Status)
	}
}

// F8: a node that has not heard of a renewal made on another node (no
// shared bus here) still supersedes once the new certificate logs in to
// it: the renewal is in the store before the certificate is handed out.
func TestAuditF8SupersessionReachesANodeThatMissedTheEvent(t *testing.T) {
	e := newEnv(t)
	other, err := NewService(shared, e.db, inmem.NewBus(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	d := e.device(t, e.p, "dev1")
	a, b := e.enrollAndRenew(t, d)
	other.NoteUsed(ctx, b.Serial)
	if !other.IsRevoked(a.Serial) {
		t.Fatal("the other node did not supersede the old certificate when the new one logged in there")
	}
}
