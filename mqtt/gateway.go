package mqtt

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/manage"
	"github.com/iothub/iothub/sign"
)

// A gateway connects the devices behind it over its own connection
// (PROTOCOL.md, "Gateways and sub-devices"): it keeps a topology of
// sub-devices (thing.topo.add, each entry signed with the sub-device's
// secret), logs them in and out (combine.login, combine.login.batch,
// combine.logout on its /ext/session/ topics), and then publishes and
// subscribes under their /sys/{pk}/{dk}/ topics. A logged-in sub-device
// has a session of its own, riding on the gateway's connection: it is in
// byDevice (so service calls reach it and its state is online) and in its
// gateway's subs (so the access rule lets the gateway use its topics).

// maxGatewayEntries caps the entries of one topology or batch-login request.
const maxGatewayEntries = 100

// Codes of the gateway requests (PROTOCOL.md).
const (
	codeSignFailed = 742
	codeDisabled   = 723
)

// subFor returns the logged-in sub-device whose /sys/ prefix topic starts
// with, or nil. It allocates nothing: the prefix is a slice of topic.
func (s *session) subFor(topic string) *session {
	if !strings.HasPrefix(topic, "/sys/") {
		return nil
	}
	n := len("/sys/")
	for range 2 {
		i := strings.IndexByte(topic[n:], '/')
		if i < 0 {
			return nil
		}
		n += i + 1
	}
	s.subMu.RLock()
	sub := s.subs[topic[:n]]
	s.subMu.RUnlock()
	return sub
}

// sub returns the logged-in sub-device dev of a gateway session, or nil.
func (s *session) sub(dev iothub.DeviceID) *session {
	return s.subFor(sysPrefix(dev.ProductKey, dev.DeviceKey))
}

// sessionRequest routes a request on a gateway's /ext/session/ topics.
func sessionRequest(rel string) (handlerFn, bool) {
	switch rel {
	case "combine/login":
		return (*Server).combineLogin, true
	case "combine/login/batch":
		return (*Server).combineLoginBatch, true
	case "combine/logout":
		return (*Server).combineLogout, true
	}
	return nil, false
}

// signedEntry is a sub-device's credentials as a gateway sends them in
// thing.topo.add and combine.login. The SDKs disagree on the spelling of
// signMethod and on whether the timestamp is a number or a string.
type signedEntry struct {
	ProductKey string          `json:"productKey"`
	DeviceKey  string          `json:"deviceKey"`
	ClientID   string          `json:"clientId"`
	Timestamp  json.RawMessage `json:"timestamp"`
	SignMethod string          `json:"signMethod"`
	SignLower  string          `json:"signmethod"`
	Sign       string          `json:"sign"`
}

// login is the entry as a signed login of the sub-device.
func (e signedEntry) login() sign.Login {
	ts := string(e.Timestamp)
	var quoted string
	if json.Unmarshal(e.Timestamp, &quoted) == nil {
		ts = quoted
	}
	m := e.SignMethod
	if m == "" {
		m = e.SignLower
	}
	return sign.Login{ClientID: e.ClientID, DeviceKey: e.DeviceKey, ProductKey: e.ProductKey, Timestamp: ts, SignMethod: sign.Method(m)}
}

// requireGateway refuses a topology or sub-device request from a device
// whose product is not a gateway.
func (s *Server) requireGateway(ctx context.Context, gw *session) (int, string) {
	if gw.gateway != nil {
		return codeNoPermission, "a sub-device cannot act as a gateway"
	}
	p, err := s.product(ctx, gw.dev.ProductKey)
	if err != nil {
		return codeNotStored, msgNotStored
	}
	if p.NodeType != iothub.NodeGateway {
		return codeNoPermission, "only a gateway device may manage sub-devices"
	}
	return codeOK, ""
}

// checkSubDevice authenticates a sub-device entry signed by its secret:
// the device exists in the gateway's org and the signature is right. A
// device of another org is answered as unknown.
func (s *Server) checkSubDevice(ctx context.Context, gw *session, e signedEntry) (*iothub.Device, int, string) {
	id := iothub.DeviceID{ProductKey: e.ProductKey, DeviceKey: e.DeviceKey}
	l := e.login()
	d, err := s.device(ctx, id)
	switch {
	case err != nil && iothub.ErrorCode(err) != iothub.ENOTFOUND:
		return nil, codeNotStored, msgNotStored
	case err != nil || d.OrgID != gw.orgID:
		l.Verify(dummySecret, e.Sign)
		code, msg := s.subFailure(gw, e, codeNotFound, fmt.Sprintf("device %s/%s not found", e.ProductKey, e.DeviceKey))
		return nil, code, msg
	case !l.Verify(d.DeviceSecret, e.Sign):
		code, msg := s.subFailure(gw, e, codeSignFailed, fmt.Sprintf("sign check failed for %s/%s", e.ProductKey, e.DeviceKey))
		return nil, code, msg
	}
	return d, codeOK, ""
}

