package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iothub/iothub"
)

func TestRolesAndOrgSegregation(t *testing.T) {
	th := startHub(t, "")
	var org struct{ ID string }
	do(t, th.admin, "POST", "/api/v1/orgs", map[string]any{"name": "acme"}, &org, 201)

	keys := map[iothub.Role]string{}
	for _, role := range []iothub.Role{iothub.RoleAdmin, iothub.RoleOperator, iothub.RoleViewer} {
		var k struct{ ID, Key string }
		do(t, th.admin, "POST", "/api/v1/orgs/"+org.ID+"/apikeys", map[string]any{"name": string(role), "role": role}, &k, 201)
		keys[role] = k.Key
	}
	admin, operator, viewer := th.as(t, keys[iothub.RoleAdmin]), th.as(t, keys[iothub.RoleOperator]), th.as(t, keys[iothub.RoleViewer])

	var prod iothub.Product
	do(t, admin, "POST", "/api/v1/products", map[string]any{"name": "meter"}, &prod, 201)
	if prod.OrgID != org.ID || prod.ProductSecret == "" || prod.AuthMode != iothub.AuthSecret {
		t.Fatalf("product created as %+v", prod)
	}
	do(t, viewer, "POST", "/api/v1/products", map[string]any{"name": "x"}, nil, 403)
	do(t, viewer, "POST", "/api/v1/products/"+prod.ProductKey+"/devices", map[string]any{}, nil, 403)
	do(t, operator, "POST", "/api/v1/products", map[string]any{"name": "x"}, nil, 403)
	var dev iothub.Device
	do(t, operator, "POST", "/api/v1/products/"+prod.ProductKey+"/devices", map[string]any{"deviceKey": "SN0001"}, &dev, 201)
	if dev.State != iothub.StateInactive || dev.DeviceSecret == "" || dev.AssetID == "" {
		t.Fatalf("device created as %+v", dev)
	}
	var got iothub.Device
	do(t, viewer, "GET", "/api/v1/products/"+prod.ProductKey+"/devices/SN0001", nil, &got, 200)
	if got.DeviceSecret != "" || got.State != iothub.StateInactive {
		t.Fatalf("GET shows %+v: the secret must not be shown again", got)
	}

	// Another org's keys see nothing of acme: 404, not 403.
	var other struct{ ID string }
	do(t, th.admin, "POST", "/api/v1/orgs", map[string]any{"name": "globex"}, &other, 201)
	var ok struct{ Key string }
	do(t, th.admin, "POST", "/api/v1/orgs/"+other.ID+"/apikeys", map[string]any{"role": "admin"}, &ok, 201)
	outsider := th.as(t, ok.Key)
	do(t, outsider, "GET", "/api/v1/products/"+prod.ProductKey, nil, nil, 404)
	do(t, outsider, "GET", "/api/v1/products/"+prod.ProductKey+"/devices/SN0001", nil, nil, 404)
	do(t, outsider, "POST", "/api/v1/products/"+prod.ProductKey+"/devices/SN0001/disable", nil, nil, 404)
	do(t, outsider, "POST", "/api/v1/orgs/"+org.ID+"/apikeys", map[string]any{"role": "admin"}, nil, 404)
	var list struct{ Products []iothub.Product }
	do(t, outsider, "GET", "/api/v1/products", nil, &list, 200)
	if len(list.Products) != 0 {
		t.Fatalf("outsider lists %d products of another org", len(list.Products))
	}

	// Unknown key: 401. A revoked key stops working at once.
	do(t, th.as(t, "ihk_not-a-key"), "GET", "/api/v1/products", nil, nil, 401)
	do(t, th.as(t, ""), "GET", "/api/v1/products", nil, nil, 401)
	var ks struct{ Apikeys []iothub.APIKey }
	do(t, admin, "GET", "/api/v1/orgs/"+org.ID+"/apikeys", nil, &ks, 200)
	for _, k := range ks.Apikeys {
		if k.Role == iothub.RoleViewer {
			do(t, admin, "DELETE", "/api/v1/orgs/"+org.ID+"/apikeys/"+k.ID, nil, nil, 204)
		}
	}
	do(t, viewer, "GET", "/api/v1/products", nil, nil, 401)
	// An org admin cannot create organisations.
	do(t, admin, "POST", "/api/v1/orgs", map[string]any{"name": "mine"}, nil, 403)
}

