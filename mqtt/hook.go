package mqtt

import (
	"bytes"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// hook plugs the Server into mochi's hook chain.
type hook struct {
	mochi.HookBase
	s *Server
}

func (h *hook) ID() string { return "iothub" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mochi.OnConnect,
		mochi.OnConnectAuthenticate,
		mochi.OnACLCheck,
		mochi.OnSubscribe,
		mochi.OnSessionEstablished,
		mochi.OnDisconnect,
		mochi.OnPublish,
		mochi.OnPacketRead,
		mochi.OnPublishDropped,
	}, []byte{b})
}

// OnConnect runs the login. mochi's OnConnectAuthenticate can only answer
// "bad user name or password", so the login is decided here where a
// refusal can carry its own reason code: the hook writes the CONNACK and
// returns the code, which makes mochi close the connection.
func (h *hook) OnConnect(cl *mochi.Client, pk packets.Packet) error {
	return h.s.connect(cl, pk)
}

// OnConnectAuthenticate lets through the connections OnConnect accepted.
func (h *hook) OnConnectAuthenticate(cl *mochi.Client, _ packets.Packet) bool {
	return h.s.lookup(cl) != nil
}

// OnACLCheck applies the access rule on every publish, subscription and delivery.
func (h *hook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	ss := h.s.lookup(cl)
	if ss != nil && ss.app != nil {
		return h.s.appAllows(ss, topic, write)
	}
	return ss != nil && ss.allow(topic, write)
}

// OnSubscribe holds a session to maxSubscriptions filters.
func (h *hook) OnSubscribe(cl *mochi.Client, pk packets.Packet) packets.Packet {
	return capSubscriptions(cl, pk)
}

// OnSessionEstablished runs after the CONNACK: the activation push goes here.
func (h *hook) OnSessionEstablished(cl *mochi.Client, _ packets.Packet) {
	ss := h.s.lookup(cl)
	if ss == nil {
		return
	}
	ss.established.Store(true)
	if ss.activation {
		h.s.pushActivation(ss)
	}
}

// OnDisconnect ends the session.
func (h *hook) OnDisconnect(cl *mochi.Client, _ error, _ bool) {
	if ss := h.s.lookup(cl); ss != nil {
		h.s.endSession(ss)
	}
}

// OnPacketRead notes that the device is alive.
func (h *hook) OnPacketRead(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if ss := h.s.lookup(cl); ss != nil {
		ss.touch(time.Now())
	}
	return pk, nil
}

// OnPublishDropped delivers a QoS 1 message mochi could not queue.
func (h *hook) OnPublishDropped(cl *mochi.Client, pk packets.Packet) {
	h.s.deliverOverflow(cl, pk)
}

// OnPublish serves upstream requests and replies to downstream calls.
func (h *hook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	h.s.met.messages.WithLabelValues("in").Inc()
	ss := h.s.lookup(cl)
	if ss == nil {
		return pk, packets.ErrRejectPacket
	}
	if h.s.handlePublish(ss, pk) {
		// Served by the hub, which sends its own reply and PUBACK (after
		// the commit, for what it stores): mochi must neither acknowledge
		// nor route it.
		return pk, packets.ErrRejectPacket
	}
	return pk, nil
}
