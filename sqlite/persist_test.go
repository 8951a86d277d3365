package sqlite

import (
	"bytes"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/migrations"
	"github.com/iothub/iothub/seal"
)

func TestReopenKeepsEverything(t *testing.T) {
	env := newEnv(t)
	db := env.open(t)
	now := time.Now().UTC().Truncate(time.Millisecond)
	must(t, db.CreateOrg(ctx, &iothub.Org{ID: "acme", Name: "Acme"}))
	h := sha256.Sum256([]byte("k"))
	must(t, db.CreateAPIKey(ctx, &iothub.APIKey{ID: "k1", OrgID: "acme", Name: "n", Role: iothub.RoleAdmin, Hash: h[:]}))
	p := mkProduct(t, db, "pk")
	d := mkDevice(t, db, "pk", "d")
	must(t, db.SetDeviceState(ctx, "pk", "d", iothub.StateOnline, now))
	must(t, db.AppendSamples(ctx, []iothub.Sample{sample("pk", "d", now, `{"t":1}`)}))
	must(t, db.SetAttributes(ctx, "pk", "d", map[string]json.RawMessage{"fw": json.RawMessage(`"2"`)}))
	must(t, db.CreateCertificate(ctx, mkCert("01", "pk", "d", "key", now, 10)))
	must(t, db.RevokeCertificate(ctx, "01", "keyCompromise", now))
	must(t, db.CreateExternalCA(ctx, &iothub.ExternalCA{ID: "ca", ProductKey: "pk", CertPEM: "p", Fingerprint: "f"}))
	must(t, db.Audit(ctx, iothub.AuditEvent{Kind: "login.ok", ProductKey: "pk", DeviceKey: "d"}))
	must(t, db.Close())

	db = env.open(t)
	defer db.Close()
	if _, err := db.Org(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if k, err := db.APIKeyByHash(ctx, h[:]); err != nil || k.ID != "k1" {
		t.Fatalf("api key after reopen: %v %v", k, err)
	}
	gp, err := db.Product(ctx, "pk")
	must(t, err)
	if !reflect.DeepEqual(gp, p) {
		t.Fatalf("product after reopen %+v, want %+v", gp, p)
	}
	gd, err := db.Device(ctx, "pk", "d")
	must(t, err)
	if gd.DeviceSecret != d.DeviceSecret || gd.State != iothub.StateOnline || gd.ActivatedAt == nil || !gd.ActivatedAt.Equal(now) {
		t.Fatalf("device after reopen %+v", gd)
	}
	if pts, _ := db.LatestPoints(ctx, "pk", "d"); len(pts) != 1 {
		t.Fatalf("points after reopen: %+v", pts)
	}
	if s, _ := db.RecentSamples(ctx, "pk", "d", 5); len(s) != 1 {
		t.Fatalf("samples after reopen: %+v", s)
	}
	if a, _ := db.Attributes(ctx, "pk", "d"); string(a["fw"]) != `"2"` {
		t.Fatalf("attributes after reopen: %s", a)
	}
	if r, _ := db.RevokedCertificates(ctx); len(r) != 1 || r[0].Reason != "keyCompromise" {
		t.Fatalf("revoked after reopen: %+v", r)
	}
	if _, err := db.ExternalCA(ctx, "ca"); err != nil {
		t.Fatal(err)
	}
	if ev, _ := db.AuditEvents(ctx, "", 10); len(ev) != 1 {
		t.Fatalf("audit after reopen: %+v", ev)
	}
	// The next audit id continues after the persisted ones.
	must(t, db.Audit(ctx, iothub.AuditEvent{Kind: "x"}))
	if ev, _ := db.AuditEvents(ctx, "", 1); ev[0].ID != 2 {
		t.Fatalf("audit id %d after reopen", ev[0].ID)
	}
}

func TestReopenWithWrongKeyCannotReadSecrets(t *testing.T) {
	env := newEnv(t)
	db := env.open(t)
	mkProduct(t, db, "pk")
	mkDevice(t, db, "pk", "d")
	must(t, db.Close())
	other, err := seal.New(bytes.Repeat([]byte{1}, seal.KeySize))
	must(t, err)
	db, err = Open(env.path, other)
	must(t, err)
	defer db.Close()
	if d, err := db.Device(ctx, "pk", "d"); err == nil || iothub.ErrorCode(err) != iothub.EINTERNAL {
		t.Fatalf("device read under the wrong key: %+v, %v", d, err)
	}
	if _, err := db.Product(ctx, "pk"); iothub.ErrorCode(err) != iothub.EINTERNAL {
		t.Fatalf("product read under the wrong key: %v", err)
	}
}

// Secrets sealed with AAD naming their row cannot be moved to another row.
func TestSealedSecretBoundToRow(t *testing.T) {
	db := newDB(t)
	mkProduct(t, db, "pk")
	mkDevice(t, db, "pk", "victim")
	mkDevice(t, db, "pk", "attacker")
	_, err := db.write.Exec(`UPDATE devices SET device_secret =
		(SELECT device_secret FROM devices WHERE device_key = 'victim') WHERE device_key = 'attacker'`)
	must(t, err)
	if d, err := db.Device(ctx, "pk", "attacker"); err == nil {
		t.Fatalf("swapped ciphertext opened as %q", d.DeviceSecret)
	}
	if _, err := db.Device(ctx, "pk", "victim"); err != nil {
		t.Fatal(err)
	}
}

func TestSecretsNeverInFile(t *testing.T) {
	env := newEnv(t)
	db := env.open(t)
	var secrets []string
	for i := range 20 {
		pk := fmt.Sprintf("prod%02d", i)
		p := &iothub.Product{OrgID: iothub.DefaultOrgID, ProductKey: pk, ProductSecret: fmt.Sprintf("PRODSECRET-%02d-zq8", i)}
		must(t, db.CreateProduct(ctx, p))
		secrets = append(secrets, p.ProductSecret)
		p.ProductSecret = fmt.Sprintf("ROTATEDPS-%02d-zq8", i)
		must(t, db.UpdateProduct(ctx, p))
		secrets = append(secrets, p.ProductSecret)
		for j := range 20 {
			d := &iothub.Device{ProductKey: pk, DeviceKey: fmt.Sprintf("dev%02d", j), DeviceSecret: fmt.Sprintf("DEVSECRET-%02d-%02d-zq8", i, j)}
			must(t, db.CreateDevice(ctx, d))
			secrets = append(secrets, d.DeviceSecret)
		}
		nd, err := db.ResetDevice(ctx, pk, "dev00", fmt.Sprintf("RESETSECRET-%02d-zq8", i))
		must(t, err)
		secrets = append(secrets, nd.DeviceSecret)
	}
	check := func(when string) {
		t.Helper()
		var files [][]byte
		for _, suffix := range []string{"", "-wal"} {
			b, err := os.ReadFile(env.path + suffix)
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			files = append(files, b)
		}
		all := bytes.Join(files, nil)
		// The keys are there, so these are the right bytes to look at.
		if !bytes.Contains(all, []byte("prod07")) || !bytes.Contains(all, []byte("dev13")) {
			t.Fatalf("%s: rows not found in the database files", when)
		}
		for _, s := range secrets {
			if bytes.Contains(all, []byte(s)) {
				t.Fatalf("%s: clear secret %q found in the database files", when, s)
			}
		}
	}
	if fi, err := os.Stat(env.path + "-wal"); err != nil || fi.Size() == 0 {
		t.Fatalf("expected a non-empty WAL file while open: %v", err)
	}
	check("while open")
	must(t, db.Close())
	check("after close")
}

// The file belongs to one process: a second one (another hub on the same
// data directory) is refused with a clear error instead of sharing it.
func TestSecondProcessIsLockedOut(t *testing.T) {
	if path := os.Getenv("IOTHUB_SQLITE_LOCK_CHILD"); path != "" {
		busyTimeout = 100 * time.Millisecond
		s, err := seal.New(make([]byte, seal.KeySize))
		must(t, err)
		db, err := Open(path, s)
		if err == nil {
			db.Close()
			t.Fatal("second process opened the database")
		}
		fmt.Println("CHILD:", err)
		return
	}
	env := newEnv(t)
	db := env.open(t)
	defer db.Close()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestSecondProcessIsLockedOut$", "-test.count", "1")
	cmd.Env = append(os.Environ(), "IOTHUB_SQLITE_LOCK_CHILD="+env.path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child failed: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("CHILD: sqlite: the database is in use by another process")) {
		t.Fatalf("child output:\n%s", out)
	}
	// The first process is unaffected.
	if _, err := db.Orgs(ctx); err != nil {
		t.Fatal(err)
	}
}

// F4: upgrading a registry written before certificates carried the
// device's assetId gives each certificate to the device it was issued to
// and revokes those of deleted predecessors.
func TestMigrationGivesCertificatesTheirDevice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	raw, err := sql.Open("sqlite", dsn(path, false, false))
	if err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, raw, migrations.FS, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO orgs (id, name, created_at) VALUES ('default', 'default', 0)`,
		`INSERT INTO products (product_key, org_id, product_secret, name, auth_mode, created_at) VALUES ('pk', 'default', 's', 'p', 'certificate', 0)`,
		// The device now under pk/d was created at 2000; pk/gone no longer exists.
		`INSERT INTO devices (product_key, device_key, org_id, asset_id, state, device_secret, created_at) VALUES ('pk', 'd', 'default', 'ASSET', 'inactive', 's', 2000)`,
		`INSERT INTO certificates (serial, org_id, product_key, device_key, public_key_sha256, cert_pem, not_before, not_after, created_at)
			VALUES ('0a', 'default', 'pk', 'd', 'k1', 'pem', 0, 9999999999999, 1000)`, // issued to a deleted predecessor
		`INSERT INTO certificates (serial, org_id, product_key, device_key, public_key_sha256, cert_pem, not_before, not_after, created_at)
			VALUES ('0b', 'default', 'pk', 'd', 'k2', 'pem', 0, 9999999999999, 3000)`, // issued to the device now there
		`INSERT INTO certificates (serial, org_id, product_key, device_key, public_key_sha256, cert_pem, not_before, not_after, created_at)
			VALUES ('0c', 'default', 'pk', 'gone', 'k3', 'pem', 0, 9999999999999, 3000)`, // its device was deleted
	} {
		if _, err := raw.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	raw.Close()

	key, _ := seal.LoadOrCreateKey(filepath.Join(t.TempDir(), "data.key"))
	sealer, _ := seal.New(key)
	db, err := Open(path, sealer)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	mine, err := db.CertificatesByAsset(ctx, "ASSET")
	must(t, err)
	if len(mine) != 1 || mine[0].Serial != "0b" || mine[0].RevokedAt != nil {
		t.Fatalf("the device's certificates after the upgrade: %+v", mine)
	}
	for _, serial := range []string{"0a", "0c"} {
		c, err := db.Certificate(ctx, serial)
		must(t, err)
		if c.AssetID != "" || c.RevokedAt == nil || c.Reason != "cessationOfOperation" {
			t.Fatalf("a predecessor's certificate after the upgrade: %+v", c)
		}
	}
}
