package manage

import (
	"context"
	"strings"

	"github.com/iothub/iothub"
)

// RotateAuthority rotates the hub's issuing CA (with root, the root too),
// audits it and tells every node (EventAuthorityChanged). It returns the
// new CA's id and the new issuing CA's id.
func (s *Service) RotateAuthority(ctx context.Context, a Actor, root bool) (string, string, error) {
	certs, err := s.certs()
	if err != nil {
		return "", "", err
	}
	id, issuingID, err := certs.RotateAuthority(ctx, root)
	if err != nil {
		return "", "", err
	}
	kind := "ca.rotated"
	if root {
		kind = "ca.root_rotated"
	}
	s.audit(ctx, a, iothub.AuditEvent{Kind: kind, Reason: id})
	s.publish(ctx, iothub.Event{Kind: iothub.EventAuthorityChanged})
	return id, issuingID, nil
}

// RetireAuthority retires the hub's CA id: certificates it issued are
// refused and live sessions using them are closed on every node.
func (s *Service) RetireAuthority(ctx context.Context, a Actor, id string) ([]string, error) {
	certs, err := s.certs()
	if err != nil {
		return nil, err
	}
	ids, err := certs.RetireAuthority(ctx, id)
	if err != nil {
		return nil, err
	}
	s.audit(ctx, a, iothub.AuditEvent{Kind: "ca.retired", Reason: strings.Join(ids, ",")})
	s.publish(ctx, iothub.Event{Kind: iothub.EventAuthorityChanged})
	return ids, nil
}
