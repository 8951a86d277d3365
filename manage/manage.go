// Package manage is the one home of the hub's management rules. Creating,
// deleting, resetting, disabling and enabling a device, enrolling,
// renewing and revoking a certificate, registering, verifying and removing
// an external CA: each is decided here once — the policy, the audit row
// (with its org) and the bus events — and the adapters (http, mqtt) only
// translate requests into calls to a Service.
//
// The split follows smallstep's: the certificate service (pki) is the
// authority, the store is the database, http and mqtt are the API, and
// this package is what the API asks for.
package manage

import (
	"context"
	"log/slog"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/feed"
)

// Config wires a Service to the rest of the hub.
type Config struct {
	Store iothub.Store
	// Certs may be nil: certificate operations then fail with EINTERNAL.
	Certs iothub.CertificateService
	Bus   iothub.Bus // may be nil: no live reaction on this or other nodes
	// Feed records device state changes for applications; may be nil.
	Feed   *feed.Feed
	Logger *slog.Logger
	Now    func() time.Time // nil: time.Now
	// DeviceURL is the base of the HTTPS device API (https://host:port),
	// put in the download URLs of firmware.
	DeviceURL string
}

// Service carries out management operations.
type Service struct {
	cfg Config
	log *slog.Logger
	now func() time.Time
}

// New returns a Service.
func New(cfg Config) *Service {
	s := &Service{cfg: cfg, log: cfg.Logger, now: cfg.Now}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

// Actor is who asks for an operation, as the audit row records it.
type Actor struct {
	// Remote is the caller's address.
	Remote string
	// By names the caller: "apikey key_…" or "device pk/dk". It is never a secret.
	By string
}

// audit records a security event; the org comes from the row acted on.
func (s *Service) audit(ctx context.Context, a Actor, e iothub.AuditEvent) {
	e.Time = s.now()
	e.Remote = a.Remote
	if a.By != "" {
		if e.Reason != "" {
			e.Reason += " "
		}
		e.Reason += "by " + a.By
	}
	if err := s.cfg.Store.Audit(ctx, e); err != nil {
		s.log.Warn("manage: audit write failed", "kind", e.Kind, "err", err)
	}
}

// publish sends e on the bus, logging (not failing) when the bus refuses.
func (s *Service) publish(ctx context.Context, e iothub.Event) {
	if s.cfg.Bus == nil {
		return
	}
	if err := s.cfg.Bus.Publish(ctx, e); err != nil {
		s.log.Warn("manage: bus publish failed", "kind", e.Kind, "err", err)
	}
}

// certs returns the certificate service or EINTERNAL when there is none.
func (s *Service) certs() (iothub.CertificateService, error) {
	if s.cfg.Certs == nil {
		return nil, iothub.Errorf(iothub.EINTERNAL, "certificate service unavailable")
	}
	return s.cfg.Certs, nil
}
