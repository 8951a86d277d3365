package manage_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/inmem"
	"github.com/iothub/iothub/manage"
	"github.com/iothub/iothub/pki"
	"github.com/iothub/iothub/seal"
	"github.com/iothub/iothub/sqlite"
)

var ctx = context.Background()

// env is a real SQLite store, a real certificate service and the in-process
// bus, with the events it carried.
type env struct {
	store  *sqlite.DB
	svc    *manage.Service
	mu     sync.Mutex
	events []iothub.Event
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	key, err := seal.LoadOrCreateKey(filepath.Join(dir, "data.key"))
	if err != nil {
		t.Fatal(err)
	}
	sealer, _ := seal.New(key)
	db, err := sqlite.Open(filepath.Join(dir, "hub.db"), sealer)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	auth, err := pki.OpenAuthority(filepath.Join(dir, "ca"), pki.AuthorityOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bus := inmem.NewBus()
	certs, err := pki.NewService(auth, db, bus, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { certs.Close() })
	e := &env{store: db, svc: manage.New(manage.Config{Store: db, Certs: certs, Bus: bus})}
	unsub := bus.Subscribe(func(ev iothub.Event) {
		e.mu.Lock()
		e.events = append(e.events, ev)
		e.mu.Unlock()
	})
	t.Cleanup(unsub)
	return e
}

func csr(t *testing.T) string {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "d"}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// F4, F13: deleting or resetting a device revokes its certificates, and
// every audit row the operations write carries the device's org.
func TestDeleteAndResetRevokeCertificatesAndAuditWithOrg(t *testing.T) {
	e := newEnv(t)
	if err := e.store.CreateOrg(ctx, &iothub.Org{ID: "acme", Name: "Acme"}); err != nil {
		t.Fatal(err)
	}
	p := &iothub.Product{OrgID: "acme", ProductKey: "pk", ProductSecret: "s", Name: "p", AuthMode: iothub.AuthCertificate}
	if err := e.store.CreateProduct(ctx, p); err != nil {
		t.Fatal(err)
	}
	who := manage.Actor{Remote: "192.0.2.1", By: "apikey key_test"}
	d, err := e.svc.CreateDevice(ctx, who, p, "dev", "")
	if err != nil {
		t.Fatal(err)
	}
	c1, err := e.svc.EnrollCertificate(ctx, who, d, csr(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	reset, err := e.svc.ResetDevice(ctx, who, d)
	if err != nil {
		t.Fatal(err)
	}
	if reset.DeviceSecret == d.DeviceSecret {
		t.Fatal("reset kept the secret")
	}
	c2, err := e.svc.EnrollCertificate(ctx, who, reset, csr(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.DeleteDevice(ctx, who, reset); err != nil {
		t.Fatal(err)
	}
	for _, serial := range []string{c1.Serial, c2.Serial} {
		c, err := e.store.Certificate(ctx, serial)
		if err != nil {
			t.Fatal(err)
		}
		if c.RevokedAt == nil || c.Reason != "cessationOfOperation" {
			t.Fatalf("certificate %s after reset/delete: revoked %v reason %q", serial, c.RevokedAt, c.Reason)
		}
	}
	events, err := e.store.AuditEvents(ctx, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, ev := range events {
		if ev.OrgID != "acme" || ev.Remote != "192.0.2.1" {
			t.Fatalf("audit row without its org or source: %+v", ev)
		}
		kinds[ev.Kind]++
	}
	for kind, n := range map[string]int{"device.created": 1, "cert.issued": 2, "device.reset": 1, "cert.revoked": 2, "device.deleted": 1} {
		if kinds[kind] != n {
			t.Fatalf("audit kinds %v, want %d %s", kinds, n, kind)
		}
	}
	// Sessions are closed through the bus: a device change per lifecycle
	// step and a revocation per certificate.
	deadline := time.Now().Add(5 * time.Second)
	for {
		e.mu.Lock()
		got := map[iothub.EventKind]int{}
		for _, ev := range e.events {
			got[ev.Kind]++
		}
		e.mu.Unlock()
		if got[iothub.EventDeviceChanged] == 2 && got[iothub.EventCertRevoked] == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bus events %v", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
