package pki

import (
	"crypto/x509"
	"regexp"
	"testing"
	"time"

	"github.com/iothub/iothub"
)

const caConfig = `[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = Acme Device CA
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
`

// Extensions of openssl-signed certificates: a device's, and a server's
// that must not log a device in.
const (
	clientExt = "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\nextendedKeyUsage = clientAuth\n"
	serverExt = "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n"
)

// opensslCA makes a self-signed CA named name.pem / name.key in dir.
func opensslCA(t *testing.T, dir, name string) string {
	t.Helper()
	writeFile(t, dir, "ca.cnf", []byte(caConfig))
	args := append([]string{"req", "-x509", "-new", "-config", "ca.cnf"}, newKeyArgs["p256"]...)
	args = append(args, "-nodes", "-keyout", name+".key", "-out", name+".pem", "-days", "30")
	mustOpenSSL(t, dir, args...)
	return readFile(t, dir, name+".pem")
}

// opensslSign has CA ca sign a fresh key's CSR with subject CN cn and the
// extensions ext ("" for none).
func opensslSign(t *testing.T, dir, ca, name, cn, ext string) string {
	t.Helper()
	opensslCSR(t, dir, name, "p256", cn)
	args := []string{"x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
		"-CAcreateserial", "-days", "10", "-out", name + ".pem"}
	if ext != "" {
		writeFile(t, dir, name+".ext", []byte(ext))
		args = append(args, "-extfile", name+".ext")
	}
	mustOpenSSL(t, dir, args...)
	return readFile(t, dir, name+".pem")
}

// TestExternalCAProofOfPossession is Azure's flow with an openssl-made CA:
// register, fail with a wrong CN or signer, verify with the code as CN;
// only then, and only for that product, its device certificates log in.
func TestExternalCAProofOfPossession(t *testing.T) {
	e := newEnv(t)
	other := e.product(t, "prodB")
	dir := t.TempDir()
	caPEM := opensslCA(t, dir, "acme")
	opensslCA(t, dir, "mallory")
	devPEM := opensslSign(t, dir, "acme", "dev1", "dev1", clientExt)
	dev := parsePEMCert(t, devPEM)
	peer := []*x509.Certificate{dev}

	ca, err := e.svc.RegisterCA(ctx, e.p, caPEM)
	if err != nil {
		t.Fatal(err)
	}
	if ca.Verified || !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(ca.VerificationCode) || ca.ProductKey != e.p.ProductKey {
		t.Fatalf("registered CA %+v", ca)
	}
	_, err = e.svc.RegisterCA(ctx, e.p, caPEM)
	wantCode(t, err, iothub.ECONFLICT)
	_, err = e.svc.RegisterCA(ctx, e.p, devPEM)
	wantCode(t, err, iothub.EINVALID) // not a CA
	_, err = e.svc.RegisterCA(ctx, e.p, "junk")
	wantCode(t, err, iothub.EINVALID)
	_, err = e.svc.RegisterCA(ctx, e.p, string(e.svc.ChainPEM()))
	wantCode(t, err, iothub.EINVALID) // two blocks

	_, err = e.svc.AuthorizeClient(e.p, "dev1", peer, time.Now())
	wantRefusal(t, err, "unknown issuer")
	// Another node on the same store and bus, running before the proof.
	node2 := e.service(t)

	wrongCN := opensslSign(t, dir, "acme", "wrongcn", "not-the-code", "")
	_, err = e.svc.VerifyCA(ctx, ca.ID, wrongCN)
	wantCode(t, err, iothub.EINVALID)
	wrongSigner := opensslSign(t, dir, "mallory", "wrongsigner", ca.VerificationCode, "")
	_, err = e.svc.VerifyCA(ctx, ca.ID, wrongSigner)
	wantCode(t, err, iothub.EINVALID)
	_, err = e.svc.VerifyCA(ctx, ca.ID, "junk")
	wantCode(t, err, iothub.EINVALID)
	_, err = e.svc.VerifyCA(ctx, "no-such-id", wrongCN)
	wantCode(t, err, iothub.ENOTFOUND)
	if got, err := e.svc.ExternalCA(ctx, ca.ID); err != nil || got.Verified {
		t.Fatalf("after refused proofs: %+v, %v", got, err)
	}
	_, err = e.svc.AuthorizeClient(e.p, "dev1", peer, time.Now())
	wantRefusal(t, err, "unknown issuer")

	proof := opensslSign(t, dir, "acme", "proof", ca.VerificationCode, "")
	v, err := e.svc.VerifyCA(ctx, ca.ID, proof)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Verified || v.VerifiedAt == nil {
		t.Fatalf("verified CA %+v", v)
	}
	if got, err := e.svc.ExternalCA(ctx, ca.ID); err != nil || !got.Verified {
		t.Fatalf("stored CA %+v, %v", got, err)
	}
	_, err = e.svc.VerifyCA(ctx, ca.ID, proof)
	wantCode(t, err, iothub.ECONFLICT)
	// The other node trusts it from the bus event, without a restart.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := node2.AuthorizeClient(e.p, "dev1", peer, time.Now()); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the other node still refuses the verified CA's device: %v", err)
		}
	}

	serial, err := e.svc.AuthorizeClient(e.p, "dev1", peer, time.Now())
	if err != nil || serial != dev.SerialNumber.Text(16) {
		t.Fatalf("verified CA's device: %q, %v", serial, err)
	}
	_, err = e.svc.AuthorizeClient(e.p, "dev2", peer, time.Now())
	wantRefusal(t, err, "certificate names another device")
	_, err = e.svc.AuthorizeClient(other, "dev1", peer, time.Now())
	wantRefusal(t, err, "unknown issuer")
	// A certificate of the CA for servers only does not log a device in.
	srv := parsePEMCert(t, opensslSign(t, dir, "acme", "srv", "dev1", serverExt))
	_, err = e.svc.AuthorizeClient(e.p, "dev1", []*x509.Certificate{srv}, time.Now())
	wantRefusal(t, err, "certificate not valid for client authentication")
	// A device certificate of mallory's CA is still unknown.
	mal := parsePEMCert(t, opensslSign(t, dir, "mallory", "maldev", "dev1", clientExt))
	_, err = e.svc.AuthorizeClient(e.p, "dev1", []*x509.Certificate{mal}, time.Now())
	wantRefusal(t, err, "unknown issuer")

	// A restarted service trusts the verified CA from the store.
	s2 := e.service(t)
	if _, err := s2.AuthorizeClient(e.p, "dev1", peer, time.Now()); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if _, err := s2.AuthorizeClient(other, "dev1", peer, time.Now()); err == nil {
		t.Fatal("after restart the CA is trusted for another product")
	}
}
