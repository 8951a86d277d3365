package mqtt

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/feed"
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
	codeTooMany      = 429 // rate-limited: retry later
	// codeNotStored answers a post the store could not take (disk full,
	// database down): nothing was stored and the device should retry. Its
	// PUBACK is withheld (MQTT 5: reason 0x80), so an SDK resends it.
	codeNotStored = 503
)

// msgNotStored is the reply message of codeNotStored.
const msgNotStored = "not stored: the hub cannot store data right now; retry later"

// request is an upstream request envelope.
type request struct {
	ID      json.RawMessage `json:"id"`
	Version string          `json:"version"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params"`
	batchFlags
}

// batchFlags are the flags of a batch post, beside its params.
type batchFlags struct {
	// AllowOfflineSubDevice accepts entries of sub-devices in the
	// gateway's topology that are not logged in.
	AllowOfflineSubDevice bool `json:"allowOfflineSubDevice"`
	// SkipInvalidMeasurepoints stores the valid entries and skips the
	// others instead of refusing the whole batch.
	SkipInvalidMeasurepoints bool `json:"skipInvalidMeasurepoints"`
}

// flagsKey carries a request's batchFlags in its context.
type flagsKey struct{}

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

// pendingWrite is what a handler returns as its data when it started a
// write: the request is answered when the write ends. start hands the
// write the callback that answers; data is the answer's data on success.
type pendingWrite struct {
	start func(done func(error))
	data  any
}

// pending returns what a handler returns when its answer waits for a write.
func pending(start func(done func(error)), data any) (any, int, string) {
	return pendingWrite{start: start, data: data}, codeOK, ""
}

