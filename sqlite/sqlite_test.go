package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/iothub/iothub"
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

// wantCode fails the test unless err carries code.
func wantCode(t testing.TB, err error, code string) {
	t.Helper()
	if got := iothub.ErrorCode(err); got != code {
		t.Fatalf("error code %q (%v), want %q", got, err, code)
	}
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

func ptime(t time.Time) *time.Time { return &t }

// seedDevices inserts n devices ("d0000000"…) into product pk in one
// transaction, sealing a secret per device, and returns the keys.
func seedDevices(t testing.TB, db *DB, pk string, n int) []string {
	t.Helper()
	var org string
	must(t, db.write.QueryRow(`SELECT org_id FROM products WHERE product_key = ?`, pk).Scan(&org))
	tx, err := db.write.Begin()
	must(t, err)
	st, err := tx.Prepare(`INSERT INTO devices (` + deviceCols + `) VALUES (?,?,?,?,?,?,?,?,?,?,?)`)
	must(t, err)
	keys := make([]string, n)
	now := ms(time.Now())
	for i := range n {
		dk := fmt.Sprintf("d%07d", i)
		keys[i] = dk
		sealed, err := db.sealer.Seal(fmt.Sprintf("secret-%s-%d", pk, i), deviceAAD(pk, dk))
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
