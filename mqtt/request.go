package mqtt

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iothub/iothub"
)

// Reply codes (PROTOCOL.md).
const (
	codeOK           = 200
	codeNotFound     = 705
	codeKeyExists    = 702
	codeTooLarge     = 1008
	codeNoPermission = 1009
	codeBadFormat    = 1220
	codeEmpty        = 1251
	codeMismatch     = 1260
	codeInternal     = 500
)

// request is an upstream request envelope.
type request struct {
	ID      json.RawMessage `json:"id"`
	Version string          `json:"version"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params"`
}

// requestError is a parse failure with its reply code.
type requestError struct {
	Code int
	Msg  string
}

func (e *requestError) Error() string { return e.Msg }

// parseRequest decodes an upstream request payload of at most max bytes.
// The id must be a string or a number; the method is required.
func parseRequest(payload []byte, max int) (request, error) {
	var r request
	if len(bytes.TrimSpace(payload)) == 0 {
		return r, &requestError{codeEmpty, "empty payload"}
	}
	if len(payload) > max {
		return r, &requestError{codeTooLarge, "payload too large"}
	}
	if err := json.Unmarshal(payload, &r); err != nil {
		r.ID = nil
		return r, &requestError{codeBadFormat, "payload is not a JSON request object"}
	}
	if len(r.ID) > 0 {
		switch c := r.ID[0]; {
		case c == '"', c == '-', c >= '0' && c <= '9':
			if len(r.ID) > 128 {
				r.ID = nil
				return r, &requestError{codeBadFormat, "id too long"}
			}
		case string(r.ID) == "null":
			r.ID = nil
		default:
			r.ID = nil
			return r, &requestError{codeBadFormat, "id must be a string or a number"}
		}
	}
	if r.Method == "" {
		return r, &requestError{codeBadFormat, "method is required"}
	}
	return r, nil
}

// replyEnvelope is the answer to an upstream request.
type replyEnvelope struct {
	ID      json.RawMessage `json:"id"`
	Code    int             `json:"code"`
	Data    any             `json:"data"`
	Message string          `json:"message"`
}

// methodFor is the method a request on a topic (relative to the device's
// /sys/ prefix) must carry: "thing/event/x/post" → "thing.event.x.post".
func methodFor(rel string) string { return strings.ReplaceAll(rel, "/", ".") }

// handlePublish serves a publish from a device. It reports whether the
// hub consumed it (then it is not routed to subscribers).
func (s *Server) handlePublish(ss *session, topic string, payload []byte) bool {
	if ss.activation {
		// The only topic an activation session may publish to is the
		// activation reply, which needs no action.
		return true
	}
	if !strings.HasPrefix(topic, ss.sysPrefix) {
		return false
	}
	rel := topic[len(ss.sysPrefix):]
	if strings.HasSuffix(rel, replySuffix) {
		return s.deliverReply(ss, strings.TrimSuffix(rel, replySuffix), payload)
	}
	handler, ok := upstream(rel)
	if !ok {
		return false
	}
	req, err := parseRequest(payload, s.maxPay)
	if err != nil {
		re := err.(*requestError)
		s.reply(ss, topic, req.ID, re.Code, nil, re.Msg)
		return true
	}
	if req.Method != methodFor(rel) {
		s.reply(ss, topic, req.ID, codeMismatch, nil, "method does not match topic")
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	data, code, msg := handler(s, ctx, ss, req.Params)
	s.reply(ss, topic, req.ID, code, data, msg)
	return true
}

type handlerFn func(s *Server, ctx context.Context, ss *session, params json.RawMessage) (any, int, string)

// upstream routes a topic relative to /sys/{pk}/{dk}/ to its handler.
func upstream(rel string) (handlerFn, bool) {
	switch rel {
	case "thing/measurepoint/post", "thing/measurepoint/resume":
		return (*Server).postMeasurepoints, true
	case "thing/measurepoint/post/batch", "thing/measurepoint/resume/batch":
		return (*Server).postMeasurepointBatch, true
	case "thing/attribute/update":
		return (*Server).updateAttributes, true
	case "thing/attribute/query":
		return (*Server).queryAttributes, true
	case "thing/attribute/delete":
		return (*Server).deleteAttributes, true
	case "thing/tag/update", "thing/tag/query", "thing/tag/delete":
		return (*Server).acceptOnly, true
	case "thing/device/register":
		return (*Server).registerSubDevices, true
	case "thing/certificate/renew":
		return (*Server).renewCertificate, true
	}
	if strings.HasPrefix(rel, "thing/event/") && strings.HasSuffix(rel, "/post") && len(rel) > len("thing/event//post") {
		return (*Server).postEvent, true
	}
	return nil, false
}

// reply writes the answer on topic + "_reply" to the device's connection.
func (s *Server) reply(ss *session, topic string, id json.RawMessage, code int, data any, msg string) {
	if id == nil {
		id = json.RawMessage(`""`)
	}
	b, err := json.Marshal(replyEnvelope{ID: id, Code: code, Data: data, Message: msg})
	if err != nil {
		b, _ = json.Marshal(replyEnvelope{ID: id, Code: codeInternal, Message: "internal error"})
	}
	if err := s.writePublish(ss.cl, topic+replySuffix, b); err != nil {
		s.log.Debug("mqtt: reply not written", "topic", topic, "error", err)
	}
}

// writePublish writes a QoS 0 PUBLISH straight to a client's connection,
// whether or not it subscribed to topic.
func (s *Server) writePublish(cl *mochi.Client, topic string, payload []byte) error {
	err := cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   topic,
		Payload:     payload,
	})
	if err == nil {
		s.met.messages.WithLabelValues("out").Inc()
	}
	return err
}

