package mqtt

import (
	"context"
	"crypto/x509"
	"math"
	"net"
	"strconv"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// refusal is a refused login: the MQTT 5 reason code (3.1.1 clients get
// CONNACK 5 whatever it is) and the reason written to the audit log.
type refusal struct {
	code   packets.Code
	reason string
	orgID  string
	failed bool // a credential failure: drains the failed-login buckets
}

// Reason codes of refused logins (PROTOCOL.md).
var (
	codeBadCredentials = packets.ErrBadUsernameOrPassword // 0x86
	codeNotAuthorized  = packets.ErrNotAuthorized         // 0x87
	codeBusy           = packets.ErrServerBusy            // 0x89
	codeBanned         = packets.ErrBanned                // 0x8A
	codeUnavailable    = packets.ErrServerUnavailable     // 0x88
)

// dummySecret is verified against when the device or product is unknown,
// so that an unknown key costs the same as a wrong signature.
var dummySecret = iothub.RandomString(iothub.SecretLen)

// loginTimeout bounds the store work of one login.
const loginTimeout = 5 * time.Second

// connect decides a CONNECT. It returns nil to accept, or the code it
// refused with after writing the CONNACK.
func (s *Server) connect(cl *conn, pk packets.Packet) error {
	now := s.now()
	remote := cl.remote
	if h, _, err := net.SplitHostPort(remote); err == nil {
		remote = h
	}
	ctx, cancel := context.WithTimeout(context.Background(), loginTimeout)
	defer cancel()

	if string(pk.Connect.Username) == AppUsername {
		return s.connectApp(ctx, cl, pk, remote, now)
	}
	l, err := sign.ParseLogin(pk.Connect.ClientIdentifier, string(pk.Connect.Username))
	var ss *session
	var ref *refusal
	switch {
	case err != nil:
		ref = &refusal{code: codeBadCredentials, reason: "malformed login: " + err.Error(), failed: true}
	case s.draining.Load():
		ref = &refusal{code: codeUnavailable, reason: "hub is shutting down"}
	case l.SecureMode == sign.ModeStatic:
		ss, ref = s.loginStatic(ctx, cl, l, string(pk.Connect.Password), remote, now)
	case l.SecureMode == sign.ModeDynamic:
		ss, ref = s.loginActivation(ctx, cl, l, string(pk.Connect.Password), remote, now)
	default:
		ref = &refusal{code: codeNotAuthorized, reason: "securemode not supported"}
	}
	if ref != nil {
		return s.refuse(cl, l, err == nil, remote, now, ref)
	}

	ss.cl = cl
	ss.remote = remote
	ss.tls = overTLS(cl)
	ss.loginAt = now
	ss.touch(now)
	// Sessions are taken over by client id (takeOver): naming the client after the
	// device makes a second login of the same device replace the first
	// (a device could otherwise pick another device's clientId to take its
	// session over, since the cid part is free text).
	if ss.activation {
		cl.id = "a|" + ss.dev.ProductKey + "|" + ss.dev.DeviceKey
	} else {
		cl.id = "d|" + ss.dev.ProductKey + "|" + ss.dev.DeviceKey
	}
	if cl.will != nil && !ss.allow(cl.will.TopicName, true) {
		cl.will = nil // a will may not reach another device's topics
	}
	if !s.register(ss) {
		return s.refuse(cl, l, true, remote, now, &refusal{code: codeNotAuthorized, orgID: ss.orgID, reason: "746: certificate refused: certificate revoked"})
	}
	s.startTimer(ss, now)

	kind := "login.ok"
	if ss.activation {
		kind = "activation.ok"
	} else {
		if ss.serial != "" && s.cfg.Certs != nil {
			s.cfg.Certs.NoteUsed(ctx, ss.serial)
		}
	}
	s.met.logins.WithLabelValues("ok").Inc()
	reason := "securemode 2"
	if ss.activation {
		reason = "securemode 3"
	}
	if ss.serial != "" {
		reason += ", certificate " + ss.serial
	}
	it := sideItem{audit: iothub.AuditEvent{Time: now, OrgID: ss.orgID, Kind: kind,
		ProductKey: ss.dev.ProductKey, DeviceKey: ss.dev.DeviceKey, Remote: remote, Reason: reason}}
	if !ss.activation {
		// Registered first, so a disable from here on finds the session; a
		// disable that landed since the device was read makes the queued
		// online write fail, and refuseLate closes the session.
		it.change = iothub.StateChange{Device: ss.dev, State: iothub.StateOnline, At: now, Node: s.cfg.Node}
		it.ss = ss
	}
	s.side.Add(it)
	if !ss.activation {
		s.announceLogin(ss)
	}
	return nil
}

// refuse records a refused login (buckets, metric, audit) and writes the
// CONNACK; it returns the code, which closes the connection.
// A failure over the failed-login buckets is answered as throttled (0x89).
func (s *Server) refuse(cl *conn, l sign.Login, parsed bool, remote string, now time.Time, ref *refusal) error {
	if ref.failed {
		device := ""
		if parsed {
			device = l.ProductKey + "/" + l.DeviceKey
		}
		if s.limits.failed(device, remote, now) {
			ref.code, ref.reason = codeBusy, ref.reason+"; throttled after failed logins"
		}
	}
	s.met.logins.WithLabelValues(refusalLabel(ref.code)).Inc()
	s.audit(iothub.AuditEvent{Time: now, OrgID: ref.orgID, Kind: "login.refused",
		ProductKey: l.ProductKey, DeviceKey: l.DeviceKey, Remote: remote, Reason: ref.reason})
	s.writeConnackRefusal(cl, ref.code)
	return ref.code
}

// loginStatic checks a securemode 2 login. The signature is checked
// before any throttle: failed logins are counted (refuse), but the holder
// of the right secret is never refused for others' failures.
func (s *Server) loginStatic(ctx context.Context, cl *conn, l sign.Login, password, remote string, now time.Time) (*session, *refusal) {
	p, err := s.product(ctx, l.ProductKey)
	if err != nil {
		if iothub.ErrorCode(err) != iothub.ENOTFOUND {
			return nil, &refusal{code: codeUnavailable, reason: "store: " + err.Error()}
		}
		l.Verify(dummySecret, password)
		return nil, &refusal{code: codeBadCredentials, reason: "unknown product", failed: true}
	}
	if ref := s.loginPolicy(p, l, now); ref != nil {
		return nil, ref
	}
	var serial string
	var notAfter time.Time
	var peer []*x509.Certificate
	if p.AuthMode == iothub.AuthCertificate {
		// Checked before the device is looked up, so the answer does not
		// depend on whether the device exists.
		tc := cl.tls
		if tc == nil {
			return nil, &refusal{code: codeNotAuthorized, orgID: p.OrgID, reason: "746: certificate product must log in over TLS"}
		}
		peer = tc.ConnectionState().PeerCertificates
		if len(peer) == 0 {
			return nil, &refusal{code: codeNotAuthorized, orgID: p.OrgID, reason: "746: no client certificate"}
		}
		if s.cfg.Certs == nil {
			return nil, &refusal{code: codeNotAuthorized, orgID: p.OrgID, reason: "746: no certificate service"}
		}
		serial, err = s.cfg.Certs.AuthorizeClient(p, l.DeviceKey, peer, now)
		if err != nil {
			return nil, &refusal{code: codeNotAuthorized, orgID: p.OrgID, reason: "746: certificate refused: " + iothub.ErrorMessage(err)}
		}
		notAfter = peer[0].NotAfter
	}
	d, err := s.device(ctx, iothub.DeviceID{ProductKey: l.ProductKey, DeviceKey: l.DeviceKey})
	if err != nil {
		if iothub.ErrorCode(err) != iothub.ENOTFOUND {
			return nil, &refusal{code: codeUnavailable, orgID: p.OrgID, reason: "store: " + err.Error()}
		}
		l.Verify(dummySecret, password)
		return nil, &refusal{code: codeBadCredentials, orgID: p.OrgID, reason: "unknown device", failed: true}
	}
	if !l.Verify(d.DeviceSecret, password) {
		return nil, &refusal{code: codeBadCredentials, orgID: p.OrgID, reason: "bad signature", failed: true}
	}
	if d.State == iothub.StateDisabled {
		return nil, &refusal{code: codeBanned, orgID: p.OrgID, reason: "723: device disabled"}
	}
	ss := &session{
		dev:           iothub.DeviceID{ProductKey: d.ProductKey, DeviceKey: d.DeviceKey},
		orgID:         d.OrgID,
		sysPrefix:     sysPrefix(d.ProductKey, d.DeviceKey),
		extPrefix:     extPrefix(d.ProductKey, d.DeviceKey),
		secretVersion: d.SecretVersion,
		serial:        serial,
		certNotAfter:  notAfter,
	}
	if peer != nil {
		ss.product, ss.peer = p, peer
	}
	if p.OfflineTimeoutSec > 0 {
		ss.offlineTimeout = time.Duration(p.OfflineTimeoutSec) * time.Second
	}
	return ss, nil
}

// loginPolicy applies a product's login rules that need no device: the
// sign methods it accepts and the freshness window of the signed timestamp.
func (s *Server) loginPolicy(p *iothub.Product, l sign.Login, now time.Time) *refusal {
	if !p.AllowsSignMethod(string(l.SignMethod)) {
		return &refusal{code: codeNotAuthorized, orgID: p.OrgID, reason: "sign method " + string(l.SignMethod) + " not allowed for the product"}
	}
	if !s.fresh(l.Timestamp, now) {
		// A replay of a captured CONNECT: counted as a failed login.
		return &refusal{code: codeNotAuthorized, orgID: p.OrgID, reason: "login timestamp outside the freshness window", failed: true}
	}
	return nil
}

// overTLS reports whether a client is connected over TLS.
func overTLS(cl *conn) bool {
	return cl.tls != nil
}

// fresh reports whether a login's signed timestamp (ms since the epoch, a
// fraction allowed) is within Config.LoginMaxSkew of now; always true when
// the window is off.
func (s *Server) fresh(timestamp string, now time.Time) bool {
	if s.cfg.LoginMaxSkew <= 0 {
		return true
	}
	ms, err := strconv.ParseFloat(timestamp, 64)
	if err != nil || math.IsNaN(ms) || math.IsInf(ms, 0) {
		return false
	}
	return math.Abs(ms-float64(now.UnixMilli())) <= float64(s.cfg.LoginMaxSkew.Milliseconds())
}

// writeConnackRefusal answers a refused CONNECT: MQTT 5 clients get the
// reason code, 3.1.1 clients return code 3 (server unavailable: try again
// later) when the hub cannot decide (store down, shutting down), else 5
// (not authorized).
func (s *Server) writeConnackRefusal(cl *conn, code packets.Code) {
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}}
	switch {
	case cl.version == 5:
		ack.ReasonCode = code.Code
		ack.Properties.ReasonString = code.Reason
	case code == codeUnavailable:
		ack.ReasonCode = packets.Err3ServerUnavailable.Code
	default:
		ack.ReasonCode = packets.Err3NotAuthorized.Code
	}
	_ = cl.writePacket(ack)
}

