package mqtt

import (
	"sync"

	"github.com/mochi-mqtt/server/v2/packets"
)

// maxPendingAnswers bounds the requests of one connection waiting for
// their answer (most of them for a commit): past it the connection's read
// loop waits, which slows that device only.
const maxPendingAnswers = 64

// answer is what the hub sends back for one PUBLISH it served: a reply on
// the request's _reply topic and a PUBACK, in that order, then an action.
type answer struct {
	ready        bool
	replyTopic   string
	replyPayload []byte // nil: no reply
	ack          bool   // send a PUBACK
	ackID        uint16
	ackCode      byte   // MQTT 5 reason code; 0 is success
	after        func() // run once written (e.g. end the session)
}

// answerQueue keeps a connection's answers in the order its requests
// arrived, as MQTT requires of PUBACKs, although a request that stores
// data is answered only when its commit ends, while later requests may
// already be done. Whoever completes the oldest pending answer writes
// every answer that is ready from there on.
type answerQueue struct {
	mu       sync.Mutex
	pending  []*answer
	flushing bool
	room     chan struct{}
}

// answers returns the connection's queue, made on its first request (an
// idle connection holds none).
func (ss *session) answers() *answerQueue {
	ss.answersOnce.Do(func() { ss.answerQ = &answerQueue{room: make(chan struct{}, maxPendingAnswers)} })
	return ss.answerQ
}

// reserve takes the next place in the connection's order; it blocks while
// maxPendingAnswers are waiting, after writing what the connection's
// reader has gathered so far.
func (q *answerQueue) reserve(c *conn) *answer {
	select {
	case q.room <- struct{}{}:
	default:
		c.flush()
		q.room <- struct{}{}
	}
	a := &answer{}
	q.mu.Lock()
	q.pending = append(q.pending, a)
	q.mu.Unlock()
	return a
}

// complete marks a ready and writes, in order, every ready answer at the
// head of the connection's queue. It writes to the connection: callers on
// the writers' goroutines must run it in a goroutine of its own.
func (s *Server) complete(ss *session, a *answer) {
	q := ss.answers()
	q.mu.Lock()
	a.ready = true
	if q.flushing {
		q.mu.Unlock()
		return // the goroutine flushing will see it
	}
	q.flushing = true
	q.mu.Unlock()
	for {
		q.mu.Lock()
		n := 0
		for n < len(q.pending) && q.pending[n].ready {
			n++
		}
		if n == 0 {
			q.flushing = false
			q.mu.Unlock()
			return
		}
		ready := append([]*answer(nil), q.pending[:n]...)
		q.pending = q.pending[n:]
		q.mu.Unlock()
		ss.cl.hold() // the answers of one commit leave in one write
		for _, r := range ready {
			s.write(ss, r)
			<-q.room
		}
		ss.cl.release()
	}
}

// write sends one answer on the connection.
func (s *Server) write(ss *session, a *answer) {
	if a.replyPayload != nil {
		if err := s.writePublish(ss.cl, a.replyTopic, a.replyPayload); err != nil {
			s.log.Debug("mqtt: reply not written", "topic", a.replyTopic, "error", err)
		}
	}
	if a.ack {
		ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: a.ackID, ReasonCode: a.ackCode}
		if err := ss.cl.writePacket(ack); err != nil {
			s.log.Debug("mqtt: PUBACK not written", "error", err)
		}
	}
	if a.after != nil {
		a.after()
	}
}
