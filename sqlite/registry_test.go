package sqlite

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/iothub/iothub"
)

func TestOpenMigratesAndSeedsDefaultOrg(t *testing.T) {
	env := newEnv(t)
	db := env.open(t)
	o, err := db.Org(ctx, iothub.DefaultOrgID)
	must(t, err)
	if o.Name != "default" {
		t.Fatalf("default org name %q", o.Name)
	}
	var mode string
	must(t, db.write.QueryRow(`PRAGMA journal_mode`).Scan(&mode))
	var fk, sync int
	must(t, db.write.QueryRow(`PRAGMA foreign_keys`).Scan(&fk))
	must(t, db.write.QueryRow(`PRAGMA synchronous`).Scan(&sync))
	if mode != "wal" || fk != 1 || sync != 1 {
		t.Fatalf("journal_mode=%s foreign_keys=%d synchronous=%d, want wal 1 1(NORMAL)", mode, fk, sync)
	}
	if _, err := db.read.Exec(`DELETE FROM orgs`); err == nil {
		t.Fatal("read pool accepted a write")
	}
	var version int64
	must(t, db.write.QueryRow(`SELECT MAX(version_id) FROM goose_db_version`).Scan(&version))
	if version < 1 {
		t.Fatalf("goose version %d", version)
	}
	must(t, db.Close())

	// Reopening applies nothing twice and keeps one default org.
	db = env.open(t)
	defer db.Close()
	orgs, err := db.Orgs(ctx)
	must(t, err)
	if len(orgs) != 1 || orgs[0].ID != iothub.DefaultOrgID {
		t.Fatalf("orgs after reopen: %+v", orgs)
	}
}

func TestOpenRefusesBadInput(t *testing.T) {
	env := newEnv(t)
	if _, err := Open(env.path, nil); err == nil {
		t.Fatal("Open without a sealer succeeded")
	}
	if _, err := Open("", env.sealer); err == nil {
		t.Fatal("Open with an empty path succeeded")
	}
	if _, err := Open(env.dir+"/missing/dir/x.db", env.sealer); err == nil {
		t.Fatal("Open in a missing directory succeeded")
	}
}

func TestOrgs(t *testing.T) {
	db := newDB(t)
	o := &iothub.Org{ID: "acme", Name: "Acme"}
	must(t, db.CreateOrg(ctx, o))
	if o.CreatedAt.IsZero() {
		t.Fatal("CreatedAt not set")
	}
	wantCode(t, db.CreateOrg(ctx, &iothub.Org{ID: "acme", Name: "again"}), iothub.ECONFLICT)
	wantCode(t, db.CreateOrg(ctx, &iothub.Org{ID: "", Name: "x"}), iothub.EINVALID)
	wantCode(t, db.CreateOrg(ctx, &iothub.Org{ID: "x", Name: ""}), iothub.EINVALID)
	got, err := db.Org(ctx, "acme")
	must(t, err)
	if got.Name != "Acme" || !got.CreatedAt.Equal(o.CreatedAt) {
		t.Fatalf("Org = %+v, want %+v", got, o)
	}
	_, err = db.Org(ctx, "nope")
	wantCode(t, err, iothub.ENOTFOUND)
	orgs, err := db.Orgs(ctx)
	must(t, err)
	if len(orgs) != 2 {
		t.Fatalf("Orgs = %d, want 2 (default, acme)", len(orgs))
	}
}

