package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// openAPIDoc is the parts of openapi.json the schema check reads.
type openAPIDoc struct {
	Paths      map[string]map[string]openAPIOp `json:"paths"`
	Components struct {
		Schemas   map[string]map[string]any `json:"schemas"`
		Responses map[string]struct {
			Content map[string]struct{ Schema map[string]any } `json:"content"`
		} `json:"responses"`
	} `json:"components"`
}

type openAPIOp struct {
	Responses map[string]struct {
		Ref     string                                     `json:"$ref"`
		Content map[string]struct{ Schema map[string]any } `json:"content"`
	} `json:"responses"`
}

// check reports where v departs from schema: a missing required property,
// a property the schema does not declare, or a JSON type it does not allow.
func (d *openAPIDoc) check(at string, v any, schema map[string]any) []string {
	if ref, ok := schema["$ref"].(string); ok {
		return d.check(at, v, d.Components.Schemas[strings.TrimPrefix(ref, "#/components/schemas/")])
	}
	var types []string
	switch t := schema["type"].(type) {
	case string:
		types = []string{t}
	case []any:
		for _, x := range t {
			types = append(types, x.(string))
		}
	}
	var got string
	switch v.(type) {
	case nil:
		got = "null"
	case bool:
		got = "boolean"
	case float64:
		got = "number"
		if slices.Contains(types, "integer") && v.(float64) == float64(int64(v.(float64))) {
			got = "integer"
		}
	case string:
		got = "string"
	case []any:
		got = "array"
	case map[string]any:
		got = "object"
	}
	if len(types) > 0 && !slices.Contains(types, got) {
		return []string{fmt.Sprintf("%s: %s, schema says %v", at, got, types)}
	}
	var bad []string
	switch v := v.(type) {
	case []any:
		if items, ok := schema["items"].(map[string]any); ok {
			for i, x := range v {
				bad = append(bad, d.check(fmt.Sprintf("%s[%d]", at, i), x, items)...)
			}
		}
	case map[string]any:
		props, _ := schema["properties"].(map[string]any)
		required, _ := schema["required"].([]any)
		for _, r := range required {
			if _, ok := v[r.(string)]; !ok {
				bad = append(bad, fmt.Sprintf("%s: required %s missing", at, r))
			}
		}
		for k, x := range v {
			if p, ok := props[k].(map[string]any); ok {
				bad = append(bad, d.check(at+"."+k, x, p)...)
			} else if extra, ok := schema["additionalProperties"].(map[string]any); ok {
				bad = append(bad, d.check(at+"."+k, x, extra)...)
			} else if schema["additionalProperties"] == false {
				bad = append(bad, fmt.Sprintf("%s: %s is not in the schema", at, k))
			}
		}
	}
	return bad
}

// responseSchema is the JSON schema openapi.json gives for status of
// method path (a route pattern).
func (d *openAPIDoc) responseSchema(t *testing.T, method, path string, status int) map[string]any {
	t.Helper()
	r, ok := d.Paths[path][strings.ToLower(method)].Responses[fmt.Sprint(status)]
	if !ok {
		t.Fatalf("openapi.json: %s %s has no %d response", method, path, status)
	}
	schema := r.Content["application/json"].Schema
	if r.Ref != "" {
		schema = d.Components.Responses[strings.TrimPrefix(r.Ref, "#/components/responses/")].Content["application/json"].Schema
	}
	if schema == nil {
		t.Fatalf("openapi.json: %s %s %d has no JSON schema", method, path, status)
	}
	return schema
}