// postParams is the params of a measurepoint post.
type postParams struct {
	ProductKey    string          `json:"productKey"`
	DeviceKey     string          `json:"deviceKey"`
	Measurepoints json.RawMessage `json:"measurepoints"`
	Time          *int64          `json:"time"`
}

// sample checks one post and makes it a Sample of the session's device.
func (s *Server) sample(ss *session, p postParams) (iothub.Sample, int, string) {
	if (p.ProductKey != "" && p.ProductKey != ss.dev.ProductKey) || (p.DeviceKey != "" && p.DeviceKey != ss.dev.DeviceKey) {
		return iothub.Sample{}, codeNoPermission, "entry belongs to another device"
	}
	mp := bytes.TrimSpace(p.Measurepoints)
	if len(mp) < 2 || mp[0] != '{' {
		return iothub.Sample{}, codeBadFormat, "measurepoints must be an object"
	}
	if len(mp) > iothub.MaxSampleBytes { // F6
		return iothub.Sample{}, codeTooLarge, "measurepoints over the 64 KiB cap of a stored post"
	}
	t := s.now()
	if p.Time != nil && *p.Time > 0 {
		t = time.UnixMilli(*p.Time)
	}
	return iothub.Sample{ProductKey: ss.dev.ProductKey, DeviceKey: ss.dev.DeviceKey, Time: t.UTC(),
		Measurepoints: json.RawMessage(append([]byte(nil), mp...))}, codeOK, ""
}

func (s *Server) postMeasurepoints(_ context.Context, ss *session, params json.RawMessage) (any, int, string) {
	var p postParams
	if err := json.Unmarshal(params, &p); err != nil {
		return nil, codeBadFormat, "params must be {measurepoints, time}"
	}
	smp, code, msg := s.sample(ss, p)
	if code != codeOK {
		return nil, code, msg
	}
	s.samples.Add(smp)
	return nil, codeOK, ""
}

func (s *Server) postMeasurepointBatch(_ context.Context, ss *session, params json.RawMessage) (any, int, string) {
	var ps []postParams
	if err := json.Unmarshal(params, &ps); err != nil || len(ps) == 0 {
		return nil, codeBadFormat, "params must be a non-empty list of posts"
	}
	out := make([]iothub.Sample, 0, len(ps))
	for _, p := range ps {
		smp, code, msg := s.sample(ss, p)
		if code != codeOK {
			return nil, code, msg // nothing of the batch is stored
		}
		out = append(out, smp)
	}
	for _, smp := range out {
		s.samples.Add(smp)
	}
	return nil, codeOK, ""
}

func (s *Server) postEvent(_ context.Context, _ *session, params json.RawMessage) (any, int, string) {
	var p struct {
		Events json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(params, &p); err != nil {
		return nil, codeBadFormat, "params must be {events, time}"
	}
	return nil, codeOK, ""
}

func (s *Server) acceptOnly(context.Context, *session, json.RawMessage) (any, int, string) {
	return nil, codeOK, ""
}

func (s *Server) updateAttributes(ctx context.Context, ss *session, params json.RawMessage) (any, int, string) {
	var p struct {
		Attributes map[string]json.RawMessage `json:"attributes"`
	}
	if err := json.Unmarshal(params, &p); err != nil || len(p.Attributes) == 0 {
		return nil, codeBadFormat, "params must be {attributes:{…}}"
	}
	switch err := s.cfg.Store.SetAttributes(ctx, ss.dev.ProductKey, ss.dev.DeviceKey, p.Attributes); iothub.ErrorCode(err) {
	case "":
	case iothub.ETOOLARGE: // F6
		return nil, codeTooLarge, iothub.ErrorMessage(err)
	case iothub.EINVALID:
		return nil, codeBadFormat, iothub.ErrorMessage(err)
	default:
		return nil, codeInternal, "store error"
	}
	return nil, codeOK, ""
}

// attributeNames reads {"attributes":["a",…]} or a bare list.
func attributeNames(params json.RawMessage) ([]string, bool) {
	var p struct {
		Attributes []string `json:"attributes"`
	}
	if len(bytes.TrimSpace(params)) == 0 || string(params) == "null" {
		return nil, true
	}
	if err := json.Unmarshal(params, &p); err == nil {
		return p.Attributes, true
	}
	var names []string
	if err := json.Unmarshal(params, &names); err == nil {
		return names, true
	}
	return nil, false
}

func (s *Server) queryAttributes(ctx context.Context, ss *session, params json.RawMessage) (any, int, string) {
	names, ok := attributeNames(params)
	if !ok {
		return nil, codeBadFormat, "params must be {attributes:[…]}"
	}
	all, err := s.cfg.Store.Attributes(ctx, ss.dev.ProductKey, ss.dev.DeviceKey)
	if err != nil {
		return nil, codeInternal, "store error"
	}
	if len(names) == 0 {
		return all, codeOK, ""
	}
	out := make(map[string]json.RawMessage, len(names))
	for _, n := range names {
		if v, ok := all[n]; ok {
			out[n] = v
		}
	}
	return out, codeOK, ""
}

func (s *Server) deleteAttributes(ctx context.Context, ss *session, params json.RawMessage) (any, int, string) {
	names, ok := attributeNames(params)
	if !ok || len(names) == 0 {
		return nil, codeBadFormat, "params must be {attributes:[…]}"
	}
	if err := s.cfg.Store.DeleteAttributes(ctx, ss.dev.ProductKey, ss.dev.DeviceKey, names); err != nil {
		return nil, codeInternal, "store error"
	}
	return nil, codeOK, ""
}