// subFailure counts a failed sub-device credential like a failed login
// (per device and gateway, and per gateway): the right signature is never
// throttled, and once the buckets are empty the failures are answered
// 429 and the gateway is disconnected after the reply, so that guessing
// costs a reconnect.
func (s *Server) subFailure(gw *session, e signedEntry, code int, msg string) (int, string) {
	if s.limits.failed(e.ProductKey+"/"+e.DeviceKey, "gateway "+gw.dev.ProductKey+"/"+gw.dev.DeviceKey, s.now()) {
		gw.closeAfterReply.Store(true)
		return codeTooMany, "too many failed sub-device credentials; retry later"
	}
	return code, msg
}

func (s *Server) topoAdd(ctx context.Context, gw *session, params json.RawMessage) (any, int, string) {
	if code, msg := s.requireGateway(ctx, gw); code != codeOK {
		return nil, code, msg
	}
	var entries []signedEntry
	if err := json.Unmarshal(params, &entries); err != nil || len(entries) == 0 {
		return nil, codeBadFormat, "params must be a non-empty list of signed sub-devices"
	}
	if len(entries) > maxGatewayEntries {
		return nil, codeBadFormat, fmt.Sprintf("at most %d sub-devices per request", maxGatewayEntries)
	}
	subs := make([]*iothub.Device, 0, len(entries))
	for _, e := range entries {
		d, code, msg := s.checkSubDevice(ctx, gw, e)
		if code != codeOK {
			return nil, code, msg // nothing of the request is added
		}
		subs = append(subs, d)
	}
	p, gwDev, err := s.gatewayRecords(ctx, gw)
	if err == nil {
		err = s.cfg.Manage.AddSubDevices(ctx, gw.actor(), p, gwDev, subs)
	}
	switch iothub.ErrorCode(err) {
	case iothub.ECONFLICT, iothub.EFORBIDDEN:
		return nil, codeNoPermission, iothub.ErrorMessage(err)
	case iothub.ENOTFOUND:
		return nil, codeNotFound, iothub.ErrorMessage(err)
	}
	code, msg := storeCode(err)
	return nil, code, msg
}

// gatewayRecords reads a gateway session's product and device.
func (s *Server) gatewayRecords(ctx context.Context, gw *session) (*iothub.Product, *iothub.Device, error) {
	p, err := s.product(ctx, gw.dev.ProductKey)
	if err != nil {
		return nil, nil, err
	}
	d, err := s.device(ctx, gw.dev)
	return p, d, err
}

// actor names a device session in audit rows of what it asked for.
func (s *session) actor() manage.Actor {
	return manage.Actor{Remote: s.remote, By: "device " + s.dev.ProductKey + "/" + s.dev.DeviceKey}
}

// deviceRef is a device named by its keys in requests and replies.
type deviceRef struct {
	ProductKey string `json:"productKey"`
	DeviceKey  string `json:"deviceKey"`
}

func (s *Server) topoGet(ctx context.Context, gw *session, _ json.RawMessage) (any, int, string) {
	if code, msg := s.requireGateway(ctx, gw); code != codeOK {
		return nil, code, msg
	}
	subs, err := s.cfg.Store.SubDevices(ctx, gw.dev)
	if err != nil {
		return nil, codeInternal, "store error"
	}
	out := make([]deviceRef, len(subs))
	for i, d := range subs {
		out[i] = deviceRef{d.ProductKey, d.DeviceKey}
	}
	return out, codeOK, ""
}