func TestAPIKeys(t *testing.T) {
	db := newDB(t)
	must(t, db.CreateOrg(ctx, &iothub.Org{ID: "acme", Name: "Acme"}))
	h1 := sha256.Sum256([]byte("key-one"))
	h2 := sha256.Sum256([]byte("key-two"))
	k := &iothub.APIKey{ID: "k1", OrgID: "acme", Name: "ops", Role: iothub.RoleOperator, Hash: h1[:]}
	must(t, db.CreateAPIKey(ctx, k))
	must(t, db.CreateAPIKey(ctx, &iothub.APIKey{ID: "boot", OrgID: iothub.DefaultOrgID, Name: "bootstrap",
		Role: iothub.RoleAdmin, Bootstrap: true, Hash: h2[:]}))

	wantCode(t, db.CreateAPIKey(ctx, &iothub.APIKey{ID: "k2", OrgID: "acme", Role: iothub.RoleViewer, Hash: h1[:]}), iothub.ECONFLICT)
	wantCode(t, db.CreateAPIKey(ctx, &iothub.APIKey{ID: "k1", OrgID: "acme", Role: iothub.RoleViewer, Hash: make([]byte, 32)}), iothub.ECONFLICT)
	h3 := sha256.Sum256([]byte("key-three"))
	wantCode(t, db.CreateAPIKey(ctx, &iothub.APIKey{ID: "k3", OrgID: "ghost", Role: iothub.RoleViewer, Hash: h3[:]}), iothub.ENOTFOUND)
	wantCode(t, db.CreateAPIKey(ctx, &iothub.APIKey{ID: "k3", OrgID: "acme", Role: "root", Hash: h3[:]}), iothub.EINVALID)
	wantCode(t, db.CreateAPIKey(ctx, &iothub.APIKey{ID: "k3", OrgID: "acme", Role: iothub.RoleViewer}), iothub.EINVALID)

	got, err := db.APIKeyByHash(ctx, h1[:])
	must(t, err)
	if got.ID != "k1" || got.OrgID != "acme" || got.Role != iothub.RoleOperator || got.Bootstrap || !bytes.Equal(got.Hash, h1[:]) {
		t.Fatalf("APIKeyByHash = %+v", got)
	}
	boot, err := db.APIKeyByHash(ctx, h2[:])
	must(t, err)
	if !boot.Bootstrap {
		t.Fatal("bootstrap flag lost")
	}
	_, err = db.APIKeyByHash(ctx, h3[:])
	wantCode(t, err, iothub.ENOTFOUND)

	keys, err := db.APIKeys(ctx, "acme")
	must(t, err)
	if len(keys) != 1 || keys[0].ID != "k1" {
		t.Fatalf("APIKeys(acme) = %+v", keys)
	}
	all, err := db.APIKeys(ctx, "")
	must(t, err)
	if len(all) != 2 {
		t.Fatalf("APIKeys(all) = %d", len(all))
	}

	wantCode(t, db.RevokeAPIKey(ctx, iothub.DefaultOrgID, "k1"), iothub.ENOTFOUND) // other org
	wantCode(t, db.RevokeAPIKey(ctx, "acme", "nope"), iothub.ENOTFOUND)
	must(t, db.RevokeAPIKey(ctx, "acme", "k1"))
	wantCode(t, db.RevokeAPIKey(ctx, "acme", "k1"), iothub.ECONFLICT)
	_, err = db.APIKeyByHash(ctx, h1[:])
	wantCode(t, err, iothub.ENOTFOUND)
	keys, _ = db.APIKeys(ctx, "acme")
	if len(keys) != 1 || keys[0].RevokedAt == nil {
		t.Fatalf("revoked key not listed as revoked: %+v", keys)
	}
}

