package mqtt

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iothub/iothub"
)

// Topics of the raw pass-through, relative to /sys/{pk}/{dk}/.
const (
	upRawTopic   = "thing/model/up_raw"
	downRawTopic = "thing/model/down_raw"
)

// codeModelMismatch answers a post that disagrees with its product's thing model.
const codeModelMismatch = 1204

// modelTTL bounds how long a node serves a product's thing model from
// memory when no bus event tells it of a change.
const modelTTL = 10 * time.Second

// modelCache holds each product's parsed thing model (nil: none set). Its
// zero value is ready; a product change on the bus drops its entry.
type modelCache struct {
	mu sync.Mutex
	m  map[string]modelEntry
}

type modelEntry struct {
	model *iothub.ThingModel
	at    time.Time
}

func (c *modelCache) drop(pk string) {
	c.mu.Lock()
	delete(c.m, pk)
	c.mu.Unlock()
}

// thingModel returns a product's thing model, nil when none is set.
func (s *Server) thingModel(pk string) (*iothub.ThingModel, error) {
	now := s.now()
	s.models.mu.Lock()
	e, ok := s.models.m[pk]
	s.models.mu.Unlock()
	if ok && now.Sub(e.at) < modelTTL {
		return e.model, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := s.cfg.Store.ThingModel(ctx, pk)
	var m *iothub.ThingModel
	switch {
	case iothub.ErrorCode(err) == iothub.ENOTFOUND:
	case err != nil:
		return nil, err
	default:
		if m, err = iothub.ParseThingModel(raw); err != nil {
			return nil, err
		}
	}
	s.models.mu.Lock()
	if s.models.m == nil || len(s.models.m) > 100000 {
		s.models.m = map[string]modelEntry{} // bounded memory
	}
	s.models.m[pk] = modelEntry{m, now}
	s.models.mu.Unlock()
	return m, nil
}

// checkModel applies check to pk's thing model, if it has one.
func (s *Server) checkModel(pk string, check func(*iothub.ThingModel) error) (int, string) {
	m, err := s.thingModel(pk)
	if err == nil && m != nil {
		err = check(m)
	}
	if err != nil {
		return storeCode(err)
	}
	return codeOK, ""
}

// tslTemplate answers thing.tsltemplate.get with the product's thing
// model, in the maps the SDKs read.
func (s *Server) tslTemplate(_ context.Context, ss *session, _ json.RawMessage) (any, int, string) {
	m, err := s.thingModel(ss.dev.ProductKey)
	if err != nil {
		code, msg := storeCode(err)
		return nil, code, msg
	}
	if m == nil {
		return nil, codeNotFound, "the product has no thing model"
	}
	return map[string]any{"tslMeasurepointMap": m.Measurepoints, "tslEventMap": m.Events,
		"tslServiceMap": m.Services, "tslAttributeMap": map[string]any{}}, codeOK, ""
}

// upRaw stores a thing/model/up_raw payload of target (raw bytes, no
// request envelope) and answers on up_raw_reply.
func (s *Server) upRaw(ss, target *session, pk packets.Packet) {
	a := s.acknowledge(ss, pk)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code, msg := storeCode(s.cfg.Store.AppendRaw(ctx, target.dev, pk.Payload, s.now()))
	s.answerRequest(ss, pk, a, nil, code, nil, msg)
}
