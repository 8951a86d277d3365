package postgres

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/migrations"
	"github.com/iothub/iothub/postgres/pgtest"
	"github.com/iothub/iothub/seal"
	"github.com/iothub/iothub/storetest"
)

var ctx = context.Background()

func TestMain(m *testing.M) {
	code := pgtest.Run(m)
	stopBench()
	os.Exit(code)
}

func newSealer(t testing.TB) *seal.Sealer {
	t.Helper()
	key, err := seal.LoadOrCreateKey(filepath.Join(t.TempDir(), "data.key"))
	must(t, err)
	s, err := seal.New(key)
	must(t, err)
	return s
}

func open(t testing.TB, url string, s *seal.Sealer) *DB {
	t.Helper()
	db, err := Open(url, s)
	must(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantCode(t testing.TB, err error, code string) {
	t.Helper()
	if got := iothub.ErrorCode(err); got != code {
		t.Fatalf("error code %q (%v), want %q", got, err, code)
	}
}

// The shared iothub.Store suite, the one the sqlite store passes.
func TestStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) iothub.Store { return open(t, pgtest.URL(t), newSealer(t)) })
}

func TestOpenRefusesBadInput(t *testing.T) {
	s := newSealer(t)
	if _, err := Open("postgres://127.0.0.1:1/x", nil); err == nil {
		t.Fatal("Open without a sealer succeeded")
	}
	if _, err := Open("", s); err == nil {
		t.Fatal("Open with an empty url succeeded")
	}
	if _, err := Open("postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=2", s); err == nil {
		t.Fatal("Open with nothing listening succeeded")
	}
}

// Two nodes opening one database migrate it once, share the default org,
// and read what the other wrote; a node with another data key cannot
// open the secrets.
func TestTwoNodesShareOneDatabase(t *testing.T) {
	url := pgtest.URL(t)
	s := newSealer(t)
	var a, b *DB
	var wg sync.WaitGroup
	var errA, errB error
	wg.Add(2)
	go func() { defer wg.Done(); a, errA = Open(url, s) }()
	go func() { defer wg.Done(); b, errB = Open(url, s) }()
	wg.Wait()
	must(t, errA)
	must(t, errB)
	t.Cleanup(func() { a.Close(); b.Close() })
	var versions int
	must(t, a.db.QueryRow(`SELECT COUNT(*) FROM goose_db_version WHERE version_id > 0`).Scan(&versions))
	files, err := fs.Glob(migrations.FS, "*.sql")
	must(t, err)
	if versions != len(files) {
		t.Fatalf("%d applied migrations, want %d (each once)", versions, len(files))
	}
	orgs, err := b.Orgs(ctx)
	must(t, err)
	if len(orgs) != 1 || orgs[0].ID != iothub.DefaultOrgID {
		t.Fatalf("orgs: %+v", orgs)
	}
	must(t, a.CreateProduct(ctx, &iothub.Product{OrgID: iothub.DefaultOrgID, ProductKey: "pk", ProductSecret: "product-secret-xyz"}))
	must(t, a.CreateDevice(ctx, &iothub.Device{ProductKey: "pk", DeviceKey: "d", DeviceSecret: "device-secret-xyz"}))
	d, err := b.Device(ctx, "pk", "d")
	must(t, err)
	if d.DeviceSecret != "device-secret-xyz" {
		t.Fatalf("node b read secret %q", d.DeviceSecret)
	}

	// At rest the secrets are sealed, and bound to their row.
	var stored string
	must(t, a.db.QueryRow(`SELECT device_secret FROM devices WHERE device_key = 'd'`).Scan(&stored))
	if strings.Contains(stored, "device-secret-xyz") {
		t.Fatal("device secret stored in clear")
	}
	must(t, a.db.QueryRow(`SELECT product_secret FROM products WHERE product_key = 'pk'`).Scan(&stored))
	if strings.Contains(stored, "product-secret-xyz") {
		t.Fatal("product secret stored in clear")
	}
	must(t, a.CreateDevice(ctx, &iothub.Device{ProductKey: "pk", DeviceKey: "attacker", DeviceSecret: "x"}))
	_, err = a.db.Exec(`UPDATE devices SET device_secret = (SELECT device_secret FROM devices WHERE device_key = 'd')
		WHERE device_key = 'attacker'`)
	must(t, err)
	if d, err := a.Device(ctx, "pk", "attacker"); err == nil {
		t.Fatalf("swapped ciphertext opened as %q", d.DeviceSecret)
	}

	other := open(t, url, newSealer(t))
	if _, err := other.Device(ctx, "pk", "d"); err == nil {
		t.Fatal("a node with another data key opened the secret")
	}
}

