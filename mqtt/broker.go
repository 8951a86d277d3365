package mqtt

import (
	"errors"
	"runtime/debug"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iothub/iothub"
)

// This file is the MQTT protocol as the hub speaks it, packet by packet:
// the login, publishing (served by the hub or routed to subscribers),
// subscriptions, QoS 1 deliveries, wills, session takeover and the
// sessions a client asks to keep. The rules of who may do what are the
// hub's (auth.go, session.go); this applies them.

// errDisconnected ends a connection whose client sent DISCONNECT.
var errDisconnected = errors.New("mqtt: client disconnected")

// savedSession is what a client that asked for a persistent session
// finds again when it reconnects within its expiry: its subscriptions and
// the QoS 1 deliveries it had not acknowledged. A session holding neither
// is not kept.
type savedSession struct {
	subs     map[string]packets.Subscription
	inflight map[uint16]packets.Packet
	expires  time.Time
}

// serve handles one packet of c, on c's reader. An error ends the
// connection; a packets.Code tells an MQTT 5 client why.
func (s *Server) serve(c *conn, pk packets.Packet, body []byte) error {
	connected := c.connected.Load()
	if pk.FixedHeader.Type == packets.Connect {
		if connected {
			return packets.ErrProtocolViolationSecondConnect
		}
		return s.onConnect(c, pk, body)
	}
	if !connected {
		return packets.ErrProtocolViolationRequireFirstConnect
	}
	ss := s.lookup(c)
	if ss == nil {
		return errConnClosed // the hub ended the session
	}
	ss.touch(time.Now())
	switch pk.FixedHeader.Type {
	case packets.Publish:
		if err := pk.PublishDecode(body); err != nil {
			return err
		}
		return s.onPublish(c, ss, pk)
	case packets.Puback:
		if err := pk.PubackDecode(body); err != nil {
			return err
		}
		return c.acked(pk.PacketID)
	case packets.Subscribe:
		if err := pk.SubscribeDecode(body); err != nil {
			return err
		}
		return s.onSubscribe(c, ss, pk)
	case packets.Unsubscribe:
		if err := pk.UnsubscribeDecode(body); err != nil {
			return err
		}
		return s.onUnsubscribe(c, pk)
	case packets.Pingreq:
		return c.writePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}})
	case packets.Disconnect:
		if err := pk.DisconnectDecode(body); err != nil {
			return err
		}
		return s.onDisconnect(c, pk)
	case packets.Pubrec, packets.Pubrel, packets.Pubcomp:
		return packets.ErrQosNotSupported // the hub grants QoS 1 at most
	}
	return packets.ErrProtocolViolation
}

// fail ends c after an error of its reader, with a DISCONNECT saying why
// to an MQTT 5 client that is logged in.
func (c *conn) fail(err error) {
	var code packets.Code
	if errors.As(err, &code) && c.connected.Load() && c.version == 5 {
		if code.Code < packets.ErrUnspecifiedError.Code {
			code = packets.ErrUnspecifiedError
		}
		c.disconnect(code)
		return
	}
	c.close(err)
}

