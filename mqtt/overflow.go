package mqtt

import (
	"sort"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// deliverOverflow keeps at-least-once when a subscriber's outbound queue
// is full. mochi drops a delivery it cannot queue (OnPublishDropped) and
// rolls back its inflight entry, although the publisher already has its
// PUBACK. For a QoS 0 delivery that is allowed; a QoS 1 delivery is
// written here instead, straight to the subscriber's connection, from the
// publisher's goroutine: the publisher is throttled to the pace at which
// the subscriber reads (back-pressure), and no message is lost.
//
// The message gets its own packet id and inflight entry, so the
// subscriber's PUBACK completes it as usual and a persistent session gets
// it again after a reconnect if the write fails. The write is bounded by
// the connection deadline mochi sets from the keepalive: a subscriber that
// stops reading is disconnected, not waited for forever. On the hub a
// device can only subscribe to its own topics, so publisher and subscriber
// are the same device: it slows only itself. It costs no memory while the
// queue has room.
func (s *Server) deliverOverflow(cl *mochi.Client, pk packets.Packet) {
	if cl.Closed() {
		return
	}
	sub, ok := s.broker.Topics.Subscribers(pk.TopicName).Subscriptions[cl.ID]
	if pk.FixedHeader.Qos == 0 || !ok || sub.Qos == 0 {
		// Delivered at QoS 0: dropping it is allowed, and counted.
		s.met.qos0Dropped.Inc()
		s.qos0Warn.Do(func() {
			s.log.Warn("mqtt: QoS 0 deliveries dropped: a subscriber's queue is full", "client", cl.ID)
		})
		return
	}
	out := pk.Copy(false)
	out.FixedHeader.Qos = 1 // the hub's maximum
	out.FixedHeader.Retain = false
	out.FixedHeader.Dup = false
	if len(sub.Identifiers) > 0 {
		out.Properties.SubscriptionIdentifier = make([]int, 0, len(sub.Identifiers))
		for _, id := range sub.Identifiers {
			out.Properties.SubscriptionIdentifier = append(out.Properties.SubscriptionIdentifier, id)
		}
		sort.Ints(out.Properties.SubscriptionIdentifier)
	}
	id, err := cl.NextPacketID()
	if err != nil {
		s.met.overflow.WithLabelValues("no_packet_id").Inc()
		s.log.Warn("mqtt: QoS 1 delivery dropped: packet ids exhausted", "client", cl.ID)
		return
	}
	out.PacketID = uint16(id)
	cl.State.Inflight.Set(out)
	if err := cl.WritePacket(out); err != nil {
		// Kept in inflight: a persistent session gets it on reconnect.
		s.met.overflow.WithLabelValues("write_failed").Inc()
		cl.Stop(err)
		return
	}
	s.met.overflow.WithLabelValues("written").Inc()
}
