package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/iothub/iothub"
)

// A product's thing model set through the API is answered on
// thing.tsltemplate.get and checks every post (1204 on a mismatch, nothing
// stored); removing it lifts the checks.
func TestThingModelChecksPosts(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{})
	dev := th.devClient(t, p, "tm1")
	model := "/api/v1/products/" + p.ProductKey + "/thingmodel"
	post := func(points map[string]any) float64 {
		t.Helper()
		return dev.ask(t, "thing/measurepoint/post", "thing.measurepoint.post", map[string]any{"measurepoints": points})["code"].(float64)
	}
	event := func(id string, fields map[string]any) float64 {
		t.Helper()
		return dev.ask(t, "thing/event/"+id+"/post", "thing.event."+id+".post", map[string]any{"events": fields})["code"].(float64)
	}

	if r := dev.ask(t, "thing/tsltemplate/get", "thing.tsltemplate.get", map[string]any{}); r["code"] != 705.0 {
		t.Fatalf("tsltemplate without a model: %v", r)
	}
	do(t, th.admin, "PUT", model, map[string]any{"measurepoints": map[string]any{"temp": map[string]any{"dataType": "decimal"}}}, nil, 400)
	do(t, th.admin, "PUT", model, map[string]any{"measurepoints": map[string]any{}, "extra": 1}, nil, 400)
	do(t, th.admin, "GET", model, nil, nil, 404)
	do(t, th.admin, "PUT", model, map[string]any{
		"measurepoints": map[string]any{"temp": map[string]any{"dataType": "float"}, "count": map[string]any{"dataType": "int"}},
		"events":        map[string]any{"alarm": map[string]any{"outputData": map[string]any{"level": map[string]any{"dataType": "int"}}}},
		"services": map[string]any{"reboot": map[string]any{"inputData": map[string]any{"delay": map[string]any{"dataType": "int"}},
			"outputData": map[string]any{"ok": map[string]any{"dataType": "bool"}}}},
	}, nil, 204)

	r := dev.ask(t, "thing/tsltemplate/get", "thing.tsltemplate.get", map[string]any{})
	data, _ := r["data"].(map[string]any)
	if r["code"] != 200.0 || data["tslMeasurepointMap"].(map[string]any)["temp"].(map[string]any)["dataType"] != "float" ||
		data["tslServiceMap"].(map[string]any)["reboot"] == nil || data["tslEventMap"].(map[string]any)["alarm"] == nil {
		t.Fatalf("tsltemplate: %v", r)
	}

	for _, c := range []struct {
		points map[string]any
		want   float64
	}{
		{map[string]any{"temp": 21.5, "count": 3}, 200},
		{map[string]any{"temp": map[string]any{"value": 22.5, "quality": 9}}, 200},
		{map[string]any{"temp": "hot"}, 1204},
		{map[string]any{"count": 1.5}, 1204},
		{map[string]any{"humidity": 40}, 1204},
	} {
		if got := post(c.points); got != c.want {
			t.Fatalf("post %v: code %v, want %v", c.points, got, c.want)
		}
	}
	var latest struct{ Measurepoints map[string]json.RawMessage }
	do(t, th.admin, "GET", "/api/v1/products/"+p.ProductKey+"/devices/tm1/measurepoints", nil, &latest, 200)
	if len(latest.Measurepoints) != 2 || latest.Measurepoints["humidity"] != nil || !bytes.Contains(latest.Measurepoints["temp"], []byte("22.5")) {
		t.Fatalf("stored points after refused posts: %s", latest.Measurepoints)
	}
	if got := event("alarm", map[string]any{"level": 2}); got != 200 {
		t.Fatalf("declared event: %v", got)
	}
	if got := event("alarm", map[string]any{"level": "high"}); got != 1204 {
		t.Fatalf("event field of another type: %v", got)
	}
	if got := event("fire", map[string]any{"level": 1}); got != 1204 {
		t.Fatalf("undeclared event: %v", got)
	}

	do(t, th.admin, "DELETE", model, nil, nil, 204)
	if got := post(map[string]any{"humidity": 40}); got != 200 {
		t.Fatalf("post after the model was removed: %v", got)
	}
}

// thing/model/up_raw payloads are stored as bytes (capped) and listed by
// the API; the API sends down_raw and returns the device's raw reply.
func TestRawPassThrough(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{})
	dev := th.devClient(t, p, "raw1")
	up := []byte{0x01, 0xff, 0x00, 0x7b, 0x22}
	if r := dev.askRaw(t, "thing/model/up_raw", up); r["code"] != 200.0 {
		t.Fatalf("up_raw: %v", r)
	}
	if r := dev.askRaw(t, "thing/model/up_raw", make([]byte, iothub.MaxRawBytes+1)); r["code"] != 1008.0 {
		t.Fatalf("oversized up_raw: %v", r)
	}
	var list struct{ Messages []iothub.RawMessage }
	do(t, th.admin, "GET", "/api/v1/products/"+p.ProductKey+"/devices/raw1/raw", nil, &list, 200)
	if len(list.Messages) != 1 || !bytes.Equal(list.Messages[0].Payload, up) {
		t.Fatalf("stored raw: %+v", list.Messages)
	}

	req, _ := http.NewRequest("POST", th.HTTPURL()+"/api/v1/products/"+p.ProductKey+"/devices/raw1/raw", bytes.NewReader([]byte{1, 2, 3}))
	req.Header.Set("Authorization", "Bearer "+th.AdminKey())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Code    int
		Payload string
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 || out.Code != 200 ||
		out.Payload != base64.StdEncoding.EncodeToString([]byte{3, 2, 1}) {
		t.Fatalf("down_raw: %d %+v %v", resp.StatusCode, out, err)
	}
	req, _ = http.NewRequest("POST", th.HTTPURL()+"/api/v1/products/"+p.ProductKey+"/devices/raw1/raw", nil)
	req.Header.Set("Authorization", "Bearer "+th.AdminKey())
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 400 {
		t.Fatalf("empty down_raw: %v %v", resp.StatusCode, err)
	}
}
