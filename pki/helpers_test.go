package pki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/inmem"
	"github.com/iothub/iothub/seal"
	"github.com/iothub/iothub/sqlite"
)

const testURL = "https://127.0.0.1:8443"

var ctx = context.Background()

// shared is one CA for the whole package run: creating a CA costs an
// RSA-3072 and two RSA-2048 key generations, so tests that do not test the
// creation itself reuse this one, each with its own database and service.
var shared *Authority

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pki-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shared, err = OpenAuthority(filepath.Join(dir, "ca"), AuthorityOptions{
		Hostnames: []string{"localhost", "127.0.0.1"},
		PublicURL: testURL,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is a real SQLite store, an in-process bus and a service on the
// shared CA, with one product.
type env struct {
	dir    string
	dbPath string
	sealer *seal.Sealer
	db     *sqlite.DB
	bus    *inmem.Bus
	svc    *Service
	p      *iothub.Product
	events chan iothub.Event
}

func newEnv(t testing.TB) *env {
	t.Helper()
	dir := t.TempDir()
	key, err := seal.LoadOrCreateKey(filepath.Join(dir, "data.key"))
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := seal.New(key)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{dir: dir, dbPath: filepath.Join(dir, "hub.db"), sealer: sealer, bus: inmem.NewBus(), events: make(chan iothub.Event, 100)}
	e.db, err = sqlite.Open(e.dbPath, sealer)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close() })
	e.p = e.product(t, "prodA")
	unsub := e.bus.Subscribe(func(ev iothub.Event) {
		select {
		case e.events <- ev:
		default:
		}
	})
	t.Cleanup(unsub)
	e.svc = e.service(t)
	return e
}

// service starts another service on the env's store and bus.
func (e *env) service(t testing.TB) *Service {
	t.Helper()
	s, err := NewService(shared, e.db, e.bus, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func (e *env) product(t testing.TB, pk string) *iothub.Product {
	t.Helper()
	p := &iothub.Product{OrgID: iothub.DefaultOrgID, ProductKey: pk, ProductSecret: iothub.RandomString(iothub.SecretLen),
		Name: pk, AuthMode: iothub.AuthCertificate, CreatedAt: time.Now()}
	if err := e.db.CreateProduct(ctx, p); err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *env) device(t testing.TB, p *iothub.Product, dk string) *iothub.Device {
	t.Helper()
	d, err := iothub.NewDevice(p, dk, "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.db.CreateDevice(ctx, d); err != nil {
		t.Fatal(err)
	}
	return d
}

// deviceCerts lists what the store holds for a device.
// enrollAndRenew enrolls a P-256 key for d in e.p, renews it with a new
// key, and returns the first certificate and its renewal.
func (e *env) enrollAndRenew(t testing.TB, d *iothub.Device) (first, renewed *iothub.Certificate) {
	t.Helper()
	first, err := e.svc.Enroll(ctx, e.p, d, goCSR(t, p256Key(t)), 0)
	if err != nil {
		t.Fatal(err)
	}
	renewed, err = e.svc.Renew(ctx, e.p, d, goCSR(t, p256Key(t)))
	if err != nil {
		t.Fatal(err)
	}
	return first, renewed
}

func (e *env) deviceCerts(t testing.TB, p *iothub.Product, dk string) []*iothub.Certificate {
	t.Helper()
	d, err := e.db.Device(ctx, p.ProductKey, dk)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := e.svc.Certificates(ctx, d.AssetID)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// nextEvent returns the next bus event or fails.
func (e *env) nextEvent(t testing.TB) iothub.Event {
	t.Helper()
	select {
	case ev := <-e.events:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event on the bus")
		return iothub.Event{}
	}
}

func wantCode(t testing.TB, err error, code string) {
	t.Helper()
	if got := iothub.ErrorCode(err); got != code {
		t.Fatalf("error code %q (%v), want %q", got, err, code)
	}
}

func wantRefusal(t testing.TB, err error, reason string) {
	t.Helper()
	wantCode(t, err, iothub.EUNAUTHORIZED)
	if msg := iothub.ErrorMessage(err); msg != reason {
		t.Fatalf("refusal %q, want %q", msg, reason)
	}
}

var (
	rsaKeysMu sync.Mutex
	rsaKeys   []*rsa.PrivateKey
)

// rsaKey returns the i-th RSA-2048 key of a pool kept for the whole run
// (generating one takes about 50 ms).
func rsaKey(t testing.TB, i int) *rsa.PrivateKey {
	t.Helper()
	rsaKeysMu.Lock()
	defer rsaKeysMu.Unlock()
	for len(rsaKeys) <= i {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		rsaKeys = append(rsaKeys, k)
	}
	return rsaKeys[i]
}

func p256Key(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// goCSR makes a PEM CSR for key with Go.
func goCSR(t testing.TB, key crypto.Signer) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func parsePEMCert(t testing.TB, s string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		t.Fatalf("no PEM in %q", s)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// openssl runs the openssl CLI in dir and returns its combined output.
func openssl(t testing.TB, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("openssl", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustOpenSSL runs openssl and fails the test if it fails.
func mustOpenSSL(t testing.TB, dir string, args ...string) string {
	t.Helper()
	out, err := openssl(t, dir, args...)
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func readFile(t testing.TB, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// newKeyArgs are openssl req -newkey arguments per key type.
var newKeyArgs = map[string][]string{
	"rsa2048": {"-newkey", "rsa:2048"},
	"rsa1024": {"-newkey", "rsa:1024"},
	"p256":    {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"},
	"p384":    {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"},
	"ed25519": {"-newkey", "ed25519"},
}

// opensslCSR makes a key and a CSR with openssl req and returns the CSR PEM.
func opensslCSR(t testing.TB, dir, name, keyType, cn string, extra ...string) string {
	t.Helper()
	args := append([]string{"req", "-new"}, newKeyArgs[keyType]...)
	args = append(args, "-nodes", "-keyout", name+".key", "-subj", "/CN="+cn, "-out", name+".csr")
	args = append(args, extra...)
	mustOpenSSL(t, dir, args...)
	return readFile(t, dir, name+".csr")
}