func TestProducts(t *testing.T) {
	db := newDB(t)
	must(t, db.CreateOrg(ctx, &iothub.Org{ID: "acme", Name: "Acme"}))
	p := &iothub.Product{OrgID: "acme", ProductKey: "pk1", ProductSecret: "s1", Name: "Meter",
		DynamicActivation: true, AutoRegister: true, DeviceLimit: 5, OfflineTimeoutSec: 90, MaxCertDays: 30}
	must(t, db.CreateProduct(ctx, p))
	if p.AuthMode != iothub.AuthSecret || p.CreatedAt.IsZero() {
		t.Fatalf("defaults not filled: %+v", p)
	}
	got, err := db.Product(ctx, "pk1")
	must(t, err)
	if *got != *p {
		t.Fatalf("Product = %+v\nwant      %+v", got, p)
	}
	mkProduct(t, db, "pk2")

	for name, bad := range map[string]*iothub.Product{
		"duplicate":   {OrgID: "acme", ProductKey: "pk1", ProductSecret: "x"},
		"no org":      {ProductKey: "pk3", ProductSecret: "x"},
		"bad key":     {OrgID: "acme", ProductKey: "a/b", ProductSecret: "x"},
		"no secret":   {OrgID: "acme", ProductKey: "pk3"},
		"bad mode":    {OrgID: "acme", ProductKey: "pk3", ProductSecret: "x", AuthMode: "psk"},
		"negative":    {OrgID: "acme", ProductKey: "pk3", ProductSecret: "x", DeviceLimit: -1},
		"unknown org": {OrgID: "ghost", ProductKey: "pk3", ProductSecret: "x"},
	} {
		want := iothub.EINVALID
		switch name {
		case "duplicate":
			want = iothub.ECONFLICT
		case "unknown org":
			want = iothub.ENOTFOUND
		}
		t.Run(name, func(t *testing.T) { wantCode(t, db.CreateProduct(ctx, bad), want) })
	}
	_, err = db.Product(ctx, "pk3")
	wantCode(t, err, iothub.ENOTFOUND)

	list, err := db.Products(ctx, "acme")
	must(t, err)
	if len(list) != 1 || list[0].ProductKey != "pk1" || list[0].ProductSecret != "s1" {
		t.Fatalf("Products(acme) = %+v", list)
	}
	list, _ = db.Products(ctx, "")
	if len(list) != 2 {
		t.Fatalf("Products(all) = %d", len(list))
	}

	// Rotation and field updates.
	up := *got
	up.ProductSecret, up.Name, up.AuthMode, up.AutoRegister, up.CreatedAt = "s2", "Meter v2", iothub.AuthCertificate, false, time.Time{}
	must(t, db.UpdateProduct(ctx, &up))
	got, _ = db.Product(ctx, "pk1")
	if got.ProductSecret != "s2" || got.Name != "Meter v2" || got.AuthMode != iothub.AuthCertificate || got.AutoRegister || !got.CreatedAt.Equal(p.CreatedAt) {
		t.Fatalf("after update: %+v", got)
	}
	moved := *got
	moved.OrgID = iothub.DefaultOrgID
	wantCode(t, db.UpdateProduct(ctx, &moved), iothub.EINVALID)
	ghost := *got
	ghost.ProductKey = "ghost"
	wantCode(t, db.UpdateProduct(ctx, &ghost), iothub.ENOTFOUND)
	empty := *got
	empty.ProductSecret = ""
	wantCode(t, db.UpdateProduct(ctx, &empty), iothub.EINVALID)
	if again, _ := db.Product(ctx, "pk1"); *again != *got {
		t.Fatalf("refused update changed the row: %+v", again)
	}

	// Delete: refused while devices exist, and external CAs go with the product.
	mkDevice(t, db, "pk1", "d1")
	must(t, db.CreateExternalCA(ctx, &iothub.ExternalCA{ID: "ca1", OrgID: "acme", ProductKey: "pk1", CertPEM: "pem", Fingerprint: "fp"}))
	wantCode(t, db.DeleteProduct(ctx, "pk1"), iothub.ECONFLICT)
	must(t, db.DeleteDevice(ctx, "pk1", "d1"))
	must(t, db.DeleteProduct(ctx, "pk1"))
	wantCode(t, db.DeleteProduct(ctx, "pk1"), iothub.ENOTFOUND)
	_, err = db.Product(ctx, "pk1")
	wantCode(t, err, iothub.ENOTFOUND)
	_, err = db.ExternalCA(ctx, "ca1")
	wantCode(t, err, iothub.ENOTFOUND)
}

