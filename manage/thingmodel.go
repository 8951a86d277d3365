package manage

import (
	"bytes"
	"context"
	"encoding/json"

	"github.com/iothub/iothub"
)

// SetThingModel replaces p's thing model (nil removes it). From then on,
// on every node, thing.tsltemplate.get answers it and posts of p's
// devices are checked against it.
func (s *Service) SetThingModel(ctx context.Context, a Actor, p *iothub.Product, raw json.RawMessage) error {
	var model json.RawMessage
	if raw != nil {
		if _, err := iothub.ParseThingModel(raw); err != nil {
			return err
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return iothub.Errorf(iothub.EINVALID, "thing model is not valid JSON")
		}
		model = buf.Bytes()
	}
	if err := s.cfg.Store.SetThingModel(ctx, p.ProductKey, model, s.now()); err != nil {
		return err
	}
	kind := "product.thing_model_set"
	if model == nil {
		kind = "product.thing_model_removed"
	}
	s.audit(ctx, a, iothub.AuditEvent{OrgID: p.OrgID, Kind: kind, ProductKey: p.ProductKey})
	s.publish(ctx, iothub.Event{Kind: iothub.EventProductChanged, ProductKey: p.ProductKey, Reason: "thing_model"})
	return nil
}
