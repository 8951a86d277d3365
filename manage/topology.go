package manage

import (
	"context"
	"fmt"

	"github.com/iothub/iothub"
)

// AddSubDevices puts subs in the topology of gateway gw, a device of a
// gateway product (p). Every sub-device must be in gw's org and must not
// be gw itself; one in another gateway's topology is ECONFLICT. Whoever
// calls has authenticated the sub-devices (a device proves each with its
// secret's signature; an API key of the org is trusted).
func (s *Service) AddSubDevices(ctx context.Context, a Actor, p *iothub.Product, gw *iothub.Device, subs []*iothub.Device) error {
	if p.NodeType != iothub.NodeGateway || p.ProductKey != gw.ProductKey {
		return iothub.Errorf(iothub.EFORBIDDEN, "device %s/%s is not a gateway", gw.ProductKey, gw.DeviceKey)
	}
	ids := make([]iothub.DeviceID, len(subs))
	for i, d := range subs {
		if d.OrgID != gw.OrgID {
			return iothub.Errorf(iothub.ENOTFOUND, "device %s/%s not found", d.ProductKey, d.DeviceKey)
		}
		ids[i] = iothub.DeviceID{ProductKey: d.ProductKey, DeviceKey: d.DeviceKey}
	}
	if err := s.cfg.Store.AddSubDevices(ctx, iothub.DeviceID{ProductKey: gw.ProductKey, DeviceKey: gw.DeviceKey}, ids); err != nil {
		return err
	}
	s.audit(ctx, a, iothub.AuditEvent{OrgID: gw.OrgID, Kind: "topology.added", ProductKey: gw.ProductKey, DeviceKey: gw.DeviceKey,
		Reason: fmt.Sprintf("%d sub-devices", len(ids))})
	return nil
}

// RemoveSubDevices takes subs out of gw's topology; a sub-device logged
// in through gw is logged out, on whichever node holds the gateway.
func (s *Service) RemoveSubDevices(ctx context.Context, a Actor, gw *iothub.Device, subs []iothub.DeviceID) error {
	if err := s.cfg.Store.RemoveSubDevices(ctx, iothub.DeviceID{ProductKey: gw.ProductKey, DeviceKey: gw.DeviceKey}, subs); err != nil {
		return err
	}
	s.audit(ctx, a, iothub.AuditEvent{OrgID: gw.OrgID, Kind: "topology.removed", ProductKey: gw.ProductKey, DeviceKey: gw.DeviceKey,
		Reason: fmt.Sprintf("%d sub-devices", len(subs))})
	for _, id := range subs {
		s.publish(ctx, iothub.Event{Kind: iothub.EventDeviceChanged, ProductKey: id.ProductKey, DeviceKey: id.DeviceKey, Reason: "topology.removed"})
	}
	return nil
}