// onConnect runs the login and opens the session.
func (s *Server) onConnect(c *conn, pk packets.Packet, body []byte) error {
	if err := pk.ConnectDecode(body); err != nil {
		return err
	}
	c.version = pk.ProtocolVersion
	code := pk.ConnectValidate()
	switch {
	case code != packets.CodeSuccess:
	case c.version < 4:
		code = packets.ErrUnsupportedProtocolVersion
	case c.version == 4 && !pk.Connect.Clean && pk.Connect.ClientIdentifier == "":
		code = packets.ErrClientIdentifierNotValid
	case pk.Connect.WillFlag && pk.Connect.WillQos > 1:
		code = packets.ErrQosNotSupported
	case pk.Connect.WillFlag && pk.Connect.WillRetain:
		code = packets.ErrRetainNotSupported
	}
	if code != packets.CodeSuccess {
		s.writeConnackRefusal(c, code)
		return code
	}
	c.id = pk.Connect.ClientIdentifier
	assigned := ""
	if c.id == "" {
		c.id = "auto-" + iothub.RandomString(16)
		assigned = c.id
	}
	c.clean = pk.Connect.Clean
	c.keepalive = pk.Connect.Keepalive
	asked := uint32(0)
	if c.version == 5 {
		asked = pk.Properties.SessionExpiryInterval
		c.maxPacket = pk.Properties.MaximumPacketSize
		c.receiveMax = int(pk.Properties.ReceiveMaximum)
	} else if !c.clean {
		asked = sessionExpirySec
	}
	c.sessionExpiry = min(asked, sessionExpirySec)
	if pk.Connect.WillFlag {
		c.will = &packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: pk.Connect.WillQos},
			TopicName:   pk.Connect.WillTopic,
			Payload:     pk.Connect.WillPayload,
			Properties:  pk.Connect.WillProperties,
		}
	}
	clampKeepalive(c)
	if err := s.connect(c, pk); err != nil {
		return err
	}

	subs, inflight, present := s.takeOver(c)
	c.mu.Lock()
	c.subs, c.inflight = subs, inflight
	c.mu.Unlock()
	c.connected.Store(true)
	for _, sub := range subs {
		s.topics.add(c, sub)
	}
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, SessionPresent: present}
	if c.version == 5 {
		ack.Properties = packets.Properties{
			ReceiveMaximum:         receiveMaximum,
			MaximumQos:             1,
			MaximumQosFlag:         true,
			RetainAvailableFlag:    true, // RetainAvailable 0: no retained messages
			SharedSubAvailableFlag: true, // SharedSubAvailable 0: no shared subscriptions
			MaximumPacketSize:      uint32(s.maxPacket),
			AssignedClientID:       assigned,
		}
		if c.serverKeepalive {
			ack.Properties.ServerKeepAlive, ack.Properties.ServerKeepAliveFlag = c.keepalive, true
		}
		if asked != c.sessionExpiry {
			ack.Properties.SessionExpiryInterval, ack.Properties.SessionExpiryIntervalFlag = c.sessionExpiry, true
		}
	}
	if err := c.writePacket(ack); err != nil {
		return err
	}
	s.loginBurst.Add(1)
	s.lastLogin.Store(time.Now().UnixNano())
	if ss := s.lookup(c); ss != nil {
		ss.established.Store(true)
		if ss.activation {
			s.pushActivation(ss)
		}
	}
	for _, out := range inflight {
		out.FixedHeader.Dup = true
		_ = c.writePacket(out)
	}
	return nil
}

// takeOver makes c the session of its client identifier: a connection
// with the same identifier is closed (MQTT 5: 0x8E, session taken over),
// and unless c asked for a clean start it inherits that connection's
// subscriptions and unacknowledged deliveries, or those of the session
// kept since the client's last disconnection.
func (s *Server) takeOver(c *conn) (map[string]packets.Subscription, map[uint16]packets.Packet, bool) {
	s.cmu.Lock()
	old := s.clients[c.id]
	s.clients[c.id] = c
	saved := s.saved[c.id]
	delete(s.saved, c.id)
	s.cmu.Unlock()
	var subs map[string]packets.Subscription
	var inflight map[uint16]packets.Packet
	present := false
	switch {
	case old != nil:
		old.mu.Lock()
		old.takenOver = true
		if !c.clean {
			subs, inflight, present = old.subs, old.inflight, true
		}
		gone := old.subs
		old.subs, old.inflight, old.waiting = nil, nil, nil
		old.mu.Unlock()
		for f := range gone {
			s.topics.remove(old, f)
		}
		old.disconnect(packets.ErrSessionTakenOver)
	case saved != nil && !c.clean && time.Now().Before(saved.expires):
		subs, inflight, present = saved.subs, saved.inflight, true
	}
	return subs, inflight, present
}

// sessionEnded closes c's session once its connection is closed and no reader
// runs: the will, the subscriptions (kept for a persistent session), and
// the hub's side of the session.
func (s *Server) sessionEnded(c *conn) {
	c.mu.Lock()
	connected, subs, inflight := c.connected.Load(), c.subs, c.inflight
	c.waiting = nil // all of inflight is sent again on a resumed session
	keep := !c.takenOver && c.sessionExpiry > 0 && len(c.subs)+len(c.inflight) > 0
	will := c.will
	if c.graceful {
		will = nil
	}
	c.subs, c.inflight = nil, nil
	c.mu.Unlock()
	if connected {
		s.cmu.Lock()
		if s.clients[c.id] == c {
			delete(s.clients, c.id)
			if keep {
				s.saved[c.id] = &savedSession{subs: subs, inflight: inflight,
					expires: time.Now().Add(time.Duration(c.sessionExpiry) * time.Second)}
			}
		}
		s.cmu.Unlock()
		for f := range subs {
			s.topics.remove(c, f)
		}
		if will != nil {
			s.route(c, *will)
		}
	}
	if ss := s.lookup(c); ss != nil {
		s.endSession(ss)
	}
	s.cmu.Lock()
	delete(s.live, c)
	s.cmu.Unlock()
	s.connWG.Done()
}

