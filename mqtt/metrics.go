package mqtt

import "github.com/prometheus/client_golang/prometheus"

// metrics are the adapter's Prometheus series.
type metrics struct {
	connections       prometheus.Gauge
	logins            *prometheus.CounterVec
	messages          *prometheus.CounterVec
	messagesIn        prometheus.Counter // messages{direction="in"}, resolved once: it counts every PUBLISH
	messagesOut       prometheus.Counter
	handshakes        prometheus.Counter
	handshakeFailures *prometheus.CounterVec
	legacyHandshakes  prometheus.Counter
	kicks             *prometheus.CounterVec
	revokeLatency     prometheus.Histogram
	notStored         *prometheus.CounterVec
}

func newMetrics(r prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "iothub_mqtt_connections", Help: "Logged-in MQTT sessions.",
		}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iothub_mqtt_logins_total", Help: "MQTT logins by result.",
		}, []string{"result"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iothub_mqtt_messages_total", Help: "PUBLISH packets received (in) and written by the hub (out).",
		}, []string{"direction"}),
		handshakes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "iothub_mqtt_tls_handshakes_total", Help: "Completed TLS handshakes on the MQTT TLS listener.",
		}),
		handshakeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iothub_mqtt_tls_handshake_failures_total", Help: "Failed TLS handshakes by reason.",
		}, []string{"reason"}),
		legacyHandshakes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "iothub_mqtt_tls_legacy_handshakes_total", Help: "TLS handshakes that settled on a legacy RSA key exchange suite (--tls-legacy-suites).",
		}),
		kicks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iothub_mqtt_sessions_closed_total", Help: "Sessions closed by the hub, by reason.",
		}, []string{"reason"}),
		revokeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "iothub_mqtt_revocation_disconnect_seconds",
			Help:    "Time from hearing a certificate revocation to the end of the session using it.",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 5},
		}),
		notStored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iothub_store_refused_total",
			Help: "Posts the store could not take (disk full, database down), refused to their device with a retry code, by kind.",
		}, []string{"kind"}),
	}
	m.messagesIn, m.messagesOut = m.messages.WithLabelValues("in"), m.messages.WithLabelValues("out")
	if r == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.connections, m.logins, m.messages, m.handshakes, m.handshakeFailures, m.legacyHandshakes, m.kicks, m.revokeLatency, m.notStored} {
		if err := r.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
