package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iothub/iothub/hub"
	"github.com/iothub/iothub/postgres/pgtest"
)

// rawJSON sends a request (with key unless empty) and decodes its JSON answer.
func rawJSON(t *testing.T, method, url, key string, out any) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: %d with Content-Type %q, want JSON", method, url, resp.StatusCode, ct)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp
}

type apiError struct {
	Error struct{ Code, Message string }
}

// TestRouterErrorsAreJSON: no route and a wrong method answer in the API's
// JSON error shape, with Allow on 405.
func TestRouterErrorsAreJSON(t *testing.T) {
	th := startHub(t, "")
	var e apiError
	if resp := rawJSON(t, "GET", th.HTTPURL()+"/api/v1/nosuch", "", &e); resp.StatusCode != 404 || e.Error.Code != "not_found" {
		t.Fatalf("unknown route: %d %+v", resp.StatusCode, e)
	}
	e = apiError{}
	resp := rawJSON(t, "DELETE", th.HTTPURL()+"/api/v1/products", th.AdminKey(), &e)
	if resp.StatusCode != 405 || e.Error.Code != "method_not_allowed" || !strings.Contains(resp.Header.Get("Allow"), "GET") {
		t.Fatalf("wrong method: %d Allow=%q %+v", resp.StatusCode, resp.Header.Get("Allow"), e)
	}
}

// TestThrottleIsPerKeyPrefix: a client retrying a bad key is throttled with
// Retry-After, while a good key from the same address still works.
func TestThrottleIsPerKeyPrefix(t *testing.T) {
	th := startHub(t, "")
	bad := "ihk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	var e apiError
	var last *http.Response
	for range 12 {
		last = rawJSON(t, "GET", th.HTTPURL()+"/api/v1/products", bad, &e)
	}
	if last.StatusCode != 429 || last.Header.Get("Retry-After") == "" || e.Error.Code != "rate_limited" {
		t.Fatalf("12 bad keys: last %d Retry-After=%q %+v", last.StatusCode, last.Header.Get("Retry-After"), e)
	}
	// The client: ten different bad keys, then a good one.
	for i := range 10 {
		rawJSON(t, "GET", th.HTTPURL()+"/api/v1/products", fmt.Sprintf("ihk_%02dBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB", i), &e)
	}
	var products map[string]any
	if resp := rawJSON(t, "GET", th.HTTPURL()+"/api/v1/products", th.AdminKey(), &products); resp.StatusCode != 200 {
		t.Fatalf("the good key from the same address: %d %v", resp.StatusCode, products)
	}
}

type readiness struct {
	Status string
	Checks map[string]string
}

// TestReadyzNamesWhatIsDown: /livez answers while the process runs; /readyz
// checks the database, the bus and the listeners and, with PostgreSQL
// stopped, answers 503 naming the database.
func TestReadyzNamesWhatIsDown(t *testing.T) {
	cluster, url := ownPostgres(t, pgtest.Options{})
	th := startHubWith(t, "", hub.Config{DatabaseURL: url})
	var r readiness
	if resp := rawJSON(t, "GET", th.HTTPURL()+"/readyz", "", &r); resp.StatusCode != 200 || r.Status != "ready" ||
		r.Checks["database"] != "ok" || r.Checks["bus"] != "ok" || r.Checks["listeners"] != "ok" {
		t.Fatalf("readyz with everything up: %d %+v", resp.StatusCode, r)
	}
	cluster.Stop()
	r = readiness{}
	if resp := rawJSON(t, "GET", th.HTTPURL()+"/readyz", "", &r); resp.StatusCode != 503 || r.Status != "not ready" ||
		r.Checks["database"] == "ok" || r.Checks["database"] == "" || r.Checks["listeners"] != "ok" {
		t.Fatalf("readyz with PostgreSQL stopped: %d %+v", resp.StatusCode, r)
	}
	t.Logf("readyz with PostgreSQL stopped: %+v", r)
	var live map[string]string
	if resp := rawJSON(t, "GET", th.HTTPURL()+"/livez", "", &live); resp.StatusCode != 200 {
		t.Fatalf("livez: %d %v", resp.StatusCode, live)
	}
}