// handlePublish serves a publish from a device and reports whether the
// hub took it (false: it is routed to subscribers). The hub answers
// what it takes through the connection's answer queue: the reply, then
// the PUBACK, in the order the requests arrived. A request that stores
// data is answered only once its commit ends, so that both mean "stored";
// the connection meanwhile goes on reading (up to maxPendingAnswers).
func (s *Server) handlePublish(ss *session, pk packets.Packet) bool {
	topic, payload := pk.TopicName, pk.Payload
	if ss.activation {
		// The only topic an activation session may publish to is the
		// activation reply, which needs no action.
		s.complete(ss, s.acknowledge(ss, pk))
		return true
	}
	// target is the device the request is for: the session's own, or a
	// sub-device logged in through it (a gateway).
	target, rel := ss, ""
	var handler handlerFn
	switch {
	case strings.HasPrefix(topic, ss.sysPrefix):
		rel = topic[len(ss.sysPrefix):]
	case strings.HasPrefix(topic, ss.extPrefix):
		rel = topic[len(ss.extPrefix):]
		var ok bool
		if handler, ok = sessionRequest(rel); !ok {
			return false
		}
	default:
		if target = ss.subFor(topic); target == nil {
			return false
		}
		target.touch(s.now())
		rel = topic[len(target.sysPrefix):]
	}
	if handler == nil {
		if rel == upRawTopic {
			s.upRaw(ss, target, pk)
			return true
		}
		if strings.HasSuffix(rel, replySuffix) {
			if s.deliverReply(target, strings.TrimSuffix(rel, replySuffix), payload) {
				s.complete(ss, s.acknowledge(ss, pk))
				return true
			}
			return false
		}
		var ok bool
		if handler, ok = upstream(rel); !ok {
			return false
		}
	}
	a := s.acknowledge(ss, pk)
	req, err := parseRequest(payload, s.maxPay)
	if err != nil {
		re := err.(*requestError)
		s.answerRequest(ss, pk, a, req.ID, re.Code, nil, re.Msg)
		return true
	}
	if want := methodFor(rel); req.Method != want {
		if !topicDecides(rel, req.Method) {
			s.answerRequest(ss, pk, a, req.ID, codeMismatch, nil, "method does not match topic")
			return true
		}
		s.log.Debug("mqtt: request method disagrees with its topic; the topic decides", "method", req.Method, "want", want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = context.WithValue(ctx, flagsKey{}, req.batchFlags)
	data, code, msg := handler(s, ctx, target, req.Params)
	if w, ok := data.(pendingWrite); ok {
		w.start(func(err error) {
			code, msg := storeCode(err)
			var data any
			if code == codeOK {
				data = w.data
			}
			// On a writer's goroutine: the answer is written elsewhere.
			go s.answerRequest(ss, pk, a, req.ID, code, data, msg)
		})
		return true
	}
	s.answerRequest(ss, pk, a, req.ID, code, data, msg)
	return true
}

// acknowledge takes the publish's place in the connection's answer queue,
// with a PUBACK for QoS 1.
func (s *Server) acknowledge(ss *session, pk packets.Packet) *answer {
	a := ss.answers().reserve(ss.cl)
	a.ack, a.ackID = pk.FixedHeader.Qos > 0, pk.PacketID
	return a
}

// answerRequest completes a request's answer: its reply, and its PUBACK
// unless nothing was stored for want of storage (MQTT 3.1.1 has no
// negative PUBACK, so the client resends; MQTT 5 gets reason 0x80).
func (s *Server) answerRequest(ss *session, pk packets.Packet, a *answer, id json.RawMessage, code int, data any, msg string) {
	a.replyTopic, a.replyPayload = pk.TopicName+replySuffix, replyPayload(id, code, data, msg)
	switch {
	case ss.closeAfterReply.Load():
		a.after = func() { s.kick(ss, codeBusy, "throttled") }
	case code == codeNotStored:
		if ss.cl.version == 5 {
			a.ackCode = packets.ErrUnspecifiedError.Code
		} else {
			a.ack = false
		}
		a.after = func() { s.refused(ss) }
	default:
		ss.refusals.Store(0)
	}
	s.complete(ss, a)
}

// topicDecides reports whether a request whose method disagrees with its
// topic is served as the topic says: the dialects of SDKs known to send
// other methods. The Python SDK 0.1.1 sends event posts as
// "thing.event.%s.post" unformatted and OTA requests as
// "Ota.device.getversion", "ota.progress", "ota.inform", "ota.request".
func topicDecides(rel, method string) bool {
	switch {
	case strings.HasPrefix(rel, "thing/event/"):
		return strings.HasPrefix(method, "thing.event.")
	case strings.HasPrefix(rel, "ota/device/"):
		return strings.HasPrefix(strings.ToLower(method), "ota.")
	}
	return false
}

// refusalsBeforeDisconnect is how many posts in a row a session may see
// refused for want of storage before the hub ends it, so that SDKs with
// an offline buffer keep their data and resume after reconnecting.
const refusalsBeforeDisconnect = 3

// refused counts a post refused for want of storage and ends the session
// once the condition lasts.
func (s *Server) refused(ss *session) {
	if ss.refusals.Add(1) == refusalsBeforeDisconnect {
		s.kick(ss, packets.ErrServerBusy, "store_unavailable")
	}
}

// storeCode turns a store error into a reply code: a refusal of the data
// itself is the device's fault (1220); anything else means not stored.
func storeCode(err error) (int, string) {
	switch iothub.ErrorCode(err) {
	case "":
		return codeOK, ""
	case iothub.EINVALID:
		return codeBadFormat, iothub.ErrorMessage(err)
	case iothub.ETOOLARGE: // F6: over a per-post or per-device cap
		return codeTooLarge, iothub.ErrorMessage(err)
	case iothub.ENOTFOUND:
		return codeNotFound, "device not found"
	case iothub.EMODEL:
		return codeModelMismatch, iothub.ErrorMessage(err)
	default:
		return codeNotStored, msgNotStored
	}
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
		return queryNames("attributes", iothub.Store.Attributes), true
	case "thing/attribute/delete":
		return deleteNames("attributes", iothub.Store.DeleteAttributes), true
	case "thing/tag/update":
		return (*Server).updateTags, true
	case "thing/tag/query":
		return queryNames("tags", iothub.Store.Tags), true
	case "thing/tag/delete":
		return deleteNames("tags", iothub.Store.DeleteTags), true
	case "thing/topo/add":
		return (*Server).topoAdd, true
	case "thing/topo/get":
		return (*Server).topoGet, true
	case "thing/topo/delete":
		return (*Server).topoDelete, true
	case "thing/device/register":
		return (*Server).registerSubDevices, true
	case "thing/certificate/renew":
		return (*Server).renewCertificate, true
	case "thing/tsltemplate/get":
		return (*Server).tslTemplate, true
	}
	if h, ok := otaHandler(rel); ok {
		return h, true
	}
	if id, ok := strings.CutPrefix(rel, "thing/event/"); ok {
		if id, ok := strings.CutSuffix(id, "/post"); ok && id != "" && !strings.Contains(id, "/") {
			return eventHandler(id), true
		}
	}
	return nil, false
}

// replyPayload is the JSON answer to an upstream request.
func replyPayload(id json.RawMessage, code int, data any, msg string) []byte {
	if id == nil {
		id = json.RawMessage(`""`)
	}
	b, err := json.Marshal(replyEnvelope{ID: id, Code: code, Data: data, Message: msg})
	if err != nil {
		b, _ = json.Marshal(replyEnvelope{ID: id, Code: codeInternal, Message: "internal error"})
	}
	return b
}

// writePublish writes a QoS 0 PUBLISH straight to a client's connection,
// whether or not it subscribed to topic.
func (s *Server) writePublish(cl *conn, topic string, payload []byte) error {
	err := cl.writePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   topic,
		Payload:     payload,
	})
	if err == nil {
		s.met.messagesOut.Inc()
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
// The measurepoints pass the store's own rules here, so that a post the
// store would refuse never joins a batch.
func (s *Server) sample(ss *session, p postParams) (iothub.Sample, int, string) {
	dev := ss.dev
	if (p.ProductKey != "" && p.ProductKey != ss.dev.ProductKey) || (p.DeviceKey != "" && p.DeviceKey != ss.dev.DeviceKey) {
		// A gateway posts for its logged-in sub-devices too.
		sub := ss.sub(iothub.DeviceID{ProductKey: p.ProductKey, DeviceKey: p.DeviceKey})
		if sub == nil {
			return iothub.Sample{}, codeNoPermission, "entry belongs to another device (not this device or a logged-in sub-device)"
		}
		dev = sub.dev
	}
	mp, err := iothub.ParseMeasurepoints(p.Measurepoints)
	if err != nil {
		code, msg := storeCode(err)
		return iothub.Sample{}, code, msg
	}
	if code, msg := s.checkModel(dev.ProductKey, func(m *iothub.ThingModel) error { return m.CheckMeasurepoints(mp) }); code != codeOK {
		return iothub.Sample{}, code, msg
	}
	return iothub.Sample{ProductKey: dev.ProductKey, DeviceKey: dev.DeviceKey, Time: s.postTime(p.Time),
		Measurepoints: json.RawMessage(mp.Body)}, codeOK, ""
}

// postTime is a post's sample time: its own when it carries one, else now.
func (s *Server) postTime(ms *int64) time.Time {
	if ms != nil && *ms > 0 {
		return time.UnixMilli(*ms).UTC()
	}
	return s.now().UTC()
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
	return pending(func(done func(error)) { s.samples.WriteAsync([]iothub.Sample{smp}, done) }, nil)
}

// maxBatchEntries caps the entries of one batch post.
const maxBatchEntries = 1000

func (s *Server) postMeasurepointBatch(ctx context.Context, ss *session, params json.RawMessage) (any, int, string) {
	var ps []postParams
	if err := json.Unmarshal(params, &ps); err != nil || len(ps) == 0 {
		return nil, codeBadFormat, "params must be a non-empty list of posts"
	}
	if len(ps) > maxBatchEntries {
		return nil, codeBadFormat, "too many entries in one batch"
	}
	flags, _ := ctx.Value(flagsKey{}).(batchFlags)
	out := make([]iothub.Sample, 0, len(ps))
	skipped := 0
	for _, p := range ps {
		smp, code, msg := s.sample(ss, p)
		if code == codeNoPermission && flags.AllowOfflineSubDevice {
			smp, code, msg = s.offlineSubSample(ctx, ss, p)
		}
		if code == codeBadFormat && flags.SkipInvalidMeasurepoints {
			skipped++
			continue
		}
		if code != codeOK {
			return nil, code, msg // nothing of the batch is stored
		}
		out = append(out, smp)
	}
	if len(out) == 0 {
		return nil, codeBadFormat, "no valid entry in the batch"
	}
	var data any
	if skipped > 0 {
		data = map[string]int{"skipped": skipped}
	}
	return pending(func(done func(error)) { s.samples.WriteAsync(out, done) }, data)
}

// offlineSubSample makes a batch entry of a sub-device that is in the
// gateway's topology but not logged in (allowOfflineSubDevice).
func (s *Server) offlineSubSample(ctx context.Context, gw *session, p postParams) (iothub.Sample, int, string) {
	id := iothub.DeviceID{ProductKey: p.ProductKey, DeviceKey: p.DeviceKey}
	owner, err := s.cfg.Store.GatewayOf(ctx, id)
	if err != nil || owner != gw.dev {
		return iothub.Sample{}, codeNoPermission, "entry belongs to a device that is not in this gateway's topology"
	}
	sub := &session{dev: id}
	return s.sample(sub, p)
}

// eventHandler serves thing/event/{id}/post for one event identifier.
func eventHandler(eventID string) handlerFn {
	return func(s *Server, _ context.Context, ss *session, params json.RawMessage) (any, int, string) {
		var p struct {
			Events json.RawMessage `json:"events"`
			Time   *int64          `json:"time"`
		}
		if err := json.Unmarshal(params, &p); err != nil {
			return nil, codeBadFormat, "params must be {events, time}"
		}
		if err := iothub.ValidateEventID(eventID); err != nil {
			return nil, codeBadFormat, iothub.ErrorMessage(err)
		}
		fields, err := iothub.ParseMeasurepoints(p.Events)
		if err != nil {
			return nil, codeBadFormat, "events: " + iothub.ErrorMessage(err)
		}
		if code, msg := s.checkModel(ss.dev.ProductKey, func(m *iothub.ThingModel) error { return m.CheckEvent(eventID, fields) }); code != codeOK {
			return nil, code, msg
		}
		e := iothub.DeviceEvent{ProductKey: ss.dev.ProductKey, DeviceKey: ss.dev.DeviceKey, EventID: eventID,
			Time: s.postTime(p.Time), Events: json.RawMessage(fields.Body)}
		return pending(func(done func(error)) { s.events.WriteAsync([]iothub.DeviceEvent{e}, done) }, nil)
	}
}

func (s *Server) updateAttributes(ctx context.Context, ss *session, params json.RawMessage) (any, int, string) {
	var p struct {
		Attributes map[string]json.RawMessage `json:"attributes"`
	}
	if err := json.Unmarshal(params, &p); err != nil || len(p.Attributes) == 0 {
		return nil, codeBadFormat, "params must be {attributes:{…}}"
	}
	err := s.cfg.Store.SetAttributes(ctx, ss.dev.ProductKey, ss.dev.DeviceKey, p.Attributes)
	if err == nil && s.cfg.Feed != nil {
		err = s.cfg.Feed.Record(ctx, []iothub.DataChange{feed.Attributes(ss.dev.ProductKey, ss.dev.DeviceKey, s.now(), p.Attributes)})
	}
	code, msg := storeCode(err)
	return nil, code, msg
}

// nameList reads the names of a query or delete: {field:["a",…]} or a
// bare list; no params means no names (every entry, for a query).
func nameList(params json.RawMessage, field string) ([]string, bool) {
	if len(bytes.TrimSpace(params)) == 0 || string(params) == "null" {
		return nil, true
	}
	var names []string
	if err := json.Unmarshal(params, &names); err == nil {
		return names, true
	}
	var p map[string][]string
	if err := json.Unmarshal(params, &p); err != nil {
		return nil, false
	}
	return p[field], true
}

// queryNames serves a query of a device's name/value set (attributes,
// tags): the named entries, or all of them.
func queryNames[V any](field string, read func(iothub.Store, context.Context, string, string) (map[string]V, error)) handlerFn {
	return func(s *Server, ctx context.Context, ss *session, params json.RawMessage) (any, int, string) {
		names, ok := nameList(params, field)
		if !ok {
			return nil, codeBadFormat, "params must be {" + field + ":[…]}"
		}
		all, err := read(s.cfg.Store, ctx, ss.dev.ProductKey, ss.dev.DeviceKey)
		if err != nil {
			return nil, codeInternal, "store error"
		}
		return pick(all, names), codeOK, ""
	}
}

// deleteNames serves a delete of named entries of a device's name/value set.
func deleteNames(field string, del func(iothub.Store, context.Context, string, string, []string) error) handlerFn {
	return func(s *Server, ctx context.Context, ss *session, params json.RawMessage) (any, int, string) {
		names, ok := nameList(params, field)
		if !ok || len(names) == 0 {
			return nil, codeBadFormat, "params must be {" + field + ":[…]}"
		}
		code, msg := storeCode(del(s.cfg.Store, ctx, ss.dev.ProductKey, ss.dev.DeviceKey, names))
		return nil, code, msg
	}
}

// tagEntry is one entry of thing.tag.update.
type tagEntry struct {
	TagKey   string `json:"tagKey"`
	TagValue string `json:"tagValue"`
}

// parseTags reads thing.tag.update params: the SDKs' list of {tagKey,
// tagValue}, or {"tags":{name:value}}.
func parseTags(params json.RawMessage) (map[string]string, bool) {
	var entries []tagEntry
	if err := json.Unmarshal(params, &entries); err == nil {
		tags := make(map[string]string, len(entries))
		for _, e := range entries {
			tags[e.TagKey] = e.TagValue
		}
		return tags, len(tags) > 0
	}
	var p struct {
		Tags map[string]string `json:"tags"`
	}
	err := json.Unmarshal(params, &p)
	return p.Tags, err == nil && len(p.Tags) > 0
}

func (s *Server) updateTags(ctx context.Context, ss *session, params json.RawMessage) (any, int, string) {
	tags, ok := parseTags(params)
	if !ok {
		return nil, codeBadFormat, "params must be a list of {tagKey, tagValue} or {tags:{…}} with string values"
	}
	code, msg := storeCode(s.cfg.Store.SetTags(ctx, ss.dev.ProductKey, ss.dev.DeviceKey, tags))
	return nil, code, msg
}

// pick returns the named entries of all, or all when no name is given.
func pick[V any](all map[string]V, names []string) map[string]V {
	if len(names) == 0 {
		return all
	}
	out := make(map[string]V, len(names))
	for _, n := range names {
		if v, ok := all[n]; ok {
			out[n] = v
		}
	}
	return out
}
