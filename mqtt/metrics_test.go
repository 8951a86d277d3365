package mqtt

import (
	"crypto/tls"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/iothub/iothub/sign"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newTestHub(t, func(_ *testHub, c *Config) { c.Registerer = reg })
	p := h.product("pkmet", nil)
	d := h.device(p, "dev")
	c := h.connect(t, "pkmet", "dev", d.DeviceSecret)
	cid, user, pass := creds(t, "pkmet", "dev", "wrong", sign.ModeStatic, sign.SHA256)
	connectV5(t, h.addr, nil, cid, user, pass)
	c.Publish("/sys/pkmet/dev/thing/event/x/post", 1, false, `{"id":"1","method":"thing.event.x.post","params":{"events":{}}}`).Wait()

	m := h.srv.met
	for name, want := range map[string]float64{
		"logins ok":      value(m.logins.WithLabelValues("ok")),
		"logins refused": value(m.logins.WithLabelValues("bad_credentials")),
		"connections":    value(m.connections),
	} {
		if want != 1 {
			t.Errorf("%s = %v, want 1", name, want)
		}
	}
	if value(m.messages.WithLabelValues("in")) < 1 || value(m.messages.WithLabelValues("out")) < 1 {
		t.Error("messages in/out not counted")
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range families {
		if f.GetName() == "iothub_mqtt_logins_total" || f.GetName() == "iothub_mqtt_connections" {
			n += len(f.GetMetric())
		}
	}
	if n != 3 {
		t.Fatalf("registry has %d login/connection series, want 3", n)
	}
}

// value reads a counter or gauge; for a histogram, its sample count.
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	case d.Histogram != nil:
		return float64(d.Histogram.GetSampleCount())
	}
	return 0
}

func TestNewRejectsBadConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without a store succeeded")
	}
	h := newTestHub(t)
	if _, err := New(Config{Store: h.db, TLS: &tls.Config{}}); err == nil {
		t.Fatal("New with a TLS config without certificates succeeded")
	}
	if _, err := h.srv.ListenTLS("127.0.0.1:0"); err == nil {
		t.Fatal("ListenTLS without Config.TLS succeeded")
	}
}
