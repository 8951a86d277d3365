package mqtt

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"strconv"

	"github.com/iothub/iothub"
)

// pendingCall is a downstream request waiting for its reply.
type pendingCall struct {
	dev   iothub.DeviceID
	topic string // relative to /sys/{pk}/{dk}/
	ch    chan *iothub.Reply
}

// Call writes a request with a fresh id on /sys/{pk}/{dk}/{topic} straight
// to the device's connection and waits for the reply on {topic}_reply. It
// fails with EOFFLINE when the device has no session here and ETIMEOUT
// when ctx ends first.
func (s *Server) Call(ctx context.Context, productKey, deviceKey, topic, method string, params json.RawMessage) (*iothub.Reply, error) {
	if topic == "" || topic[0] == '/' || bytes.ContainsAny([]byte(topic), "+#") || method == "" {
		return nil, iothub.Errorf(iothub.EINVALID, "bad downstream topic or method")
	}
	if topic == downRawTopic {
		return s.callRaw(ctx, iothub.DeviceID{ProductKey: productKey, DeviceKey: deviceKey}, params)
	}
	if len(params) == 0 {
		params = json.RawMessage(`{}`)
	} else if !json.Valid(params) {
		return nil, iothub.Errorf(iothub.EINVALID, "params are not valid JSON")
	}
	if s.draining.Load() {
		return nil, errShuttingDown
	}
	dev := iothub.DeviceID{ProductKey: productKey, DeviceKey: deviceKey}
	ss := s.deviceSession(dev)
	if ss == nil || ss.cl.isClosed() {
		return nil, iothub.Errorf(iothub.EOFFLINE, "device is not online")
	}
	id := s.nextCallID()
	payload, err := json.Marshal(struct {
		ID      string          `json:"id"`
		Version string          `json:"version"`
		Method  string          `json:"method"`
		Params  json.RawMessage `json:"params"`
	}{id, "1.0", method, params})
	if err != nil {
		return nil, iothub.Errorf(iothub.EINVALID, "params are not valid JSON")
	}
	if len(payload) > s.maxPay {
		return nil, iothub.Errorf(iothub.ETOOLARGE, "request is larger than %d bytes", s.maxPay)
	}
	return s.send(ctx, ss, dev, id, topic, payload)
}

// send writes payload on dev's topic through its session ss and waits
// for the reply that deliverReply hands over under id.
func (s *Server) send(ctx context.Context, ss *session, dev iothub.DeviceID, id, topic string, payload []byte) (*iothub.Reply, error) {
	pc := &pendingCall{dev: dev, topic: topic, ch: make(chan *iothub.Reply, 1)}
	s.pmu.Lock()
	if s.pending[id] != nil {
		s.pmu.Unlock()
		return nil, iothub.Errorf(iothub.ECONFLICT, "a request to this device awaits its reply")
	}
	s.pending[id] = pc
	s.pmu.Unlock()
	defer func() {
		s.pmu.Lock()
		if s.pending[id] == pc {
			delete(s.pending, id)
		}
		s.pmu.Unlock()
	}()
	// The write runs apart so the call ends at its deadline even when the
	// device does not read; the connection's write deadline ends the write.
	written := make(chan error, 1)
	go func() { written <- s.writePublish(ss.cl, ss.sysPrefix+topic, payload) }()
	for {
		select {
		case err := <-written:
			if err != nil {
				return nil, iothub.Errorf(iothub.EOFFLINE, "device is not online")
			}
			written = nil
		case r := <-pc.ch:
			return r, nil
		case <-ctx.Done():
			return nil, iothub.Errorf(iothub.ETIMEOUT, "device did not answer in time")
		case <-s.abandon:
			return nil, errShuttingDown
		}
	}
}

// nextCallID returns the id of a new downstream request: a decimal number
// between 1 and 2^31-1, because the EnOS C SDK reads the id with atoi and
// writes it back unquoted. Ids need only be unique among this node's
// pending calls (a reply comes back on the connection it was sent to); the
// counter starts at a random point so that a restarted node does not
// reuse the ids of calls its devices may still answer.
func (s *Server) nextCallID() string {
	return strconv.FormatUint(uint64(s.callSeq.Add(1)%math.MaxInt32)+1, 10)
}

// deliverReply hands a device's reply on {topic}_reply to the Call that
// waits for it. Only the device that was called can answer a call.
func (s *Server) deliverReply(ss *session, topic string, payload []byte) bool {
	var r struct {
		ID      json.RawMessage `json:"id"`
		Code    int             `json:"code"`
		Data    json.RawMessage `json:"data"`
		Message string          `json:"message"`
	}
	if topic == downRawTopic {
		s.deliverRaw(ss, payload)
		return true
	}
	if len(payload) > s.maxPay || json.Unmarshal(payload, &r) != nil || len(r.ID) == 0 {
		return true
	}
	id := string(r.ID)
	if r.ID[0] == '"' {
		if json.Unmarshal(r.ID, &id) != nil {
			return true
		}
	}
	s.pmu.Lock()
	pc := s.pending[id]
	if pc != nil && (pc.dev != ss.dev || pc.topic != topic) {
		pc = nil
	}
	if pc != nil {
		delete(s.pending, id)
	}
	s.pmu.Unlock()
	if pc != nil {
		pc.ch <- &iothub.Reply{ID: id, Code: r.Code, Data: r.Data, Message: r.Message}
	}
	return true
}

// rawCallID is the pending-call key of a device's down_raw call: raw
// payloads carry no id, so a device has one raw call in flight at a time.
func rawCallID(dev iothub.DeviceID) string { return "raw " + dev.ProductKey + "/" + dev.DeviceKey }

// callRaw writes params, a JSON string of base64 bytes, raw on
// thing/model/down_raw and waits for the device's down_raw_reply, whose
// bytes come back base64 in the Reply's Data. Riding on Call, it reaches a
// device on any node of a cluster.
func (s *Server) callRaw(ctx context.Context, dev iothub.DeviceID, params json.RawMessage) (*iothub.Reply, error) {
	var payload []byte
	if json.Unmarshal(params, &payload) != nil || len(payload) == 0 {
		return nil, iothub.Errorf(iothub.EINVALID, "a raw payload is non-empty bytes, base64 in a JSON string")
	}
	if len(payload) > s.maxPay {
		return nil, iothub.Errorf(iothub.ETOOLARGE, "raw payload is larger than %d bytes", s.maxPay)
	}
	ss := s.deviceSession(dev)
	if ss == nil || ss.cl.isClosed() {
		return nil, iothub.Errorf(iothub.EOFFLINE, "device is not online")
	}
	return s.send(ctx, ss, dev, rawCallID(dev), downRawTopic, payload)
}

// deliverRaw hands a device's down_raw_reply to the raw call waiting for it.
func (s *Server) deliverRaw(ss *session, payload []byte) {
	id := rawCallID(ss.dev)
	s.pmu.Lock()
	pc := s.pending[id]
	if pc != nil {
		delete(s.pending, id)
	}
	s.pmu.Unlock()
	switch {
	case pc == nil:
	case len(payload) > s.maxPay:
		pc.ch <- &iothub.Reply{ID: id, Code: codeTooLarge, Message: "reply too large"}
	default:
		data, _ := json.Marshal(payload) // base64 string: cannot fail
		pc.ch <- &iothub.Reply{ID: id, Code: codeOK, Data: data}
	}
}