// ownPostgres starts a PostgreSQL cluster for this test alone (stopped at
// its end; the test may stop or restart it) and returns a database on it.
func ownPostgres(t *testing.T, o pgtest.Options) (*pgtest.Cluster, string) {
	t.Helper()
	cluster, err := pgtest.Start(o)
	if errors.Is(err, pgtest.ErrNotInstalled) {
		t.Skip("PostgreSQL is not installed")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Stop)
	url, err := cluster.CreateDatabase()
	if err != nil {
		t.Fatal(err)
	}
	return cluster, url
}

// TestSecurityEventsAreLogged: with --log-format json, a refused login, a
// disable, a certificate revocation and management writes each give one
// JSON line naming org, product, device, remote and reason, and no line
// carries a secret.
func TestSecurityEventsAreLogged(t *testing.T) {
	mosquittoPub := needTool(t, "mosquitto_pub")
	h := startCLIHub(t, "--log-format", "json")
	bin, dir, addrs, logs := h.bin, h.dir, h.addrs, h.logs
	cli := func(args ...string) map[string]any {
		t.Helper()
		out, _ := h.run(0, append(args, "-o", "json")...)
		var m map[string]any
		json.Unmarshal([]byte(out), &m)
		return m
	}
	prod := cli("product", "create", "--name", "logged", "--product-key", "logged")
	dev := cli("device", "create", "-p", "logged", "--device-key", "SN7")
	host, port, _ := net.SplitHostPort(addrs["mqtt"])
	// As the README does it: the login from iothub sign, through $(…).
	wrong := mosquittoPub + " -h " + host + " -p " + port + " $(" + bin + " sign -p logged -d SN7 --secret not-the-secret) -t /sys/logged/SN7/x -m {}"
	if out, err := exec.Command("bash", "-c", wrong).CombinedOutput(); err == nil || !strings.Contains(string(out), "not authorised") {
		t.Fatalf("a wrong secret: %v %s", err, out)
	}
	cli("device", "disable", "-p", "logged", "SN7")

	want := map[string]bool{"product.created": false, "device.created": false, "login.refused": false, "device.disabled": false}
	secrets := []string{prod["productSecret"].(string), dev["deviceSecret"].(string)}
	key, _ := os.ReadFile(filepath.Join(dir, "admin.key"))
	secrets = append(secrets, strings.TrimSpace(string(key)))
	defer func() {
		if t.Failed() {
			t.Log(strings.Join(logs(), "\n"))
		}
	}()
	eventually(t, 10*time.Second, "the audit log lines", func() bool {
		for _, l := range logs() {
			var line map[string]any
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatalf("--log-format json wrote a line that is not JSON: %s", l)
			}
			kind, _ := line["kind"].(string)
			if _, ok := want[kind]; !ok {
				continue
			}
			if line["org"] != "default" || line["product"] != "logged" || line["remote"] != "127.0.0.1" {
				t.Fatalf("%s line lacks org, product or remote: %s", kind, l)
			}
			if kind != "product.created" && line["device"] != "SN7" {
				t.Fatalf("%s line lacks the device: %s", kind, l)
			}
			if kind == "login.refused" && line["reason"] == "" {
				t.Fatalf("login.refused line without a reason: %s", l)
			}
			want[kind] = true
		}
		for _, seen := range want {
			if !seen {
				return false
			}
		}
		return true
	})
	for _, l := range logs() {
		for _, s := range secrets {
			if strings.Contains(l, s) {
				t.Fatalf("a log line carries a secret: %s", l)
			}
		}
	}
}

// TestOperatorMetrics: /metrics counts HTTP answers by route and code, and
// audited security events by kind (certificate issuance among them).
func TestOperatorMetrics(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "metered", "authMode": "certificate"})
	th.enrollWithOpenSSL(t, t.TempDir(), p, "M1", "m1")
	do(t, th.admin, "GET", "/api/v1/products/"+p.ProductKey+"/devices/nobody", nil, nil, 404)
	resp, err := http.Get(th.HTTPURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`iothub_http_requests_total{code="201",route="POST /api/v1/products"} 1`,
		`iothub_http_requests_total{code="404",route="GET /api/v1/products/{pk}/devices/{dk}"} 1`,
		`iothub_http_request_seconds_count{route="POST /api/v1/products/{pk}/devices/{dk}/certificates"} 1`,
		`iothub_audit_events_total{kind="cert.issued"} 1`,
		`iothub_audit_events_total{kind="product.created"} 1`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