func TestDevices(t *testing.T) {
	db := newDB(t)
	mkProduct(t, db, "pk")
	d := &iothub.Device{ProductKey: "pk", DeviceKey: "dev1", DeviceSecret: "sec1", Name: "pump"}
	must(t, db.CreateDevice(ctx, d))
	if d.OrgID != iothub.DefaultOrgID || d.AssetID == "" || d.State != iothub.StateInactive || d.SecretVersion != 1 || d.CreatedAt.IsZero() {
		t.Fatalf("defaults not filled: %+v", d)
	}
	got, err := db.Device(ctx, "pk", "dev1")
	must(t, err)
	if got.DeviceSecret != "sec1" || got.AssetID != d.AssetID || got.Name != "pump" || got.State != iothub.StateInactive ||
		got.SecretVersion != 1 || got.LastSeenAt != nil || got.ActivatedAt != nil || !got.CreatedAt.Equal(d.CreatedAt) {
		t.Fatalf("Device = %+v\nwant     %+v", got, d)
	}
	if _, err := db.Device(ctx, "pk", "dev2"); iothub.ErrorCode(err) != iothub.ENOTFOUND {
		t.Fatalf("missing device: %v", err)
	}
	if _, err := db.Device(ctx, "other", "dev1"); iothub.ErrorCode(err) != iothub.ENOTFOUND {
		t.Fatalf("device under another product: %v", err)
	}

	cases := []struct {
		name string
		d    *iothub.Device
		code string
	}{
		{"duplicate key", &iothub.Device{ProductKey: "pk", DeviceKey: "dev1", DeviceSecret: "x"}, iothub.ECONFLICT},
		{"duplicate asset", &iothub.Device{ProductKey: "pk", DeviceKey: "dev9", DeviceSecret: "x", AssetID: d.AssetID}, iothub.ECONFLICT},
		{"unknown product", &iothub.Device{ProductKey: "ghost", DeviceKey: "dev9", DeviceSecret: "x"}, iothub.ENOTFOUND},
		{"other org", &iothub.Device{OrgID: "acme", ProductKey: "pk", DeviceKey: "dev9", DeviceSecret: "x"}, iothub.EINVALID},
		{"bad key", &iothub.Device{ProductKey: "pk", DeviceKey: "a+b", DeviceSecret: "x"}, iothub.EINVALID},
		{"no secret", &iothub.Device{ProductKey: "pk", DeviceKey: "dev9"}, iothub.EINVALID},
		{"bad state", &iothub.Device{ProductKey: "pk", DeviceKey: "dev9", DeviceSecret: "x", State: "zombie"}, iothub.EINVALID},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { wantCode(t, db.CreateDevice(ctx, c.d), c.code) })
	}
	if n, _ := db.CountDevices(ctx, "pk"); n != 1 {
		t.Fatalf("refused creates left rows: count %d", n)
	}
	// Same device key in another product is a different device.
	mkProduct(t, db, "pk2")
	mkDevice(t, db, "pk2", "dev1")
	if n, _ := db.CountDevices(ctx, "pk2"); n != 1 {
		t.Fatalf("CountDevices(pk2) = %d", n)
	}
	if n, _ := db.CountDevices(ctx, "ghost"); n != 0 {
		t.Fatalf("CountDevices(ghost) = %d", n)
	}
}

func TestDeviceListing(t *testing.T) {
	db := newDB(t)
	mkProduct(t, db, "pk")
	mkProduct(t, db, "other")
	mkDevice(t, db, "other", "x")
	for i := range 250 {
		mkDevice(t, db, "pk", fmt.Sprintf("d%03d", i))
	}
	now := time.Now()
	for i := 0; i < 250; i += 10 {
		must(t, db.SetDeviceState(ctx, "pk", fmt.Sprintf("d%03d", i), iothub.StateOnline, now))
	}

	// Default page size, keyset pagination through everything.
	var seen []string
	cursor := ""
	for {
		page, err := db.Devices(ctx, "pk", iothub.DeviceFilter{Cursor: cursor})
		must(t, err)
		if len(page) > DefaultPageSize {
			t.Fatalf("page of %d", len(page))
		}
		if len(page) == 0 {
			break
		}
		for _, d := range page {
			if d.ProductKey != "pk" || d.DeviceSecret == "" {
				t.Fatalf("listed %+v", d)
			}
			seen = append(seen, d.DeviceKey)
		}
		cursor = page[len(page)-1].DeviceKey
	}
	if len(seen) != 250 || seen[0] != "d000" || seen[249] != "d249" {
		t.Fatalf("paged through %d devices (%v … %v)", len(seen), seen[0], seen[len(seen)-1])
	}
	for i := 1; i < len(seen); i++ {
		if seen[i] <= seen[i-1] {
			t.Fatalf("not in key order at %d: %s after %s", i, seen[i], seen[i-1])
		}
	}

	online, err := db.Devices(ctx, "pk", iothub.DeviceFilter{State: iothub.StateOnline, Limit: 10})
	must(t, err)
	if len(online) != 10 || online[0].DeviceKey != "d000" || online[9].DeviceKey != "d090" {
		t.Fatalf("online page: %d devices", len(online))
	}
	rest, err := db.Devices(ctx, "pk", iothub.DeviceFilter{State: iothub.StateOnline, Limit: 10, Cursor: online[9].DeviceKey})
	must(t, err)
	if len(rest) != 10 || rest[0].DeviceKey != "d100" {
		t.Fatalf("second online page: %+v", rest)
	}
	for _, d := range append(online, rest...) {
		if d.State != iothub.StateOnline {
			t.Fatalf("state filter leaked %s", d.State)
		}
	}
	big, err := db.Devices(ctx, "pk", iothub.DeviceFilter{Limit: 100000})
	must(t, err)
	if len(big) != 250 {
		t.Fatalf("limit above max: %d", len(big))
	}
	_, err = db.Devices(ctx, "pk", iothub.DeviceFilter{State: "zombie"})
	wantCode(t, err, iothub.EINVALID)
}