// expireOverdue ends the connections past their CONNECT or keepalive
// deadline. It walks the connections in place and allocates only for
// those it ends.
func (s *Server) expireOverdue(now time.Time) {
	var due []*conn
	s.cmu.Lock()
	for c := range s.live {
		if c.overdue(now) {
			due = append(due, c)
		}
	}
	s.cmu.Unlock()
	for _, c := range due {
		c.expire()
	}
}

// trimAfterLogins is the size of a login burst after which the memory it
// grew is given back to the system once logins pause (a fleet
// reconnecting after a restart would otherwise leave the hub at its peak
// for minutes, until Go's scavenger returns it).
const trimAfterLogins = 1000

// trimQuiet is how long logins must pause before the memory is given back:
// long enough not to force a collection between the waves of one storm.
const trimQuiet = 10 * time.Second

// trimAfterBurst returns the heap a burst of logins grew to the system
// once no login came for trimQuiet, at most once a minute.
func (s *Server) trimAfterBurst(now time.Time) {
	if s.loginBurst.Load() < trimAfterLogins || now.Sub(time.Unix(0, s.lastLogin.Load())) < trimQuiet ||
		now.Sub(s.lastTrim) < time.Minute {
		return
	}
	s.loginBurst.Store(0)
	s.lastTrim = now
	go debug.FreeOSMemory()
}

// pruneSaved forgets the persistent sessions past their expiry.
func (s *Server) pruneSaved(now time.Time) {
	s.cmu.Lock()
	for id, ss := range s.saved {
		if now.After(ss.expires) {
			delete(s.saved, id)
		}
	}
	s.cmu.Unlock()
}

// onPublish serves a PUBLISH: a request the hub answers, or a message
// routed to its subscribers.
func (s *Server) onPublish(c *conn, ss *session, pk packets.Packet) error {
	if code := pk.PublishValidate(0); code != packets.CodeSuccess {
		return code
	}
	if pk.FixedHeader.Qos > 1 {
		return packets.ErrQosNotSupported
	}
	if !validTopic(pk.TopicName) {
		return packets.ErrTopicNameInvalid
	}
	pk.FixedHeader.Retain = false // nothing is retained
	if !s.allowed(ss, pk.TopicName, true) {
		switch {
		case pk.FixedHeader.Qos == 0:
			return nil
		case c.version < 5:
			return packets.ErrNotAuthorized
		}
		return c.writePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback},
			PacketID: pk.PacketID, ReasonCode: packets.ErrNotAuthorized.Code})
	}
	s.met.messagesIn.Inc()
	if s.handlePublish(ss, pk) {
		return nil // the hub answers it, in the connection's order
	}
	if pk.FixedHeader.Qos == 1 {
		if err := c.writePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}); err != nil {
			return err
		}
	}
	s.route(c, pk)
	return nil
}

// allowed is the access rule of a session: a device's topics for a
// device, an application's for an application.
func (s *Server) allowed(ss *session, topic string, write bool) bool {
	if ss.app != nil {
		return s.appAllows(ss, topic, write)
	}
	return ss.allow(topic, write)
}

// route delivers a message to the connections subscribed to its topic
// that may read it, each at the lower of the two QoS. The write is made
// here, on the publisher's goroutine: on the hub a device subscribes only
// to its own topics, so a subscriber that reads slowly slows itself, and
// one that stops reading is cut off at the write deadline.
func (s *Server) route(from *conn, pk packets.Packet) {
	for _, t := range s.topics.match(pk.TopicName) {
		if t.sub.NoLocal && t.c == from {
			continue
		}
		if ss := s.lookup(t.c); ss == nil || !s.allowed(ss, pk.TopicName, false) {
			continue
		}
		s.deliver(t.c, t.sub, pk)
	}
}

