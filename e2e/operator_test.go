package e2e

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

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