func (s *Server) topoDelete(ctx context.Context, gw *session, params json.RawMessage) (any, int, string) {
	if code, msg := s.requireGateway(ctx, gw); code != codeOK {
		return nil, code, msg
	}
	var refs []deviceRef
	if err := json.Unmarshal(params, &refs); err != nil || len(refs) == 0 || len(refs) > maxGatewayEntries {
		return nil, codeBadFormat, fmt.Sprintf("params must be a list of 1 to %d {productKey, deviceKey}", maxGatewayEntries)
	}
	subs := make([]iothub.DeviceID, len(refs))
	for i, r := range refs {
		subs[i] = iothub.DeviceID{ProductKey: r.ProductKey, DeviceKey: r.DeviceKey}
	}
	_, gwDev, err := s.gatewayRecords(ctx, gw)
	if err == nil {
		err = s.cfg.Manage.RemoveSubDevices(ctx, gw.actor(), gwDev, subs)
	}
	if code, msg := storeCode(err); code != codeOK {
		return nil, code, msg
	}
	for _, id := range subs {
		if sub := gw.sub(id); sub != nil {
			s.endSub(sub, "")
		}
	}
	return nil, codeOK, ""
}

// loginSub logs a sub-device in through gw after checking that it is in
// gw's topology, signed right and not disabled.
func (s *Server) loginSub(ctx context.Context, gw *session, e signedEntry) (any, int, string) {
	d, code, msg := s.checkSubDevice(ctx, gw, e)
	if code == codeOK {
		owner, err := s.cfg.Store.GatewayOf(ctx, iothub.DeviceID{ProductKey: d.ProductKey, DeviceKey: d.DeviceKey})
		switch {
		case err != nil && iothub.ErrorCode(err) != iothub.ENOTFOUND:
			code, msg = codeNotStored, msgNotStored
		case err != nil || owner != gw.dev:
			code, msg = codeNoPermission, fmt.Sprintf("device %s/%s is not in this gateway's topology", d.ProductKey, d.DeviceKey)
		case d.State == iothub.StateDisabled:
			code, msg = codeDisabled, "device disabled"
		}
	}
	now := s.now()
	if code != codeOK {
		s.met.logins.WithLabelValues("sub_refused").Inc()
		s.audit(iothub.AuditEvent{Time: now, OrgID: gw.orgID, Kind: "login.refused", ProductKey: e.ProductKey, DeviceKey: e.DeviceKey,
			Remote: gw.remote, Reason: fmt.Sprintf("%d: %s (through gateway %s/%s)", code, msg, gw.dev.ProductKey, gw.dev.DeviceKey)})
		return nil, code, msg
	}
	sub := &session{
		cl:            gw.cl,
		gateway:       gw,
		dev:           iothub.DeviceID{ProductKey: d.ProductKey, DeviceKey: d.DeviceKey},
		orgID:         d.OrgID,
		remote:        gw.remote,
		sysPrefix:     sysPrefix(d.ProductKey, d.DeviceKey),
		extPrefix:     extPrefix(d.ProductKey, d.DeviceKey),
		secretVersion: d.SecretVersion,
	}
	sub.touch(now)
	sub.loginAt = now
	if old := s.registerSub(sub); old != nil {
		old.quiet.Store(true) // the device stays online: its new session took over
		s.kick(old, packets.ErrSessionTakenOver, "session_taken_over")
	}
	s.met.logins.WithLabelValues("ok").Inc()
	s.side.Add(sideItem{
		audit: iothub.AuditEvent{Time: now, OrgID: d.OrgID, Kind: "login.ok", ProductKey: d.ProductKey, DeviceKey: d.DeviceKey,
			Remote: gw.remote, Reason: fmt.Sprintf("sub-device of gateway %s/%s", gw.dev.ProductKey, gw.dev.DeviceKey)},
		change: iothub.StateChange{Device: sub.dev, State: iothub.StateOnline, At: now, Node: s.cfg.Node},
		ss:     sub,
	})
	s.announceLogin(sub)
	return map[string]string{"assetId": d.AssetID, "productKey": d.ProductKey, "deviceKey": d.DeviceKey}, codeOK, ""
}

func (s *Server) combineLogin(ctx context.Context, gw *session, params json.RawMessage) (any, int, string) {
	if code, msg := s.requireGateway(ctx, gw); code != codeOK {
		return nil, code, msg
	}
	var e signedEntry
	if err := json.Unmarshal(params, &e); err != nil || e.ProductKey == "" || e.DeviceKey == "" {
		return nil, codeBadFormat, "params must be {productKey, deviceKey, clientId, timestamp, signMethod, sign}"
	}
	return s.loginSub(ctx, gw, e)
}

