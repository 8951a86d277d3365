package sqlite

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/internal/sqlstore"
	"github.com/iothub/iothub/seal"
)

var ctx = context.Background()

// testEnv is a database file and the data key that seals it.
type testEnv struct {
	dir    string
	path   string
	sealer *seal.Sealer
}

func newEnv(t testing.TB) *testEnv {
	t.Helper()
	dir := t.TempDir()
	key, err := seal.LoadOrCreateKey(filepath.Join(dir, "data.key"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := seal.New(key)
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{dir: dir, path: filepath.Join(dir, "iothub.db"), sealer: s}
}

func (e *testEnv) open(t testing.TB) *DB {
	t.Helper()
	db, err := Open(e.path, e.sealer)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// newDB opens a fresh database closed at the end of the test.
func newDB(t testing.TB) *DB {
	t.Helper()
	db := newEnv(t).open(t)
	t.Cleanup(func() { db.Close() })
	return db
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mkProduct(t testing.TB, db *DB, pk string) *iothub.Product {
	t.Helper()
	p := &iothub.Product{OrgID: iothub.DefaultOrgID, ProductKey: pk, ProductSecret: "psecret-" + pk, Name: "product " + pk}
	must(t, db.CreateProduct(ctx, p))
	return p
}

func mkDevice(t testing.TB, db *DB, pk, dk string) *iothub.Device {
	t.Helper()
	d := &iothub.Device{ProductKey: pk, DeviceKey: dk, DeviceSecret: "dsecret-" + pk + "-" + dk}
	must(t, db.CreateDevice(ctx, d))
	return d
}

func mkCert(serial, pk, dk, key string, notBefore time.Time, days int) *iothub.Certificate {
	return &iothub.Certificate{Serial: serial, OrgID: iothub.DefaultOrgID, ProductKey: pk, DeviceKey: dk,
		AssetID: pk + "/" + dk, PublicKeySHA256: key, CertPEM: "-----BEGIN CERTIFICATE-----\n" + serial, NotBefore: notBefore,
		NotAfter: notBefore.Add(time.Duration(days) * 24 * time.Hour)}
}

func sample(pk, dk string, t time.Time, mp string) iothub.Sample {
	return iothub.Sample{ProductKey: pk, DeviceKey: dk, Time: t, Measurepoints: json.RawMessage(mp)}
}

// seedDevices inserts n devices ("d0000000"…) into product pk in one
// transaction, sealing a secret per device, and returns the keys.
func seedDevices(t testing.TB, db *DB, pk string, n int) []string {
	t.Helper()
	var org string
	must(t, db.write.QueryRow(`SELECT org_id FROM products WHERE product_key = ?`, pk).Scan(&org))
	tx, err := db.write.Begin()
	must(t, err)
	st, err := tx.Prepare(`INSERT INTO devices (` + sqlstore.DeviceCols + `) VALUES (?,?,?,?,?,?,?,?,?,?,?)`)
	must(t, err)
	keys := make([]string, n)
	now := sqlstore.MS(time.Now())
	for i := range n {
		dk := fmt.Sprintf("d%07d", i)
		keys[i] = dk
		sealed, err := db.sealer.Seal(fmt.Sprintf("secret-%s-%d", pk, i), sqlstore.DeviceAAD(pk, dk))
		must(t, err)
		if _, err := st.Exec(org, pk, dk, pk+"-"+dk, "", string(iothub.StateInactive), sealed, 1, nil, nil, now); err != nil {
			tx.Rollback()
			t.Fatal(err)
		}
	}
	must(t, st.Close())
	must(t, tx.Commit())
	return keys
}
