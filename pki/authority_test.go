package pki

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOpenAuthority: a first open creates the hierarchy and server
// certificates with private files; a second reuses all of it; new
// hostnames re-issue only the server certificates; loose key modes are
// refused.
func TestOpenAuthority(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	opts := AuthorityOptions{Hostnames: []string{"hub.example", "localhost", "127.0.0.1", "::1"}, PublicURL: "https://hub.example:8443/"}
	a, err := OpenAuthority(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if a.PublicURL() != "https://hub.example:8443" {
		t.Fatalf("public URL %q", a.PublicURL())
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("CA dir mode %04o", fi.Mode().Perm())
	}
	for _, name := range []string{rootKeyFile, issuingKeyFile, serverRSAKey, serverECDSAKey} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %04o", name, fi.Mode().Perm())
		}
		if b := readFile(t, dir, name); !strings.HasPrefix(b, "-----BEGIN PRIVATE KEY-----") {
			t.Fatalf("%s is not PKCS#8 PEM", name)
		}
	}
	root, issuing := a.Root(), a.IssuingCA()
	if k, ok := root.PublicKey.(*rsa.PublicKey); !ok || k.N.BitLen() != rootKeyBits || !root.IsCA {
		t.Fatalf("root key %T", root.PublicKey)
	}
	if k, ok := issuing.PublicKey.(*rsa.PublicKey); !ok || k.N.BitLen() != 2048 || !issuing.IsCA || !issuing.MaxPathLenZero {
		t.Fatalf("issuing key %T", issuing.PublicKey)
	}
	if err := issuing.CheckSignatureFrom(root); err != nil {
		t.Fatal(err)
	}
	if string(a.ChainPEM()) != string(pemCert(issuing.Raw))+string(pemCert(root.Raw)) {
		t.Fatal("chain is not issuing then root")
	}

	certs := a.ServerCertificates()
	if len(certs) != 2 {
		t.Fatalf("%d server certificates", len(certs))
	}
	if _, ok := certs[0].PrivateKey.(*rsa.PrivateKey); !ok {
		t.Fatalf("first server key is %T, want RSA", certs[0].PrivateKey)
	}
	if _, ok := certs[1].PrivateKey.(*ecdsa.PrivateKey); !ok {
		t.Fatalf("second server key is %T, want ECDSA", certs[1].PrivateKey)
	}
	for _, c := range certs {
		if len(c.Certificate) != 2 || string(c.Certificate[1]) != string(issuing.Raw) {
			t.Fatal("server chain is not leaf, issuing")
		}
		inter := x509.NewCertPool()
		inter.AddCert(issuing)
		for _, host := range []string{"hub.example", "localhost", "127.0.0.1", "::1"} {
			if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: a.Roots(), Intermediates: inter}); err != nil {
				t.Fatalf("server certificate for %s: %v", host, err)
			}
		}
		if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: "other.example", Roots: a.Roots(), Intermediates: inter}); err == nil {
			t.Fatal("server certificate names other.example")
		}
		if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: a.Roots(), Intermediates: inter, KeyUsages: clientAuth}); err == nil {
			t.Fatal("server certificate is good for client auth")
		}
	}
	vdir := t.TempDir()
	writeFile(t, vdir, "chain.pem", a.ChainPEM())
	writeFile(t, vdir, "server.pem", pemCert(certs[0].Leaf.Raw))
	if out := mustOpenSSL(t, vdir, "verify", "-CAfile", "chain.pem", "-purpose", "sslserver", "server.pem"); !strings.Contains(out, "server.pem: OK") {
		t.Fatalf("openssl verify server: %s", out)
	}

	// Reopen: same keys, same certificates.
	b, err := OpenAuthority(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if fingerprint(b.Root()) != fingerprint(root) || fingerprint(b.IssuingCA()) != fingerprint(issuing) {
		t.Fatal("reopen made a new CA")
	}
	for i, c := range b.ServerCertificates() {
		if fingerprint(c.Leaf) != fingerprint(certs[i].Leaf) {
			t.Fatalf("reopen re-issued server certificate %d", i)
		}
	}

	// New hostnames: new server certificates from the same CA.
	c, err := OpenAuthority(dir, AuthorityOptions{Hostnames: []string{"other.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if fingerprint(c.Root()) != fingerprint(root) {
		t.Fatal("hostname change replaced the root")
	}
	for i, sc := range c.ServerCertificates() {
		if fingerprint(sc.Leaf) == fingerprint(certs[i].Leaf) {
			t.Fatalf("server certificate %d not re-issued for new hostnames", i)
		}
		if len(sc.Leaf.DNSNames) != 1 || sc.Leaf.DNSNames[0] != "other.example" || len(sc.Leaf.IPAddresses) != 0 {
			t.Fatalf("re-issued names %v %v", sc.Leaf.DNSNames, sc.Leaf.IPAddresses)
		}
	}

	// A server certificate near expiry is re-issued at open.
	rsaCert := c.ServerCertificates()[0]
	csr, err := ParseCSR(goCSR(t, rsaCert.PrivateKey.(*rsa.PrivateKey)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	short, err := c.issue(c.cur.Load().issuing, csr, profile{dnsNames: []string{"other.example"}, extUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		notBefore: now.Add(-time.Minute), notAfter: now.Add(serverRenewBefore - time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.savePair(serverRSAKey, serverRSACert, rsaCert.PrivateKey.(*rsa.PrivateKey), short.Raw); err != nil {
		t.Fatal(err)
	}
	renewed, err := OpenAuthority(dir, AuthorityOptions{Hostnames: []string{"other.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if leaf := renewed.ServerCertificates()[0].Leaf; fingerprint(leaf) == fingerprint(short) || leaf.NotAfter.Sub(now) < 300*24*time.Hour {
		t.Fatalf("near-expiry server certificate kept (notAfter %v)", leaf.NotAfter)
	}
	if fingerprint(renewed.ServerCertificates()[1].Leaf) != fingerprint(c.ServerCertificates()[1].Leaf) {
		t.Fatal("the ECDSA certificate was re-issued though it is fine")
	}

	// Loose key permissions are refused.
	if err := os.Chmod(filepath.Join(dir, issuingKeyFile), 0o640); err != nil {
		t.Fatal(err)
	}
	_, err = OpenAuthority(dir, opts)
	if err == nil || !strings.Contains(err.Error(), "accessible by group or others") {
		t.Fatalf("loose issuing key: %v", err)
	}
	if err := os.Chmod(filepath.Join(dir, issuingKeyFile), 0o600); err != nil {
		t.Fatal(err)
	}
	// A key that does not match its certificate is refused.
	rootKey := readFile(t, dir, rootKeyFile)
	writeFile(t, dir, rootKeyFile, []byte(readFile(t, dir, issuingKeyFile)))
	if _, err := OpenAuthority(dir, opts); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("swapped key: %v", err)
	}
	writeFile(t, dir, rootKeyFile, []byte(rootKey))
	if _, err := OpenAuthority(dir, opts); err != nil {
		t.Fatalf("restored CA: %v", err)
	}
}

// TestOpenAuthorityRefusesBadOptions: bad options are refused before any
// key is made.
func TestOpenAuthorityRefusesBadOptions(t *testing.T) {
	for _, o := range []AuthorityOptions{
		{PublicURL: "ftp://hub.example"},
		{PublicURL: "hub.example:8443"},
		{PublicURL: "https://user:pw@hub.example"},
		{Hostnames: []string{"bad host"}},
		{Hostnames: []string{"-bad.example"}},
		{Hostnames: []string{" "}},
	} {
		dir := filepath.Join(t.TempDir(), "ca")
		if _, err := OpenAuthority(dir, o); err == nil {
			t.Fatalf("%+v accepted", o)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("%+v created the CA dir", o)
		}
	}
}

// TestServerCertificatesTLS: both server certificates serve real TLS on
// 127.0.0.1 to a client trusting only the root; the client's hub-issued
// certificate arrives intact and AuthorizeClient accepts it.
func TestServerCertificatesTLS(t *testing.T) {
	e := newEnv(t)
	d := e.device(t, e.p, "dev1")
	key := p256Key(t)
	c, err := e.svc.Enroll(ctx, e.p, d, goCSR(t, key), 0)
	if err != nil {
		t.Fatal(err)
	}
	clientCert := tls.Certificate{Certificate: [][]byte{parsePEMCert(t, c.CertPEM).Raw}, PrivateKey: key}

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: shared.ServerCertificates(),
		ClientAuth:   tls.RequireAnyClientCert,
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		serial string
		err    error
	}
	results := make(chan result, 4)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			tc := conn.(*tls.Conn)
			err = tc.Handshake()
			var r result
			if err == nil {
				r.serial, r.err = e.svc.AuthorizeClient(e.p, d.DeviceKey, tc.ConnectionState().PeerCertificates, time.Now())
			} else {
				r.err = err
			}
			results <- r
			tc.Close()
		}
	}()
	for _, tc := range []struct {
		name  string
		suite uint16
		isRSA bool
	}{
		{"rsa", tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, true},
		{"ecdsa", tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, false},
	} {
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
			RootCAs:      shared.Roots(),
			ServerName:   "localhost",
			Certificates: []tls.Certificate{clientCert},
			MaxVersion:   tls.VersionTLS12,
			CipherSuites: []uint16{tc.suite},
		})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		_, isRSA := conn.ConnectionState().PeerCertificates[0].PublicKey.(*rsa.PublicKey)
		conn.Close()
		if isRSA != tc.isRSA {
			t.Fatalf("%s: server presented the other certificate", tc.name)
		}
		r := <-results
		if r.err != nil || r.serial != c.Serial {
			t.Fatalf("%s: AuthorizeClient %q, %v", tc.name, r.serial, r.err)
		}
	}
}

func fingerprint(c *x509.Certificate) [32]byte { return sha256.Sum256(c.Raw) }
