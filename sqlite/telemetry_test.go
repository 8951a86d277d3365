package sqlite

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/iothub/iothub"
)

func sample(pk, dk string, t time.Time, mp string) iothub.Sample {
	return iothub.Sample{ProductKey: pk, DeviceKey: dk, Time: t, Measurepoints: json.RawMessage(mp)}
}

func TestTelemetry(t *testing.T) {
	db := newDB(t)
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

func TestTelemetryHistoryBound(t *testing.T) {
	db := newDB(t)
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
	var n int
	must(t, db.read.QueryRow(`SELECT COUNT(*) FROM telemetry_samples WHERE product_key = 'pk' AND device_key = 'a'`).Scan(&n))
	if n != HistoryPerDevice {
		t.Fatalf("device a keeps %d samples, want %d", n, HistoryPerDevice)
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

func TestAttributes(t *testing.T) {
	db := newDB(t)
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

func TestDeleteDeviceRemovesDataKeepsCertificates(t *testing.T) {
	db := newDB(t)
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
	for _, table := range []string{"telemetry_samples", "telemetry_points", "attributes"} {
		var na, nb int
		must(t, db.read.QueryRow(`SELECT COUNT(*) FROM `+table+` WHERE device_key = 'a'`).Scan(&na))
		must(t, db.read.QueryRow(`SELECT COUNT(*) FROM `+table+` WHERE device_key = 'b'`).Scan(&nb))
		if na != 0 || nb == 0 {
			t.Fatalf("%s: deleted device keeps %d rows, other device has %d", table, na, nb)
		}
	}
	certs, err := db.CertificatesByDevice(ctx, "pk", "a")
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