// TestOpenAPISchemasMatchAnswers: what the handlers really send, for a
// walk through the API, conforms to the schemas openapi.json declares
// (required properties present, no undeclared ones, the declared types).
func TestOpenAPISchemasMatchAnswers(t *testing.T) {
	var doc openAPIDoc
	b, err := os.ReadFile(filepath.Join("..", "http", "openapi.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	th := startHub(t, "")
	dir := t.TempDir()
	p := th.newProduct(t, map[string]any{"name": "schema", "authMode": "certificate"})
	th.newDevice(t, p, "S1")
	c := th.enrollWithOpenSSL(t, dir, p, "S2", "s2")
	gw := th.newProduct(t, map[string]any{"name": "gw", "nodeType": "gateway"})
	th.newDevice(t, gw, "G1")
	subs := "/api/v1/products/" + gw.ProductKey + "/devices/G1/subdevices"
	pk, devs := p.ProductKey, "/api/v1/products/"+p.ProductKey+"/devices"
	dev := devs + "/"
	for _, step := range []struct {
		method, path, route string
		body                any
		status              int
	}{
		{"GET", "/readyz", "/readyz", nil, 200},
		{"GET", "/livez", "/livez", nil, 200},
		{"GET", "/api/v1/orgs", "/api/v1/orgs", nil, 200},
		{"POST", "/api/v1/orgs/default/apikeys", "/api/v1/orgs/{orgId}/apikeys", map[string]any{"name": "x", "role": "viewer"}, 201},
		{"GET", "/api/v1/orgs/default/apikeys", "/api/v1/orgs/{orgId}/apikeys", nil, 200},
		{"POST", "/api/v1/products", "/api/v1/products", map[string]any{"name": "other"}, 201},
		{"GET", "/api/v1/products", "/api/v1/products", nil, 200},
		{"GET", "/api/v1/products/" + pk, "/api/v1/products/{pk}", nil, 200},
		{"PATCH", "/api/v1/products/" + pk, "/api/v1/products/{pk}", map[string]any{"maxCertDays": 30}, 200},
		{"POST", "/api/v1/products/" + pk + "/rotate-secret", "/api/v1/products/{pk}/rotate-secret", nil, 200},
		{"POST", devs, "/api/v1/products/{pk}/devices", map[string]any{"deviceKey": "S3"}, 201},
		{"GET", devs + "?limit=1", "/api/v1/products/{pk}/devices", nil, 200},
		{"GET", dev + "S1", "/api/v1/products/{pk}/devices/{dk}", nil, 200},
		{"POST", dev + "S1/disable", "/api/v1/products/{pk}/devices/{dk}/disable", nil, 200},
		{"POST", dev + "S1/reset", "/api/v1/products/{pk}/devices/{dk}/reset", nil, 200},
		{"GET", dev + "S1/measurepoints", "/api/v1/products/{pk}/devices/{dk}/measurepoints", nil, 200},
		{"GET", dev + "S1/telemetry", "/api/v1/products/{pk}/devices/{dk}/telemetry", nil, 200},
		{"GET", dev + "S1/events", "/api/v1/products/{pk}/devices/{dk}/events", nil, 200},
		{"GET", dev + "S1/attributes", "/api/v1/products/{pk}/devices/{dk}/attributes", nil, 200},
		{"GET", dev + "S1/tags", "/api/v1/products/{pk}/devices/{dk}/tags", nil, 200},
		{"GET", dev + "S2/certificates", "/api/v1/products/{pk}/devices/{dk}/certificates", nil, 200},
		{"GET", "/api/v1/certificates/" + c.serial, "/api/v1/certificates/{serial}", nil, 200},
		{"POST", "/api/v1/certificates/" + c.serial + "/revoke", "/api/v1/certificates/{serial}/revoke", map[string]any{"reason": "keyCompromise"}, 200},
		{"GET", "/api/v1/audit?limit=3", "/api/v1/audit", nil, 200},
		{"POST", subs, "/api/v1/products/{pk}/devices/{dk}/subdevices", map[string]any{"subDevices": []map[string]string{{"productKey": pk, "deviceKey": "S3"}}}, 200},
		{"GET", subs, "/api/v1/products/{pk}/devices/{dk}/subdevices", nil, 200},
		{"GET", dev + "nobody", "/api/v1/products/{pk}/devices/{dk}", nil, 404},
		{"POST", "/api/v1/products", "/api/v1/products", map[string]any{"name": "x", "bogus": 1}, 400},
	} {
		var body io.Reader
		if step.body != nil {
			b, _ := json.Marshal(step.body)
			body = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(step.method, th.HTTPURL()+step.path, body)
		req.Header.Set("Authorization", "Bearer "+th.AdminKey())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var got any
		err = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if status := resp.StatusCode; status != step.status || err != nil {
			t.Fatalf("%s %s: %d (%v), want %d", step.method, step.path, status, err, step.status)
		}
		status := resp.StatusCode
		if bad := doc.check(step.method+" "+step.path, got, doc.responseSchema(t, step.method, step.route, status)); len(bad) > 0 {
			t.Errorf("the answer departs from openapi.json:\n%s", strings.Join(bad, "\n"))
		}
	}
}