// What the sqlite store gets from its single writer, nodes writing at once
// get from locks: audit ids stay unique and gapless, a certificate is
// revoked once, a public key binds to one device, concurrent telemetry
// for one device loses no post.
func TestNodesWritingAtOnce(t *testing.T) {
	url := pgtest.URL(t)
	s := newSealer(t)
	nodes := []*DB{open(t, url, s), open(t, url, s), open(t, url, s)}
	a := nodes[0]
	must(t, a.CreateProduct(ctx, &iothub.Product{OrgID: iothub.DefaultOrgID, ProductKey: "pk", ProductSecret: "s"}))
	for i := range 3 {
		must(t, a.CreateDevice(ctx, &iothub.Device{ProductKey: "pk", DeviceKey: fmt.Sprintf("d%d", i), DeviceSecret: "s"}))
	}
	now := time.Now()
	must(t, a.CreateCertificate(ctx, &iothub.Certificate{Serial: "c1", ProductKey: "pk", DeviceKey: "d0",
		PublicKeySHA256: "k1", CertPEM: "pem", NotBefore: now, NotAfter: now.Add(time.Hour)}))

	const perNode = 30
	var (
		wg                  sync.WaitGroup
		mu                  sync.Mutex
		revoked, bound      int
		revokeCodes         = map[string]int{}
		bindCodes           = map[string]int{}
		appendErr, auditErr error
	)
	for n, db := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rerr := db.RevokeCertificate(ctx, "c1", "keyCompromise", time.Now())
			berr := db.CreateCertificate(ctx, &iothub.Certificate{Serial: fmt.Sprintf("k%d", n), ProductKey: "pk",
				DeviceKey: fmt.Sprintf("d%d", n), PublicKeySHA256: "shared-key", CertPEM: "pem", NotBefore: now, NotAfter: now.Add(time.Hour)})
			var aerr, serr error
			for i := range perNode {
				if err := db.Audit(ctx, iothub.AuditEvent{Kind: "login.ok", Reason: fmt.Sprintf("n%d-%d", n, i)}); err != nil {
					aerr = err
				}
				if err := db.AppendSamples(ctx, []iothub.Sample{
					{ProductKey: "pk", DeviceKey: "d1", Time: time.Now(), Measurepoints: []byte(fmt.Sprintf(`{"n":%d}`, n*perNode+i))},
					{ProductKey: "pk", DeviceKey: "d0", Time: time.Now(), Measurepoints: []byte(`{"x":1}`)},
				}); err != nil {
					serr = err
				}
			}
			mu.Lock()
			defer mu.Unlock()
			revokeCodes[iothub.ErrorCode(rerr)]++
			bindCodes[iothub.ErrorCode(berr)]++
			if rerr == nil {
				revoked++
			}
			if berr == nil {
				bound++
			}
			if aerr != nil {
				auditErr = aerr
			}
			if serr != nil {
				appendErr = serr
			}
		}()
	}
	wg.Wait()
	must(t, auditErr)
	must(t, appendErr)
	if revoked != 1 || revokeCodes[iothub.ECONFLICT] != 2 {
		t.Fatalf("revocations: %v, want one success and two conflicts", revokeCodes)
	}
	if bound != 1 || bindCodes[iothub.ECONFLICT] != 2 {
		t.Fatalf("bindings of one key to three devices: %v, want one success and two conflicts", bindCodes)
	}
	events, err := a.AuditEvents(ctx, "", 1000)
	must(t, err)
	if len(events) != 3*perNode || events[0].ID != 3*perNode || events[len(events)-1].ID != 1 {
		t.Fatalf("%d audit events, ids %d…%d, want %d, %d…1", len(events), events[len(events)-1].ID, events[0].ID, 3*perNode, 3*perNode)
	}
	samples, err := a.RecentSamples(ctx, "pk", "d1", 1000)
	must(t, err)
	if len(samples) != 3*perNode {
		t.Fatalf("device d1 has %d samples, want %d", len(samples), 3*perNode)
	}
}

func TestDeleteProductRacingCreateDevice(t *testing.T) {
	url := pgtest.URL(t)
	s := newSealer(t)
	a, b := open(t, url, s), open(t, url, s)
	for i := range 20 {
		pk := fmt.Sprintf("p%d", i)
		must(t, a.CreateProduct(ctx, &iothub.Product{OrgID: iothub.DefaultOrgID, ProductKey: pk, ProductSecret: "s"}))
		var wg sync.WaitGroup
		var derr, cerr error
		wg.Add(2)
		go func() { defer wg.Done(); derr = a.DeleteProduct(ctx, pk) }()
		go func() {
			defer wg.Done()
			cerr = b.CreateDevice(ctx, &iothub.Device{ProductKey: pk, DeviceKey: "d", DeviceSecret: "s"})
		}()
		wg.Wait()
		// Exactly one wins; the loser gets a domain error, never an internal one.
		switch {
		case derr == nil:
			wantCode(t, cerr, iothub.ENOTFOUND)
		case cerr == nil:
			wantCode(t, derr, iothub.ECONFLICT)
			if n, _ := a.CountDevices(ctx, pk); n != 1 {
				t.Fatalf("device count %d", n)
			}
		default:
			t.Fatalf("both failed: delete %v, create %v", derr, cerr)
		}
	}
}

// Two nodes applying login/logout batches over the same devices in
// opposite orders wait for each other rather than deadlock.
func TestApplyDeviceStatesAcrossNodes(t *testing.T) {
	url := pgtest.URL(t)
	s := newSealer(t)
	a, b := open(t, url, s), open(t, url, s)
	must(t, a.CreateProduct(ctx, &iothub.Product{OrgID: iothub.DefaultOrgID, ProductKey: "pk", ProductSecret: "s"}))
	const n = 20
	var forward, backward []iothub.StateChange
	for i := range n {
		must(t, a.CreateDevice(ctx, &iothub.Device{ProductKey: "pk", DeviceKey: fmt.Sprintf("d%02d", i), DeviceSecret: "s"}))
		forward = append(forward, iothub.StateChange{Device: iothub.DeviceID{ProductKey: "pk", DeviceKey: fmt.Sprintf("d%02d", i)},
			State: iothub.StateOnline, At: time.Now()})
	}
	for i := n - 1; i >= 0; i-- {
		backward = append(backward, iothub.StateChange{Device: forward[i].Device, State: iothub.StateOffline, At: time.Now()})
	}
	for range 15 {
		var wg sync.WaitGroup
		var errA, errB error
		wg.Add(2)
		go func() { defer wg.Done(); _, errA = a.ApplyDeviceStates(ctx, forward) }()
		go func() { defer wg.Done(); _, errB = b.ApplyDeviceStates(ctx, backward) }()
		wg.Wait()
		must(t, errA)
		must(t, errB)
	}
}