func TestBadInputChangesNothing(t *testing.T) {
	th := startHub(t, "")
	var prod iothub.Product
	do(t, th.admin, "POST", "/api/v1/products", map[string]any{"name": "meter", "productKey": "meterPK"}, &prod, 201)
	devs := "/api/v1/products/meterPK/devices"
	do(t, th.admin, "POST", devs, map[string]any{"deviceKey": "dev1"}, nil, 201)

	raw := func(path, body string) int {
		req, _ := http.NewRequest("POST", th.HTTPURL()+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+th.AdminKey())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e struct {
			Error struct{ Code, Message string }
		}
		json.NewDecoder(resp.Body).Decode(&e)
		if resp.StatusCode >= 400 && e.Error.Message == "" {
			t.Errorf("POST %s: %d without an error message", path, resp.StatusCode)
		}
		return resp.StatusCode
	}
	for _, tc := range []struct {
		path, body string
		want       int
	}{
		{devs, `{"deviceKey":`, 400},
		{devs, `{"deviceKey":"a"}{"x":1}`, 400},
		{devs, `{"deviceKey":"dev2","colour":"red"}`, 400},
		{devs, ``, 400},
		{devs, `{"deviceKey":"dev1"}`, 409},
		{devs, `{"deviceKey":"a/b"}`, 400},
		{devs, `{"deviceKey":"a+b"}`, 400},
		{devs, `{"deviceKey":"a#b"}`, 400},
		{devs, `{"deviceKey":"a b"}`, 400},
		{devs, `{"deviceKey":"a\u0001b"}`, 400},
		{devs, `{"deviceKey":"` + strings.Repeat("k", 65) + `"}`, 400},
		{devs, `{"deviceKey":"` + strings.Repeat("k", 2<<20) + `"}`, 413},
		{"/api/v1/orgs/default/apikeys", `{"role":"root"}`, 400},
		{"/api/v1/products", `{"name":"x","authMode":"password"}`, 400},
		{"/api/v1/products", `{"name":"dup","productKey":"meterPK"}`, 409},
		{"/api/v1/products", `{"name":""}`, 400},
	} {
		if got := raw(tc.path, tc.body); got != tc.want {
			t.Errorf("POST %s %.40q: %d, want %d", tc.path, tc.body, got, tc.want)
		}
	}
	var list struct{ Devices []iothub.Device }
	do(t, th.admin, "GET", devs, nil, &list, 200)
	if len(list.Devices) != 1 || list.Devices[0].DeviceKey != "dev1" {
		t.Fatalf("bad input changed the registry: %+v", list.Devices)
	}
	var keys struct{ Apikeys []iothub.APIKey }
	do(t, th.admin, "GET", "/api/v1/orgs/default/apikeys", nil, &keys, 200)
	if len(keys.Apikeys) != 1 {
		t.Fatalf("bad input created API keys: %+v", keys.Apikeys)
	}
}

func TestRestartKeepsEverythingAndSealsSecrets(t *testing.T) {
	dir := t.TempDir()
	th := startHub(t, dir)
	chain := th.ChainPEM()
	adminKey := th.AdminKey()
	var org struct{ ID string }
	do(t, th.admin, "POST", "/api/v1/orgs", map[string]any{"name": "acme"}, &org, 201)
	var k struct{ ID, Key string }
	do(t, th.admin, "POST", "/api/v1/orgs/"+org.ID+"/apikeys", map[string]any{"role": "operator"}, &k, 201)
	var prod iothub.Product
	do(t, th.admin, "POST", "/api/v1/products", map[string]any{"name": "meter", "orgId": org.ID, "dynamicActivation": true}, &prod, 201)
	var dev iothub.Device
	do(t, th.admin, "POST", "/api/v1/products/"+prod.ProductKey+"/devices", map[string]any{"deviceKey": "SN-1"}, &dev, 201)
	th.stop()

	// Nothing secret in clear under the data dir, except admin.key, which
	// the contract puts there (mode 0600).
	secrets := map[string]string{"product secret": prod.ProductSecret, "device secret": dev.DeviceSecret, "API key": k.Key}
	filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for what, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s found in clear in %s", what, path)
			}
		}
		if strings.HasSuffix(path, ".key") || strings.Contains(path, "iothub.db") {
			if info.Mode().Perm() != 0o600 {
				t.Errorf("%s has mode %v, want 0600", path, info.Mode().Perm())
			}
		}
		return nil
	})

	th2 := startHub(t, dir)
	if th2.AdminKey() != adminKey {
		t.Fatal("second start made a new admin key")
	}
	if !bytes.Equal(th2.ChainPEM(), chain) {
		t.Fatal("second start made a new CA")
	}
	op := th2.as(t, k.Key)
	var got iothub.Device
	do(t, op, "GET", "/api/v1/products/"+prod.ProductKey+"/devices/SN-1", nil, &got, 200)
	if got.AssetID != dev.AssetID || got.OrgID != org.ID {
		t.Fatalf("device after restart: %+v", got)
	}
	var p2 iothub.Product
	do(t, op, "GET", "/api/v1/products/"+prod.ProductKey, nil, &p2, 200)
	if !p2.DynamicActivation {
		t.Fatalf("product after restart: %+v", p2)
	}
	st, err := th2.Store().Device(context.Background(), prod.ProductKey, "SN-1")
	if err != nil || st.DeviceSecret != dev.DeviceSecret {
		t.Fatalf("secret does not unseal after restart: %v", err)
	}
}

func TestServerCertificateVerifiesWithOpenSSL(t *testing.T) {
	openssl := needTool(t, "openssl")
	th := startHub(t, "")
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, th.get(t, "/ca.pem"), 0o600)

	conn, err := tls.Dial("tcp", strings.TrimPrefix(th.HTTPSURL(), "https://"), &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	leafFile := filepath.Join(dir, "server.pem")
	os.WriteFile(leafFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}), 0o600)
	out, err := exec.Command(openssl, "verify", "-CAfile", caFile, "-purpose", "sslserver", leafFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}

	// And an HTTPS client that trusts only the chain reaches the API.
	resp, err := th.trustingClient(t).Get(th.HTTPSURL() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz over https: %d", resp.StatusCode)
	}
}

func TestMetricsAndHealth(t *testing.T) {
	th := startHub(t, "")
	if !bytes.Contains(th.get(t, "/healthz"), []byte(`"ok"`)) {
		t.Fatal("healthz does not say ok")
	}
	if !bytes.Contains(th.get(t, "/metrics"), []byte("go_goroutines")) {
		t.Fatal("metrics lack the Go collector")
	}
}