func refusalLabel(c packets.Code) string {
	switch c {
	case codeBadCredentials:
		return "bad_credentials"
	case codeBanned:
		return "disabled"
	case codeBusy:
		return "throttled"
	case codeUnavailable:
		return "unavailable"
	default:
		return "not_authorized"
	}
}

// audit queues an event for the batched writer; a failure to write it is
// logged, never fatal to the login.
func (s *Server) audit(e iothub.AuditEvent) {
	s.side.Add(sideItem{audit: e})
}

// product reads a product for a login, from the cache when there is one.
func (s *Server) product(ctx context.Context, pk string) (*iothub.Product, error) {
	if s.reg != nil {
		return s.reg.product(ctx, pk)
	}
	return s.cfg.Store.Product(ctx, pk)
}

// device reads a device for a login, from the cache when there is one.
func (s *Server) device(ctx context.Context, id iothub.DeviceID) (*iothub.Device, error) {
	if s.reg != nil {
		return s.reg.device(ctx, id)
	}
	return s.cfg.Store.Device(ctx, id.ProductKey, id.DeviceKey)
}

// refuseLate closes a session whose online write the store refused: the
// device was disabled (or deleted) between the login's read and the write.
func (s *Server) refuseLate(ss *session, deleted bool) {
	ss.quiet.Store(true) // the stored state is the disable's (or gone)
	if deleted {
		s.kick(ss, codeNotAuthorized, "device_deleted")
		return
	}
	s.kick(ss, codeBanned, "device_disabled")
}