func TestDeviceListingLimitCap(t *testing.T) {
	db := newDB(t)
	mkProduct(t, db, "pk")
	seedDevices(t, db, "pk", MaxPageSize+5)
	page, err := db.Devices(ctx, "pk", iothub.DeviceFilter{Limit: MaxPageSize + 5})
	must(t, err)
	if len(page) != MaxPageSize {
		t.Fatalf("page of %d, want cap %d", len(page), MaxPageSize)
	}
}

func TestDeviceState(t *testing.T) {
	db := newDB(t)
	mkProduct(t, db, "pk")
	mkDevice(t, db, "pk", "d")
	t1 := time.Date(2026, 1, 2, 3, 4, 5, 6_000_000, time.UTC)
	t2 := t1.Add(time.Hour)
	must(t, db.SetDeviceState(ctx, "pk", "d", iothub.StateOnline, t1))
	d, _ := db.Device(ctx, "pk", "d")
	if d.State != iothub.StateOnline || d.ActivatedAt == nil || !d.ActivatedAt.Equal(t1) || d.LastSeenAt == nil || !d.LastSeenAt.Equal(t1) {
		t.Fatalf("after first online: %+v", d)
	}
	must(t, db.SetDeviceState(ctx, "pk", "d", iothub.StateOffline, t2))
	must(t, db.SetDeviceState(ctx, "pk", "d", iothub.StateOnline, t2))
	d, _ = db.Device(ctx, "pk", "d")
	if !d.ActivatedAt.Equal(t1) {
		t.Fatalf("activatedAt moved to %v on a later login", d.ActivatedAt)
	}
	if !d.LastSeenAt.Equal(t2) {
		t.Fatalf("lastSeenAt %v, want %v", d.LastSeenAt, t2)
	}
	must(t, db.SetDeviceState(ctx, "pk", "d", iothub.StateDisabled, t2))
	d, _ = db.Device(ctx, "pk", "d")
	if d.State != iothub.StateDisabled {
		t.Fatalf("state %s", d.State)
	}
	// A login or disconnect racing a disable cannot undo it.
	wantCode(t, db.SetDeviceState(ctx, "pk", "d", iothub.StateOnline, t2), iothub.ECONFLICT)
	wantCode(t, db.SetDeviceState(ctx, "pk", "d", iothub.StateOffline, t2), iothub.ECONFLICT)
	if d, _ = db.Device(ctx, "pk", "d"); d.State != iothub.StateDisabled {
		t.Fatalf("online/offline replaced disabled: %s", d.State)
	}
	st, err := db.EnableDevice(ctx, "pk", "d")
	if err != nil || st != iothub.StateOffline {
		t.Fatalf("enable an activated device: %s %v", st, err)
	}
	_, err = db.EnableDevice(ctx, "pk", "d")
	wantCode(t, err, iothub.ECONFLICT)
	_, err = db.EnableDevice(ctx, "pk", "ghost")
	wantCode(t, err, iothub.ENOTFOUND)
	mkDevice(t, db, "pk", "never")
	must(t, db.SetDeviceState(ctx, "pk", "never", iothub.StateDisabled, t2))
	if st, err := db.EnableDevice(ctx, "pk", "never"); err != nil || st != iothub.StateInactive {
		t.Fatalf("enable a never-activated device: %s %v", st, err)
	}
	must(t, db.SetDeviceState(ctx, "pk", "d", iothub.StateDisabled, t2))
	wantCode(t, db.SetDeviceState(ctx, "pk", "ghost", iothub.StateOnline, t1), iothub.ENOTFOUND)
	wantCode(t, db.SetDeviceState(ctx, "pk", "d", "zombie", t1), iothub.EINVALID)
	d, _ = db.Device(ctx, "pk", "d")
	if d.State != iothub.StateDisabled {
		t.Fatalf("refused change altered state to %s", d.State)
	}
}