// deliver writes one routed message; a QoS 1 delivery waits in the
// connection's inflight set for its PUBACK.
func (s *Server) deliver(c *conn, sub packets.Subscription, pk packets.Packet) {
	out := pk // shares the payload and properties, which nobody changes
	out.PacketID = 0
	out.FixedHeader.Qos = min(pk.FixedHeader.Qos, sub.Qos)
	out.FixedHeader.Retain, out.FixedHeader.Dup = false, false
	out.Properties.TopicAlias, out.Properties.TopicAliasFlag = 0, false
	out.Properties.SubscriptionIdentifier = nil
	if sub.Identifier > 0 {
		out.Properties.SubscriptionIdentifier = []int{sub.Identifier}
	}
	if out.FixedHeader.Qos > 0 {
		c.mu.Lock()
		id, ok := c.nextPacketID()
		if c.closed || !ok {
			c.mu.Unlock()
			return
		}
		if c.inflight == nil {
			c.inflight = map[uint16]packets.Packet{}
		}
		out.PacketID = id
		c.inflight[id] = out
		if c.receiveMax > 0 && (len(c.waiting) > 0 || len(c.inflight)-len(c.waiting) > c.receiveMax) {
			c.waiting = append(c.waiting, out) // sent when an earlier one is acknowledged
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
	}
	switch err := c.writePacket(out); {
	case err == nil:
		s.met.messagesOut.Inc()
	case errors.Is(err, packets.ErrPacketTooLarge) && out.PacketID != 0:
		c.mu.Lock()
		delete(c.inflight, out.PacketID) // over the client's maximum: never sent
		c.mu.Unlock()
	}
}

// acked completes a QoS 1 delivery and sends the next one waiting for
// room under the client's receive maximum.
func (c *conn) acked(id uint16) error {
	c.mu.Lock()
	delete(c.inflight, id)
	var next []packets.Packet
	if len(c.waiting) > 0 {
		next, c.waiting = c.waiting[:1], c.waiting[1:]
		if len(c.waiting) == 0 {
			c.waiting = nil
		}
	}
	c.mu.Unlock()
	for _, out := range next {
		if err := c.writePacket(out); err != nil {
			return err
		}
	}
	return nil
}

// onSubscribe grants the filters the session may read, up to
// maxSubscriptions, at QoS 1 at most.
func (s *Server) onSubscribe(c *conn, ss *session, pk packets.Packet) error {
	if code := pk.SubscribeValidate(); code != packets.CodeSuccess {
		return code
	}
	codes := make([]byte, len(pk.Filters))
	for i, sub := range pk.Filters {
		c.mu.Lock()
		_, had := c.subs[sub.Filter]
		full := len(c.subs) >= maxSubscriptions
		c.mu.Unlock()
		switch {
		case !validFilter(sub.Filter):
			codes[i] = packets.ErrTopicFilterInvalid.Code
		case sharedFilter(sub.Filter):
			codes[i] = packets.ErrSharedSubscriptionsNotSupported.Code
		case !had && full:
			codes[i] = packets.ErrQuotaExceeded.Code
		case !s.allowed(ss, sub.Filter, false):
			codes[i] = packets.ErrNotAuthorized.Code
		default:
			sub.Qos = min(sub.Qos, 1)
			c.mu.Lock()
			if c.subs == nil {
				c.subs = map[string]packets.Subscription{}
			}
			c.subs[sub.Filter] = sub
			c.mu.Unlock()
			s.topics.add(c, sub)
			codes[i] = sub.Qos
		}
		if codes[i] >= packets.ErrUnspecifiedError.Code && c.version < 5 {
			codes[i] = packets.ErrUnspecifiedError.Code
		}
	}
	return c.writePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback},
		PacketID: pk.PacketID, ReasonCodes: codes})
}

// onUnsubscribe drops the filters named.
func (s *Server) onUnsubscribe(c *conn, pk packets.Packet) error {
	if code := pk.UnsubscribeValidate(); code != packets.CodeSuccess {
		return code
	}
	codes := make([]byte, len(pk.Filters))
	for i, sub := range pk.Filters {
		c.mu.Lock()
		_, had := c.subs[sub.Filter]
		delete(c.subs, sub.Filter)
		c.mu.Unlock()
		if had {
			s.topics.remove(c, sub.Filter)
		} else {
			codes[i] = packets.CodeNoSubscriptionExisted.Code
		}
	}
	return c.writePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsuback},
		PacketID: pk.PacketID, ReasonCodes: codes})
}

// onDisconnect ends the connection as its client asks: without the will,
// unless an MQTT 5 client asks for it (0x04).
func (s *Server) onDisconnect(c *conn, pk packets.Packet) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.version == 5 && pk.Properties.SessionExpiryIntervalFlag {
		if c.sessionExpiry == 0 && pk.Properties.SessionExpiryInterval > 0 {
			return packets.ErrProtocolViolationZeroNonZeroExpiry // [MQTT-3.14.2-2]
		}
		c.sessionExpiry = min(pk.Properties.SessionExpiryInterval, sessionExpirySec)
	}
	c.graceful = !(c.version == 5 && pk.ReasonCode == packets.CodeDisconnectWillMessage.Code)
	return errDisconnected
}
