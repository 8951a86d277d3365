package hub

import (
	"context"
	"log/slog"
	"strings"

	"github.com/iothub/iothub"
	"github.com/prometheus/client_golang/prometheus"
)

// auditLogged is the registry with every security event it records also
// written as one structured log line: refused logins and certificates,
// disables and revocations, management writes. An audit event names its
// org, product, device, remote address and reason, never a secret.
type auditLogged struct {
	iothub.Store
	log *slog.Logger
	// events counts the events by kind: logins and refusals, certificates
	// issued and revoked, management writes.
	events *prometheus.CounterVec
}

func newAuditLogged(db iothub.Store, log *slog.Logger, reg prometheus.Registerer) auditLogged {
	events := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iothub_audit_events_total",
		Help: "Security events audited, by kind (login.ok, login.refused, cert.issued, cert.revoked, device.disabled, …)."}, []string{"kind"})
	reg.MustRegister(events)
	return auditLogged{Store: db, log: log, events: events}
}

func (s auditLogged) Audit(ctx context.Context, e iothub.AuditEvent) error {
	s.logEvent(ctx, e)
	return s.Store.Audit(ctx, e)
}

func (s auditLogged) AuditBatch(ctx context.Context, events []iothub.AuditEvent) error {
	for _, e := range events {
		s.logEvent(ctx, e)
	}
	return s.Store.AuditBatch(ctx, events)
}

// logEvent writes e at warn level when it is a refusal, else at info.
func (s auditLogged) logEvent(ctx context.Context, e iothub.AuditEvent) {
	s.events.WithLabelValues(e.Kind).Inc()
	level := slog.LevelInfo
	if strings.Contains(e.Kind, "refused") {
		level = slog.LevelWarn
	}
	s.log.LogAttrs(ctx, level, "audit "+e.Kind,
		slog.String("kind", e.Kind), slog.String("org", e.OrgID), slog.String("product", e.ProductKey),
		slog.String("device", e.DeviceKey), slog.String("remote", e.Remote), slog.String("reason", e.Reason))
}