// startTimer arms the session's deadline: the certificate's NotAfter, or
// the end of the activation window.
func (s *Server) startTimer(ss *session, now time.Time) {
	var d time.Duration
	reason := ""
	switch {
	case ss.activation:
		d, reason = activationSession, "activation_done"
	case !ss.certNotAfter.IsZero():
		d, reason = ss.certNotAfter.Sub(now), "cert_expired"
	default:
		return
	}
	if d < 0 {
		d = 0
	}
	ss.timer = time.AfterFunc(d, func() { s.kick(ss, codeNotAuthorized, reason) })
}

// kick closes a session from the hub's side. A sub-device is logged out
// of its gateway's connection, which stays, and the gateway is told when
// the device was disabled or deleted.
func (s *Server) kick(ss *session, code packets.Code, reason string) {
	s.met.kicks.WithLabelValues(reason).Inc()
	if ss.gateway != nil {
		notice := map[string]string{"device_disabled": "disable", "device_deleted": "delete"}[reason]
		s.endSub(ss, notice)
		return
	}
	ss.cl.disconnect(code)
}

// endSession forgets a closed session and records the device offline
// unless a newer session took over or the hub closed it on a state change.
func (s *Server) endSession(ss *session) {
	current, found := s.unregister(ss)
	if !found {
		return
	}
	if ss.app != nil {
		s.endApp(ss)
		return
	}
	s.endSubs(ss)
	if ss.timer != nil {
		ss.timer.Stop()
	}
	if at := ss.revoked.Load(); at != 0 {
		s.met.revokeLatency.Observe(time.Since(time.Unix(0, at)).Seconds())
	}
	if ss.activation || !current {
		return
	}
	s.queueTouch(ss)
	if ss.quiet.Load() {
		return
	}
	// Offline replaces only online: a disable, reset or deletion that
	// landed meanwhile keeps its state.
	s.side.Add(sideItem{change: iothub.StateChange{Device: ss.dev, State: iothub.StateOffline, At: s.now(), Node: s.cfg.Node}})
}
