package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// openssl runs the openssl CLI in dir and returns its combined output.
func openssl(t testing.TB, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(needTool(t, "openssl"), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustOpenSSL is openssl that fails the test on error.
func mustOpenSSL(t testing.TB, dir string, args ...string) string {
	t.Helper()
	out, err := openssl(t, dir, args...)
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// makeCSR has openssl make a key and CSR named name.key/name.csr in dir
// and returns the CSR text. newkey is e.g. rsa:2048 or ec with -pkeyopt.
func makeCSR(t testing.TB, dir, name, cn string, keyArgs ...string) string {
	t.Helper()
	args := append([]string{"req", "-new", "-nodes", "-subj", "/CN=" + cn, "-keyout", name + ".key", "-out", name + ".csr"}, keyArgs...)
	mustOpenSSL(t, dir, args...)
	b, err := os.ReadFile(filepath.Join(dir, name+".csr"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type issued struct {
	Serial, Cert, CAChain string
	NotAfter              time.Time
}

// TestCertificateServiceWithOpenSSL: an openssl-made CSR becomes a
// certificate openssl verifies against /ca.pem; after revocation /crl and
// /ocsp both say revoked.
func TestCertificateServiceWithOpenSSL(t *testing.T) {
	th := startHub(t, "")
	dir := t.TempDir()
	p := th.newProduct(t, map[string]any{"name": "gateway", "authMode": "certificate"})
	d := th.newDevice(t, p, "EDGE-1")
	os.WriteFile(filepath.Join(dir, "ca.pem"), th.get(t, "/ca.pem"), 0o600)

	for _, kind := range []struct {
		name string
		args []string
	}{
		{"rsa", []string{"-newkey", "rsa:2048"}},
		{"p256", []string{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"}},
	} {
		csr := makeCSR(t, dir, kind.name, "EDGE-1", kind.args...)
		var c issued
		do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/devices/EDGE-1/certificates", map[string]any{"csr": csr, "validDays": 30}, &c, 201)
		if c.Serial != strings.ToLower(c.Serial) || strings.ContainsAny(c.Serial, ":") || c.CAChain == "" {
			t.Fatalf("issued %+v", c)
		}
		if d := time.Until(c.NotAfter); d < 29*24*time.Hour || d > 31*24*time.Hour {
			t.Fatalf("notAfter %v is not 30 days away", c.NotAfter)
		}
		certFile := kind.name + ".pem"
		os.WriteFile(filepath.Join(dir, certFile), []byte(c.Cert), 0o600)
		if out := mustOpenSSL(t, dir, "verify", "-CAfile", "ca.pem", "-purpose", "sslclient", certFile); !strings.Contains(out, ": OK") {
			t.Fatalf("openssl verify: %s", out)
		}
		text := mustOpenSSL(t, dir, "x509", "-in", certFile, "-noout", "-text")
		for _, want := range []string{"CN = EDGE-1", "URI:iothub://" + p.ProductKey + "/EDGE-1", "/crl", "OCSP - URI:", "TLS Web Client Authentication"} {
			if !strings.Contains(text, want) {
				t.Errorf("certificate lacks %q:\n%s", want, text)
			}
		}
		ocsp := func() string {
			out, _ := openssl(t, dir, "ocsp", "-issuer", "issuing.pem", "-cert", certFile, "-url", th.HTTPURL()+"/ocsp", "-CAfile", "ca.pem")
			return out
		}
		os.WriteFile(filepath.Join(dir, "issuing.pem"), []byte(firstPEM(c.CAChain)), 0o600)
		if out := ocsp(); !strings.Contains(out, certFile+": good") {
			t.Fatalf("OCSP before revocation:\n%s", out)
		}

		do(t, th.admin, "POST", "/api/v1/certificates/"+c.Serial+"/revoke", map[string]any{"reason": "keyCompromise"}, nil, 200)
		do(t, th.admin, "POST", "/api/v1/certificates/"+c.Serial+"/revoke", map[string]any{"reason": "keyCompromise"}, nil, 409)
		os.WriteFile(filepath.Join(dir, "crl.der"), th.get(t, "/crl"), 0o600)
		mustOpenSSL(t, dir, "crl", "-inform", "DER", "-in", "crl.der", "-out", "crl.pem")
		out, err := openssl(t, dir, "verify", "-crl_check", "-CRLfile", "crl.pem", "-CAfile", "ca.pem", certFile)
		if err == nil || !strings.Contains(out, "certificate revoked") {
			t.Fatalf("openssl verify -crl_check after revocation: %v\n%s", err, out)
		}
		if out := ocsp(); !strings.Contains(out, certFile+": revoked") || !strings.Contains(out, "keyCompromise") {
			t.Fatalf("OCSP after revocation:\n%s", out)
		}
	}
	var list struct {
		Certificates []struct{ Status, Reason string }
	}
	do(t, th.admin, "GET", "/api/v1/products/"+p.ProductKey+"/devices/"+d.DeviceKey+"/certificates", nil, &list, 200)
	if len(list.Certificates) != 2 || list.Certificates[0].Status != "revoked" || list.Certificates[1].Reason != "keyCompromise" {
		t.Fatalf("certificate list %+v", list.Certificates)
	}
}

func firstPEM(chain string) string {
	end := "-----END CERTIFICATE-----"
	i := strings.Index(chain, end)
	return chain[:i+len(end)] + "\n"
}

// TestBadCSRsStoreNothing: RSA-1024, a broken signature, garbage and an
// oversize body are 400 (413 for size), and no certificate is stored.
func TestBadCSRsStoreNothing(t *testing.T) {
	th := startHub(t, "")
	dir := t.TempDir()
	p := th.newProduct(t, map[string]any{"name": "gateway", "authMode": "certificate"})
	th.newDevice(t, p, "EDGE-2")
	path := "/api/v1/products/" + p.ProductKey + "/devices/EDGE-2/certificates"

	weak := makeCSR(t, dir, "weak", "EDGE-2", "-newkey", "rsa:1024")
	good := makeCSR(t, dir, "good", "EDGE-2", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
	lines := strings.Split(good, "\n")
	mid := len(lines) / 2
	broken := []byte(lines[mid])
	if broken[5] == 'A' {
		broken[5] = 'B'
	} else {
		broken[5] = 'A'
	}
	lines[mid] = string(broken)
	p384 := makeCSR(t, dir, "p384", "EDGE-2", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384")
	for name, csr := range map[string]string{
		"rsa-1024":        weak,
		"broken":          strings.Join(lines, "\n"),
		"garbage":         "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n",
		"not pem":         "hello",
		"p-384":           p384,
		"two csrs":        good + good,
		"empty":           "",
		"certificate pem": string(th.ChainPEM()),
	} {
		var body struct{ Error struct{ Message string } }
		got, _ := th.admin.Send(t.Context(), "POST", path, map[string]any{"csr": csr}, &body)
		if got != 400 {
			t.Errorf("%s CSR: status %d, want 400", name, got)
		}
	}
	do(t, th.admin, "POST", path, map[string]any{"csr": strings.Repeat("A", 2<<20)}, nil, 413)
	var list struct{ Certificates []any }
	do(t, th.admin, "GET", path, nil, &list, 200)
	if len(list.Certificates) != 0 {
		t.Fatalf("bad CSRs stored %d certificates", len(list.Certificates))
	}
	// The good one still works, and a second device cannot bind the same key.
	do(t, th.admin, "POST", path, map[string]any{"csr": good}, nil, 201)
	th.newDevice(t, p, "EDGE-3")
	do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/devices/EDGE-3/certificates", map[string]any{"csr": good}, nil, 409)
}

// TestDeviceSignedEnrollment: the /device/v1 endpoint issues for a
// correct DeviceSecret signature within the time window, and refuses
// anything else alike.
func TestDeviceSignedEnrollment(t *testing.T) {
	th := startHub(t, "")
	dir := t.TempDir()
	p := th.newProduct(t, map[string]any{"name": "gateway", "authMode": "certificate"})
	d := th.newDevice(t, p, "EDGE-4")
	csr := makeCSR(t, dir, "dev", "EDGE-4", "-newkey", "rsa:2048")
	body := func(secret string, ts time.Time) map[string]any {
		tss := strconv.FormatInt(ts.UnixMilli(), 10)
		h := sha256.Sum256([]byte(csr))
		s, _ := sign.Compute(sign.SHA256, []sign.Pair{{Key: "csrSha256", Value: hex.EncodeToString(h[:])}, {Key: "deviceKey", Value: "EDGE-4"}, {Key: "productKey", Value: p.ProductKey}, {Key: "timestamp", Value: tss}}, secret)
		return map[string]any{"csr": csr, "timestamp": tss, "signMethod": "sha256", "sign": s}
	}
	anon := th.as(t, "")
	path := "/device/v1/" + p.ProductKey + "/EDGE-4/certificates"
	do(t, anon, "POST", path, body("wrong", time.Now()), nil, 401)
	do(t, anon, "POST", path, body(d.DeviceSecret, time.Now().Add(-10*time.Minute)), nil, 401)
	do(t, anon, "POST", "/device/v1/"+p.ProductKey+"/NOBODY/certificates", body(d.DeviceSecret, time.Now()), nil, 401)
	var c issued
	do(t, anon, "POST", path, body(d.DeviceSecret, time.Now()), &c, 201)
	os.WriteFile(filepath.Join(dir, "ca.pem"), th.ChainPEM(), 0o600)
	os.WriteFile(filepath.Join(dir, "dev.pem"), []byte(c.Cert), 0o600)
	if out := mustOpenSSL(t, dir, "verify", "-CAfile", "ca.pem", "dev.pem"); !strings.Contains(out, "OK") {
		t.Fatal(out)
	}
	var events struct{ Events []iothub.AuditEvent }
	do(t, th.admin, "GET", "/api/v1/audit", nil, &events, 200)
	refusals := 0
	for _, e := range events.Events {
		if e.Kind == "device_api.refused" {
			refusals++
		}
	}
	if refusals < 2 {
		t.Fatalf("audit has %d device API refusals, want the bad signature and the unknown device", refusals)
	}
}

// TestExternalCAProofOfPossession registers an openssl-made CA, refuses a
// proof with the wrong CN and accepts the right one.
func TestExternalCAProofOfPossession(t *testing.T) {
	th := startHub(t, "")
	dir := t.TempDir()
	p := th.newProduct(t, map[string]any{"name": "oem", "authMode": "certificate"})
	mustOpenSSL(t, dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "oem.key", "-out", "oem.pem", "-days", "30", "-subj", "/CN=OEM Root",
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
	caPEM, _ := os.ReadFile(filepath.Join(dir, "oem.pem"))
	var ca struct{ ID, VerificationCode string }
	do(t, th.admin, "POST", "/api/v1/cas", map[string]any{"cert": string(caPEM), "productKey": p.ProductKey}, &ca, 201)
	if ca.VerificationCode == "" {
		t.Fatal("no verification code")
	}
	proof := func(cn string) string {
		makeCSR(t, dir, "proof", cn, "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
		mustOpenSSL(t, dir, "x509", "-req", "-in", "proof.csr", "-CA", "oem.pem", "-CAkey", "oem.key", "-CAcreateserial", "-out", "proof.pem", "-days", "1")
		b, _ := os.ReadFile(filepath.Join(dir, "proof.pem"))
		return string(b)
	}
	do(t, th.admin, "POST", "/api/v1/cas/"+ca.ID+"/verify", map[string]any{"cert": proof("not-the-code")}, nil, 400)
	var got struct{ Verified bool }
	do(t, th.admin, "GET", "/api/v1/cas/"+ca.ID, nil, &got, 200)
	if got.Verified {
		t.Fatal("a wrong CN verified the CA")
	}
	var ok struct{ Status string }
	do(t, th.admin, "POST", "/api/v1/cas/"+ca.ID+"/verify", map[string]any{"cert": proof(ca.VerificationCode)}, &ok, 200)
	if ok.Status != "verified" {
		t.Fatalf("verify answered %+v", ok)
	}
}
