package hub

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"

	"github.com/iothub/iothub/pki"
)

// TestServerKeyPreference runs real TLS handshakes on loopback and checks
// which of the hub's two certificates each kind of client gets.
func TestServerKeyPreference(t *testing.T) {
	auth, err := pki.OpenAuthority(t.TempDir(), pki.AuthorityOptions{Hostnames: []string{"localhost"}, PublicURL: "https://localhost"})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(auth.ChainPEM())
	ecFirst := []tls.CurveID{tls.X25519, tls.CurveP256}
	rsaOnly := &tls.Config{RootCAs: pool, ServerName: "localhost", MaxVersion: tls.VersionTLS12, CurvePreferences: ecFirst,
		CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}}
	ecdsaOnly := &tls.Config{RootCAs: pool, ServerName: "localhost", MaxVersion: tls.VersionTLS12, CurvePreferences: ecFirst,
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}
	goDefault := &tls.Config{RootCAs: pool, ServerName: "localhost"} // Go lists RSA-PSS before ECDSA

	for _, tc := range []struct {
		policy string
		client *tls.Config
		want   string
	}{
		{ServerKeyRSA, goDefault, "rsa"},
		{ServerKeyECDSA, goDefault, "ecdsa"},
		{ServerKeyClient, goDefault, "rsa"},
		{ServerKeyECDSA, rsaOnly, "rsa"},
		{ServerKeyRSA, ecdsaOnly, "ecdsa"},
	} {
		choose, err := certificateChooser(auth.ServerCertificates, tc.policy)
		if err != nil {
			t.Fatal(err)
		}
		if got := handshakeKey(t, &tls.Config{GetCertificate: choose, MinVersion: tls.VersionTLS12}, tc.client); got != tc.want {
			t.Errorf("policy %s: client got %s, want %s", tc.policy, got, tc.want)
		}
	}
	if _, err := certificateChooser(auth.ServerCertificates, "dsa"); err == nil {
		t.Error("unknown policy accepted")
	}
}

func TestPrefersECDSA(t *testing.T) {
	openssl := []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256, tls.Ed25519, tls.PSSWithSHA256, tls.PKCS1WithSHA256}
	goClient := []tls.SignatureScheme{tls.PSSWithSHA256, tls.ECDSAWithP256AndSHA256}
	if !prefersECDSA(openssl) || prefersECDSA(goClient) || prefersECDSA(nil) {
		t.Fatal("preference read wrongly")
	}
}

// handshakeKey does one handshake and names the server key type the client saw.
func handshakeKey(t *testing.T, server, client *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, client)
	defer c.Close()
	if err := c.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	switch c.ConnectionState().PeerCertificates[0].PublicKey.(type) {
	case *rsa.PublicKey:
		return "rsa"
	case *ecdsa.PublicKey:
		return "ecdsa"
	}
	return "other"
}
