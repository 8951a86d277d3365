package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// devClient is a device connected over MQTT: it accepts
// ota.device.upgrade, answers a down_raw with the bytes reversed and
// hands every other JSON message to replies.
type devClient struct {
	d       *iothub.Device
	c       paho.Client
	upgrade chan map[string]any
	replies chan map[string]any
}

func (th *testHub) devClient(t *testing.T, p *iothub.Product, dk string) *devClient {
	t.Helper()
	od := &devClient{d: th.newDevice(t, p, dk), upgrade: make(chan map[string]any, 4), replies: make(chan map[string]any, 16)}
	o := deviceOptions("tcp://"+th.MQTTAddr(), p.ProductKey, dk, od.d.DeviceSecret, sign.ModeStatic)
	o.SetDefaultPublishHandler(func(c paho.Client, m paho.Message) {
		if m.Topic() == "/sys/"+p.ProductKey+"/"+dk+"/thing/model/down_raw" {
			in, out := m.Payload(), make([]byte, len(m.Payload()))
			for i := range in {
				out[len(in)-1-i] = in[i]
			}
			c.Publish(m.Topic()+"_reply", 1, false, out)
			return
		}
		var msg map[string]any
		if json.Unmarshal(m.Payload(), &msg) != nil {
			return
		}
		if m.Topic() == "/sys/"+p.ProductKey+"/"+dk+"/ota/device/upgrade" {
			od.upgrade <- msg["params"].(map[string]any)
			reply, _ := json.Marshal(map[string]any{"id": msg["id"], "code": 200, "data": ""})
			c.Publish(m.Topic()+"_reply", 1, false, reply)
			return
		}
		od.replies <- msg
	})
	od.c = connect(t, o)
	return od
}

// ask publishes a request and returns the hub's reply.
func (od *devClient) ask(t *testing.T, topic, method string, params any) map[string]any {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"id": "7", "version": "1.0", "method": method, "params": params})
	return od.askRaw(t, topic, b)
}

// askRaw publishes payload on the device's topic and returns the reply.
func (od *devClient) askRaw(t *testing.T, topic string, payload []byte) map[string]any {
	t.Helper()
	full := "/sys/" + od.d.ProductKey + "/" + od.d.DeviceKey + "/" + topic
	if tok := od.c.Subscribe(full+"_reply", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", full, tok.Error())
	}
	od.c.Publish(full, 1, false, payload).WaitTimeout(5 * time.Second)
	select {
	case r := <-od.replies:
		return r
	case <-time.After(5 * time.Second):
		t.Fatalf("no reply on %s", topic)
		return nil
	}
}

// signedURL is fileURL signed by the device with secret.
func (od *devClient) signedURL(t *testing.T, fileURL, firmwareID, secret string) string {
	t.Helper()
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
	pairs := []sign.Pair{{Key: "firmwareId", Value: firmwareID}, {Key: "deviceKey", Value: od.d.DeviceKey},
		{Key: "productKey", Value: od.d.ProductKey}, {Key: "timestamp", Value: ts}}
	sig, err := sign.Compute(sign.SHA256, pairs, secret)
	if err != nil {
		t.Fatal(err)
	}
	return fileURL + "?" + url.Values{"timestamp": {ts}, "signMethod": {"sha256"}, "sign": {sig}}.Encode()
}

// download fetches fileURL signed by the device, with an optional Range.
func (od *devClient) download(t *testing.T, c *http.Client, fileURL, firmwareID, secret, rng string) *http.Response {
	t.Helper()
	return getRange(t, c, od.signedURL(t, fileURL, firmwareID, secret), rng)
}

// getRange fetches u with an optional Range.
func getRange(t *testing.T, c *http.Client, u, rng string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func readAll(t *testing.T, resp *http.Response, want int) []byte {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != want {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, want, b)
	}
	return b
}

// uploadFirmware posts content as version with an optional sha256.
func (th *testHub) uploadFirmware(t *testing.T, pk, version, sum string, content []byte) (*http.Response, iothub.Firmware) {
	t.Helper()
	q := url.Values{"version": {version}}
	if sum != "" {
		q.Set("sha256", sum)
	}
	req, _ := http.NewRequest("POST", th.HTTPURL()+"/api/v1/products/"+pk+"/firmwares?"+q.Encode(), bytes.NewReader(content))
	req.Header.Set("Authorization", "Bearer "+th.AdminKey())
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var f iothub.Firmware
	_ = json.NewDecoder(resp.Body).Decode(&f)
	return resp, f
}

type otaJobView struct {
	iothub.OTAJob
	Status string `json:"status"`
}

