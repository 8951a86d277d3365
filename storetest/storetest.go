// Package storetest is the conformance suite of iothub.Store: the cases
// every store adapter (sqlite, postgres) must pass, with the same results
// and error codes. An adapter's tests call Run with a function that opens
// a fresh, empty store.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iothub/iothub"
)

// The listing and history bounds every store applies (sqlite.DefaultPageSize,
// MaxPageSize, HistoryPerDevice; postgres has the same).
const (
	DefaultPageSize  = 100
	MaxPageSize      = 1000
	HistoryPerDevice = 1000
)

var ctx = context.Background()

// Run runs every case as a subtest, each on a store newly returned by
// open, which also arranges for it to be closed.
func Run(t *testing.T, open func(t *testing.T) iothub.Store) {
	for _, c := range []struct {
		name string
		fn   func(*testing.T, iothub.Store)
	}{
		{"Orgs", testOrgs},
		{"APIKeys", testAPIKeys},
		{"Products", testProducts},
		{"Devices", testDevices},
		{"DeviceListing", testDeviceListing},
		{"DeviceListingLimitCap", testDeviceListingLimitCap},
		{"DeviceState", testDeviceState},
		{"ResetDevice", testResetDevice},
		{"TouchDevices", testTouchDevices},
		{"ApplyDeviceStates", testApplyDeviceStates},
		{"Certificates", testCertificates},
		{"ExternalCAs", testExternalCAs},
		{"ExternalRevocations", testExternalRevocations},
		{"Supersessions", testSupersessions},
		{"UseRequest", testUseRequest},
		{"BootstrapKey", testBootstrapKey},
		{"CAFiles", testCAFiles},
		{"AttributeCaps", testAttributeCaps},
		{"Audit", testAudit},
		{"AuditBatch", testAuditBatch},
		{"SearchAudit", testSearchAudit},
		{"Telemetry", testTelemetry},
		{"TelemetryHistoryBound", testTelemetryHistoryBound},
		{"Attributes", testAttributes},
		{"EventsAndTags", testEventsAndTags},
		{"Topology", testTopology},
		{"OTA", testOTA},
		{"ThingModelAndRaw", testThingModelAndRaw},
		{"DeleteDeviceRemovesDataKeepsCertificates", testDeleteDeviceRemovesDataKeepsCertificates},
		{"ConcurrentWritersAndReaders", testConcurrentWritersAndReaders},
		{"ChangeLog", testChangeLog},
		{"NodeLeases", testNodeLeases},
	} {
		t.Run(c.name, func(t *testing.T) { c.fn(t, open(t)) })
	}
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

func mkProduct(t testing.TB, db iothub.Store, pk string) *iothub.Product {
	t.Helper()
	p := &iothub.Product{OrgID: iothub.DefaultOrgID, ProductKey: pk, ProductSecret: "psecret-" + pk, Name: "product " + pk}
	must(t, db.CreateProduct(ctx, p))
	return p
}

func mkDevice(t testing.TB, db iothub.Store, pk, dk string) *iothub.Device {
	t.Helper()
	d := &iothub.Device{ProductKey: pk, DeviceKey: dk, DeviceSecret: "dsecret-" + pk + "-" + dk}
	must(t, db.CreateDevice(ctx, d))
	return d
}

// seedDevices creates n devices "d0000000"… in product pk from a few
// goroutines and returns their keys.
func seedDevices(t testing.TB, db iothub.Store, pk string, n int) []string {
	t.Helper()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("d%07d", i)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				d := &iothub.Device{ProductKey: pk, DeviceKey: keys[i], DeviceSecret: fmt.Sprintf("secret-%s-%d", pk, i)}
				if err := db.CreateDevice(ctx, d); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return keys
}

func mkCert(serial, pk, dk, key string, notBefore time.Time, days int) *iothub.Certificate {
	return &iothub.Certificate{Serial: serial, OrgID: iothub.DefaultOrgID, ProductKey: pk, DeviceKey: dk,
		AssetID: pk + "/" + dk, PublicKeySHA256: key, CertPEM: "-----BEGIN CERTIFICATE-----\n" + serial, NotBefore: notBefore,
		NotAfter: notBefore.Add(time.Duration(days) * 24 * time.Hour)}
}

func sample(pk, dk string, t time.Time, mp string) iothub.Sample {
	return iothub.Sample{ProductKey: pk, DeviceKey: dk, Time: t, Measurepoints: json.RawMessage(mp)}
}

func testOrgs(t *testing.T, db iothub.Store) {
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

func testAPIKeys(t *testing.T, db iothub.Store) {
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

func testProducts(t *testing.T, db iothub.Store) {
	must(t, db.CreateOrg(ctx, &iothub.Org{ID: "acme", Name: "Acme"}))
	p := &iothub.Product{OrgID: "acme", ProductKey: "pk1", ProductSecret: "s1", Name: "Meter",
		DynamicActivation: true, AutoRegister: true, DeviceLimit: 5, OfflineTimeoutSec: 90, MaxCertDays: 30,
		NodeType: iothub.NodeGateway, AllowGatewayRegistration: true, SignMethods: []string{"sha256", "hmacsha256"}}
	must(t, db.CreateProduct(ctx, p))
	if p.AuthMode != iothub.AuthSecret || p.CreatedAt.IsZero() {
		t.Fatalf("defaults not filled: %+v", p)
	}
	got, err := db.Product(ctx, "pk1")
	must(t, err)
	if !reflect.DeepEqual(got, p) {
		t.Fatalf("Product = %+v\nwant      %+v", got, p)
	}
	mkProduct(t, db, "pk2")

	for name, bad := range map[string]*iothub.Product{
		"duplicate":   {OrgID: "acme", ProductKey: "pk1", ProductSecret: "x"},
		"no org":      {ProductKey: "pk3", ProductSecret: "x"},
		"bad key":     {OrgID: "acme", ProductKey: "a/b", ProductSecret: "x"},
		"no secret":   {OrgID: "acme", ProductKey: "pk3"},
		"bad mode":    {OrgID: "acme", ProductKey: "pk3", ProductSecret: "x", AuthMode: "psk"},
		"bad node":    {OrgID: "acme", ProductKey: "pk3", ProductSecret: "x", NodeType: "hub"},
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
	up.AllowGatewayRegistration, up.SignMethods, up.NodeType = false, nil, iothub.NodeDevice
	must(t, db.UpdateProduct(ctx, &up))
	got, _ = db.Product(ctx, "pk1")
	if got.ProductSecret != "s2" || got.Name != "Meter v2" || got.AuthMode != iothub.AuthCertificate || got.AutoRegister || !got.CreatedAt.Equal(p.CreatedAt) ||
		got.AllowGatewayRegistration || len(got.SignMethods) != 0 {
		t.Fatalf("after update: %+v", got)
	}
	if got.NodeType != iothub.NodeGateway {
		t.Fatalf("the node type is fixed at creation, got %q after an update", got.NodeType)
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
	if again, _ := db.Product(ctx, "pk1"); !reflect.DeepEqual(again, got) {
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

func testDevices(t *testing.T, db iothub.Store) {
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

func testDeviceListing(t *testing.T, db iothub.Store) {
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

func testDeviceListingLimitCap(t *testing.T, db iothub.Store) {
	mkProduct(t, db, "pk")
	seedDevices(t, db, "pk", MaxPageSize+5)
	page, err := db.Devices(ctx, "pk", iothub.DeviceFilter{Limit: MaxPageSize + 5})
	must(t, err)
	if len(page) != MaxPageSize {
		t.Fatalf("page of %d, want cap %d", len(page), MaxPageSize)
	}
}

func testDeviceState(t *testing.T, db iothub.Store) {
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

func testResetDevice(t *testing.T, db iothub.Store) {
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

func testTouchDevices(t *testing.T, db iothub.Store) {
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

func testCertificates(t *testing.T, db iothub.Store) {
	now := time.Now().UTC().Truncate(time.Millisecond)
	c1 := mkCert("0a01", "pk", "d1", "key1", now.Add(-time.Hour), 30)
	c1.CreatedAt = now.Add(-time.Hour)
	must(t, db.CreateCertificate(ctx, c1))
	got, err := db.Certificate(ctx, "0a01")
	must(t, err)
	if got.DeviceKey != "d1" || got.PublicKeySHA256 != "key1" || !got.NotAfter.Equal(c1.NotAfter) || got.RevokedAt != nil || got.CertPEM != c1.CertPEM {
		t.Fatalf("Certificate = %+v", got)
	}
	_, err = db.Certificate(ctx, "ffff")
	wantCode(t, err, iothub.ENOTFOUND)

	// One key binds to one device; the same device may reuse it.
	wantCode(t, db.CreateCertificate(ctx, mkCert("0a02", "pk", "d2", "key1", now, 30)), iothub.ECONFLICT)
	wantCode(t, db.CreateCertificate(ctx, mkCert("0a02", "pk2", "d1", "key1", now, 30)), iothub.ECONFLICT)
	c2 := mkCert("0a02", "pk", "d1", "key1", now, 30)
	must(t, db.CreateCertificate(ctx, c2))
	wantCode(t, db.CreateCertificate(ctx, mkCert("0a02", "pk", "d3", "key3", now, 30)), iothub.ECONFLICT)
	wantCode(t, db.CreateCertificate(ctx, mkCert("", "pk", "d3", "key3", now, 30)), iothub.EINVALID)
	wantCode(t, db.CreateCertificate(ctx, mkCert("0a09", "pk", "d3", "", now, 30)), iothub.EINVALID)
	wantCode(t, db.CreateCertificate(ctx, mkCert("0a09", "pk", "d3", "key3", now, 0)), iothub.EINVALID)
	if _, err := db.Certificate(ctx, "0a09"); iothub.ErrorCode(err) != iothub.ENOTFOUND {
		t.Fatal("refused certificate was stored")
	}

	newest, err := db.CertificateByPublicKey(ctx, "key1")
	must(t, err)
	if newest.Serial != "0a02" {
		t.Fatalf("CertificateByPublicKey = %s, want newest 0a02", newest.Serial)
	}
	_, err = db.CertificateByPublicKey(ctx, "nokey")
	wantCode(t, err, iothub.ENOTFOUND)

	must(t, db.CreateCertificate(ctx, mkCert("0b01", "pk", "d2", "key2", now, 30)))
	list, err := db.CertificatesByAsset(ctx, "pk/d1")
	must(t, err)
	if len(list) != 2 || list[0].Serial != "0a01" || list[1].Serial != "0a02" {
		t.Fatalf("CertificatesByAsset = %+v", list)
	}

	// Revocation, and the CRL list leaves out expired certificates.
	expired := mkCert("0c01", "pk", "d4", "key4", now.Add(-48*time.Hour), 1)
	must(t, db.CreateCertificate(ctx, expired))
	must(t, db.RevokeCertificate(ctx, "0c01", "keyCompromise", now))
	must(t, db.RevokeCertificate(ctx, "0a01", "superseded", now))
	wantCode(t, db.RevokeCertificate(ctx, "0a01", "keyCompromise", now), iothub.ECONFLICT)
	wantCode(t, db.RevokeCertificate(ctx, "ffff", "keyCompromise", now), iothub.ENOTFOUND)
	wantCode(t, db.RevokeCertificate(ctx, "0a02", "", now), iothub.EINVALID)
	got, _ = db.Certificate(ctx, "0a01")
	if got.RevokedAt == nil || !got.RevokedAt.Equal(now) || got.Reason != "superseded" || got.Status(now) != "revoked" {
		t.Fatalf("revoked certificate = %+v", got)
	}
	revoked, err := db.RevokedCertificates(ctx)
	must(t, err)
	if len(revoked) != 1 || revoked[0].Serial != "0a01" {
		t.Fatalf("RevokedCertificates = %+v", revoked)
	}
}

func testExternalCAs(t *testing.T, db iothub.Store) {
	mkProduct(t, db, "pk")
	ca := &iothub.ExternalCA{ID: "ca1", OrgID: iothub.DefaultOrgID, ProductKey: "pk", CertPEM: "pem1", Fingerprint: "fp1", VerificationCode: "code1"}
	must(t, db.CreateExternalCA(ctx, ca))
	got, err := db.ExternalCA(ctx, "ca1")
	must(t, err)
	if got.Verified || got.VerifiedAt != nil || got.VerificationCode != "code1" || got.Fingerprint != "fp1" || !got.CreatedAt.Equal(ca.CreatedAt) {
		t.Fatalf("ExternalCA = %+v", got)
	}
	wantCode(t, db.CreateExternalCA(ctx, &iothub.ExternalCA{ID: "ca1", ProductKey: "pk", CertPEM: "p", Fingerprint: "fp9"}), iothub.ECONFLICT)
	wantCode(t, db.CreateExternalCA(ctx, &iothub.ExternalCA{ID: "ca2", ProductKey: "pk", CertPEM: "p", Fingerprint: "fp1"}), iothub.ECONFLICT)
	wantCode(t, db.CreateExternalCA(ctx, &iothub.ExternalCA{ID: "ca2", ProductKey: "ghost", CertPEM: "p", Fingerprint: "fp2"}), iothub.ENOTFOUND)
	wantCode(t, db.CreateExternalCA(ctx, &iothub.ExternalCA{ID: "ca2", ProductKey: "pk"}), iothub.EINVALID)
	must(t, db.CreateExternalCA(ctx, &iothub.ExternalCA{ID: "ca2", OrgID: iothub.DefaultOrgID, ProductKey: "pk", CertPEM: "pem2", Fingerprint: "fp2"}))
	_, err = db.ExternalCA(ctx, "ghost")
	wantCode(t, err, iothub.ENOTFOUND)

	at := time.Now().UTC().Truncate(time.Millisecond)
	must(t, db.MarkExternalCAVerified(ctx, "ca1", at))
	wantCode(t, db.MarkExternalCAVerified(ctx, "ca1", at), iothub.ECONFLICT)
	wantCode(t, db.MarkExternalCAVerified(ctx, "ghost", at), iothub.ENOTFOUND)
	list, err := db.ExternalCAs(ctx, "pk")
	must(t, err)
	if len(list) != 2 || list[0].ID != "ca1" || !list[0].Verified || !list[0].VerifiedAt.Equal(at) || list[1].Verified {
		t.Fatalf("ExternalCAs = %+v", list)
	}
	if list, _ := db.ExternalCAs(ctx, "other"); len(list) != 0 {
		t.Fatalf("ExternalCAs(other) = %+v", list)
	}
}

func testAudit(t *testing.T, db iothub.Store) {
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for i, e := range []iothub.AuditEvent{
		{Time: t0, OrgID: "a", Kind: "login.ok", ProductKey: "pk", DeviceKey: "d", Remote: "127.0.0.1:5"},
		{Time: t0.Add(time.Second), OrgID: "b", Kind: "login.refused", Reason: "bad signature"},
		{OrgID: "a", Kind: "cert.revoked"},
	} {
		if err := db.Audit(ctx, e); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
	}
	wantCode(t, db.Audit(ctx, iothub.AuditEvent{OrgID: "a"}), iothub.EINVALID)
	all, err := db.AuditEvents(ctx, "", 0)
	must(t, err)
	if len(all) != 3 || all[0].Kind != "cert.revoked" || all[2].Kind != "login.ok" || all[0].ID != 3 || all[2].ID != 1 {
		t.Fatalf("AuditEvents(all) = %+v", all)
	}
	if all[0].Time.IsZero() || !all[2].Time.Equal(t0) || all[2].Remote != "127.0.0.1:5" || all[2].DeviceKey != "d" {
		t.Fatalf("fields lost: %+v", all)
	}
	a, _ := db.AuditEvents(ctx, "a", 1)
	if len(a) != 1 || a[0].Kind != "cert.revoked" {
		t.Fatalf("AuditEvents(a, 1) = %+v", a)
	}
	b, _ := db.AuditEvents(ctx, "b", 10)
	if len(b) != 1 || b[0].Reason != "bad signature" {
		t.Fatalf("AuditEvents(b) = %+v", b)
	}
}

func testApplyDeviceStates(t *testing.T, db iothub.Store) {
	mkProduct(t, db, "pk")
	for _, dk := range []string{"a", "b", "off", "new"} {
		mkDevice(t, db, "pk", dk)
	}
	t1 := time.Date(2026, 1, 2, 3, 4, 5, 6_000_000, time.UTC)
	id := func(dk string) iothub.DeviceID { return iothub.DeviceID{ProductKey: "pk", DeviceKey: dk} }
	must(t, db.SetDeviceState(ctx, "pk", "b", iothub.StateDisabled, t1))
	must(t, db.SetDeviceState(ctx, "pk", "off", iothub.StateOnline, t1))
	must(t, db.SetDeviceState(ctx, "pk", "off", iothub.StateOffline, t1))

	// Bad input fails the batch and writes nothing.
	_, err := db.ApplyDeviceStates(ctx, []iothub.StateChange{
		{Device: id("a"), State: iothub.StateOnline, At: t1},
		{Device: id("a"), State: iothub.StateDisabled, At: t1},
	})
	wantCode(t, err, iothub.EINVALID)
	if d, _ := db.Device(ctx, "pk", "a"); d.State != iothub.StateInactive {
		t.Fatalf("a refused batch wrote state %s", d.State)
	}

	res, err := db.ApplyDeviceStates(ctx, []iothub.StateChange{
		{Device: id("a"), State: iothub.StateOnline, At: t1},      // inactive -> online
		{Device: id("b"), State: iothub.StateOnline, At: t1},      // disabled: ECONFLICT
		{Device: id("ghost"), State: iothub.StateOnline, At: t1},  // ENOTFOUND
		{Device: id("b"), State: iothub.StateOffline, At: t1},     // disabled stays, no error
		{Device: id("new"), State: iothub.StateOffline, At: t1},   // inactive stays
		{Device: id("off"), State: iothub.StateOnline, At: t1},    // in order: online ...
		{Device: id("off"), State: iothub.StateOffline, At: t1},   // ... then offline
		{Device: id("ghost"), State: iothub.StateOffline, At: t1}, // gone: no-op
	})
	must(t, err)
	want := []string{"", iothub.ECONFLICT, iothub.ENOTFOUND, "", "", "", "", ""}
	if len(res) != len(want) {
		t.Fatalf("%d results, want %d", len(res), len(want))
	}
	for i, code := range want {
		wantCode(t, res[i], code)
	}
	for dk, st := range map[string]iothub.DeviceState{"a": iothub.StateOnline, "b": iothub.StateDisabled,
		"new": iothub.StateInactive, "off": iothub.StateOffline} {
		d, err := db.Device(ctx, "pk", dk)
		must(t, err)
		if d.State != st {
			t.Fatalf("%s: state %s, want %s", dk, d.State, st)
		}
	}
	if d, _ := db.Device(ctx, "pk", "a"); d.ActivatedAt == nil || !d.ActivatedAt.Equal(t1) || d.LastSeenAt == nil || !d.LastSeenAt.Equal(t1) {
		t.Fatalf("online by batch: activatedAt/lastSeenAt not set: %+v", d)
	}
	res, err = db.ApplyDeviceStates(ctx, nil)
	if err != nil || len(res) != 0 {
		t.Fatalf("empty batch: %v, %v", res, err)
	}
}

func testAuditBatch(t *testing.T, db iothub.Store) {
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	must(t, db.Audit(ctx, iothub.AuditEvent{Time: t0, OrgID: "a", Kind: "first"}))
	wantCode(t, db.AuditBatch(ctx, []iothub.AuditEvent{{OrgID: "a", Kind: "x"}, {OrgID: "a"}}), iothub.EINVALID)
	must(t, db.AuditBatch(ctx, []iothub.AuditEvent{
		{Time: t0, OrgID: "a", Kind: "login.ok", ProductKey: "pk", DeviceKey: "d", Remote: "127.0.0.1", Reason: "securemode 2"},
		{OrgID: "b", Kind: "login.refused"},
		{Time: t0, OrgID: "a", Kind: "login.ok", DeviceKey: "e"},
	}))
	must(t, db.AuditBatch(ctx, nil))
	all, err := db.AuditEvents(ctx, "", 0)
	must(t, err)
	if len(all) != 4 {
		t.Fatalf("%d events after a refused and an accepted batch, want 4: %+v", len(all), all)
	}
	for i, k := range []string{"login.ok", "login.refused", "login.ok", "first"} {
		if all[i].Kind != k || all[i].ID != int64(4-i) {
			t.Fatalf("event %d = %+v, want kind %s id %d", i, all[i], k, 4-i)
		}
	}
	if all[3-1].Reason != "securemode 2" || all[2].Remote != "127.0.0.1" || !all[2].Time.Equal(t0) || all[1].Time.IsZero() || all[0].DeviceKey != "e" {
		t.Fatalf("fields lost: %+v", all)
	}
}

func testTelemetry(t *testing.T, db iothub.Store) {
	mkProduct(t, db, "pk")
	mkDevice(t, db, "pk", "a")
	mkDevice(t, db, "pk", "b")
	t0 := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	must(t, db.AppendSamples(ctx, []iothub.Sample{
		sample("pk", "a", t0, `{"temp": 1.5, "power": {"value": 1, "quality": 9}}`),
		sample("pk", "b", t0, `{"temp": 7}`),
		sample("pk", "a", t0.Add(time.Second), `{"temp": 2.5}`),
		sample("pk", "ghost", t0, `{"temp": 0}`), // deleted meanwhile: dropped
	}))
	points, err := db.LatestPoints(ctx, "pk", "a")
	must(t, err)
	if len(points) != 2 || points[0].Name != "power" || string(points[0].Value) != `{"value":1,"quality":9}` ||
		points[1].Name != "temp" || string(points[1].Value) != "2.5" || !points[1].Time.Equal(t0.Add(time.Second)) {
		t.Fatalf("LatestPoints = %+v", points)
	}
	// A late (resumed) post does not overwrite a newer latest value.
	must(t, db.AppendSamples(ctx, []iothub.Sample{sample("pk", "a", t0.Add(-time.Hour), `{"temp": -1}`)}))
	points, _ = db.LatestPoints(ctx, "pk", "a")
	if string(points[1].Value) != "2.5" {
		t.Fatalf("older post overwrote latest temp: %s", points[1].Value)
	}
	recent, err := db.RecentSamples(ctx, "pk", "a", 0)
	must(t, err)
	if len(recent) != 3 || string(recent[0].Measurepoints) != `{"temp":-1}` || string(recent[2].Measurepoints) != `{"temp":1.5,"power":{"value":1,"quality":9}}` {
		t.Fatalf("RecentSamples = %+v", recent)
	}
	if recent[1].ProductKey != "pk" || recent[1].DeviceKey != "a" || !recent[1].Time.Equal(t0.Add(time.Second)) {
		t.Fatalf("sample fields: %+v", recent[1])
	}
	if r, _ := db.RecentSamples(ctx, "pk", "a", 1); len(r) != 1 {
		t.Fatalf("limit 1 gave %d", len(r))
	}
	if r, _ := db.RecentSamples(ctx, "pk", "ghost", 10); len(r) != 0 {
		t.Fatalf("dropped samples were stored: %+v", r)
	}

	// A bad sample anywhere in the batch refuses the whole batch.
	for _, bad := range []string{`[1,2]`, `{"temp":`, `null`, `{"": 1}`, `"x"`} {
		err := db.AppendSamples(ctx, []iothub.Sample{sample("pk", "b", t0, `{"temp": 99}`), sample("pk", "b", t0, bad)})
		wantCode(t, err, iothub.EINVALID)
	}
	wantCode(t, db.AppendSamples(ctx, []iothub.Sample{sample("", "b", t0, `{}`)}), iothub.EINVALID)
	if r, _ := db.RecentSamples(ctx, "pk", "b", 10); len(r) != 1 {
		t.Fatalf("refused batch wrote samples: %d", len(r))
	}
	must(t, db.AppendSamples(ctx, nil))
}

func testTelemetryHistoryBound(t *testing.T, db iothub.Store) {
	mkProduct(t, db, "pk")
	mkDevice(t, db, "pk", "a")
	mkDevice(t, db, "pk", "b")
	t0 := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	const total = HistoryPerDevice + 234
	for i := 0; i < total; {
		var batch []iothub.Sample
		for j := 0; j < 97 && i < total; j++ {
			batch = append(batch, sample("pk", "a", t0.Add(time.Duration(i)*time.Second), fmt.Sprintf(`{"n": %d}`, i)))
			i++
		}
		batch = append(batch, sample("pk", "b", t0, `{"n": 0}`))
		must(t, db.AppendSamples(ctx, batch))
	}
	all, err := db.RecentSamples(ctx, "pk", "a", 5000)
	must(t, err)
	if len(all) != HistoryPerDevice {
		t.Fatalf("RecentSamples gave %d", len(all))
	}
	if got, want := string(all[0].Measurepoints), fmt.Sprintf(`{"n":%d}`, total-1); got != want {
		t.Fatalf("newest %s, want %s", got, want)
	}
	if got, want := string(all[len(all)-1].Measurepoints), fmt.Sprintf(`{"n":%d}`, total-HistoryPerDevice); got != want {
		t.Fatalf("oldest kept %s, want %s", got, want)
	}
	// The other device's history is its own.
	if r, _ := db.RecentSamples(ctx, "pk", "b", 5000); len(r) != (total+96)/97 {
		t.Fatalf("device b has %d samples", len(r))
	}
}

func testAttributes(t *testing.T, db iothub.Store) {
	mkProduct(t, db, "pk")
	mkDevice(t, db, "pk", "a")
	must(t, db.SetAttributes(ctx, "pk", "a", map[string]json.RawMessage{"fw": json.RawMessage(`"1.0"`), "loc": json.RawMessage(`{"x": 1}`)}))
	must(t, db.SetAttributes(ctx, "pk", "a", map[string]json.RawMessage{"fw": json.RawMessage(`"1.1"`)}))
	got, err := db.Attributes(ctx, "pk", "a")
	must(t, err)
	if len(got) != 2 || string(got["fw"]) != `"1.1"` || string(got["loc"]) != `{"x":1}` {
		t.Fatalf("Attributes = %s", got)
	}
	wantCode(t, db.SetAttributes(ctx, "pk", "ghost", map[string]json.RawMessage{"fw": json.RawMessage(`1`)}), iothub.ENOTFOUND)
	wantCode(t, db.SetAttributes(ctx, "pk", "a", map[string]json.RawMessage{"fw": json.RawMessage(`1`), "bad": json.RawMessage(`{`)}), iothub.EINVALID)
	wantCode(t, db.SetAttributes(ctx, "pk", "a", map[string]json.RawMessage{"": json.RawMessage(`1`)}), iothub.EINVALID)
	got, _ = db.Attributes(ctx, "pk", "a")
	if string(got["fw"]) != `"1.1"` {
		t.Fatalf("refused update changed fw to %s", got["fw"])
	}
	must(t, db.DeleteAttributes(ctx, "pk", "a", []string{"fw", "never-set"}))
	wantCode(t, db.DeleteAttributes(ctx, "pk", "ghost", []string{"fw"}), iothub.ENOTFOUND)
	got, _ = db.Attributes(ctx, "pk", "a")
	if len(got) != 1 || got["loc"] == nil {
		t.Fatalf("after delete: %s", got)
	}
	if got, _ := db.Attributes(ctx, "pk", "ghost"); got == nil || len(got) != 0 {
		t.Fatalf("unknown device attributes: %v", got)
	}
}

func testEventsAndTags(t *testing.T, db iothub.Store) {
	mkProduct(t, db, "pk")
	mkDevice(t, db, "pk", "a")
	t0 := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	ev := func(dk, id, body string, at time.Time) iothub.DeviceEvent {
		return iothub.DeviceEvent{ProductKey: "pk", DeviceKey: dk, EventID: id, Time: at, Events: json.RawMessage(body)}
	}
	must(t, db.AppendEvents(ctx, []iothub.DeviceEvent{
		ev("a", "alarm", `{"level": 3}`, t0),
		ev("ghost", "alarm", `{"level": 1}`, t0), // deleted meanwhile: dropped
		ev("a", "door", `{"open": true}`, t0.Add(time.Second)),
	}))
	got, err := db.RecentEvents(ctx, "pk", "a", 0)
	must(t, err)
	if len(got) != 2 || got[0].EventID != "door" || string(got[0].Events) != `{"open":true}` ||
		got[1].EventID != "alarm" || !got[1].Time.Equal(t0) || got[1].DeviceKey != "a" {
		t.Fatalf("RecentEvents = %+v", got)
	}
	// A bad event anywhere in the batch refuses the whole batch.
	for _, bad := range []iothub.DeviceEvent{ev("a", "x", `[1]`, t0), ev("a", "", `{}`, t0), ev("a", "x", `{"": 1}`, t0), ev("", "x", `{}`, t0)} {
		wantCode(t, db.AppendEvents(ctx, []iothub.DeviceEvent{ev("a", "ok", `{}`, t0), bad}), iothub.EINVALID)
	}
	if got, _ := db.RecentEvents(ctx, "pk", "a", 0); len(got) != 2 {
		t.Fatalf("a refused batch stored events: %+v", got)
	}

	must(t, db.SetTags(ctx, "pk", "a", map[string]string{"site": "north", "floor": "2"}))
	must(t, db.SetTags(ctx, "pk", "a", map[string]string{"floor": "3"}))
	wantCode(t, db.SetTags(ctx, "pk", "a", map[string]string{"": "x"}), iothub.EINVALID)
	wantCode(t, db.SetTags(ctx, "pk", "ghost", map[string]string{"a": "x"}), iothub.ENOTFOUND)
	tags, err := db.Tags(ctx, "pk", "a")
	must(t, err)
	if len(tags) != 2 || tags["site"] != "north" || tags["floor"] != "3" {
		t.Fatalf("Tags = %v", tags)
	}
	must(t, db.DeleteTags(ctx, "pk", "a", []string{"site", "never-set"}))
	if tags, _ := db.Tags(ctx, "pk", "a"); len(tags) != 1 || tags["floor"] != "3" {
		t.Fatalf("after delete: %v", tags)
	}
	must(t, db.DeleteDevice(ctx, "pk", "a"))
	mkDevice(t, db, "pk", "a")
	if got, _ := db.RecentEvents(ctx, "pk", "a", 0); len(got) != 0 {
		t.Fatalf("a re-created device inherited events: %+v", got)
	}
	if tags, _ := db.Tags(ctx, "pk", "a"); len(tags) != 0 {
		t.Fatalf("a re-created device inherited tags: %v", tags)
	}
}

func testTopology(t *testing.T, db iothub.Store) {
	mkProduct(t, db, "gwp")
	mkProduct(t, db, "pk")
	id := func(pk, dk string) iothub.DeviceID { return iothub.DeviceID{ProductKey: pk, DeviceKey: dk} }
	gw, gw2 := id("gwp", "gw"), id("gwp", "gw2")
	mkDevice(t, db, "gwp", "gw")
	mkDevice(t, db, "gwp", "gw2")
	mkDevice(t, db, "pk", "a")
	mkDevice(t, db, "pk", "b")
	must(t, db.AddSubDevices(ctx, gw, []iothub.DeviceID{id("pk", "b"), id("pk", "a")}))
	must(t, db.AddSubDevices(ctx, gw, []iothub.DeviceID{id("pk", "a")})) // again: no change
	subs, err := db.SubDevices(ctx, gw)
	must(t, err)
	if len(subs) != 2 || subs[0] != id("pk", "a") || subs[1] != id("pk", "b") {
		t.Fatalf("SubDevices = %v", subs)
	}
	wantCode(t, db.AddSubDevices(ctx, gw2, []iothub.DeviceID{id("pk", "a")}), iothub.ECONFLICT)
	wantCode(t, db.AddSubDevices(ctx, gw, []iothub.DeviceID{id("pk", "ghost")}), iothub.ENOTFOUND)
	wantCode(t, db.AddSubDevices(ctx, gw, []iothub.DeviceID{gw}), iothub.EINVALID)
	if owner, err := db.GatewayOf(ctx, id("pk", "a")); err != nil || owner != gw {
		t.Fatalf("GatewayOf(a) = %v, %v", owner, err)
	}
	_, err = db.GatewayOf(ctx, gw2)
	wantCode(t, err, iothub.ENOTFOUND)
	must(t, db.RemoveSubDevices(ctx, gw, []iothub.DeviceID{id("pk", "b"), id("pk", "ghost")}))
	must(t, db.DeleteDevice(ctx, "pk", "a"))
	if subs, _ := db.SubDevices(ctx, gw); len(subs) != 0 {
		t.Fatalf("after remove and delete: %v", subs)
	}
	// Deleting a gateway empties its topology.
	must(t, db.AddSubDevices(ctx, gw2, []iothub.DeviceID{id("pk", "b")}))
	must(t, db.DeleteDevice(ctx, "gwp", "gw2"))
	_, err = db.GatewayOf(ctx, id("pk", "b"))
	wantCode(t, err, iothub.ENOTFOUND)
}

func testDeleteDeviceRemovesDataKeepsCertificates(t *testing.T, db iothub.Store) {
	mkProduct(t, db, "pk")
	mkDevice(t, db, "pk", "a")
	mkDevice(t, db, "pk", "b")
	now := time.Now()
	for _, dk := range []string{"a", "b"} {
		must(t, db.AppendSamples(ctx, []iothub.Sample{sample("pk", dk, now, `{"t": 1}`)}))
		must(t, db.SetAttributes(ctx, "pk", dk, map[string]json.RawMessage{"fw": json.RawMessage(`1`)}))
		must(t, db.CreateCertificate(ctx, mkCert("c"+dk, "pk", dk, "key-"+dk, now, 10)))
	}
	must(t, db.DeleteDevice(ctx, "pk", "a"))
	wantCode(t, db.DeleteDevice(ctx, "pk", "a"), iothub.ENOTFOUND)
	_, err := db.Device(ctx, "pk", "a")
	wantCode(t, err, iothub.ENOTFOUND)
	if pa, _ := db.LatestPoints(ctx, "pk", "a"); len(pa) != 0 {
		t.Fatalf("deleted device keeps %d latest points", len(pa))
	}
	if aa, _ := db.Attributes(ctx, "pk", "a"); len(aa) != 0 {
		t.Fatalf("deleted device keeps %d attributes", len(aa))
	}
	pb, _ := db.LatestPoints(ctx, "pk", "b")
	ab, _ := db.Attributes(ctx, "pk", "b")
	sb, _ := db.RecentSamples(ctx, "pk", "b", 10)
	if len(pb) != 1 || len(ab) != 1 || len(sb) != 1 {
		t.Fatalf("the other device lost data: %d points, %d attributes, %d samples", len(pb), len(ab), len(sb))
	}
	certs, err := db.CertificatesByAsset(ctx, "pk/a")
	must(t, err)
	if len(certs) != 1 {
		t.Fatalf("certificates of the deleted device: %d, want 1 kept", len(certs))
	}
	// A device re-created under the same key starts with a fresh history.
	mkDevice(t, db, "pk", "a")
	if r, _ := db.RecentSamples(ctx, "pk", "a", 10); len(r) != 0 {
		t.Fatalf("re-created device sees old samples: %d", len(r))
	}
}

func testConcurrentWritersAndReaders(t *testing.T, db iothub.Store) {
	mkProduct(t, db, "pk")
	seedDevices(t, db, "pk", 200)
	const writers, readers, perWriter = 6, 6, 40
	var wg sync.WaitGroup
	errs := make(chan error, writers*perWriter*4+readers*1000)
	stop := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				dk := fmt.Sprintf("w%d-%03d", w, i)
				if err := db.CreateDevice(ctx, &iothub.Device{ProductKey: "pk", DeviceKey: dk, DeviceSecret: "s"}); err != nil {
					errs <- err
				}
				seed := fmt.Sprintf("d%07d", (w*perWriter+i)%200)
				errs <- db.SetDeviceState(ctx, "pk", seed, iothub.StateOnline, time.Now())
				errs <- db.AppendSamples(ctx, []iothub.Sample{sample("pk", seed, time.Now(), `{"v":1}`)})
				errs <- db.TouchDevices(ctx, map[iothub.DeviceID]time.Time{{ProductKey: "pk", DeviceKey: seed}: time.Now()})
			}
		}()
	}
	var rg sync.WaitGroup
	for r := range readers {
		rg.Add(1)
		go func() {
			defer rg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := db.Device(ctx, "pk", fmt.Sprintf("d%07d", (r*31+i)%200)); err != nil {
					errs <- err
					return
				}
				if i%20 == 0 {
					if _, err := db.Devices(ctx, "pk", iothub.DeviceFilter{Limit: 50}); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	rg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	n, err := db.CountDevices(ctx, "pk")
	must(t, err)
	if n != 200+writers*perWriter {
		t.Fatalf("%d devices, want %d", n, 200+writers*perWriter)
	}
}

// F7: leaf revocations of an external CA, gone with their CA.
func testExternalRevocations(t *testing.T, db iothub.Store) {
	mkProduct(t, db, "pk")
	must(t, db.CreateExternalCA(ctx, &iothub.ExternalCA{ID: "ca1", OrgID: iothub.DefaultOrgID, ProductKey: "pk", CertPEM: "pem1", Fingerprint: "fp1"}))
	r := &iothub.ExternalRevocation{CAID: "ca1", ProductKey: "pk", IssuerSHA256: "iss", Serial: "0a", Reason: "keyCompromise", RevokedAt: time.Now()}
	must(t, db.RevokeExternalLeaf(ctx, r))
	wantCode(t, db.RevokeExternalLeaf(ctx, r), iothub.ECONFLICT)
	wantCode(t, db.RevokeExternalLeaf(ctx, &iothub.ExternalRevocation{CAID: "ghost", ProductKey: "pk", IssuerSHA256: "iss", Serial: "0b", Reason: "unspecified"}), iothub.ENOTFOUND)
	wantCode(t, db.RevokeExternalLeaf(ctx, &iothub.ExternalRevocation{CAID: "ca1", ProductKey: "pk"}), iothub.EINVALID)
	list, err := db.ExternalRevocations(ctx, "pk")
	must(t, err)
	if len(list) != 1 || list[0].Serial != "0a" || list[0].Reason != "keyCompromise" {
		t.Fatalf("ExternalRevocations = %+v", list)
	}
	if all, _ := db.ExternalRevocations(ctx, ""); len(all) != 1 {
		t.Fatalf("ExternalRevocations(all) = %+v", all)
	}
	must(t, db.DeleteExternalCA(ctx, "ca1"))
	wantCode(t, db.DeleteExternalCA(ctx, "ca1"), iothub.ENOTFOUND)
	if list, _ := db.ExternalRevocations(ctx, "pk"); len(list) != 0 {
		t.Fatalf("revocations outlived their CA: %+v", list)
	}
}

// F8: pending supersessions of renewals.
func testSupersessions(t *testing.T, db iothub.Store) {
	due := time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
	must(t, db.AddSupersessions(ctx, "new1", []string{"old1", "old2"}, due))
	must(t, db.AddSupersessions(ctx, "new1", []string{"old1"}, due)) // idempotent
	must(t, db.AddSupersessions(ctx, "new2", []string{"old3"}, due))
	list, err := db.Supersessions(ctx, "")
	must(t, err)
	if len(list) != 3 || list[0].New != "new1" || list[0].Old != "old1" || !list[0].Due.Equal(due) {
		t.Fatalf("Supersessions = %+v", list)
	}
	must(t, db.DeleteSupersessions(ctx, "new1"))
	if list, _ := db.Supersessions(ctx, ""); len(list) != 1 || list[0].New != "new2" {
		t.Fatalf("after delete: %+v", list)
	}
	if list, _ := db.Supersessions(ctx, "new2"); len(list) != 1 || list[0].Old != "old3" {
		t.Fatalf("Supersessions(new2) = %+v", list)
	}
}

// F9: a request digest is usable once until it expires.
func testUseRequest(t *testing.T, db iothub.Store) {
	must(t, db.UseRequest(ctx, "d1", time.Now().Add(time.Minute)))
	wantCode(t, db.UseRequest(ctx, "d1", time.Now().Add(time.Minute)), iothub.ECONFLICT)
	must(t, db.UseRequest(ctx, "d2", time.Now().Add(-time.Second)))
	must(t, db.UseRequest(ctx, "d2", time.Now().Add(time.Minute))) // the expired one was purged
	wantCode(t, db.UseRequest(ctx, "", time.Now()), iothub.EINVALID)
}

// F3: the bootstrap key is never revoked by RevokeAPIKey and is set whole.
func testBootstrapKey(t *testing.T, db iothub.Store) {
	_, err := db.BootstrapKey(ctx)
	wantCode(t, err, iothub.ENOTFOUND)
	h1 := bytes.Repeat([]byte{1}, 32)
	must(t, db.SetBootstrapKey(ctx, h1))
	k, err := db.BootstrapKey(ctx)
	must(t, err)
	if !k.Bootstrap || k.Role != iothub.RoleAdmin || !bytes.Equal(k.Hash, h1) || k.RevokedAt != nil {
		t.Fatalf("BootstrapKey = %+v", k)
	}
	wantCode(t, db.RevokeAPIKey(ctx, iothub.DefaultOrgID, k.ID), iothub.EFORBIDDEN)
	h2 := bytes.Repeat([]byte{2}, 32)
	must(t, db.SetBootstrapKey(ctx, h2))
	_, err = db.APIKeyByHash(ctx, h1)
	wantCode(t, err, iothub.ENOTFOUND)
	if k, err := db.APIKeyByHash(ctx, h2); err != nil || !k.Bootstrap {
		t.Fatalf("rotated key: %+v %v", k, err)
	}
}

// F6: attribute count and size caps; a refused merge writes nothing.
func testAttributeCaps(t *testing.T, db iothub.Store) {
	mkProduct(t, db, "pk")
	mkDevice(t, db, "pk", "a")
	big := json.RawMessage(`"` + strings.Repeat("x", iothub.MaxAttributeBytes) + `"`)
	wantCode(t, db.SetAttributes(ctx, "pk", "a", map[string]json.RawMessage{"big": big}), iothub.ETOOLARGE)
	attrs := map[string]json.RawMessage{}
	for i := range iothub.MaxAttributesPerDevice {
		attrs[fmt.Sprintf("a%d", i)] = json.RawMessage(`1`)
	}
	must(t, db.SetAttributes(ctx, "pk", "a", attrs))
	must(t, db.SetAttributes(ctx, "pk", "a", map[string]json.RawMessage{"a0": json.RawMessage(`2`)})) // an update, not a new one
	wantCode(t, db.SetAttributes(ctx, "pk", "a", map[string]json.RawMessage{"one-more": json.RawMessage(`1`)}), iothub.ETOOLARGE)
	got, err := db.Attributes(ctx, "pk", "a")
	must(t, err)
	if len(got) != iothub.MaxAttributesPerDevice || string(got["a0"]) != "2" {
		t.Fatalf("%d attributes, a0 = %s", len(got), got["a0"])
	}
}

func testOTA(t *testing.T, db iothub.Store) {
	mkProduct(t, db, "pk")
	mkDevice(t, db, "pk", "a")
	mkDevice(t, db, "pk", "b")
	now := time.UnixMilli(1_700_000_000_000).UTC()
	content := bytes.Repeat([]byte{0, 1, 2, 0xff}, 1000)
	fw := &iothub.Firmware{ID: "fw1", OrgID: iothub.DefaultOrgID, ProductKey: "pk", Version: "1.1", Size: int64(len(content)), SHA256: "x", CreatedAt: now}
	must(t, db.CreateFirmware(ctx, fw, content))
	dup := *fw
	dup.ID = "fw2"
	wantCode(t, db.CreateFirmware(ctx, &dup, content), iothub.ECONFLICT)
	got, err := db.FirmwareContent(ctx, "pk", "fw1")
	must(t, err)
	if !bytes.Equal(got, content) {
		t.Fatal("firmware content changed in the store")
	}
	_, err = db.Firmware(ctx, "other", "fw1")
	wantCode(t, err, iothub.ENOTFOUND)
	if list, err := db.Firmwares(ctx, "pk"); err != nil || len(list) != 1 || *list[0] != *fw {
		t.Fatalf("Firmwares = %+v, %v", list, err)
	}

	job := func(id string, dks ...string) *iothub.OTAJob {
		j := &iothub.OTAJob{ID: id, OrgID: iothub.DefaultOrgID, ProductKey: "pk", FirmwareID: "fw1", CreatedAt: now}
		for _, dk := range dks {
			j.Devices = append(j.Devices, iothub.OTADevice{DeviceKey: dk, Status: iothub.OTAPending})
		}
		return j
	}
	wantCode(t, db.CreateOTAJob(ctx, job("j0", "a", "ghost")), iothub.ENOTFOUND)
	_, err = db.OTAJob(ctx, "pk", "j0")
	wantCode(t, err, iothub.ENOTFOUND) // nothing written
	must(t, db.CreateOTAJob(ctx, job("j1", "a", "b")))
	a := iothub.DeviceID{ProductKey: "pk", DeviceKey: "a"}
	must(t, db.UpdateOTADevice(ctx, "j1", a, iothub.OTADevice{Status: iothub.OTAUpgrading, Step: 40, Desc: "half", UpdatedAt: now}))
	// A late acceptance does not undo progress.
	wantCode(t, db.UpdateOTADevice(ctx, "j1", a, iothub.OTADevice{Status: iothub.OTANotified, UpdatedAt: now}), iothub.ENOTFOUND)
	p, err := db.PendingOTA(ctx, a)
	must(t, err)
	if p.ID != "j1" || p.Version != "1.1" || len(p.Devices) != 1 || p.Devices[0].Step != 40 || p.Devices[0].Desc != "half" {
		t.Fatalf("PendingOTA = %+v", p)
	}
	// A newer job supersedes the unfinished entries of a.
	must(t, db.CreateOTAJob(ctx, job("j2", "a")))
	j1, err := db.OTAJob(ctx, "pk", "j1")
	must(t, err)
	if j1.Devices[0].Status != iothub.OTASuperseded || j1.Devices[1].Status != iothub.OTAPending || j1.Status() != "running" {
		t.Fatalf("j1 after j2: %+v", j1)
	}
	must(t, db.UpdateOTADevice(ctx, "j2", a, iothub.OTADevice{Status: iothub.OTADone, Step: 100, UpdatedAt: now}))
	wantCode(t, db.UpdateOTADevice(ctx, "j2", a, iothub.OTADevice{Status: iothub.OTAFailed, UpdatedAt: now}), iothub.ENOTFOUND)
	_, err = db.PendingOTA(ctx, a)
	wantCode(t, err, iothub.ENOTFOUND)
	// Deleting a device takes it out of its jobs.
	must(t, db.DeleteDevice(ctx, "pk", "b"))
	if j1, _ := db.OTAJob(ctx, "pk", "j1"); len(j1.Devices) != 1 || j1.Status() != "superseded" {
		t.Fatalf("j1 after deleting b: %+v", j1)
	}
}

func testThingModelAndRaw(t *testing.T, db iothub.Store) {
	mkProduct(t, db, "pk")
	mkDevice(t, db, "pk", "a")
	now := time.UnixMilli(1_700_000_000_000).UTC()
	_, err := db.ThingModel(ctx, "pk")
	wantCode(t, err, iothub.ENOTFOUND)
	must(t, db.SetThingModel(ctx, "pk", json.RawMessage(`{"measurepoints":{"t":{"dataType":"int"}}}`), now))
	must(t, db.SetThingModel(ctx, "pk", json.RawMessage(`{"measurepoints":{"u":{"dataType":"int"}}}`), now))
	if m, err := db.ThingModel(ctx, "pk"); err != nil || string(m) != `{"measurepoints":{"u":{"dataType":"int"}}}` {
		t.Fatalf("ThingModel = %s, %v", m, err)
	}
	must(t, db.SetThingModel(ctx, "pk", nil, now))
	_, err = db.ThingModel(ctx, "pk")
	wantCode(t, err, iothub.ENOTFOUND)

	a := iothub.DeviceID{ProductKey: "pk", DeviceKey: "a"}
	wantCode(t, db.AppendRaw(ctx, iothub.DeviceID{ProductKey: "pk", DeviceKey: "ghost"}, []byte{1}, now), iothub.ENOTFOUND)
	wantCode(t, db.AppendRaw(ctx, a, make([]byte, iothub.MaxRawBytes+1), now), iothub.ETOOLARGE)
	for i := range iothub.RawPerDevice + 5 {
		must(t, db.AppendRaw(ctx, a, []byte{byte(i), 0, 0xff}, now.Add(time.Duration(i)*time.Millisecond)))
	}
	msgs, err := db.RecentRaw(ctx, a, 0)
	must(t, err)
	if len(msgs) != iothub.RawPerDevice || !bytes.Equal(msgs[0].Payload, []byte{iothub.RawPerDevice + 4, 0, 0xff}) {
		t.Fatalf("RecentRaw: %d messages, newest %v", len(msgs), msgs[0].Payload)
	}
	must(t, db.DeleteDevice(ctx, "pk", "a"))
	if msgs, _ := db.RecentRaw(ctx, a, 0); len(msgs) != 0 {
		t.Fatalf("raw messages outlive their device: %d", len(msgs))
	}
}

// testCAFiles: shared CA files are written, replaced and read back whole;
// a nameless file changes nothing.
func testCAFiles(t *testing.T, db iothub.Store) {
	ctx := context.Background()
	got, err := db.CAFiles(ctx)
	if err != nil || len(got) != 0 {
		t.Fatalf("a new store has CA files %v (%v)", got, err)
	}
	if err := db.PutCAFiles(ctx, map[string][]byte{"root.pem": []byte("cert"), "root.key": []byte("key")}); err != nil {
		t.Fatal(err)
	}
	if err := db.PutCAFiles(ctx, map[string][]byte{"root.key": []byte("key2"), "": []byte("x")}); iothub.ErrorCode(err) != iothub.EINVALID {
		t.Fatalf("nameless file: %v, want EINVALID", err)
	}
	if got, _ := db.CAFiles(ctx); string(got["root.key"]) != "key" {
		t.Fatalf("a refused write changed root.key to %q", got["root.key"])
	}
	if err := db.PutCAFiles(ctx, map[string][]byte{"root.key": []byte("key3")}); err != nil {
		t.Fatal(err)
	}
	got, err = db.CAFiles(ctx)
	if err != nil || len(got) != 2 || string(got["root.pem"]) != "cert" || string(got["root.key"]) != "key3" {
		t.Fatalf("CA files %q (%v)", got, err)
	}
}

func testSearchAudit(t *testing.T, db iothub.Store) {
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	must(t, db.AuditBatch(ctx, []iothub.AuditEvent{
		{Time: t0, OrgID: "a", Kind: "login.ok", ProductKey: "pk", DeviceKey: "d1"},
		{Time: t0.Add(time.Second), OrgID: "a", Kind: "login.refused", ProductKey: "pk", DeviceKey: "d2"},
		{Time: t0.Add(2 * time.Second), OrgID: "b", Kind: "login_x.ok", ProductKey: "pk", DeviceKey: "d1"},
		{Time: t0.Add(3 * time.Second), OrgID: "a", Kind: "device.disabled", ProductKey: "pk", DeviceKey: "d1"},
	}))
	ids := func(f iothub.AuditFilter) string {
		t.Helper()
		events, err := db.SearchAudit(ctx, f)
		must(t, err)
		var out []string
		for _, e := range events {
			out = append(out, strconv.FormatInt(e.ID, 10))
		}
		return strings.Join(out, ",")
	}
	for _, c := range []struct {
		f    iothub.AuditFilter
		want string
	}{
		{iothub.AuditFilter{}, "4,3,2,1"},
		{iothub.AuditFilter{Kind: "login."}, "2,1"}, // a prefix: not login_x.
		{iothub.AuditFilter{Kind: "login.refused"}, "2"},
		{iothub.AuditFilter{OrgID: "a", DeviceKey: "d1"}, "4,1"},
		{iothub.AuditFilter{ProductKey: "pk", Since: t0.Add(time.Second), Until: t0.Add(3 * time.Second)}, "3,2"},
		{iothub.AuditFilter{Limit: 2}, "4,3"},
		{iothub.AuditFilter{Limit: 2, Before: 3}, "2,1"},
		{iothub.AuditFilter{After: 2}, "3,4"},
		{iothub.AuditFilter{DeviceKey: "nobody"}, ""},
	} {
		if got := ids(c.f); got != c.want {
			t.Errorf("SearchAudit(%+v) = %s, want %s", c.f, got, c.want)
		}
	}
}