func (s *Server) combineLoginBatch(ctx context.Context, gw *session, params json.RawMessage) (any, int, string) {
	if code, msg := s.requireGateway(ctx, gw); code != codeOK {
		return nil, code, msg
	}
	var p struct {
		signedEntry
		SubDevices []signedEntry `json:"subDevices"`
	}
	if err := json.Unmarshal(params, &p); err != nil || len(p.SubDevices) == 0 {
		return nil, codeBadFormat, "params must be {clientId, timestamp, signMethod, subDevices:[{productKey, deviceKey, sign}]}"
	}
	if len(p.SubDevices) > maxGatewayEntries {
		return nil, codeBadFormat, fmt.Sprintf("at most %d sub-devices per batch login", maxGatewayEntries)
	}
	type failure struct {
		deviceRef
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	logged, failed := []any{}, []failure{}
	firstCode, firstMsg := codeOK, ""
	for _, e := range p.SubDevices {
		// Every entry is signed with the batch's clientId, timestamp and method.
		e.ClientID, e.Timestamp, e.SignMethod, e.SignLower = p.ClientID, p.Timestamp, p.SignMethod, p.SignLower
		data, code, msg := s.loginSub(ctx, gw, e)
		if code != codeOK {
			failed = append(failed, failure{deviceRef{e.ProductKey, e.DeviceKey}, code, msg})
			if firstCode == codeOK {
				firstCode, firstMsg = code, msg
			}
			continue
		}
		logged = append(logged, data)
	}
	data := map[string]any{"loginedSubDevices": logged, "failedSubDevices": failed}
	if len(logged) == 0 {
		return data, firstCode, firstMsg
	}
	return data, codeOK, ""
}

func (s *Server) combineLogout(ctx context.Context, gw *session, params json.RawMessage) (any, int, string) {
	if code, msg := s.requireGateway(ctx, gw); code != codeOK {
		return nil, code, msg
	}
	var r deviceRef
	if err := json.Unmarshal(params, &r); err != nil || r.ProductKey == "" || r.DeviceKey == "" {
		return nil, codeBadFormat, "params must be {productKey, deviceKey}"
	}
	sub := gw.sub(iothub.DeviceID{ProductKey: r.ProductKey, DeviceKey: r.DeviceKey})
	if sub == nil {
		return nil, codeNoPermission, "sub-device is not logged in through this gateway"
	}
	s.endSub(sub, "")
	return r, codeOK, ""
}

// registerSub indexes a sub-device session and returns the session of the
// device it replaces, if any (an earlier login, direct or through another
// gateway).
func (s *Server) registerSub(sub *session) (replaced *session) {
	gw := sub.gateway
	s.mu.Lock()
	old := s.byDevice[sub.dev]
	s.byDevice[sub.dev] = sub
	s.mu.Unlock()
	gw.subMu.Lock()
	if gw.subs == nil {
		gw.subs = map[string]*session{}
	}
	gw.subs[sub.sysPrefix] = sub
	gw.subMu.Unlock()
	s.met.connections.Inc()
	if old != nil && old != sub {
		return old
	}
	return nil
}

// endSub logs a sub-device out: it leaves its gateway's subs and the
// device index, goes offline unless the hub closed it on a state change,
// and, with a notice ("disable", "delete"), the gateway is told on
// /ext/session/{gwpk}/{gwdk}/combine/{notice}.
func (s *Server) endSub(sub *session, notice string) {
	gw := sub.gateway
	gw.subMu.Lock()
	found := gw.subs[sub.sysPrefix] == sub
	if found {
		delete(gw.subs, sub.sysPrefix)
	}
	gw.subMu.Unlock()
	if !found {
		return
	}
	s.mu.Lock()
	current := s.byDevice[sub.dev] == sub
	if current {
		delete(s.byDevice, sub.dev)
	}
	s.mu.Unlock()
	s.met.connections.Dec()
	if notice != "" {
		body, _ := json.Marshal(map[string]any{"id": s.nextCallID(), "version": "1.0", "method": "combine." + notice,
			"params": deviceRef{sub.dev.ProductKey, sub.dev.DeviceKey}})
		if err := s.writePublish(gw.cl, gw.extPrefix+"combine/"+notice, body); err != nil {
			s.log.Debug("mqtt: sub-device notice not written", "notice", notice, "error", err)
		}
	}
	if !current {
		return
	}
	s.queueTouch(sub)
	if !sub.quiet.Load() {
		s.side.Add(sideItem{change: iothub.StateChange{Device: sub.dev, State: iothub.StateOffline, At: s.now(), Node: s.cfg.Node}})
	}
}

// endSubs logs out every sub-device of a gateway whose session ended.
func (s *Server) endSubs(gw *session) {
	gw.subMu.RLock()
	subs := slices.Collect(maps.Values(gw.subs))
	gw.subMu.RUnlock()
	for _, sub := range subs {
		s.endSub(sub, "")
	}
}