// OTA end to end: firmware uploaded, a job for two devices, each
// downloads it over the HTTPS device API (one interrupted and resumed
// with Range), reports progress and informs its new version; the job is
// done. A download with a wrong signature, a replayed one and one by a
// device outside the job are refused.
func TestOTAEndToEnd(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{})
	d1, d2 := th.devClient(t, p, "ota1"), th.devClient(t, p, "ota2")
	outsider := th.devClient(t, p, "ota3")

	content := make([]byte, 300_000)
	rand.Read(content)
	sum := sha256.Sum256(content)
	digest := hex.EncodeToString(sum[:])

	// Bad input: a wrong digest or no version stores nothing.
	wrong := "0" + digest[1:]
	if wrong == digest { // a digest starting with 0 (1 in 16)
		wrong = "1" + digest[1:]
	}
	if resp, _ := th.uploadFirmware(t, p.ProductKey, "2.0.0", wrong, content); resp.StatusCode != 400 {
		t.Fatalf("upload with a wrong sha256: %d", resp.StatusCode)
	}
	if resp, _ := th.uploadFirmware(t, p.ProductKey, "", "", content); resp.StatusCode != 400 {
		t.Fatalf("upload without a version: %d", resp.StatusCode)
	}
	var list struct{ Firmwares []iothub.Firmware }
	do(t, th.admin, "GET", "/api/v1/products/"+p.ProductKey+"/firmwares", nil, &list, 200)
	if len(list.Firmwares) != 0 {
		t.Fatalf("refused uploads stored firmware: %+v", list.Firmwares)
	}
	resp, fw := th.uploadFirmware(t, p.ProductKey, "2.0.0", digest, content)
	if resp.StatusCode != 201 || fw.SHA256 != digest || fw.Size != int64(len(content)) {
		t.Fatalf("upload: %d %+v", resp.StatusCode, fw)
	}
	if resp, _ := th.uploadFirmware(t, p.ProductKey, "2.0.0", "", content); resp.StatusCode != 409 {
		t.Fatalf("second upload of a version: %d", resp.StatusCode)
	}

	// Before the job, a device has nothing to upgrade to.
	if r := d1.ask(t, "ota/device/getversion", "ota.device.getversion", map[string]any{}); r["code"] != 200.0 || len(r["data"].([]any)) != 0 {
		t.Fatalf("getversion before the job: %v", r)
	}

	var job otaJobView
	do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/ota/jobs",
		map[string]any{"firmwareId": fw.ID, "deviceKeys": []string{"ota1", "ota2"}}, &job, 201)
	if job.Status != "running" || len(job.Devices) != 2 {
		t.Fatalf("new job: %+v", job)
	}
	offers := map[*devClient]map[string]any{}
	for _, od := range []*devClient{d1, d2} {
		select {
		case up := <-od.upgrade:
			if up["version"] != "2.0.0" || up["sign"] != digest || up["signMethod"] != "sha256" || up["fileSize"] != float64(len(content)) {
				t.Fatalf("upgrade command: %v", up)
			}
			offers[od] = up
		case <-time.After(5 * time.Second):
			t.Fatalf("%s got no ota.device.upgrade", od.d.DeviceKey)
		}
	}
	jobPath := "/api/v1/products/" + p.ProductKey + "/ota/jobs/" + job.ID
	eventuallyJob := func(what string, cond func(otaJobView) bool) otaJobView {
		t.Helper()
		var j otaJobView
		eventually(t, 5*time.Second, what, func() bool {
			do(t, th.admin, "GET", jobPath, nil, &j, 200)
			return cond(j)
		})
		return j
	}
	eventuallyJob("both devices notified", func(j otaJobView) bool {
		return j.Devices[0].Status == iothub.OTANotified && j.Devices[1].Status == iothub.OTANotified
	})
	// getversion offers the same file (in the Python SDK's dialect).
	if r := d2.ask(t, "ota/device/getversion", "Ota.device.getversion", map[string]any{}); r["code"] != 200.0 ||
		r["data"].([]any)[0].(map[string]any)["fileUrl"] != offers[d2]["fileUrl"] {
		t.Fatalf("getversion during the job: %v", r)
	}

	hc := th.trustingClient(t)
	fileURL := offers[d1]["fileUrl"].(string)
	if want := th.HTTPSURL() + "/device/v1/" + p.ProductKey + "/ota1/firmwares/" + fw.ID; fileURL != want {
		t.Fatalf("fileUrl %q, want %q", fileURL, want)
	}

	// Refused downloads: a wrong signature, a device not in the job.
	if r := d1.download(t, hc, fileURL, fw.ID, "not-the-secret", ""); r.StatusCode != 401 {
		t.Fatalf("download with a wrong signature: %d", r.StatusCode)
	}
	var audit struct{ Events []iothub.AuditEvent }
	do(t, th.admin, "GET", "/api/v1/audit", nil, &audit, 200)
	audited := false
	for _, e := range audit.Events {
		audited = audited || (e.Kind == "device_api.refused" && e.DeviceKey == "ota1" && e.OrgID == p.OrgID && e.Reason == "bad signature")
	}
	if !audited {
		t.Fatalf("the refused download is not audited with its org: %+v", audit.Events)
	}
	outsiderURL := th.HTTPSURL() + "/device/v1/" + p.ProductKey + "/ota3/firmwares/" + fw.ID
	if r := outsider.download(t, hc, outsiderURL, fw.ID, outsider.d.DeviceSecret, ""); r.StatusCode != 404 {
		t.Fatalf("download by a device outside the job: %d", r.StatusCode)
	}

	// d1 downloads in one go.
	signedURL := d1.signedURL(t, fileURL, fw.ID, d1.d.DeviceSecret)
	got := readAll(t, getRange(t, hc, signedURL, ""), 200)
	if !bytes.Equal(got, content) {
		t.Fatal("d1 downloaded other bytes")
	}
	if r := getRange(t, hc, signedURL, ""); r.StatusCode != 401 {
		t.Fatalf("a signed URL used twice: %d", r.StatusCode)
	}
	// d2's download breaks off after 100 kB; it resumes with Range.
	url2 := offers[d2]["fileUrl"].(string)
	resp = d2.download(t, hc, url2, fw.ID, d2.d.DeviceSecret, "")
	part := make([]byte, 100_000)
	if _, err := io.ReadFull(resp.Body, part); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // interrupted
	if r := d2.ask(t, "ota/device/progress", "ota.progress", map[string]any{"step": "33", "desc": "downloading"}); r["code"] != 200.0 {
		t.Fatalf("progress: %v", r)
	}
	rest := readAll(t, d2.download(t, hc, url2, fw.ID, d2.d.DeviceSecret, fmt.Sprintf("bytes=%d-", len(part))), 206)
	if !bytes.Equal(append(part, rest...), content) {
		t.Fatal("d2's resumed download differs from the firmware")
	}
	j := eventuallyJob("d2 upgrading", func(j otaJobView) bool { return j.Devices[1].Status == iothub.OTAUpgrading })
	if j.Devices[1].Step != 33 || j.Status != "running" {
		t.Fatalf("job after d2's progress: %+v", j)
	}

	// Bad progress: not a number; a method of another kind.
	if r := d1.ask(t, "ota/device/progress", "thing.tag.query", map[string]any{"step": 5}); r["code"] != 1260.0 {
		t.Fatalf("OTA topic with a foreign method: %v", r)
	}
	if r := d1.ask(t, "ota/device/progress", "ota.device.progress", map[string]any{"step": "half"}); r["code"] != 1220.0 {
		t.Fatalf("progress with a bad step: %v", r)
	}
	for _, od := range []*devClient{d1, d2} {
		if r := od.ask(t, "ota/device/progress", "ota.device.progress", map[string]any{"step": 100, "desc": "written"}); r["code"] != 200.0 {
			t.Fatalf("progress 100: %v", r)
		}
		if r := od.ask(t, "ota/device/inform", "ota.inform", map[string]any{"version": "2.0.0"}); r["code"] != 200.0 {
			t.Fatalf("inform: %v", r)
		}
	}
	j = eventuallyJob("job done", func(j otaJobView) bool { return j.Status == "done" })
	for _, d := range j.Devices {
		if d.Status != iothub.OTADone || d.Step != 100 {
			t.Fatalf("device entry after inform: %+v", d)
		}
	}
	// Done: nothing more to download or report.
	if r := d1.download(t, hc, fileURL, fw.ID, d1.d.DeviceSecret, ""); r.StatusCode != 404 {
		t.Fatalf("download after the upgrade: %d", r.StatusCode)
	}
	if r := d1.ask(t, "ota/device/progress", "ota.device.progress", map[string]any{"step": 5}); r["code"] != 705.0 {
		t.Fatalf("progress without an upgrade under way: %v", r)
	}

	// A device that reports a failure code fails the job.
	var failing otaJobView
	do(t, th.admin, "POST", "/api/v1/products/"+p.ProductKey+"/ota/jobs", map[string]any{"firmwareId": fw.ID, "deviceKeys": []string{"ota3"}}, &failing, 201)
	if r := outsider.ask(t, "ota/device/progress", "ota.progress", map[string]any{"step": "-2", "desc": "download failed"}); r["code"] != 200.0 {
		t.Fatalf("failure report: %v", r)
	}
	do(t, th.admin, "GET", "/api/v1/products/"+p.ProductKey+"/ota/jobs/"+failing.ID, nil, &failing, 200)
	if failing.Status != "failed" || failing.Devices[0].Status != iothub.OTAFailed || failing.Devices[0].Step != -2 || failing.Devices[0].Desc != "download failed" {
		t.Fatalf("job after a failure report: %+v", failing)
	}
}