func TestResetDevice(t *testing.T) {
	db := newDB(t)
	mkProduct(t, db, "pk")
	mkDevice(t, db, "pk", "d")
	at := time.Now()
	must(t, db.SetDeviceState(ctx, "pk", "d", iothub.StateOnline, at))
	d, err := db.ResetDevice(ctx, "pk", "d", "new-secret")
	must(t, err)
	if d.DeviceSecret != "new-secret" || d.SecretVersion != 2 || d.State != iothub.StateInactive || d.ActivatedAt != nil {
		t.Fatalf("ResetDevice = %+v", d)
	}
	got, _ := db.Device(ctx, "pk", "d")
	if got.DeviceSecret != "new-secret" || got.SecretVersion != 2 || got.State != iothub.StateInactive || got.ActivatedAt != nil || got.LastSeenAt == nil {
		t.Fatalf("stored after reset: %+v", got)
	}
	d, _ = db.ResetDevice(ctx, "pk", "d", "third")
	if d.SecretVersion != 3 {
		t.Fatalf("version %d after second reset", d.SecretVersion)
	}
	_, err = db.ResetDevice(ctx, "pk", "ghost", "x")
	wantCode(t, err, iothub.ENOTFOUND)
	_, err = db.ResetDevice(ctx, "pk", "d", "")
	wantCode(t, err, iothub.EINVALID)
	if got, _ := db.Device(ctx, "pk", "d"); got.DeviceSecret != "third" {
		t.Fatal("refused reset changed the secret")
	}
}

func TestTouchDevices(t *testing.T) {
	db := newDB(t)
	mkProduct(t, db, "pk")
	mkDevice(t, db, "pk", "a")
	mkDevice(t, db, "pk", "b")
	t1 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	t0 := t1.Add(-time.Minute)
	must(t, db.TouchDevices(ctx, map[iothub.DeviceID]time.Time{
		{ProductKey: "pk", DeviceKey: "a"}:     t1,
		{ProductKey: "pk", DeviceKey: "b"}:     t1.Add(time.Second),
		{ProductKey: "pk", DeviceKey: "ghost"}: t1,
	}))
	a, _ := db.Device(ctx, "pk", "a")
	b, _ := db.Device(ctx, "pk", "b")
	if a.LastSeenAt == nil || !a.LastSeenAt.Equal(t1) || b.LastSeenAt == nil || !b.LastSeenAt.Equal(t1.Add(time.Second)) {
		t.Fatalf("lastSeenAt a=%v b=%v", a.LastSeenAt, b.LastSeenAt)
	}
	// An older time never moves lastSeenAt back.
	must(t, db.TouchDevices(ctx, map[iothub.DeviceID]time.Time{{ProductKey: "pk", DeviceKey: "a"}: t0}))
	a, _ = db.Device(ctx, "pk", "a")
	if !a.LastSeenAt.Equal(t1) {
		t.Fatalf("lastSeenAt went back to %v", a.LastSeenAt)
	}
	must(t, db.TouchDevices(ctx, nil))
}

func TestOpenPathWithURICharacters(t *testing.T) {
	env := newEnv(t)
	dir := filepath.Join(env.dir, "data 50% #1?x")
	must(t, os.Mkdir(dir, 0o700))
	path := filepath.Join(dir, "hub.db")
	db, err := Open(path, env.sealer)
	must(t, err)
	mkProduct(t, db, "pk")
	must(t, db.Close())
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Fatalf("database not at %q: %v", path, err)
	}
	db, err = Open(path, env.sealer)
	must(t, err)
	defer db.Close()
	if _, err := db.Product(ctx, "pk"); err != nil {
		t.Fatal(err)
	}
}
